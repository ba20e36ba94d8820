"""Trainer callbacks: the progress bar, merged exports during training, resumable-state markers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from blocksft.progress import progress

from .engine import zero_stage
from .export import export_dir, lora_scalings, merge_lora_state_dict, write_checkpoint
from .logs import say, write_json
from .resume import COMPLETE_MARKER


class LossProgressCallback(ProgressCallback):
    """The Trainer's progress (rank 0): a bar on a terminal, a line now and then in a log file
    (:func:`blocksft.progress.progress`), with the loss instead of a printed dict per step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            # A resumed run starts part-way.
            self.training_bar = progress(state.max_steps, "train", unit="step", initial=state.global_step)
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(
                loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}"
            )

    def close(self) -> None:
        """Close the bar (also when training stopped with an error), so the next line starts clean."""
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


EXPORTS_RECORD = "exports.json"


def read_exports(logs_dir: Path) -> dict[int, Path]:
    """The merged checkpoints a run wrote (``exports.json`` in its logs folder): step -> folder."""
    path = logs_dir / EXPORTS_RECORD
    if not path.is_file():
        return {}
    return {int(step): Path(folder) for step, folder in json.loads(path.read_text()).items()}


class MergedExporter:
    """Writes ``<ckpt_dir>_stepNNNN`` merged checkpoints from the model being trained (rank 0).

    Each folder is recorded in ``<logs>/exports.json``. A step this run exported already (before
    an interruption, then trained again after the resume) replaces its own folder; a folder of the
    same name that another run left gets a ``-v2`` beside it.
    """

    def __init__(self, trainer, *, ckpt_dir: str, tokenizer, logs_dir: Path | None = None):
        self.trainer, self.ckpt_dir, self.tokenizer, self.logs_dir = trainer, ckpt_dir, tokenizer, logs_dir
        self.exports: list[Path] = []
        self.exported_steps: set[int] = set()
        self.record = read_exports(logs_dir) if logs_dir is not None else {}

    def export(self, step: int) -> Path | None:
        """Merge and save at ``step``; collective (call it on every rank)."""
        trainer = self.trainer
        zero3 = trainer.is_deepspeed_enabled and zero_stage(trainer.accelerator.deepspeed_config) == 3
        self.exported_steps.add(step)
        # Under ZeRO-3 gathering the weights is collective; otherwise rank 0 reads its own copy.
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if zero3 else None
        out = None
        if trainer.is_world_process_zero():
            model = trainer.accelerator.unwrap_model(trainer.model)
            state_dict = model.state_dict() if state_dict is None else state_dict
            is_peft = hasattr(model, "peft_config")
            merged = (
                merge_lora_state_dict(state_dict, lora_scalings(model))
                if is_peft
                else {k: v.detach().cpu() for k, v in state_dict.items()}
            )
            own = self.record.get(step)
            replace = own is not None and own.is_dir()
            out = write_checkpoint(
                own if replace else export_dir(self.ckpt_dir, step),
                merged,
                model_config=model.get_base_model().config if is_peft else model.config,
                tokenizer=self.tokenizer,
                write_adapter=(lambda folder: model.save_pretrained(folder, state_dict=state_dict))
                if is_peft
                else None,
                replace=replace,
            )
            self.exports.append(out)
            if self.logs_dir is not None:
                self.record[step] = out
                write_json(
                    self.logs_dir / EXPORTS_RECORD, {str(k): str(v) for k, v in sorted(self.record.items())}
                )
            say(f"step {step}: merged checkpoint saved to {out}")
        trainer.accelerator.wait_for_everyone()
        return out


class ExportCallback(TrainerCallback):
    """A merged checkpoint every ``save_every`` steps (the last one is written after training)."""

    def __init__(self, exporter: MergedExporter, save_every: int):
        self.exporter, self.save_every = exporter, save_every

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.save_every and step % self.save_every == 0 and step < state.max_steps:
            self.exporter.export(step)


class CompleteMarkerCallback(TrainerCallback):
    """Marks a resumable state complete once every rank has written its part of it.

    The marker holds the block schedule's state at that step (where in the plan it is, and a
    fingerprint of the data and settings it is valid for), which ``--resume`` checks.
    """

    def __init__(self, schedule_state: Callable[[int], dict]):
        self.schedule_state = schedule_state

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            marker = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "schedule": self.schedule_state(state.global_step),
            }
            write_json(folder / COMPLETE_MARKER, marker)
