"""The masked cross-entropy loss and its weighting/normalisation variants."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from blocksft.errors import BlocksftError

LossWeighting = Literal["none", "inv_p"]
LossNormalize = Literal["per_sample_masked", "answer_len", "batch_tokens", "batch_masked"]


def check_loss_options(weighting: str, normalize: str) -> None:
    """Raise :class:`BlocksftError` naming the flag when a loss option is unknown."""
    if weighting not in get_args(LossWeighting):
        raise BlocksftError(f"--loss-weighting must be one of {get_args(LossWeighting)}, got {weighting!r}")
    if normalize not in get_args(LossNormalize):
        raise BlocksftError(f"--loss-normalize must be one of {get_args(LossNormalize)}, got {normalize!r}")


def masked_ce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    p: torch.Tensor | None = None,
    weighting: LossWeighting = "none",
    normalize: LossNormalize = "per_sample_masked",
    answer_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the loss positions, in float32, reduced to a scalar.

    ``logits`` may be dense ``[B, L, V]`` or already selected at the loss positions, ``[N, V]`` for
    ``loss_mask.nonzero()`` in row-major order (what ``model(..., logits_at=loss_mask)`` returns);
    both give the same loss and gradients.

    Per sample b: ``S_b = sum of w_b * CE`` over its loss tokens, ``w_b = 1`` (``"none"``, the
    reference) or ``1 / p_b`` (``"inv_p"``, the diffusion ELBO weight). Normalisation:

    * ``"per_sample_masked"`` (reference): ``mean_b S_b / max(1, n_b)``, ``n_b`` its loss tokens;
    * ``"answer_len"`` (LLaDA's SFT, with ``inv_p``): ``mean_b S_b / max(1, a_b)``;
    * ``"batch_tokens"`` (dLLM/NeMo "token"): ``sum_b S_b / max(1, sum_b a_b)``;
    * ``"batch_masked"`` (plain token mean): ``sum_b S_b / max(1, sum_b n_b)``.

    A sample without loss tokens contributes 0 and still counts in the per-sample means.

    Args:
        logits: ``[B, L, V]`` or ``[N, V]``, any float dtype.
        targets: ``[B, L]`` clean ids (or ``[N]`` already selected).
        loss_mask: ``[B, L]`` bool.
        p: ``[B]`` mask rates, required for ``"inv_p"``.
        weighting: ``"none"`` or ``"inv_p"``.
        normalize: see above.
        answer_lens: ``[B]`` maskable span lengths ``a_b`` (see :func:`supervised_span_lens`: the
            answer for full-sequence, the active block for blockwise), required for ``"answer_len"``
            and ``"batch_tokens"``.

    Returns:
        The scalar float32 loss.
    """
    check_loss_options(weighting, normalize)
    if logits.dim() == 3:
        if logits.shape[:2] != loss_mask.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match loss_mask {tuple(loss_mask.shape)}")
        logits = logits[loss_mask]  # [N, V]
    elif logits.dim() != 2:
        raise ValueError(f"logits must be [B, L, V] or [N, V], got {tuple(logits.shape)}")
    if targets.shape == loss_mask.shape:
        targets = targets[loss_mask]  # [N]
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"logits have {logits.shape[0]} rows but loss_mask selects {targets.shape[0]} positions"
        )

    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
    per_position = ce.new_zeros(loss_mask.shape).masked_scatter(loss_mask, ce)  # [B, L]
    sums = per_position.sum(-1)  # [B]
    if weighting == "inv_p":
        if p is None:
            raise ValueError('weighting="inv_p" needs the mask rates p')
        sums = sums / p.float()
    counts = loss_mask.sum(-1)  # [B]
    if normalize == "per_sample_masked":
        return (sums / counts.clamp(min=1)).mean()
    if normalize == "batch_masked":
        return sums.sum() / counts.sum().clamp(min=1)
    if answer_lens is None:
        raise ValueError(f'normalize="{normalize}" needs answer_lens (see supervised_span_lens)')
    answer_lens = answer_lens.to(sums.device)
    if normalize == "answer_len":
        return (sums / answer_lens.clamp(min=1)).mean()
    return sums.sum() / answer_lens.sum().clamp(min=1)
