"""Pure tensor pieces of one decoding step: how many tokens to commit (the transfer schedule), which
ones, and the predictions; the canvas's padding and positions.

Conventions: the canvas is ``[B, L]`` with ``L = P + G`` (``P`` = the left-padded prompt width,
``G`` = ``gen_length``); block ``b`` covers canvas columns ``[P + b * K, P + (b + 1) * K)`` with
``K = block_length``. The functions here that take per-block tensors use block-local columns
``[0, K)``. Nothing here calls a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blocksft.errors import BlocksftError


def transfer_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps so that ``num_masked`` masks are all filled.

    LLaDA's linear noise schedule: the same count every step, the remainder going to the first
    steps (``[3, 3, 2, 2]`` for 10 masks over 4 steps). Counts are 0 when steps > masks.
    """
    base, remainder = divmod(num_masked, steps)
    return [base + 1 if i < remainder else base for i in range(steps)]


def select_transfer(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    counts: torch.Tensor,
    threshold: float | None = None,
) -> torch.Tensor:
    """Which masked positions to commit in each row: the most confident ones.

    Args:
        confidence: ``[B, K]`` confidence of each position's prediction (higher commits first).
        masked: ``[B, K]`` bool, positions still masked; only these can be committed.
        counts: ``[B]`` how many to commit per row (clipped to the masks left).
        threshold: if given, also commit every masked position whose confidence is strictly above
            it, and at least one position per row that still has a mask (Fast-dLLM).

    Returns:
        ``[B, K]`` bool. Ties in confidence go to the leftmost position.
    """
    counts = transfer_counts(confidence, masked, counts, threshold)
    rank = descending_rank(confidence.masked_fill(~masked, float("-inf")))  # [B, K]
    return (rank < counts[:, None]) & masked


def descending_rank(values: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` each value's 0-based place in its row sorted in descending order, ties to the
    leftmost: the number of values ahead of it (larger, or equal and to its left). Pairwise
    comparisons (``K x K`` per row) instead of a sort kernel: the same ranks as a stable descending
    argsort, and nothing that a CUDA graph capture or ``torch.compile(fullgraph=True)`` objects to."""
    width = values.shape[-1]
    left = torch.ones(width, width, dtype=torch.bool, device=values.device).tril(-1)  # [i, j]: j < i
    other, own = values[..., None, :], values[..., :, None]  # [B, 1, K] (j), [B, K, 1] (i)
    return ((other > own) | ((other == own) & left)).sum(-1)


def transfer_counts(
    confidence: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor, threshold: float | None
) -> torch.Tensor:
    """``[B]`` positions to commit per row: ``counts``, raised by the threshold rule (every masked
    position above it, at least one), never more than the masks left."""
    left = masked.sum(-1)  # [B]
    counts = counts.to(left.device)
    if threshold is not None:
        above = ((confidence > threshold) & masked).sum(-1)
        counts = torch.maximum(torch.maximum(counts, above), left.clamp(max=1))
    return torch.minimum(counts, left)


def select_transfer_topk(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    counts: torch.Tensor,
    threshold: float | None = None,
    *,
    offset: int,
    width: int,
) -> torch.Tensor:
    """:func:`select_transfer` as LLaDA's ``generate.py`` selects: per row, ``torch.topk`` over the
    whole canvas row, -inf everywhere but at the block's masked positions.

    The same set as :func:`select_transfer` except at ties, which ``torch.topk`` breaks its own way
    (a function of the whole row, its length included): building the row exactly as ``generate.py``
    does makes the choice exactly its choice, also in bf16, where ties are common.

    Args:
        confidence, masked, counts, threshold: as in :func:`select_transfer` (``[B, K]`` block-local).
        offset: canvas column of the block's first position; width: the canvas width ``L``.

    Returns:
        ``[B, K]`` bool.
    """
    counts = transfer_counts(confidence, masked, counts, threshold).tolist()
    row = confidence.new_full((confidence.shape[0], width), float("-inf"))  # [B, L]
    row[:, offset : offset + confidence.shape[1]] = confidence.masked_fill(~masked, float("-inf"))
    transfer = torch.zeros_like(row, dtype=torch.bool)  # [B, L]
    for j, count in enumerate(counts):
        transfer[j, torch.topk(row[j], k=count).indices] = True
    return transfer[:, offset : offset + confidence.shape[1]] & masked


def sample_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Predicted token per position: argmax, or Gumbel-max sampling at ``temperature > 0``.

    The sampling is LLaDA's float64 form ``argmax(exp(logits) / (-log u) ** temperature)`` with
    ``u ~ U[0, 1)`` drawn as one ``[..., V]`` float64 tensor from ``generator`` (low-precision
    Gumbel noise hurts generation quality, arXiv:2409.02908).

    Args:
        logits: ``[B, K, V]``.
        temperature: 0 for greedy.
        generator: source of the noise (the global RNG when None).

    Returns:
        ``[B, K]`` long.
    """
    if temperature == 0:
        return logits.argmax(-1)
    logits64 = logits.to(torch.float64)
    uniform = torch.rand(logits64.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return (logits64.exp() / (-torch.log(uniform)) ** temperature).argmax(-1)


def token_confidence(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    remasking: str,
    generator: torch.Generator | None = None,
    *,
    confidence: str = "float64",
) -> torch.Tensor:
    """Confidence that orders the commits: the softmax probability of each predicted token
    (``low_confidence``) or a uniform random number (``random``, drawn as ``[B, K]`` float64).

    Args:
        logits: ``[B, K, V]``; tokens: ``[B, K]`` the predictions.
        confidence: ``float64`` (the softmax in float64) or ``llada`` (in the logits' dtype, as
            LLaDA's ``generate.py``: bf16 logits give bf16 probabilities).

    Returns:
        ``[B, K]``, float64 (``llada`` with ``low_confidence``: the logits' dtype).
    """
    if remasking == "low_confidence":
        probs = torch.softmax(
            logits if confidence == "llada" else logits.to(torch.float64), dim=-1
        )  # [B, K, V]
        return probs.gather(-1, tokens[..., None]).squeeze(-1)
    if remasking == "random":
        return torch.rand(tokens.shape, dtype=torch.float64, device=tokens.device, generator=generator)
    raise BlocksftError(f"unknown remasking {remasking!r}")


def predict_block(
    logits: torch.Tensor,
    temperature: float,
    remasking: str,
    generator: torch.Generator | None = None,
    *,
    eos: torch.Tensor | None = None,
    suppress_eos: int = 0,
    defer_eos: bool = False,
    confidence: str = "float64",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted tokens and their confidences for one block, with the EOS options.

    Args:
        logits: ``[B, K, V]`` (modified in place when ``suppress_eos``).
        temperature, remasking, generator: as in :func:`sample_tokens` and :func:`token_confidence`.
        eos: ``[E]`` EOS/EoT ids.
        suppress_eos: set their logits to -inf at the first this many positions, before both the
            prediction and its probability (so neither sees them; LLaDA's ``confidence_eos_eot_inf``
            edits the logits after sampling and misses EOS, its issue #137).
        defer_eos: lower the confidence of EOS/EoT predictions by 2, below every probability,
            keeping their order: they are committed after the block's other predictions.
        confidence: the softmax's dtype, see :func:`token_confidence`.

    Returns:
        ``(tokens [B, K] long, confidence [B, K])``.
    """
    if suppress_eos:
        logits[:, :suppress_eos, eos] = float("-inf")
    tokens = sample_tokens(logits, temperature, generator)
    scores = token_confidence(logits, tokens, remasking, generator, confidence=confidence)
    if defer_eos:
        scores = torch.where(torch.isin(tokens, eos), scores - 2.0, scores)
    return tokens, scores


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions ``[B, L]`` for a left-padded batch: real tokens count from 0, pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(
    sequences: Sequence[Sequence[int] | torch.Tensor],
    pad_id: int,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts of different lengths, padding on the left.

    Args:
        sequences: token id lists (or 1-D tensors).
        pad_id: the pad id (LLaDA pads with EOS, 126081); must differ from the mask id.
        device: where to put the result.

    Returns:
        ``(input_ids, attention_mask)``, both ``[B, P]`` long, ``P`` = the longest prompt;
        attention_mask is 1 on real tokens and 0 on pads.
    """
    if len(sequences) == 0:
        raise BlocksftError("left_pad needs at least one sequence")
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            input_ids[i, width - len(row) :] = row
            attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)
