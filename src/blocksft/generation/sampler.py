"""The semi-autoregressive block sampler of LLaDA's paper (arXiv 2502.09992), with Fast-dLLM's options
(arXiv 2505.22618), for every model family: a family with shifted logits (Dream) has the prediction
of position i read from the output at i - 1, as its own sampler reads it.

The algorithm, at the defaults as in LLaDA's published ``generate`` (with ``confidence="llada"``
exactly as it, in any dtype; the default ranks in float64, see :func:`generate`):

1. canvas = prompt + ``gen_length`` mask tokens; blocks of ``block_length`` are decoded left to right,
   each with ``steps / num_blocks`` steps;
2. at each step the model predicts every position of the current block; the predicted token is the
   argmax (or float64 Gumbel-max sample) of the logits, its confidence the softmax probability of
   that token (``low_confidence``) or a uniform random number (``random``);
3. the ``n`` most confident still-masked positions of the block are committed, with ``n`` from
   :func:`~blocksft.generation.transfer.transfer_schedule`; a committed token is never masked again and
   nothing outside the current block is committed;
4. classifier-free guidance: ``un + (cfg_scale + 1) * (cond - un)``, ``un`` = the canvas with the
   prompt replaced by masks.

Options, all off by default: ``threshold`` (also commit every prediction above it; blocks may finish
early), ``cache`` (``prefix``: one full forward per block, later steps recompute only the block and
what follows, with the prefix's keys/values from the cache; ``dual``: they recompute only the block),
EOS handling (``min_new_tokens``, ``defer_eos``, ``stop_at_eos``).

What stays exact (token for token): ``threshold=1.0`` equals no threshold; a cache equals no cache
when every step of a block is a full forward (``steps == num_blocks`` or ``cache_refresh=1``);
``stop_at_eos`` leaves every token up to the end of the block that produced EOS/EoT unchanged (later
blocks never influence earlier ones; at temperature 0 with ``low_confidence``, since dropping finished
rows changes which random numbers the other rows draw). Otherwise a cache is an approximation: the
cached keys/values were computed when the current block was still all masks.

NFE counts model evaluations: one per forward, two per step with classifier-free guidance (the
conditional and unconditional halves of one batched call).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from blocksft.config.sampler import check_sampler_options
from blocksft.errors import BlocksftError
from blocksft.families import logits_shift, own_model
from blocksft.generation.output import GenerateOutput, GenerateStep
from blocksft.generation.static import DecoderCache, StaticDecoder
from blocksft.generation.transfer import (
    positions_from_mask,
    predict_block,
    select_transfer,
    select_transfer_topk,
    transfer_schedule,
)
from blocksft.model.modeling_shared import align_logits
from blocksft.rng import check_generator
from blocksft.special_tokens import LLADA_8B_MASK_ID, check_in_vocabulary


class _BlockLogits:
    """Logits predicting the current block's positions, from full or cached forwards; counts the cost.

    With a shifted family (Dream: the output at i predicts token i + 1) the predictions of the
    block ``[start, end)`` come from the positions ``[start - shift, end - shift)``, so a cached
    forward recomputes from ``start - shift`` on.
    """

    def __init__(self, model, *, cache, cache_refresh, cfg_scale, mask_id, full_logits=False):
        self.model, self.own = model, own_model(model)
        self.shift = logits_shift(model)
        self.full_logits = full_logits  # the head at every position, sliced afterwards (generate.py)
        if cache is not None and self.own is None:
            raise BlocksftError(
                f"cache={cache!r} needs blocksft's own model class (it passes a key/value cache and "
                f"positions); {type(model).__name__} was loaded from remote code: load it without "
                "--trust-remote-code or decode without a cache"
            )
        self.cache, self.cache_refresh = cache, cache_refresh
        self.cfg_scale, self.mask_id = cfg_scale, mask_id
        self.kv_cache = None
        self.nfe = self.forward_tokens = 0

    def _full_step(self, step: int) -> bool:
        if self.cache is None or step == 0:
            return True
        return self.cache_refresh is not None and step % self.cache_refresh == 0

    def __call__(self, x, key_mask, positions, prompt_cols, start: int, end: int, step: int) -> torch.Tensor:
        """``[b, K, V]`` logits at canvas columns ``[start, end)`` of the rows ``x`` ``[b, L]``."""
        guided = self.cfg_scale > 0
        if guided:  # one batched call: conditional rows, then the prompt-masked unconditional rows
            x = torch.cat([x, x.masked_fill(prompt_cols, self.mask_id)])
            key_mask = None if key_mask is None else key_mask.repeat(2, 1)
            positions = positions.repeat(2, 1)
        if self.own is None:
            logits = self._remote(x, key_mask, start, end)
        elif self._full_step(step):
            logits = self._full(x, key_mask, positions, start, end)
        else:
            logits = self._cached(x, key_mask, positions, start, end)
        self.nfe += 2 if guided else 1
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + (self.cfg_scale + 1) * (cond - uncond)
        return logits

    def _remote(self, x, key_mask, start, end):
        self.forward_tokens += x.numel()
        kwargs = {} if key_mask is None else {"attention_mask": key_mask}
        out = self.model(input_ids=x, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[:, start - self.shift : end - self.shift]

    def _full(self, x, key_mask, positions, start, end):
        self.forward_tokens += x.numel()
        at = torch.zeros_like(x, dtype=torch.bool)  # [b, L]
        at[:, start:end] = True
        out = self.own(
            x,
            attention_mask=key_mask,
            position_ids=positions,
            use_cache=self.cache is not None,
            logits_for=None if self.full_logits else at,
        )
        self.kv_cache = out.kv_cache
        if self.full_logits:
            return align_logits(out.logits, self.shift)[:, start:end]  # [b, K, V]
        return out.logits.view(x.shape[0], end - start, -1)  # [b, K, V]

    def _cached(self, x, key_mask, positions, start, end):
        stop = x.shape[1] if self.cache == "prefix" else end  # prefix: recompute block + suffix
        first = start - self.shift  # the block's predictions start there
        fresh = x[:, first:stop]  # [b, stop - first]
        self.forward_tokens += fresh.numel()
        at = torch.zeros_like(fresh, dtype=torch.bool)
        at[:, self.shift : self.shift + end - start] = True  # the block, as targets
        out = self.own(
            fresh,
            attention_mask=key_mask,
            position_ids=positions[:, first:stop],
            kv_cache=self.kv_cache,
            cache_span=(first, stop),
            logits_for=at,
        )
        return out.logits.view(x.shape[0], end - start, -1)  # [b, K, V]


def _check_prompt(prompt_ids, attention_mask, mask_id: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(prompt_ids, attention_mask)``, both ``[B, P]`` long on the model's device."""
    if not torch.is_tensor(prompt_ids):
        raise BlocksftError(
            "prompt_ids must be a LongTensor [B, P]; stack id lists with left_pad(ids, pad_id)"
        )
    if prompt_ids.dim() == 1:
        prompt_ids = prompt_ids[None]
        attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(1, -1)
    if prompt_ids.dim() != 2 or prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise BlocksftError(
            f"prompt_ids must be integer ids [B, P], got {prompt_ids.dtype} {list(prompt_ids.shape)}"
        )
    device = next(model.parameters()).device
    prompt_ids = prompt_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    attention_mask = torch.as_tensor(attention_mask).to(device=device, dtype=torch.long)
    if attention_mask.shape != prompt_ids.shape:
        raise BlocksftError(
            f"attention_mask {list(attention_mask.shape)} does not match prompt_ids {list(prompt_ids.shape)}"
        )
    if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
        raise BlocksftError(
            "attention_mask must be left padding (zeros, then ones): use left_pad(ids, pad_id)"
        )
    config = getattr(model, "config", None)
    check_in_vocabulary(mask_id, config, f"mask_id {mask_id}")
    if (prompt_ids == mask_id).any():
        row, col = (prompt_ids == mask_id).nonzero()[0].tolist()
        raise BlocksftError(
            f"the prompt contains the mask id {mask_id} (row {row}, position {col}): prompts cannot hold "
            "masks, and padding must use another id (LLaDA pads with EOS)"
        )
    vocab = getattr(config, "embedding_size", None) or getattr(config, "vocab_size", None)
    if (
        vocab is not None
        and prompt_ids.numel()
        and not 0 <= int(prompt_ids.min()) <= int(prompt_ids.max()) < vocab
    ):
        raise BlocksftError(f"prompt ids must lie in the model's vocabulary [0, {vocab})")
    return prompt_ids, attention_mask


def _check_prompt_not_empty(prompt_mask: torch.Tensor, shift: int) -> None:
    """Refuse an empty prompt for a shifted family: its first generated token would be predicted
    from position -1 (or, in a left-padded batch, from a padding position)."""
    if shift and (prompt_mask.shape[1] == 0 or not bool(prompt_mask[:, -1].all())):
        rows = [0] if prompt_mask.shape[1] == 0 else (prompt_mask[:, -1] == 0).nonzero()[:, 0].tolist()
        raise BlocksftError(
            f"an empty prompt (row {rows[0]}): this model predicts token i from the output at i - {shift}, "
            "so it needs at least one prompt token before the first generated one"
        )


def _check_length(model, prompt_len: int, gen_length: int) -> None:
    """Refuse a canvas longer than the context the model was trained for (its positions beyond are
    ones it has never seen: the output would be noise, silently)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_sequence_length", None) or getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and prompt_len + gen_length > limit:
        raise BlocksftError(
            f"gen_length {gen_length} after a prompt of {prompt_len} tokens is {prompt_len + gen_length} "
            f"tokens, longer than the model's max_sequence_length {limit}; lower --gen-length (or the prompt)"
        )


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    confidence: str = "float64",
    cfg_scale: float = 0.0,
    mask_id: int = LLADA_8B_MASK_ID,
    attention_mask: torch.Tensor | None = None,
    threshold: float | None = None,
    cache: str | None = None,
    cache_refresh: int | None = None,
    eos_token_ids: Sequence[int] = (),
    min_new_tokens: int = 0,
    stop_at_eos: bool = False,
    defer_eos: bool = False,
    decode: str = "loop",
    decoders: DecoderCache | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[GenerateStep], None] | None = None,
) -> GenerateOutput:
    """Decode ``gen_length`` tokens after each prompt with the semi-autoregressive block sampler.

    Args:
        model: our model of any family (:class:`~blocksft.model.LLaDAModelLM`,
            :class:`~blocksft.model.modeling_dream.DreamModel`, or a PEFT wrapper), or any model
            whose forward takes ``input_ids``/``attention_mask`` and returns ``.logits`` (remote
            code: no caches; LLaDA's published code ignores the attention mask, so left-padded
            rows attend to their padding).
        prompt_ids: ``[B, P]`` (or ``[P]``) ids, left padded
            (:func:`~blocksft.generation.transfer.left_pad`).
        gen_length: tokens to generate; a multiple of ``block_length``.
        block_length: tokens per block.
        steps: steps in all; a multiple of the number of blocks.
        temperature: 0 for argmax; otherwise Gumbel-max sampling in float64.
        remasking: ``"low_confidence"`` or ``"random"``.
        confidence: ``"float64"``: ``low_confidence`` ranks by the float64 softmax probability,
            ties to the leftmost position (Fast-dLLM's choice; ``generate.py`` in fp32 but at
            exact ties).
            ``"llada"``: exactly LLaDA's ``generate.py`` in any dtype: the softmax in the logits'
            dtype (bf16 on GPUs, where many probabilities tie) and the commits chosen by
            ``torch.topk`` over the canvas row, as it does (full logits are computed then).
        cfg_scale: classifier-free guidance scale (0: off).
        mask_id: the mask token id (LLaDA-8B: 126336).
        attention_mask: ``[B, P]`` 1 on real prompt tokens, 0 on left padding; positions are
            derived from it so that each row decodes as its prompt alone would.
        threshold: also commit every masked in-block prediction whose probability is strictly
            above it, and at least one per step; the schedule's count stays the minimum, so
            ``steps == gen_length`` gives Fast-dLLM's rule (one token per step at least).
        cache: None, ``"prefix"`` or ``"dual"`` (see the module docstring).
        cache_refresh: with a cache, also run a full forward every this many steps of a block.
        eos_token_ids: ids that end an answer (LLaDA: EOS 126081 and EoT 126348); the first one
            fills the rest of a row stopped by ``stop_at_eos``.
        min_new_tokens: EOS/EoT logits are set to -inf at the first this many generated positions
            before sampling and before the confidence is computed (so neither is ever predicted
            there; LLaDA's ``confidence_eos_eot_inf`` edits the logits after sampling, issue #137).
        stop_at_eos: stop a row after the block in which it committed an EOS/EoT (everything
            before that position is filled by then); the rest of the row is filled with
            ``eos_token_ids[0]``. Saves forwards; changes no token up to that block's end.
        defer_eos: rank EOS/EoT predictions below every other prediction of the block (they are
            committed last), the intent of LLaDA's ``confidence_eos_eot_inf``.
        decode: ``"loop"`` (this loop: the rows of a batch share each block, so a row that
            finishes a block early waits for the others); ``"static"``: fixed-shape steps without
            host syncs, each row moving to its next block as soon as it finishes one
            (:mod:`blocksft.generation.static`; same tokens as the loop, at temperature 0 with
            ``low_confidence``, float64 confidence and no guidance); ``"graph"``: those steps
            captured in CUDA graphs on CUDA (no kernel-launch overhead; eager elsewhere);
            ``"compiled"``: compiled whole with ``torch.compile`` first (slow first call).
        decoders: a :class:`~blocksft.generation.static.DecoderCache` to reuse fixed-shape decoders
            (and their captured graphs) between calls with the same shapes and settings.
        generator: random source for Gumbel noise and random confidences, on the model's device.
            Per step, the draws are ``[b, block_length, V]`` float64 noise (temperature > 0),
            then ``[b, block_length]`` float64 confidences (``random``), b = rows being decoded.
        callback: called with a :class:`GenerateStep` after every step.

    Returns:
        :class:`GenerateOutput`.
    """
    eos_token_ids = tuple(int(i) for i in eos_token_ids)
    options = dict(  # the fixed-shape decoders' settings
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        threshold=threshold,
        cache=cache,
        cache_refresh=cache_refresh,
        eos_token_ids=eos_token_ids,
        min_new_tokens=min_new_tokens,
        stop_at_eos=stop_at_eos,
        defer_eos=defer_eos,
    )
    num_blocks, steps_per_block = check_sampler_options(
        **options,
        temperature=temperature,
        remasking=remasking,
        confidence=confidence,
        cfg_scale=cfg_scale,
        decode=decode,
    )
    if decode != "loop" and callback is not None:
        raise BlocksftError(f"a step callback (--stream) needs decode='loop', not {decode!r}")
    block_logits = _BlockLogits(
        model,
        cache=cache,
        cache_refresh=cache_refresh,
        cfg_scale=cfg_scale,
        mask_id=mask_id,
        full_logits=confidence == "llada",
    )
    prompt_ids, prompt_mask = _check_prompt(prompt_ids, attention_mask, mask_id, model)
    _check_prompt_not_empty(prompt_mask, block_logits.shift)
    check_generator(generator, prompt_ids.device, "the model")
    _check_length(model, prompt_ids.shape[1], gen_length)
    if decode != "loop":
        return _decode_fixed_shape(block_logits, prompt_ids, prompt_mask, decode, decoders, mask_id, options)
    loop = _LoopDecoder(
        block_logits,
        prompt_ids,
        prompt_mask,
        gen_length=gen_length,
        block_length=block_length,
        num_blocks=num_blocks,
        steps_per_block=steps_per_block,
        mask_id=mask_id,
        temperature=temperature,
        remasking=remasking,
        confidence=confidence,
        threshold=threshold,
        eos_token_ids=eos_token_ids,
        min_new_tokens=min_new_tokens,
        stop_at_eos=stop_at_eos,
        defer_eos=defer_eos,
        generator=generator,
        callback=callback,
    )
    return loop.run()


def _decode_fixed_shape(
    block_logits: _BlockLogits, prompt_ids, prompt_mask, decode: str, decoders, mask_id: int, options: dict
) -> GenerateOutput:
    """``decode`` other than ``loop``: a :class:`StaticDecoder`, reused from ``decoders`` when given."""
    if block_logits.own is None:
        raise BlocksftError(
            f"decode={decode!r} needs blocksft's own model class; {type(block_logits.model).__name__} was "
            "loaded from remote code: load it without --trust-remote-code or use decode='loop'"
        )

    def build():
        return StaticDecoder(block_logits.own, prompt_ids, prompt_mask, mask_id=mask_id, **options)

    if decoders is None:
        return build().run(decode)
    key = (decode, mask_id, *sorted(options.items()))
    return decoders.decoder(key, block_logits.own, prompt_ids, prompt_mask, build).run(decode)


class _LoopDecoder:
    """The loop sampler: the rows of a batch share each block (see :func:`generate`)."""

    def __init__(
        self,
        block_logits: _BlockLogits,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        gen_length: int,
        block_length: int,
        num_blocks: int,
        steps_per_block: int,
        mask_id: int,
        temperature: float,
        remasking: str,
        confidence: str,
        threshold: float | None,
        eos_token_ids: tuple[int, ...],
        min_new_tokens: int,
        stop_at_eos: bool,
        defer_eos: bool,
        generator: torch.Generator | None,
        callback: Callable[[GenerateStep], None] | None,
    ):
        self.block_logits, self.mask_id, self.generator, self.callback = (
            block_logits,
            mask_id,
            generator,
            callback,
        )
        self.gen_length, self.block_length = gen_length, block_length
        self.num_blocks, self.steps_per_block = num_blocks, steps_per_block
        self.temperature, self.remasking, self.confidence = temperature, remasking, confidence
        self.threshold, self.min_new_tokens, self.defer_eos = threshold, min_new_tokens, defer_eos
        self.stop_at_eos, self.eos_token_ids = stop_at_eos, eos_token_ids
        batch, self.prompt_len = prompt_ids.shape
        device = prompt_ids.device

        # === 1. Canvas: prompt + gen_length masks; key mask and RoPE positions from the padding ===
        self.canvas = torch.cat(
            [prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1
        )  # [B, L]
        self.key_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, gen_length)], dim=1)  # [B, L]
        self.positions = positions_from_mask(self.key_mask)  # [B, L]
        self.prompt_cols = torch.cat(
            [prompt_mask.bool(), self.key_mask.new_zeros(batch, gen_length, dtype=torch.bool)], 1
        )  # [B, L]
        self.padded = not bool(self.key_mask.all())
        if self.padded and block_logits.own is None:
            warnings.warn(
                "left-padded prompts with a remote-code model: the published LLaDA code ignores the "
                "attention mask, so padded rows attend to their padding and may differ from decoding "
                "them alone (their shifted positions are harmless: RoPE depends on relative positions)",
                stacklevel=4,
            )
        self.eos = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
        self.commit_step = torch.full((batch, gen_length), -1, dtype=torch.long, device=device)  # [B, G]
        self.per_step = transfer_schedule(block_length, steps_per_block)

    def run(self) -> GenerateOutput:
        active = torch.arange(self.canvas.shape[0], device=self.canvas.device)
        step_index = 0
        for block in range(self.num_blocks):
            rows = active
            step_index = self._decode_block(block, rows, step_index)
            # === 3. Rows that produced EOS/EoT stop after this block ===
            if self.stop_at_eos:
                end = self.prompt_len + (block + 1) * self.block_length
                finished = torch.isin(self.canvas[rows, self.prompt_len : end], self.eos).any(-1)  # [b]
                self.canvas[rows[finished], end:] = self.eos_token_ids[0]
                active = rows[~finished]
                if len(active) == 0:
                    break
        generated = self.canvas[:, self.prompt_len :]
        is_stop = torch.isin(generated, self.eos)  # [B, G]
        num_tokens = torch.where(is_stop.any(-1), is_stop.int().argmax(-1), self.gen_length)
        return GenerateOutput(
            sequences=self.canvas,
            nfe=self.block_logits.nfe,
            prompt_length=self.prompt_len,
            num_tokens=num_tokens,
            commit_step=self.commit_step,
            forward_tokens=self.block_logits.forward_tokens,
        )

    def _decode_block(self, block: int, rows: torch.Tensor, step_index: int) -> int:
        """Decode block ``block`` of the ``rows`` still decoding; returns the next step's index."""
        canvas, prompt_len, mask_id = self.canvas, self.prompt_len, self.mask_id
        start, end = prompt_len + block * self.block_length, prompt_len + (block + 1) * self.block_length
        rows_key_mask = self.key_mask[rows] if self.padded else None
        suppress = min(max(self.min_new_tokens - block * self.block_length, 0), self.block_length)
        for step in range(self.steps_per_block):
            x = canvas[rows]  # [b, L]
            masked = x[:, start:end] == mask_id  # [b, K]
            if not masked.any():  # threshold decoding finished the block early
                break
            # === 2. Predict the block, commit the most confident masked positions ===
            logits = self.block_logits(
                x, rows_key_mask, self.positions[rows], self.prompt_cols[rows], start, end, step
            )
            tokens, scores = predict_block(
                logits,
                self.temperature,
                self.remasking,
                self.generator,
                eos=self.eos,
                suppress_eos=suppress,
                defer_eos=self.defer_eos,
                confidence=self.confidence,
            )  # [b, K] each
            counts = torch.full((len(rows),), self.per_step[step], dtype=torch.long, device=x.device)
            if self.confidence == "llada":
                transfer = select_transfer_topk(
                    scores, masked, counts, self.threshold, offset=start, width=x.shape[1]
                )  # [b, K]
            else:
                transfer = select_transfer(scores, masked, counts, self.threshold)  # [b, K]
            canvas[rows, start:end] = torch.where(transfer, tokens, x[:, start:end])
            gen_cols = slice(start - prompt_len, end - prompt_len)
            self.commit_step[rows, gen_cols] = torch.where(
                transfer, step_index, self.commit_step[rows, gen_cols]
            )
            if self.callback is not None:
                committed = torch.zeros_like(canvas, dtype=torch.bool)
                committed[rows, start:end] = transfer
                block_done = not bool((canvas[rows, start:end] == mask_id).any())
                nfe = self.block_logits.nfe
                self.callback(GenerateStep(block, step, step_index, canvas, committed, block_done, nfe))
            step_index += 1
        return step_index
