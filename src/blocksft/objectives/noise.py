"""Noising a right-padded batch for the blockwise and full-sequence objectives (one vectorised pass)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from blocksft.config.objective import check_noise_options
from blocksft.errors import BlocksftError
from blocksft.rng import check_generator

Lengths = torch.Tensor | Sequence[int] | int


class NoisedBatch(NamedTuple):
    """What a noising function returns.

    Attributes:
        noised_ids: ``[B, L]`` long, the model's input (``mask_id`` where masked).
        loss_mask: ``[B, L]`` bool, the positions that carry loss (always masked positions).
        p: ``[B]`` float32, the per-sample mask rate drawn from ``U(eps, 1)`` (drawn for every row,
            also for rows without a block, where it is unused).
    """

    noised_ids: torch.Tensor
    loss_mask: torch.Tensor
    p: torch.Tensor


def num_blocks(answer_lens, block_size: int):
    """Number of blocks of each answer: ``ceil(answer_len / block_size)`` (0 for an empty answer).

    Works on an int, a numpy array or a tensor (same type back); a list gives a list.
    """
    if block_size < 1:
        raise BlocksftError(f"--block-size must be at least 1, got {block_size}")
    if isinstance(answer_lens, list | tuple):
        return [(int(a) + block_size - 1) // block_size for a in answer_lens]
    return (answer_lens + block_size - 1) // block_size


def as_lengths(values: Lengths, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """``values`` as a ``[B]`` long tensor on ``device`` (an int is broadcast)."""
    out = torch.as_tensor(values, dtype=torch.long, device=device)
    if out.dim() == 0:
        out = out.expand(batch)
    if out.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}], got {tuple(out.shape)}")
    return out


def _validate(
    prompt_lens: torch.Tensor,
    answer_lens: torch.Tensor,
    seq_len: int,
    block_index: torch.Tensor | None = None,
    block_start: torch.Tensor | None = None,
    answer_end: torch.Tensor | None = None,
    block_size: int = 1,
) -> None:
    """Raise one clear error for impossible spans or blocks (a single device sync for the batch)."""
    lowest = torch.minimum(prompt_lens, answer_lens)  # [B]
    if block_index is not None:
        lowest = torch.minimum(lowest, block_index + 1)  # block -1 is the lowest allowed
    bad = (lowest < 0) | (prompt_lens + answer_lens > seq_len)  # [B]
    if block_index is not None:  # a block must start inside the answer
        bad |= (block_index >= 0) & (block_start >= answer_end)
    if not bad.any():
        return
    row = int(bad.nonzero()[0])
    prompt_len, answer_len = int(prompt_lens[row]), int(answer_lens[row])
    if min(prompt_len, answer_len) < 0 or prompt_len + answer_len > seq_len:
        raise ValueError(
            f"row {row}: prompt_len {prompt_len} + answer_len {answer_len} does not fit a row of "
            f"length {seq_len} (both must be >= 0)"
        )
    span = int(answer_end[row]) - prompt_len
    raise ValueError(
        f"row {row}: block_index {int(block_index[row])} is outside [-1, {num_blocks(span, block_size) - 1}] "
        f"for an answer of {span} tokens and block_size {block_size}"
    )


def _mask_regions(
    input_ids: torch.Tensor,
    bounds: torch.Tensor,
    rates: torch.Tensor,
    loss_region: int,
    mask_id: int,
    generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each position i.i.d. at the rate of the region it lies in; loss in one region only.

    Args:
        input_ids: ``[B, L]``.
        bounds: ``[B, K]`` non-decreasing region starts in ``[0, L]``; position t lies in region
            ``k = #{bounds <= t}`` (region 0 is before the first bound).
        rates: ``[B, K + 1]`` float masking probability of each region (0: never, 1: always).
        loss_region: the region whose masked positions carry loss.

    Returns:
        ``(noised_ids [B, L], loss_mask [B, L])``.
    """
    batch, seq_len = input_ids.shape
    starts = torch.zeros(batch, seq_len + 1, dtype=torch.long, device=input_ids.device)  # [B, L+1]
    starts.scatter_add_(1, bounds, torch.ones_like(bounds))
    region = starts[:, :seq_len].cumsum(1)  # [B, L]
    r = torch.rand(batch, seq_len, generator=generator, device=input_ids.device)  # [B, L]
    masked = r < rates.gather(1, region)  # [B, L]: r < 1 always, r < 0 never
    loss_mask = masked & (region == loss_region)  # [B, L]
    return torch.where(masked, mask_id, input_ids), loss_mask


def _draw_rates(batch: int, eps: float, generator, device) -> torch.Tensor:
    """Per-sample mask rates ``p ~ U(eps, 1)``, ``[B]`` float32."""
    return torch.empty(batch, device=device).uniform_(eps, 1.0, generator=generator)


def noise_blockwise(
    input_ids: torch.Tensor,
    prompt_lens: Lengths,
    answer_lens: Lengths,
    block_index: Lengths,
    *,
    block_size: int,
    mask_id: int,
    eps: float = 1e-3,
    prefix_mask_rate: float = 0.0,
    suffix_mask_prob: float = 1.0,
    supervise_padding: bool = False,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> NoisedBatch:
    """Blockwise SFT noising: one active block per row, clean (or noisy) prefix, hidden suffix.

    Args:
        input_ids: ``[B, L]`` clean ids, right-padded (prompt, answer, padding).
        prompt_lens: ``[B]`` prompt lengths (tensor, sequence or one int for all rows).
        answer_lens: ``[B]`` true answer lengths (without padding).
        block_index: ``[B]`` active block of each row, in ``[0, num_blocks)``; ``-1`` means the row
            has no block left (its blocks are all used): the row is returned entirely clean
            (no prefix noise, no suffix masking) with no loss token, as the reference does.
        block_size: tokens per block; blocks start at the answer start, the last may be partial.
        mask_id: the mask token id.
        eps: lower bound of the per-row mask rate ``p ~ U(eps, 1)`` (1.0 masks the whole block).
        prefix_mask_rate: rate at which answer tokens before the block are masked (never in the loss).
        suffix_mask_prob: probability that each answer token after the block is masked (never in the
            loss); 1.0 hides the whole suffix (the paper), 0.0 leaves it visible.
        supervise_padding: the answer runs to the end of the row, so padding after it is part of the
            answer: a block may reach into it, and the suffix runs to the row's end.
        generator: the only source of randomness, on ``input_ids.device``; None uses torch's global one.
        check: validate spans and block indices (one device sync); without it, invalid input is
            undefined behaviour (turn it off only for inputs already checked, e.g. from the schedule).

    Returns:
        :class:`NoisedBatch` ``(noised_ids [B, L], loss_mask [B, L], p [B])``.
    """
    check_noise_options(eps=eps, prefix_mask_rate=prefix_mask_rate, suffix_mask_prob=suffix_mask_prob)
    batch, seq_len = input_ids.shape
    device = input_ids.device
    check_generator(generator, device)
    prompt_lens = as_lengths(prompt_lens, batch, device, "prompt_lens")
    answer_lens = as_lengths(answer_lens, batch, device, "answer_lens")
    block_index = as_lengths(block_index, batch, device, "block_index")
    # === 1. Each row's regions: prompt | prefix | active block | suffix | padding ===
    answer_end = torch.full_like(prompt_lens, seq_len) if supervise_padding else prompt_lens + answer_lens
    block_start = prompt_lens + block_index.clamp(min=0) * block_size  # [B]
    if check:
        _validate(prompt_lens, answer_lens, seq_len, block_index, block_start, answer_end, block_size)
    bounds = torch.stack([prompt_lens, block_start, block_start + block_size, answer_end], 1)  # [B, 4]
    bounds = bounds.clamp_(max=answer_end[:, None])  # the block and suffix end with the answer

    # === 2. Their masking rates; a row without a block (-1) stays clean ===
    p = _draw_rates(batch, eps, generator, device)  # [B]
    rates = torch.zeros(batch, 5, device=device)  # [B, 5]: prompt and padding (0, 4) never masked
    rates[:, 1], rates[:, 2], rates[:, 3] = prefix_mask_rate, p, suffix_mask_prob
    rates *= (block_index >= 0)[:, None]

    # === 3. One uniform per position, compared with its region's rate; loss in the block only ===
    noised_ids, loss_mask = _mask_regions(input_ids, bounds, rates, 2, mask_id, generator)
    return NoisedBatch(noised_ids, loss_mask, p)


def noise_fullseq(
    input_ids: torch.Tensor,
    prompt_lens: Lengths,
    answer_lens: Lengths,
    *,
    mask_id: int,
    eps: float = 1e-3,
    supervise_padding: bool = False,
    active: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> NoisedBatch:
    """Classical masked SFT noising: the whole answer masked i.i.d. at ``p ~ U(eps, 1)``.

    Args:
        input_ids: ``[B, L]`` clean ids, right-padded.
        prompt_lens: ``[B]`` prompt lengths.
        answer_lens: ``[B]`` true answer lengths.
        mask_id: the mask token id.
        eps: lower bound of the per-row mask rate.
        supervise_padding: the answer runs to the end of the row (padding noised and trained).
        active: optional ``[B]`` bool; rows set False are left clean with no loss.
        generator: the only source of randomness, on ``input_ids.device``.
        check: validate spans (one device sync).

    Returns:
        :class:`NoisedBatch`; every masked position carries loss.
    """
    check_noise_options(eps=eps)
    batch, seq_len = input_ids.shape
    device = input_ids.device
    check_generator(generator, device)
    prompt_lens = as_lengths(prompt_lens, batch, device, "prompt_lens")
    answer_lens = as_lengths(answer_lens, batch, device, "answer_lens")
    if check:
        _validate(prompt_lens, answer_lens, seq_len)
    answer_end = torch.full_like(prompt_lens, seq_len) if supervise_padding else prompt_lens + answer_lens

    p = _draw_rates(batch, eps, generator, device)  # [B]
    rates = torch.zeros(batch, 3, device=device)  # [B, 3]: prompt 0 | answer p | padding 0
    rates[:, 1] = p
    if active is not None:
        rates = rates * active.to(device=device, dtype=torch.bool)[:, None]
    bounds = torch.stack([prompt_lens, answer_end], 1)  # [B, 2]
    noised_ids, loss_mask = _mask_regions(input_ids, bounds, rates, 1, mask_id, generator)
    return NoisedBatch(noised_ids, loss_mask, p)


def supervised_span_lens(
    prompt_lens: Lengths,
    answer_lens: Lengths,
    *,
    seq_len: int,
    block_index: Lengths | None = None,
    block_size: int | None = None,
    supervise_padding: bool = False,
) -> torch.Tensor:
    """``[B]`` number of positions each row's loss tokens are drawn from (the "maskable" span).

    The whole answer for the full-sequence objective (LLaDA's "answer length", padding included when
    supervised); the active block for the blockwise one (0 for block -1). It is the denominator of
    the ``answer_len`` and ``batch_tokens`` normalisations.
    """
    prompt_lens = torch.as_tensor(prompt_lens, dtype=torch.long)
    answer_lens = as_lengths(answer_lens, prompt_lens.numel(), prompt_lens.device, "answer_lens")
    span = seq_len - prompt_lens if supervise_padding else answer_lens  # [B]
    if block_index is None:
        return span
    block_index = as_lengths(block_index, span.numel(), span.device, "block_index")
    remaining = span - block_index.clamp(min=0) * block_size  # [B]
    return torch.where(block_index >= 0, remaining.clamp(min=0, max=block_size), 0)
