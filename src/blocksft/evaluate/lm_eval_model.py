"""An lm-evaluation-harness model class for LLaDA-style checkpoints, registered as ``blocksft``.

Needs the optional extra: ``pip install "blocksft[lm-eval]"``. Run any harness task with::

    python -m blocksft.evaluate.harness run --model blocksft \\
        --model_args pretrained=CKPT,gen_length=256,block_length=32,steps=256 \\
        --tasks gsm8k --apply_chat_template

(:mod:`blocksft.evaluate.harness` is the harness's own command line with this class registered;
``accelerate launch -m blocksft.evaluate.harness ...`` splits the requests over GPUs.) From Python:
``lm_eval.simple_evaluate(model=BlocksftLM(pretrained=CKPT), tasks=[...])``, or ``model="blocksft"``
after importing this module.

* ``generate_until``: blocksft's semi-autoregressive sampler with the model arguments' decoding
  settings (``gen_length`` etc.; the task's ``max_gen_toks`` is not used); the answer is cut at
  EOS/EoT and at the task's ``until`` strings.
* ``loglikelihood``: the Monte-Carlo estimate of LLaDA's paper. For ``mc_num`` samples, mask
  ``k`` of the continuation's ``L`` tokens (``k`` stratified over 1..L), and average
  ``(L / k) * sum of the masked tokens' cross-entropy``; the log-likelihood is minus that (a bound,
  as for every masked diffusion model). ``is_greedy`` is whether low-confidence greedy decoding of
  ``L`` tokens after the context reproduces the continuation (``greedy_check=False`` skips it).
* ``loglikelihood_rolling`` (perplexity tasks) is not implemented.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from blocksft.config.sampler import SamplerConfig
from blocksft.errors import BlocksftError
from blocksft.evaluate.runner import distributed_context, resolve_device
from blocksft.generation.sampler import generate
from blocksft.generation.text import decode_answer
from blocksft.generation.transfer import left_pad
from blocksft.model import LLaDAModelLM
from blocksft.model.loading import load_model
from blocksft.rng import batch_seed
from blocksft.special_tokens import resolve_special_ids
from blocksft.tokenizer import load_tokenizer


@register_model("blocksft")
class BlocksftLM(LM):
    """LLaDA-style masked diffusion model behind the harness's ``LM`` interface.

    Args:
        pretrained: checkpoint folder or hub id, or an already loaded model (then pass ``tokenizer``).
        tokenizer: a tokenizer object or name (default: the checkpoint's).
        dtype, device, trust_remote_code: as for ``blocksft eval``.
        gen_length, block_length, steps, temperature, remasking, confidence, cfg_scale, threshold,
            cache: the sampler's settings for ``generate_until``.
        batch_size: prompts decoded together in ``generate_until``.
        mc_num: Monte-Carlo samples per ``loglikelihood`` request; mc_batch_size: of those, how
            many go through the model at once.
        greedy_check: compute ``is_greedy`` (one forward pass per continuation token).
        max_length: longest context + continuation; longer contexts lose their left part.
        seed: seeds the masks and sampling.
    """

    def __init__(
        self,
        pretrained="GSAI-ML/LLaDA-8B-Instruct",
        tokenizer=None,
        dtype: str = "auto",
        device: str | None = "auto",
        trust_remote_code: bool = False,
        gen_length: int = 256,
        block_length: int = 32,
        steps: int = 256,
        temperature: float = 0.0,
        remasking: str = "low_confidence",
        confidence: str = "float64",
        cfg_scale: float = 0.0,
        threshold: float | None = None,
        cache: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        mc_num: int = 128,
        mc_batch_size: int = 32,
        greedy_check: bool = True,
        max_length: int = 4096,
        seed: int = 1234,
    ):
        super().__init__()
        self._dist = distributed_context()
        self._rank, self._world_size = self._dist.rank, self._dist.world_size
        if isinstance(pretrained, str):
            device = device or "auto"
            if device.startswith("cuda") and self._world_size > 1:
                device = f"cuda:{self._dist.local_rank}"  # the harness passes one device to every rank
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise BlocksftError(
                    f"device {device!r} asked for, but CUDA is not available; pass --device cpu"
                )
            self._device = resolve_device(device, self._dist.local_rank)
            self.model = load_model(
                pretrained, dtype=dtype, trust_remote_code=trust_remote_code, device=self._device
            )
            tokenizer = tokenizer or pretrained
        else:
            self.model = pretrained
            self._device = next(self.model.parameters()).device
        if tokenizer is None:
            raise BlocksftError("BlocksftLM: pass a tokenizer with an already loaded model")
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer
        self.model.eval()
        self._ids = resolve_special_ids(tokenizer, self.model.config)
        self._mask_id = self._ids.mask
        self.sampler = SamplerConfig(
            gen_length=int(gen_length),
            block_length=int(block_length),
            steps=int(steps),
            temperature=float(temperature),
            remasking=remasking,
            confidence=confidence,
            cfg_scale=float(cfg_scale),
            threshold=None if threshold in (None, "None", "none") else float(threshold),
            cache=None if cache in (None, "None", "none") else cache,
        )
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1
        if mc_num < 1 or mc_batch_size < 1:
            raise BlocksftError(f"mc_num and mc_batch_size must be >= 1, got {mc_num} and {mc_batch_size}")
        self.mc_num, self.mc_batch_size = int(mc_num), int(mc_batch_size)
        self.greedy_check = bool(greedy_check)
        self.max_length = int(max_length)
        self.seed = int(seed)

    # --- harness plumbing ---------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "blocksft")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def all_gather(self, tensor):
        if self._world_size == 1:
            return tensor
        tensor = tensor.reshape(-1) if tensor.dim() == 0 else tensor
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self._world_size == 1:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        self._dist.barrier()

    # --- tokens -----------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        """Ids of ``text`` with exactly one leading BOS (a chat-templated text already has one)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # Trailing spaces belong to the continuation (tokenizers merge a space into the next word).
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self._encode(context + continuation)
        context_ids = self._encode(context)
        return context_ids, whole[len(context_ids) :]

    # --- log-likelihood -------------------------------------------------------------------------

    def _masked_logits(self, input_ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` at the ``where`` positions, row-major (only those, for our model)."""
        if isinstance(self.model, LLaDAModelLM):
            return self.model(input_ids, logits_at=where).logits
        return self.model(input_ids).logits[where]

    @torch.inference_mode()
    def continuation_nll(
        self, context_ids: list[int], continuation_ids: list[int], generator: torch.Generator
    ) -> float:
        """Monte-Carlo estimate of ``-log p(continuation | context)`` (LLaDA's masked-token bound).

        Each of the ``mc_num`` samples masks ``k`` continuation tokens, with ``k`` stratified over
        ``1..L``; its estimate is ``(L / k) * sum of the masked tokens' cross-entropy``.
        """
        length = len(continuation_ids)
        if length == 0:
            return 0.0
        ids = torch.tensor(context_ids + continuation_ids, device=self._device)  # [S]
        start = len(context_ids)
        # Stratified mask counts: one uniform offset, then evenly spaced quantiles of 1..L.
        offset = torch.rand((), generator=generator, device="cpu").item()
        quantiles = (offset + torch.arange(self.mc_num, dtype=torch.float64)) / self.mc_num  # [n] in (0, 1)
        counts = torch.ceil(quantiles * length).clamp(1, length).long()  # [n]
        total = 0.0
        for chunk in counts.split(self.mc_batch_size):
            n = chunk.numel()
            # Rank the continuation positions by random keys; the k lowest are masked.
            keys = torch.rand((n, length), generator=generator, device="cpu")
            ranks = keys.argsort(dim=1).argsort(dim=1)  # [n, L]
            masked_cont = ranks < chunk[:, None]  # [n, L]
            where = torch.zeros((n, ids.numel()), dtype=torch.bool)
            where[:, start:] = masked_cont
            where = where.to(self._device)
            noised = ids.expand(n, -1).clone()  # [n, S]
            noised[where] = self._mask_id
            logits = self._masked_logits(noised, where).float()  # [N, V]
            targets = ids.expand(n, -1)[where]  # [N]
            ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")  # [N]
            row = where.nonzero()[:, 0]  # sample index of each masked token
            per_sample = torch.zeros(n, device=ce.device, dtype=ce.dtype).index_add_(0, row, ce)  # [n]
            weights = length / chunk.to(ce.device, ce.dtype)  # 1 / p with p = k / L
            total += float((per_sample * weights).sum())
        return total / self.mc_num

    @torch.inference_mode()
    def _is_greedy(self, context_ids: list[int], continuation_ids: list[int]) -> bool:
        length = len(continuation_ids)
        prompt = torch.tensor([context_ids], device=self._device)
        out = generate(
            self.model, prompt, gen_length=length, block_length=length, steps=length, mask_id=self._mask_id
        )
        return out.sequences[0, len(context_ids) :].tolist() == list(continuation_ids)

    def _truncate(self, context_ids: list[int], continuation_ids: list[int]) -> list[int]:
        overflow = len(context_ids) + len(continuation_ids) - self.max_length
        if overflow <= 0:
            return context_ids
        if overflow >= len(context_ids):
            raise BlocksftError(
                f"a continuation of {len(continuation_ids)} tokens exceeds max_length={self.max_length}"
            )
        bos = self.tokenizer.bos_token_id
        kept = context_ids[overflow:]
        return [bos, *kept[1:]] if bos is not None and context_ids[:1] == [bos] else kept

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for index, request in enumerate(
            tqdm(requests, disable=disable_tqdm or self._rank != 0, desc="loglikelihood")
        ):
            context, continuation = request.args
            context_ids, continuation_ids = self._encode_pair(context, continuation)
            context_ids = self._truncate(context_ids, continuation_ids)
            generator = torch.Generator().manual_seed(batch_seed(self.seed, index))
            nll = self.continuation_nll(context_ids, continuation_ids, generator)
            greedy = (
                self.greedy_check
                and bool(continuation_ids)
                and self._is_greedy(context_ids, continuation_ids)
            )
            result = (-nll, greedy)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "blocksft: loglikelihood_rolling (perplexity tasks) is not implemented for masked diffusion "
            "models; use generation tasks or loglikelihood (multiple-choice) tasks"
        )

    # --- generation ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        stops = self._ids.stops
        out: list[str] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self._rank != 0, desc="generate_until")
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            prompts = [self._encode(request.args[0]) for request in batch]
            input_ids, attention_mask = left_pad(prompts, self._ids.pad)
            generator = torch.Generator(device=self._device).manual_seed(batch_seed(self.seed, start))
            result = generate(
                self.model,
                input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                mask_id=self._mask_id,
                eos_token_ids=stops,
                generator=generator,
                **self.sampler.generate_kwargs(),
            )
            texts = decode_answer(self.tokenizer, result.sequences, result.prompt_length, stops)
            for request, text in zip(batch, texts):
                text = cut_at_strings(text, request.args[1].get("until"))
                self.cache_hook.add_partial("generate_until", request.args, text)
                out.append(text)
            bar.update(len(batch))
        bar.close()
        return out


def cut_at_strings(text: str, until) -> str:
    """``text`` up to the first occurrence of any stop string (``until``: a string or a list)."""
    if not until:
        return text
    for stop in [until] if isinstance(until, str) else until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
