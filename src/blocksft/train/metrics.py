"""What a training step measures: token counts summed over ranks, and a FLOP count for budgets
(EQUAL-FLOPS) and MFU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

# Dense bf16 tensor-core peaks (FLOP/s) for MFU; other GPUs: pass the peak explicitly.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def peak_flops_for(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU from its name (``torch.cuda.get_device_name``), else None."""
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return peak
    return None


@dataclass(frozen=True)
class FlopModel:
    """The shapes that decide a training step's matmul FLOPs (embeddings are lookups: free).

    Attributes:
        frozen_params: block linear weights that get no gradient (all of them under LoRA).
        trainable_params: weights that do (LoRA A/B, or all block weights when fully fine-tuned).
        n_layers, d_model, vocab: model shape (the head is ``d_model x vocab``).
        head_trainable: the LM head gets weight gradients (full fine-tuning).
        recompute: gradient checkpointing repeats the forward pass of the blocks.
    """

    frozen_params: int
    trainable_params: int
    n_layers: int
    d_model: int
    vocab: int
    head_trainable: bool = False
    recompute: bool = False

    def step_flops(self, padded_tokens: int, seq_len: int, logit_positions: int) -> float:
        """FLOPs of forward + backward over ``padded_tokens`` tokens in sequences of ``seq_len``.

        Per token: a weight costs 2 FLOPs forward, 2 backward for the activation gradient, and 2
        more for its own gradient when trained (so 4 frozen, 6 trained). Attention adds
        ``QK^T`` and ``AV``: 4 * seq_len * d_model per token per layer forward, twice that backward.
        The head costs 2 * d_model * vocab per position where logits are computed, forward and
        backward alike (plus the weight gradient when trained).
        """
        block_fwd = 2.0 * (self.frozen_params + self.trainable_params) * padded_tokens
        attn_fwd = 4.0 * self.n_layers * seq_len * self.d_model * padded_tokens
        block_bwd = 2.0 * block_fwd - 2.0 * self.frozen_params * padded_tokens + 2.0 * attn_fwd
        head = 2.0 * self.d_model * self.vocab * logit_positions * (3 if self.head_trainable else 2)
        recompute = block_fwd + attn_fwd if self.recompute else 0.0
        return block_fwd + attn_fwd + block_bwd + recompute + head


@dataclass
class StepMeter:
    """Collects what each micro-batch processed; :meth:`flush` sums it over ranks once per log step.

    ``record`` keeps device tensors (no host sync per micro-batch); ``flush`` is collective.
    """

    flop_model: FlopModel | None = None
    rows: list = field(default_factory=list)
    window_start: float | None = None

    def record(
        self, batch: dict, loss_mask: torch.Tensor, loss: torch.Tensor, *, sparse_logits: bool
    ) -> None:
        """Count one micro-batch: ``batch`` from the collator, ``loss_mask`` [B, L] and its loss."""
        if self.window_start is None:
            self.window_start = time.perf_counter()
        b, seq_len = batch["input_ids"].shape
        supervised = loss_mask.sum().to(torch.float64)
        flops = supervised * 0.0
        if self.flop_model is not None:
            logit_positions = supervised if sparse_logits else b * seq_len
            flops = flops + self.flop_model.step_flops(b * seq_len, seq_len, logit_positions)
        counts = torch.stack([supervised, batch["attention_mask"].sum().to(torch.float64), flops])
        counts = torch.cat([counts, counts.new_tensor([b * seq_len, b])])
        self.rows.append((counts, batch["sample_ids"], batch["block_index"], loss.detach().float()))

    def flush(self, accelerator) -> tuple[dict, list[dict]]:
        """Sum counts over ranks; gather per-micro-batch sample ids and losses (rank order).

        Returns:
            ``(metrics, batches)``: the step's summed counts and tokens/s, and one dict per
            (rank, micro-batch) with its samples, blocks and loss.
        """
        if not self.rows:
            return {}, []
        counts = accelerator.reduce(torch.stack([r[0] for r in self.rows]).sum(0), reduction="sum")
        samples = accelerator.gather(torch.stack([r[1] for r in self.rows]))  # [W * M, B]
        blocks = accelerator.gather(torch.stack([r[2] for r in self.rows]))  # [W * M, B]
        losses = accelerator.gather(torch.stack([r[3] for r in self.rows]))  # [W * M]
        micro = len(self.rows)
        now = time.perf_counter()
        supervised, tokens, flops, padded, n_samples = counts.tolist()
        metrics = {
            "supervised_tokens": int(supervised),
            "tokens": int(tokens),
            "padded_tokens": int(padded),
            "samples": int(n_samples),
            "flops": flops,
            "tokens_per_s": tokens / max(now - self.window_start, 1e-9),
        }
        batches = [
            {
                "rank": k // micro,
                "micro": k % micro,
                "samples": samples[k].tolist(),
                "blocks": blocks[k].tolist(),
                "loss": float(losses[k]),
            }
            for k in range(samples.shape[0])
        ]
        self.rows, self.window_start = [], now
        return metrics, batches
