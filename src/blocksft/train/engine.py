"""The engine of a training run: device, precision, DeepSpeed, and the Trainer's arguments.

``--dtype auto`` and ``--deepspeed auto`` are resolved here for the device when the run starts, like
the speed settings (:mod:`blocksft.train.speed`): what was asked, what runs and why is printed in one
line and recorded in ``config.json``. Everything blocksft knows about DeepSpeed is in this module:
which config file ``--deepspeed`` names, its ZeRO stage and what that rules out, and the process
group that a CPU run under ZeRO-3 needs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import torch
from transformers import TrainingArguments

from blocksft.config.train import DEEPSPEED_DIR, TrainConfig, is_on
from blocksft.errors import BlocksftError

from .choices import Choice

SHIPPED_DEEPSPEED = ("zero2", "zero3")


def full_numel(param) -> int:
    """A parameter's size; under ZeRO-3 a parameter is partitioned and ``ds_numel`` is its full size."""
    return int(getattr(param, "ds_numel", param.numel()))


def uses_gpu(config: TrainConfig) -> bool:
    """Whether the run trains on GPUs (one is visible and ``--use-cpu`` is not set)."""
    return torch.cuda.is_available() and not config.use_cpu


def resolve_dtype(config: TrainConfig, on_gpu: bool) -> Choice:
    """``--dtype`` for a run: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    if config.dtype != "auto":
        return Choice("dtype", config.dtype, config.dtype, "as asked")
    if not on_gpu:
        return Choice("dtype", "auto", "fp32", "auto: CPU")
    if torch.cuda.is_bf16_supported():
        return Choice("dtype", "auto", "bf16", "auto: the GPU computes in bf16")
    return Choice("dtype", "auto", "fp32", "auto: the GPU has no bf16")


def resolve_deepspeed(config: TrainConfig, on_gpu: bool) -> Choice:
    """``--deepspeed`` for a run: ``auto`` is ZeRO-2 on GPUs when deepspeed is installed, else none."""
    asked = "none" if config.deepspeed is None else config.deepspeed
    if asked != "auto":
        return Choice("deepspeed", asked, asked, "as asked")
    return Choice("deepspeed", "auto", *_auto_deepspeed(on_gpu))


def _auto_deepspeed(on_gpu: bool) -> tuple[str, str]:
    """What ``--deepspeed auto`` runs, and why."""
    if not on_gpu:
        return "none", "auto: CPU"
    if importlib.util.find_spec("deepspeed") is None:
        return "none", "auto: deepspeed is not installed"
    return "zero2", "auto: GPUs and deepspeed installed"


def resolved_config(config: TrainConfig, choices: list[Choice]) -> TrainConfig:
    """``config`` with each choice's setting set to what runs (``none`` is no DeepSpeed)."""
    values = {c.setting: (None if c.setting == "deepspeed" and c.ran == "none" else c.ran) for c in choices}
    return dataclasses.replace(config, **values)


def resolve_deepspeed_config(value: str | None, *, cuda_available: bool) -> str | None:
    """The DeepSpeed JSON file for ``--deepspeed`` (a shipped name, a path, ``auto``, ``none`` or None)."""
    if value == "auto":
        value, _ = _auto_deepspeed(cuda_available)
    if value is None or value == "none":
        return None
    if value in SHIPPED_DEEPSPEED:
        return str(DEEPSPEED_DIR / f"{value}.json")
    if not Path(value).is_file():
        raise BlocksftError(f"--deepspeed {value}: no such file (use zero2, zero3, none or a JSON path)")
    return value


def zero_stage(deepspeed_config: str | dict | None) -> int:
    """The ZeRO stage of a DeepSpeed config (a JSON file or its contents; 0 without DeepSpeed)."""
    if deepspeed_config is None:
        return 0
    if not isinstance(deepspeed_config, dict):
        deepspeed_config = json.loads(Path(deepspeed_config).read_text())
    return int(deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def check_engine(config: TrainConfig, deepspeed_config: str | None) -> None:
    """Refuse options the engine cannot honour: the chunked head reads the head's weight directly,
    which ZeRO-3 partitions across ranks."""
    if config.ce_chunk_size and zero_stage(deepspeed_config) == 3:
        raise BlocksftError(
            "--ce-chunk-size does not work with DeepSpeed ZeRO-3 (the LM head is partitioned): "
            "use --deepspeed zero2 or --ce-chunk-size 0"
        )


def start_distributed(args: TrainingArguments) -> int:
    """Set the distributed backend up now (ZeRO-3 partitions the model while loading it); the world size."""
    world_size = args.world_size  # first access initialises the process group
    if args.deepspeed and args.use_cpu and world_size > 1:
        # accelerate's CPU path leaves DeepSpeed's own process group uninitialised, which ZeRO-3's
        # partitioned model loading needs (on GPUs accelerate initialises it). deepspeed is an
        # optional dependency: imported only when a run uses it.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    return world_size


def checkpointing_arguments(enabled: bool) -> dict:
    """Gradient checkpointing under the name this transformers has (``activation_checkpointing``
    replaced ``gradient_checkpointing``, which now warns), non-reentrant."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False}}


def training_arguments(config: TrainConfig) -> TrainingArguments:
    """The ``TrainingArguments`` for a config (``max_steps`` is set once the data is planned,
    checkpointing once the model is built: :func:`enable_checkpointing`)."""
    on_gpu = uses_gpu(config)
    dtype = resolve_dtype(config, on_gpu).ran
    if config.report_to != "none" and importlib.util.find_spec(config.report_to) is None:
        raise BlocksftError(
            f"--report-to {config.report_to} needs the package: pip install {config.report_to}"
        )
    return TrainingArguments(
        output_dir=str(config.checkpoints_dir),
        per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_eps,
        weight_decay=config.weight_decay,
        optim="adamw_torch",
        # The learning-rate schedule is BlockSFTTrainer.create_scheduler's (lr_schedule_of).
        max_grad_norm=config.max_grad_norm,
        max_steps=1,
        seed=config.seed,
        bf16=on_gpu and dtype == "bf16",
        fp16=on_gpu and dtype == "fp16",
        use_cpu=not on_gpu,
        deepspeed=resolve_deepspeed_config(config.deepspeed, cuda_available=on_gpu),
        # auto is resolved once the model is loaded (run_train sets the field then).
        **checkpointing_arguments(config.gradient_checkpointing == "on"),
        logging_steps=config.log_every,
        logging_nan_inf_filter=False,
        save_strategy="steps" if config.checkpoint_every else "no",
        save_steps=config.checkpoint_every or 1,
        save_total_limit=config.keep_checkpoints or None,
        report_to=[] if config.report_to == "none" else [config.report_to],
        remove_unused_columns=False,
        label_names=[],
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=on_gpu,
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )


def enable_checkpointing(args: TrainingArguments, config: TrainConfig) -> None:
    """Set the Trainer's gradient checkpointing to the run's resolved setting."""
    for name, value in checkpointing_arguments(is_on(config.gradient_checkpointing)).items():
        setattr(args, name, value)
