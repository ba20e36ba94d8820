"""The masked cross-entropy loss and its weighting/normalisation variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blocksft.config.objective import LossNormalize, LossWeighting, check_loss_options


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
    weights = loss_weights(loss_mask, p=p, weighting=weighting, normalize=normalize, answer_lens=answer_lens)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
    return (ce * weights).sum()


def loss_weights(
    loss_mask: torch.Tensor,
    *,
    p: torch.Tensor | None = None,
    weighting: LossWeighting = "none",
    normalize: LossNormalize = "per_sample_masked",
    answer_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight of each loss position in :func:`masked_ce_loss`: the loss is ``sum_i w_i * CE_i``.

    Every weighting and normalisation is linear in the per-position cross-entropies, so the loss is
    a weighted sum; the weights depend only on the mask, ``p`` and the span lengths (no logits),
    which lets the LM head and the cross-entropy run in chunks (:func:`linear_cross_entropy`).

    Args: as :func:`masked_ce_loss`.

    Returns:
        ``[N]`` float32 weights, for ``loss_mask.nonzero()`` in row-major order.
    """
    check_loss_options(weighting, normalize)
    batch = loss_mask.shape[0]
    per_row = torch.ones(batch, dtype=torch.float32, device=loss_mask.device)  # [B]
    if weighting == "inv_p":
        if p is None:
            raise ValueError('weighting="inv_p" needs the mask rates p')
        per_row = per_row / p.float()
    counts = loss_mask.sum(-1)  # [B]
    if normalize == "per_sample_masked":
        per_row = per_row / (counts.clamp(min=1) * batch)
    elif normalize == "batch_masked":
        per_row = per_row / counts.sum().clamp(min=1)
    else:
        if answer_lens is None:
            raise ValueError(f'normalize="{normalize}" needs answer_lens (see supervised_span_lens)')
        answer_lens = answer_lens.to(per_row.device)
        if normalize == "answer_len":
            per_row = per_row / (answer_lens.clamp(min=1) * batch)
        else:
            per_row = per_row / answer_lens.sum().clamp(min=1)
    return per_row[:, None].expand(loss_mask.shape)[loss_mask]  # [N]


def linear_cross_entropy(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``sum_i weights_i * CE(hidden_i @ head_weight.T, targets_i)`` without ever holding all logits.

    The LM head and the cross-entropy run over ``chunk_size`` rows at a time, and each chunk's
    gradients (with respect to ``hidden`` and, when it is trained, the head) are computed right
    there from its softmax, which is then freed: no ``[N, V]`` logits, float32 copies or log-softmax
    are kept for the backward pass, and nothing is recomputed (the head's matmuls are the same as
    the plain path's). This is possible because the loss is linear in the per-row CEs with known
    weights (:func:`loss_weights`); the backward pass only scales the stored gradients. Matmuls run
    in the ambient dtype (autocast applies, as to the plain head); softmax and CE in float32.

    Args:
        hidden: ``[N, D]`` final hidden states at the loss positions.
        head_weight: ``[V, D]`` the LM head's weight.
        targets: ``[N]`` target ids.
        weights: ``[N]`` float32 weight of each row's CE.
        chunk_size: rows per chunk (peak memory about ``chunk_size * V * 6`` bytes in bf16).

    Returns:
        The scalar float32 loss.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weights.shape != targets.shape:
        raise ValueError(
            f"hidden [N, D], targets [N] and weights [N] expected, got {tuple(hidden.shape)}, "
            f"{tuple(targets.shape)}, {tuple(weights.shape)}"
        )
    return _LinearCrossEntropy.apply(hidden, head_weight, targets, weights.float(), chunk_size)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and its gradients chunk by chunk; backward scales the gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk_size):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [N, D]
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        mm_weight = None  # the head in the matmul dtype (cast once, for the gradient matmuls)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, t, w = hidden[rows], targets[rows, None], weights[rows, None]  # [c, D], [c, 1], [c, 1]
            logits = F.linear(h, weight)  # [c, V], autocast dtype
            probs = logits.float()  # [c, V] float32
            lse = torch.logsumexp(probs, dim=-1, keepdim=True)  # [c, 1]
            loss += ((lse - probs.gather(1, t)) * w).sum()
            if not (need_hidden or need_weight):
                continue
            # d loss / d logits = w * (softmax - onehot(target)), built in place in the float32 copy.
            grad_logits = probs.sub_(lse).exp_().scatter_add_(1, t, -torch.ones_like(w)).mul_(w)
            grad_logits = grad_logits.to(logits.dtype)  # [c, V]
            del logits, probs
            if mm_weight is None:
                mm_weight = weight.to(grad_logits.dtype)
            if need_hidden:
                grad_hidden[rows] = grad_logits @ mm_weight
            if need_weight:
                grad_weight += (grad_logits.t() @ h.to(grad_logits.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_loss).to(ctx.dtypes[0])
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.dtypes[1])
        return grad_hidden, grad_weight, None, None, None
