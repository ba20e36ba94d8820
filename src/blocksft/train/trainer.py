"""The training step and the thin ``transformers.Trainer`` subclass that runs it.

:class:`TrainStep` is one micro-batch: noise it on its device, run the model (logits only where
loss is taken, unless ``sparse_logits`` is off), take the loss. It calls ``blocksft.objectives``
for the math and is shared by the Trainer and the benchmarks. :class:`BlockSFTTrainer` overrides
only ``compute_loss`` (calls the step), ``log`` (adds the step's token counts, summed over ranks,
and stops on a non-finite loss) and the sampler (the item list is already in training order);
optimiser, scheduler, DeepSpeed, mixed precision, checkpoints and resume are the stock Trainer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import Trainer

from blocksft.errors import BlocksftError

from .logs import CsvLog
from .metrics import StepMeter


def noise_seed(seed: int, first_item: int) -> int:
    """Seed of one micro-batch's noise: the run seed and the batch's first item (unique per batch,
    the same after a resume, different on every rank)."""
    return (seed % (1 << 31)) * (1 << 32) + first_item


@dataclass(frozen=True)
class TrainStep:
    """Noise + forward + loss for one micro-batch.

    Attributes:
        objective: a :class:`blocksft.objectives.Objective` (noising and loss with its options).
        seed: run seed (each batch's noise is seeded from it and the batch's first item).
        sparse_logits: compute logits only at loss positions (``model(..., logits_at=)``);
            False computes the full ``[B, L, V]`` logits (the plain path).
        attend_padding: pass no attention mask, so padding is attended (the reference).
    """

    objective: object
    seed: int
    sparse_logits: bool = True
    attend_padding: bool = False

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loss, loss_mask [B, L])`` for a batch from :class:`~blocksft.train.data.PadCollator`."""
        input_ids = batch["input_ids"]  # [B, L]
        lengths = dict(prompt_lens=batch["prompt_lens"], answer_lens=batch["answer_lens"])
        # === 1. Noise the batch on its device ===
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(noise_seed(self.seed, batch["first_item"]))
        block_index = batch["block_index"]  # [B]
        noised = self.objective.noise(
            input_ids, *lengths.values(), block_index=block_index, generator=generator
        )
        # === 2. Forward: logits [N, V] at the loss positions only, or [B, L, V] ===
        attention_mask = None if self.attend_padding else batch["attention_mask"]
        logits_at = noised.loss_mask if self.sparse_logits else None
        logits = model(input_ids=noised.noised_ids, attention_mask=attention_mask, logits_at=logits_at).logits
        # === 3. Loss over the masked tokens the objective selected ===
        loss = self.objective.loss(logits, input_ids, noised, block_index=block_index, **lengths)
        return loss, noised.loss_mask


class BlockSFTTrainer(Trainer):
    """``transformers.Trainer`` whose loss is a :class:`TrainStep`."""

    def __init__(self, *args, train_step: TrainStep, meter: StepMeter, csv_log: CsvLog | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_step, self.meter, self.csv_log = train_step, meter, csv_log
        # Our loss is a per-batch mean; the Trainer must average it over accumulation steps itself.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, loss_mask = self.train_step(model, inputs)
        self.meter.record(
            inputs,
            loss_mask,
            loss,
            step=self.state.global_step + 1,
            sparse_logits=self.train_step.sparse_logits,
        )
        return (loss, {"loss_mask": loss_mask}) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        # The item list is already in training order (seeded shuffling per epoch, see data.py).
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            metrics, batches = self.meter.flush(self.accelerator)
            logs.update(metrics)
            if not math.isfinite(logs["loss"]):
                raise NonFiniteLossError(self.state.global_step, logs["loss"], batches)
            if self.csv_log is not None and self.is_world_process_zero():
                self.csv_log.write(self.state.global_step, logs, batches)
        super().log(logs, start_time)


class NonFiniteLossError(BlocksftError):
    """The loss became NaN or infinite: the run stops; saved checkpoints are left as they are."""

    def __init__(self, step: int, loss: float, batches: list[dict]):
        bad = [b for b in batches if not math.isfinite(b["loss"])] or batches
        samples = sorted({s for b in bad for s in b["samples"]})
        super().__init__(
            f"loss is {loss} at step {step} (samples {samples[:64]}{' ...' if len(samples) > 64 else ''}); "
            "training stopped and no checkpoint was written for this step. Resume from the last complete "
            "state with --resume (after lowering --lr, say) or inspect those samples"
        )
        self.step, self.samples = step, samples
