"""What a training step measures: token counts summed over ranks, and a FLOP count for budgets
(EQUAL-FLOPS) and MFU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from blocksft.objectives import forward_flops, training_step_flops

from .items import TrainBatch

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
    """The shapes that decide a training step's FLOPs, counted with :mod:`blocksft.objectives`'
    conventions (``forward_flops``, ``training_step_flops``).

    Attributes:
        body_params: weights of the transformer blocks (LoRA adapters included).
        trained_params: the weights that get gradients (the adapters under LoRA); ``None`` when
            every weight does (full fine-tuning).
        head_params: the LM head, ``d_model x vocab``: it costs only where logits are computed.
        n_layers, d_model: for the attention term.
        recompute: gradient checkpointing repeats the forward pass.
    """

    body_params: int
    trained_params: int | None
    head_params: int
    n_layers: int
    d_model: int
    recompute: bool = False

    def step_flops(self, padded_tokens: int, seq_len: int, logit_positions):
        """FLOPs of forward + backward over a micro-batch (``logit_positions`` may be a tensor)."""
        body = forward_flops(
            self.body_params, padded_tokens, n_layers=self.n_layers, d_model=self.d_model, context=seq_len
        )
        forward = body + 2 * self.head_params * logit_positions
        trained = None if self.trained_params is None else forward_flops(self.trained_params, padded_tokens)
        # Attention has no weights, yet its backward costs twice its forward (gradients of the
        # scores and of the values, then of queries and keys), where ``training_step_flops`` counts
        # one forward for activation gradients: add the second.
        attention = forward_flops(
            0, padded_tokens, n_layers=self.n_layers, d_model=self.d_model, context=seq_len
        )
        return training_step_flops(forward, trained_forward=trained, recompute=self.recompute) + attention


@dataclass
class StepMeter:
    """Collects what each micro-batch processed; :meth:`flush` sums it over ranks once per log step.

    ``record`` keeps device tensors (no host sync per micro-batch); ``flush`` is collective.
    """

    flop_model: FlopModel | None = None
    rows: list = field(default_factory=list)
    window_start: float | None = None

    def record(
        self,
        batch: TrainBatch,
        loss_mask: torch.Tensor,
        loss: torch.Tensor,
        *,
        step: int,
        sparse_logits: bool,
    ) -> None:
        """Count one micro-batch of optimizer step ``step``: the batch, its ``loss_mask`` [B, L] and
        its loss."""
        if self.window_start is None:
            self.window_start = time.perf_counter()
        b, seq_len = batch.input_ids.shape
        supervised = loss_mask.sum().to(torch.float64)
        flops = supervised * 0.0
        if self.flop_model is not None:
            logit_positions = supervised if sparse_logits else b * seq_len
            flops = flops + self.flop_model.step_flops(b * seq_len, seq_len, logit_positions)
        real = (batch.prompt_lens + batch.answer_lens).sum().to(torch.float64)
        counts = torch.stack([supervised, real, flops])
        counts = torch.cat([counts, counts.new_tensor([b * seq_len, b])])
        loss_and_step = torch.stack([loss.detach().double(), counts.new_tensor(step)])
        self.rows.append((counts, batch.sample_ids, batch.block_index, loss_and_step))

    def flush(self, accelerator) -> tuple[dict, list[dict]]:
        """Sum counts over ranks; gather per-micro-batch sample ids and losses (rank order).

        Returns:
            ``(metrics, batches)``: the summed counts and tokens/s since the last flush, and one
            dict per (step, rank, micro-batch) with its samples, blocks and loss.
        """
        if not self.rows:
            return {}, []
        counts = accelerator.reduce(torch.stack([r[0] for r in self.rows]).sum(0), reduction="sum")
        samples = accelerator.gather(torch.stack([r[1] for r in self.rows]))  # [W * M, B]
        blocks = accelerator.gather(torch.stack([r[2] for r in self.rows]))  # [W * M, B]
        losses = accelerator.gather(torch.stack([r[3] for r in self.rows]))  # [W * M, 2]: loss, step
        rows_per_rank = len(self.rows)
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
        batches, first_of_step = [], {}
        for k in range(samples.shape[0]):  # rank-major, then in the order the rank trained
            step, rank = int(losses[k, 1]), k // rows_per_rank
            first_of_step.setdefault((step, rank), k)
            batches.append(
                {
                    "step": step,
                    "rank": rank,
                    "micro": k - first_of_step[(step, rank)],
                    "samples": samples[k].tolist(),
                    "blocks": blocks[k].tolist(),
                    "loss": float(losses[k, 0]),
                }
            )
        batches.sort(key=lambda b: (b["step"], b["rank"], b["micro"]))
        self.rows, self.window_start = [], now
        return metrics, batches
