"""Token and FLOP accounting per step, for EQUAL-TOKENS / EQUAL-FLOPS budgets."""

from __future__ import annotations

import dataclasses

import torch

from blocksft.objectives.noise import Lengths, as_lengths


@dataclasses.dataclass(frozen=True)
class TokenCounts:
    """Tokens of one step (add them up over micro-batches, ranks and steps with ``+``).

    Attributes:
        samples: rows in the batch.
        rows_with_loss: rows with at least one loss token.
        loss_tokens: loss-bearing positions (masked and supervised): the EQUAL-TOKENS currency.
        answer_tokens: maskable positions of the objective (answer for full-sequence, active block
            for blockwise; padding included when supervised): see :func:`supervised_span_lens`.
        real_tokens: prompt + answer tokens fed to the model (no padding).
        padded_tokens: ``B * L``, every position the model processes, padding included.
    """

    samples: int = 0
    rows_with_loss: int = 0
    loss_tokens: int = 0
    answer_tokens: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def count_tokens(
    loss_mask: torch.Tensor, prompt_lens: Lengths, answer_lens: Lengths, span_lens: Lengths
) -> TokenCounts:
    """Count a batch's tokens (one device sync).

    Args:
        loss_mask: ``[B, L]`` bool from the noising function.
        prompt_lens: ``[B]`` prompt lengths.
        answer_lens: ``[B]`` true answer lengths (without padding).
        span_lens: ``[B]`` maskable span lengths (:func:`supervised_span_lens`).
    """
    batch, seq_len = loss_mask.shape
    device = loss_mask.device
    prompt_lens = as_lengths(prompt_lens, batch, device, "prompt_lens")
    answer_lens = as_lengths(answer_lens, batch, device, "answer_lens")
    span_lens = as_lengths(span_lens, batch, device, "span_lens")
    per_row = loss_mask.sum(-1)  # [B]
    values = torch.stack(
        [(per_row > 0).sum(), per_row.sum(), span_lens.sum(), (prompt_lens + answer_lens).sum()]
    ).tolist()
    return TokenCounts(batch, *values, batch * seq_len)


def forward_flops(
    n_params: int, tokens: int, *, n_layers: int = 0, d_model: int = 0, context: int = 0
) -> int:
    """Forward-pass FLOPs of a transformer on ``tokens`` positions (one multiply-add = 2 FLOPs).

    ``2 * n_params * tokens`` for the weight matmuls (each weight does one multiply-add per token;
    count only the weights the tokens go through: no embedding table, and the LM head only for the
    positions where logits are taken), plus ``4 * n_layers * d_model * context * tokens`` for
    attention (scores ``q.k`` and the weighted sum of values, each ``2 * d_model`` FLOPs per query
    and key; LLaDA attends bidirectionally to all ``context`` positions of the row).
    """
    return 2 * n_params * tokens + 4 * n_layers * d_model * context * tokens


def training_step_flops(forward: int, *, trained_forward: int | None = None, recompute: bool = False) -> int:
    """Forward + backward FLOPs of a training step, from forward FLOPs.

    The backward pass computes activation gradients (about one forward) plus the weight gradients
    of the trained weights (about their share of the forward again), so a step is
    ``2 * forward + trained_forward``: ``3 * forward`` for full fine-tuning (the usual ``6 N T``),
    and with LoRA ``trained_forward = forward_flops(lora_params, tokens)`` (at r=256 on LLaDA-8B the
    adapters are ~4 % of the weights, not negligible). Model-FLOPs utilisation ignores activation
    recomputation; ``recompute=True`` adds gradient checkpointing's extra forward (hardware FLOPs).

    Args:
        forward: forward FLOPs of the step (:func:`forward_flops`, adapters included).
        trained_forward: forward FLOPs of the trained weights alone; default ``forward`` (all trained).
        recompute: count the recomputed forward of gradient checkpointing.
    """
    trained = forward if trained_forward is None else trained_forward
    return 2 * forward + trained + (forward if recompute else 0)
