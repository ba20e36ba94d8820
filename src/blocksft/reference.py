"""Re-implementations of the reference code paths that benchmarks and tests compare against.

* The reference training scripts (``train_blockwise.py`` / ``train_fullseq.py``) as they run:
  :class:`ReferenceBlockwiseDataset` and :class:`ReferenceFullSeqDataset` (per-token Python masking
  in ``__getitem__``, padding to ``max_len``, tensors per item), :func:`reference_collate` and
  :func:`reference_loss` (full logits, the float32 cross-entropy at the masked positions).
* The reference preprocessing ``pt.py``: :func:`reference_prepare`, one row at a time.
* LLaDA's published code: :func:`generate_py` (its ``generate.py``) and :func:`published_forward`
  (its modeling code's numerics).

Written from their descriptions, plainly and slowly on purpose: they are the baselines of
``blocksft bench`` and the specification the equivalence tests hold our fast paths to.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from blocksft.data.prompts import fill_prompt
from blocksft.families import logits_shift
from blocksft.model import LLaDAModelLM
from blocksft.model.modeling_shared import align_logits
from blocksft.special_tokens import EOS, LLADA_8B_MASK_ID, LLADA_8B_TOKEN_IDS
from blocksft.tokenizer import ASSISTANT_HEADER

MASK_ID = LLADA_8B_MASK_ID
PAD_ID = LLADA_8B_TOKEN_IDS[EOS]  # the reference pads with EOS


# ----- The reference training scripts ----------------------------------------------------------------


class ReferenceBlockwiseDataset(torch.utils.data.Dataset):
    """The reference's blockwise training item, per-token Python and all (the baseline).

    Each sample keeps a set of unused block indices; ``__getitem__`` draws one uniformly from it and
    removes it (mutating the dataset); an exhausted sample comes back clean, without loss, block -1.
    Masking: prefix tokens at ``prefix_mask_rate``, active-block tokens at ``p ~ U(eps, 1)`` (those
    carry loss), suffix tokens with ``suffix_mask_prob`` (no draws at exactly 0 or 1), each token by
    its own ``random.random()``; then right padding to ``max_len`` and tensors per item.
    """

    def __init__(
        self,
        examples: list[dict],
        *,
        block_size: int = 32,
        max_len: int = 256,
        mask_id: int = MASK_ID,
        pad_id: int = PAD_ID,
        eps: float = 1e-3,
        prefix_mask_rate: float = 0.0,
        suffix_mask_prob: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
    ):
        self.examples = examples[rank::world_size]
        self.block_size, self.max_len = block_size, max_len
        self.mask_id, self.pad_id = mask_id, pad_id
        self.eps, self.prefix_mask_rate, self.suffix_mask_prob = eps, prefix_mask_rate, suffix_mask_prob
        self.rng = random.Random(seed)
        self.unused = []
        for example in self.examples:
            answer_len = max(min(len(example["full_ids"]), max_len) - int(example["prompt_len"]), 0)
            self.unused.append(set(range(math.ceil(answer_len / block_size))))
        self.remaining = sum(len(blocks) for blocks in self.unused)

    def __len__(self) -> int:
        return len(self.examples)

    def _mask(self, ids: list[int], prompt_len: int, block: int) -> tuple[list[int], list[bool]]:
        rng, end = self.rng, len(ids)
        noisy, flags = list(ids), [False] * end
        block_start = prompt_len + block * self.block_size
        block_end = min(block_start + self.block_size, end)
        if self.prefix_mask_rate > 0.0:
            for pos in range(prompt_len, min(block_start, end)):
                if rng.random() < self.prefix_mask_rate:
                    noisy[pos] = self.mask_id
        p = rng.uniform(self.eps, 1.0)
        for pos in range(block_start, block_end):
            if rng.random() < p:
                noisy[pos] = self.mask_id
                flags[pos] = True
        if self.suffix_mask_prob >= 1.0:
            for pos in range(block_end, end):
                noisy[pos] = self.mask_id
        elif self.suffix_mask_prob > 0.0:
            for pos in range(block_end, end):
                if rng.random() < self.suffix_mask_prob:
                    noisy[pos] = self.mask_id
        return noisy, flags

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        ids = example["full_ids"].tolist()[: self.max_len]
        prompt_len = min(int(example["prompt_len"]), len(ids))
        unused = self.unused[index]
        if unused:
            block = self.rng.choice(tuple(unused))
            unused.remove(block)
            self.remaining -= 1
            noisy, flags = self._mask(ids, prompt_len, block)
        else:
            block, noisy, flags = -1, list(ids), [False] * len(ids)
        return _padded_item(
            ids, noisy, flags, self.max_len, self.pad_id, blk_index=block, prompt_len=prompt_len
        )


class ReferenceFullSeqDataset(torch.utils.data.Dataset):
    """The reference's full-sequence training item: every answer token masked at ``p ~ U(eps, 1)``."""

    def __init__(
        self,
        examples: list[dict],
        *,
        max_len: int = 256,
        mask_id: int = MASK_ID,
        pad_id: int = PAD_ID,
        eps: float = 1e-3,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
    ):
        self.examples = examples[rank::world_size]
        self.max_len, self.mask_id, self.pad_id, self.eps = max_len, mask_id, pad_id, eps
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        ids = example["full_ids"].tolist()[: self.max_len]
        prompt_len = min(int(example["prompt_len"]), len(ids))
        p = self.rng.uniform(self.eps, 1.0)
        noisy, flags = list(ids), [False] * len(ids)
        for pos in range(prompt_len, len(ids)):
            if self.rng.random() < p:
                noisy[pos] = self.mask_id
                flags[pos] = True
        return _padded_item(ids, noisy, flags, self.max_len, self.pad_id)


def _padded_item(ids, noisy, flags, max_len, pad_id, **extra) -> dict[str, torch.Tensor]:
    """Right-pad the per-item lists to ``max_len`` and make one tensor per field (as the reference)."""
    pad = max_len - len(ids)
    item = {
        "input_ids": torch.tensor(ids + [pad_id] * pad, dtype=torch.long),
        "noisy_ids": torch.tensor(noisy + [pad_id] * pad, dtype=torch.long),
        "mask_flags": torch.tensor(flags + [False] * pad, dtype=torch.bool),
    }
    item.update({key: torch.tensor(value, dtype=torch.long) for key, value in extra.items()})
    return item


def reference_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack every field of the per-item dicts (the reference's collate function)."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def reference_loss(
    model, noisy_ids: torch.Tensor, input_ids: torch.Tensor, mask_flags: torch.Tensor, attention_mask=None
) -> torch.Tensor:
    """The reference's loss: full ``[B, L, V]`` logits, then the float32 CE at the masked positions,
    each sample's mean over its masked positions, and the mean over samples (a sample without any
    counts 0). Of the two usual ways to write it, this is the cheaper one (CE at the masked
    positions only, not at all ``B x L``), so that the comparison does not flatter our path.

    The reference trains LLaDA (unshifted logits); a model with shifted logits (Dream) has its
    logits re-aligned first, as every trainer of such a model does, so that the loss is the same."""
    logits = model(input_ids=noisy_ids, attention_mask=attention_mask).logits
    logits = align_logits(logits, logits_shift(model))  # [B, L, V], position i predicts token i
    ce = F.cross_entropy(logits[mask_flags].float(), input_ids[mask_flags], reduction="none")  # [N]
    per_position = torch.zeros(mask_flags.shape, dtype=ce.dtype, device=ce.device).masked_scatter(
        mask_flags, ce
    )
    return (per_position.sum(1) / mask_flags.sum(1).clamp(min=1)).mean()


# ----- The reference preprocessing (pt.py) --------------------------------------------------------


def reference_prepare(dataset, tokenizer, template: str, query_field: str, response_field: str, max_len: int):
    """The reference ``pt.py`` loop: one row at a time, one call per render and per encoding (its
    transformers-5 ``len()`` of a dict fixed, so that its records can be compared)."""
    records = []
    for row in dataset:
        user = [{"role": "user", "content": fill_prompt(template, row[query_field])}]
        conversation = user + [{"role": "assistant", "content": row[response_field]}]
        full_text = tokenizer.apply_chat_template(conversation, tokenize=False)[: -len(ASSISTANT_HEADER)]
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        prompt_len = len(tokenizer.apply_chat_template(user, tokenize=True, return_dict=False))
        if len(full_ids) > max_len:
            continue
        records.append({"prompt_len": prompt_len, "full_ids": torch.tensor(full_ids, dtype=torch.long)})
    return records


# ----- LLaDA's published code -----------------------------------------------------------------------


@torch.no_grad()
def generate_py(model, prompt, *, mask_id: int, gen_length, block_length, steps, cfg_scale=0.0) -> list[int]:
    """LLaDA's ``generate.py`` ``generate`` restated as published (the canvas, the softmax in the
    logits' dtype, ``torch.topk``), at temperature 0 with low-confidence remasking, for one unpadded
    prompt; returns the canvas (prompt and generation) as a list."""
    width = len(prompt)
    x = torch.full((1, width + gen_length), mask_id, dtype=torch.long)
    x[0, :width] = torch.tensor(prompt)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for block in range(num_blocks):
        end = width + (block + 1) * block_length
        masks_left = int((x[:, end - block_length : end] == mask_id).sum())
        counts = [masks_left // per_block + (i < masks_left % per_block) for i in range(per_block)]
        for i in range(per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                unconditional = x.masked_fill(prompt_index, mask_id)
                conditional, uncond = model(torch.cat([x, unconditional])).logits.chunk(2)
                logits = uncond + (cfg_scale + 1) * (conditional - uncond)
            else:
                logits = model(x).logits  # [1, L, V] in the model's dtype
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, dim=-1)  # in the logits' dtype
            x0_p = p.gather(-1, x0[..., None]).squeeze(-1)
            x0_p[:, end:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            transfer = torch.zeros_like(x, dtype=torch.bool)
            transfer[0, torch.topk(confidence[0], k=counts[i]).indices] = True
            x[transfer] = x0[transfer]
    return x[0].tolist()


def published_forward(model: LLaDAModelLM, ids: torch.Tensor) -> torch.Tensor:
    """The published LLaDA modeling code's forward restated one op at a time (float32 RMSNorm cast
    back before the weight, float32 half-split RoPE over the whole input, bidirectional attention,
    SwiGLU): ``[B, T, V]`` logits of our model's weights for ``ids`` ``[B, T]``."""
    cfg, tr = model.config, model.model.transformer
    hs, T = cfg.head_dim, ids.shape[1]

    def rms(x, w):
        x32 = x.float()
        return w * (x32 / torch.sqrt((x32 * x32).mean(-1, keepdim=True) + cfg.rms_norm_eps)).to(x.dtype)

    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, hs, 2).float() / hs)
    ang = torch.outer(torch.arange(T).float(), inv_freq)
    ang = torch.cat([ang, ang], -1)

    def rope(x):  # [B, nh, T, hs]
        x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
        return x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()

    x = tr.wte.weight[ids]
    for blk in tr.blocks:
        h = rms(x, blk.attn_norm.weight)
        q, k, v = (
            p(h).view(*ids.shape, cfg.n_heads, hs).transpose(1, 2)
            for p in (blk.q_proj, blk.k_proj, blk.v_proj)
        )
        q, k = rope(q), rope(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / hs**0.5, dim=-1) @ v  # no causal mask
        x = x + blk.attn_out(att.transpose(1, 2).reshape(*ids.shape, -1))
        h = rms(x, blk.ff_norm.weight)
        x = x + blk.ff_out(F.silu(blk.ff_proj(h)) * blk.up_proj(h))
    return tr.ff_out(rms(x, tr.ln_f.weight))
