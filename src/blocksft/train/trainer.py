"""The training step and the thin ``transformers.Trainer`` subclass that runs it.

:class:`TrainStep` is one micro-batch (a :class:`~blocksft.train.items.TrainBatch`): noise it on its
device, run the model (logits only where loss is taken, unless ``sparse_logits`` is off), take the
loss. It calls ``blocksft.objectives`` for the math and is shared by the Trainer and the
benchmarks. :class:`BlockSFTTrainer` overrides only ``compute_loss`` (calls the step), ``log`` (adds
the step's token counts, summed over ranks, and stops on a non-finite loss), the sampler (the item
list is already in training order) and ``create_scheduler`` (our
:class:`~blocksft.train.lr_schedule.WarmupCosine`, also under DeepSpeed, whose engine steps it);
optimiser, DeepSpeed, mixed precision, checkpoints and resume are the stock Trainer's. The Trainer
handles its batches as mappings, so ours travel to it as ``{"batch": TrainBatch}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import Trainer

from blocksft.errors import BlocksftError
from blocksft.objectives import NoisedBatch, Objective, linear_cross_entropy
from blocksft.rng import batch_seed

from .items import TrainBatch
from .logs import CsvLog
from .lr_schedule import WarmupCosine
from .metrics import StepMeter


@dataclass(frozen=True)
class TrainStep:
    """Noise + forward + loss for one micro-batch.

    Attributes:
        objective: a :class:`blocksft.objectives.Objective` (noising and loss with its options).
        seed: run seed (each batch's noise is seeded from it and the batch's first item).
        sparse_logits: compute logits only at loss positions (``model(..., logits_at=)``);
            False computes the full ``[B, L, V]`` logits (the plain path).
        attend_padding: pass no attention mask, so padding is attended (the reference).
        ce_chunk_size: > 0 runs the LM head and the cross-entropy together over this many loss
            positions at a time (:func:`blocksft.objectives.linear_cross_entropy`): no ``[N, V]``
            logits are kept for the backward pass. 0: the model's head, then the loss.
    """

    objective: Objective
    seed: int
    sparse_logits: bool = True
    attend_padding: bool = False
    ce_chunk_size: int = 0

    def __post_init__(self):
        if self.ce_chunk_size and not self.sparse_logits:
            raise BlocksftError("--ce-chunk-size works on the loss positions: it needs --sparse-logits")

    def __call__(self, model, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(loss, loss_mask [B, L])`` for a batch."""
        noised = self.noise(batch)
        return self.loss(model, batch, noised), noised.loss_mask

    def noise(self, batch: TrainBatch) -> NoisedBatch:
        """The batch's :class:`~blocksft.objectives.NoisedBatch`, drawn on its device from its own seed."""
        input_ids = batch.input_ids  # [B, L]
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(batch_seed(self.seed, batch.first_item))
        return self.objective.noise(
            input_ids,
            batch.prompt_lens,
            batch.answer_lens,
            block_index=batch.block_index,
            generator=generator,
        )

    def loss(self, model, batch: TrainBatch, noised: NoisedBatch) -> torch.Tensor:
        """The objective's loss of ``model`` on a batch noised as ``noised``."""
        input_ids = batch.input_ids  # [B, L]
        lengths = dict(
            prompt_lens=batch.prompt_lens, answer_lens=batch.answer_lens, block_index=batch.block_index
        )
        # Without padding in the batch the mask changes nothing: leave it out so that SDPA may use
        # its flash kernel (which takes no mask). ``has_padding`` is a host bool: no device sync.
        masked = not self.attend_padding and batch.has_padding
        inputs = dict(input_ids=noised.noised_ids, attention_mask=batch.attention_mask if masked else None)
        if self.ce_chunk_size:
            # Hidden states [B, L, D] -> [N, D] at the loss positions; head + CE in chunks.
            hidden = model(**inputs, return_logits=False, output_hidden_states=True).hidden_states
            return linear_cross_entropy(
                hidden[noised.loss_mask],
                lm_head_weight(model),
                input_ids[noised.loss_mask],
                self.objective.loss_weights(noised, **lengths),
                chunk_size=self.ce_chunk_size,
            )
        # Logits [N, V] at the loss positions only, or [B, L, V].
        logits_at = noised.loss_mask if self.sparse_logits else None
        logits = model(**inputs, logits_at=logits_at).logits
        return self.objective.loss(logits, input_ids, noised, **lengths)


def lm_head_weight(model) -> torch.Tensor:
    """The LM head's weight of a model, through DDP/DeepSpeed and PEFT wrappers."""
    while hasattr(model, "module"):  # DistributedDataParallel, DeepSpeedEngine
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model.get_output_embeddings().weight


@dataclass(frozen=True)
class KeyedCollator:
    """The Trainer moves, counts and inspects its batches as mappings: ours go as ``{"batch": ...}``
    (the data loader places a :class:`TrainBatch` through its ``to``)."""

    collator: Callable[[list[dict]], TrainBatch]

    def __call__(self, features: list[dict]) -> dict[str, TrainBatch]:
        return {"batch": self.collator(features)}


class BlockSFTTrainer(Trainer):
    """``transformers.Trainer`` whose loss is a :class:`TrainStep` over batches of ``collator``."""

    def __init__(
        self,
        *args,
        collator: Callable[[list[dict]], TrainBatch],
        train_step: TrainStep,
        lr_schedule: WarmupCosine,
        meter: StepMeter,
        csv_log: CsvLog | None,
        **kwargs,
    ):
        super().__init__(*args, data_collator=KeyedCollator(collator), **kwargs)
        self.train_step, self.lr_schedule, self.meter, self.csv_log = train_step, lr_schedule, meter, csv_log
        # Our loss is a per-batch mean; the Trainer must average it over accumulation steps itself.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = inputs["batch"].to(self.args.device)  # already there when the loader placed it
        loss, loss_mask = self.train_step(model, batch)
        self.meter.record(
            batch,
            loss_mask,
            loss,
            step=self.state.global_step + 1,
            sparse_logits=self.train_step.sparse_logits,
        )
        return (loss, {"loss_mask": loss_mask}) if return_outputs else loss

    def floating_point_ops(self, inputs) -> int:
        # The stock estimate (6 x tokens x parameters), from our batch's ids.
        return super().floating_point_ops({"input_ids": inputs["batch"].input_ids})

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # Also called by the Trainer's DeepSpeed set-up (the shipped DeepSpeed files hold no scheduler).
        if self.lr_scheduler is None:
            self.lr_scheduler = self.lr_schedule.build(optimizer or self.optimizer, num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            set_peak_lr(self.optimizer, self.lr_scheduler, self.args.learning_rate)

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


def set_peak_lr(optimizer, scheduler, peak_lr: float) -> None:
    """Make a restored schedule run at ``peak_lr``: its base LR (and the optimizer's current one,
    scaled alike) were saved with the run's old ``--lr`` (``--resume --allow-changes lr``)."""
    base_lrs = getattr(scheduler, "base_lrs", None)
    if not base_lrs or all(base == peak_lr for base in base_lrs):
        return
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = group["lr"] * peak_lr / base
        group["initial_lr"] = peak_lr
    scheduler.base_lrs = [peak_lr] * len(base_lrs)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class NonFiniteLossError(BlocksftError):
    """The loss became NaN or infinite: the run stops; saved checkpoints are left as they are."""

    def __init__(self, step: int, loss: float, batches: list[dict]):
        bad = [b for b in batches if not math.isfinite(b["loss"])] or batches
        samples = sorted({s for b in bad for s in b["samples"]})
        super().__init__(
            f"loss is {loss} at step {step} (samples {samples[:64]}{' ...' if len(samples) > 64 else ''}); "
            "training stopped and no checkpoint was written for this step. Inspect those samples, or resume "
            "from the last complete state with a lower learning rate: the same command with --resume "
            "--allow-changes lr --lr <lower>"
        )
        self.step, self.samples = step, samples
