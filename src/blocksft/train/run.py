"""``run_train(config)``: a whole training run, top to bottom.

Engine and folders -> tokenizer, records, special ids -> model -> the item plan -> LoRA -> speed
settings -> Trainer -> train (or resume) -> final merged checkpoint and the budget. Launch it with
``python``/``blocksft train`` (one process; CPU for tests), ``torchrun``, ``deepspeed --module
blocksft.train`` or ``accelerate launch``: the Trainer picks the distributed setup up from the
launcher.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoConfig, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

import blocksft
from blocksft.config.flags import config_to_dict
from blocksft.config.train import TrainConfig, is_on
from blocksft.data.records import check_no_mask_tokens, load_records, records_sha256
from blocksft.model.loading import load_model
from blocksft.objectives import Objective, get_objective
from blocksft.outputs import check_output_path, claim
from blocksft.special_tokens import resolve_special_ids
from blocksft.tokenizer import load_tokenizer

from .block_schedule import BlockSchedule
from .callbacks import (
    CompleteMarkerCallback,
    ExportCallback,
    LossProgressCallback,
    MergedExporter,
    read_exports,
)
from .choices import Choice, format_choices, replace_choice
from .engine import (
    check_engine,
    enable_checkpointing,
    full_numel,
    resolve_deepspeed,
    resolve_dtype,
    resolved_config,
    start_distributed,
    training_arguments,
    uses_gpu,
)
from .export import remove_partial_exports
from .items import ItemDataset, PadCollator, plan_position, plan_run
from .logs import CsvLog, budget_summary, format_budget, say, write_json
from .lora import apply_lora
from .lr_schedule import WarmupCosine
from .metrics import FlopModel, StepMeter
from .resume import (
    check_data_identity,
    check_output,
    check_schedule,
    checkpoint_step,
    finished_run,
    resume_changes,
    saved_run,
)
from .speed import compile_blocks, resolve_grouping, resolve_model_speed
from .trainer import BlockSFTTrainer, TrainStep


@dataclass
class TrainResult:
    """What a run produced (``exports`` and ``budget`` on rank 0 only).

    Attributes:
        steps: optimizer steps done.
        exports: merged checkpoint folders written.
        logs_dir: the run's logs folder.
        budget: totals for EQUAL-TOKENS / EQUAL-FLOPS comparisons.
        model: the trained model (the PEFT model under LoRA), unwrapped from any engine.
    """

    steps: int
    exports: list[Path]
    logs_dir: Path
    budget: dict
    model: object = None


def run_train(config: TrainConfig, *, callbacks=()) -> TrainResult:
    """Train a LoRA (or full) fine-tune with the configured objective.

    Args:
        config: the run's settings.
        callbacks: extra ``transformers.TrainerCallback`` objects (tests use them to interrupt).

    Returns:
        A :class:`TrainResult` (on every rank; ``exports`` and ``budget`` are filled on rank 0).
    """
    # ----- Engine and output folders -----
    on_gpu = uses_gpu(config)
    # Resolved before the resume check: grouping decides the data order, dtype and DeepSpeed the
    # engine, and config.json records what ran.
    grouping = resolve_grouping(config, on_gpu)
    engine = [resolve_dtype(config, on_gpu), resolve_deepspeed(config, on_gpu)]
    config = resolved_config(config, [grouping, *engine])
    args = training_arguments(config)
    check_engine(config, args.deepspeed)
    check_output_path(config.logs_dir, f"--ckpt-dir {config.ckpt_dir}: its logs folder", kind="folder")
    world_size = start_distributed(args)
    state = PartialState()
    # One writer per run folder: rank 0 holds the claim for the run's life (a second run on the same
    # --ckpt-dir stops here; the kernel frees it if this process dies).
    lock = Path(config.ckpt_dir).with_name(f".{Path(config.ckpt_dir).name}.lock")
    with claim(lock, f"--ckpt-dir {config.ckpt_dir}") if state.is_main_process else nullcontext():
        return _train_claimed(config, args, world_size, state, callbacks, grouping, engine)


def _train_claimed(
    config: TrainConfig,
    args: TrainingArguments,
    world_size: int,
    state: PartialState,
    callbacks,
    grouping: Choice,
    engine: list[Choice],
) -> TrainResult:
    """:func:`run_train` once the run folder is this run's (``grouping`` and ``engine``: the choices
    made before the resume check)."""
    saved = saved_run(config.logs_dir) if config.resume else None
    resume_from = check_output(config, saved)
    finished = finished_run(config)
    if finished is not None:
        return already_finished(config.logs_dir, finished)
    clear_partial_exports(config.ckpt_dir, state)

    # ----- Tokenizer, records, special ids and objective: all checked before the weights load -----
    tokenizer = load_tokenizer(config.tokenizer or config.model)
    records, data = load_run_records(config, tokenizer, saved)
    ids = resolve_special_ids(tokenizer, AutoConfig.from_pretrained(config.model), mask_id=config.mask_id)
    check_no_mask_tokens(records, ids.mask, config.data)
    objective = build_objective(config, ids.mask)
    model = load_model(config.model, dtype=config.dtype)

    # ----- The block schedule, the item plan, steps -----
    schedule, items, steps = plan_run(config, objective, records, world_size)
    args.max_steps = steps
    samples_per_step = world_size * config.micro_batch * config.grad_accum
    resume_step = checkpoint_step(resume_from) if resume_from else 0
    if resume_from:
        check_schedule(resume_from, schedule, plan_position(items, resume_step * samples_per_step))

    # ----- LoRA (or full fine-tuning) -----
    set_seed(config.seed)
    model, lora_modules = attach_adapters(model, config)

    # ----- Speed settings: auto resolved for this device and model, printed and recorded -----
    config, speed = settle_speed(config, args, model, objective, grouping, engine)
    resumes = resume_history(saved, config, resume_step)
    record = RunRecord(config, objective, steps, world_size, lora_modules, data, resumes, engine, speed)
    record.main = state.is_main_process
    if is_on(config.torch_compile):
        compile_blocks(model, on_fallback=record.compile_fell_back)

    # ----- Logs and the Trainer -----
    if state.is_main_process:
        config.logs_dir.mkdir(parents=True, exist_ok=True)
        record.write()
    csv_log = CsvLog(config.logs_dir, resume_step=resume_step) if state.is_main_process else None
    dataset = ItemDataset(records, items)
    trainer, exporter = build_trainer(config, args, model, tokenizer, objective, ids.pad, dataset, csv_log)
    markers = CompleteMarkerCallback(partial(schedule_state, schedule, items, samples_per_step))
    bar = add_callbacks(trainer, exporter, config.save_every, markers, *callbacks)

    # ----- Train, then the last merged checkpoint and the budget -----
    if resume_from:
        say(f"resuming from {resume_from} (step {resume_step} of {steps})")
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        bar.close()
    return finish_run(trainer, exporter, config.logs_dir, state)


def settle_speed(
    config: TrainConfig, args: TrainingArguments, model, objective: Objective, grouping: Choice, engine
) -> tuple[TrainConfig, list[Choice]]:
    """The speed settings for the built model: resolved, set in the Trainer's arguments, and printed
    with the engine's."""
    speed = [grouping, *resolve_model_speed(config, model, objective, uses_gpu(config))]
    config = resolved_config(config, speed)
    enable_checkpointing(args, config)
    say(format_choices(engine, "engine"))
    say(format_choices(speed))
    return config, speed


def schedule_state(schedule: BlockSchedule, items: list, samples_per_step: int, step: int) -> dict:
    """The block schedule's state after ``step`` optimizer steps, for a resumable state's marker."""
    return schedule.state(*plan_position(items, step * samples_per_step))


def build_trainer(
    config: TrainConfig,
    args: TrainingArguments,
    model,
    tokenizer,
    objective: Objective,
    pad_id: int,
    dataset: ItemDataset,
    csv_log: CsvLog | None,
) -> tuple[BlockSFTTrainer, MergedExporter]:
    """The Trainer over the run's items, and what writes its merged checkpoints."""
    trainer = BlockSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        collator=build_collator(config, objective, pad_id),
        processing_class=tokenizer,
        train_step=build_train_step(config, objective),
        lr_schedule=lr_schedule_of(config),
        meter=StepMeter(flop_model=flop_model_of(model, config)),
        csv_log=csv_log,
    )
    exporter = MergedExporter(
        trainer, ckpt_dir=config.ckpt_dir, tokenizer=tokenizer, logs_dir=config.logs_dir
    )
    return trainer, exporter


def clear_partial_exports(ckpt_dir: str, state: PartialState) -> None:
    """Delete merged checkpoints an interrupted run left half-written (rank 0, holding the claim);
    every rank has passed the resume checks before rank 0 writes anything."""
    if state.is_main_process:
        for folder in remove_partial_exports(ckpt_dir):
            say(f"removed {folder}, a merged checkpoint left half-written by an interrupted run")
    state.wait_for_everyone()


def already_finished(logs_dir: Path, budget: dict) -> TrainResult:
    """A resumed run that had ended: nothing to do but say what it wrote."""
    exports = [p for _, p in sorted(read_exports(logs_dir).items())]
    say(
        f"the run in {logs_dir} finished already ({budget['steps']} steps; merged "
        f"checkpoints {', '.join(map(str, exports)) or 'none recorded'}): nothing to do"
    )
    return TrainResult(budget["steps"], exports, logs_dir, budget)


def finish_run(trainer: BlockSFTTrainer, exporter: MergedExporter, logs_dir: Path, state) -> TrainResult:
    """The last merged checkpoint (unless the last step exported one) and the budget (rank 0)."""
    if trainer.state.global_step not in exporter.exported_steps:
        exporter.export(trainer.state.global_step)
    budget = {}
    if state.is_main_process:
        budget = budget_summary(logs_dir / "train_loss.csv")
        write_json(logs_dir / "budget.json", budget)
        say(format_budget(budget))
    state.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    return TrainResult(trainer.state.global_step, exporter.exports, logs_dir, budget, model)


def load_run_records(config: TrainConfig, tokenizer, saved: dict | None) -> tuple[list[dict], dict]:
    """The records the run trains on (the first ``--max-samples``) and the data's content digests,
    checked against the interrupted run's on ``--resume``."""
    records = load_records(config.data, tokenizer=tokenizer, max_len=config.max_len)
    data = {"records_sha256": records_sha256(records)}
    if config.max_samples:
        records = records[: config.max_samples]
    data["trained_records_sha256"] = records_sha256(records) if config.max_samples else data["records_sha256"]
    if config.resume:
        check_data_identity(saved, data, config.data)
    return records, data


# ----- The run's record ---------------------------------------------------------------------------


@dataclass
class RunRecord:
    """``config.json`` (every setting as it ran; the engine and speed choices; the data's content
    digests; the resumes that changed settings) and the reference's ``ablation_config.json``,
    written on rank 0; rewritten when a choice changes mid-run (a compile that falls back)."""

    config: TrainConfig
    objective: Objective
    steps: int
    world_size: int
    modules: tuple
    data: dict
    resumes: list[dict]
    engine: list[Choice]
    speed: list[Choice]
    main: bool = True  # rank 0 writes

    def compile_fell_back(self, note: str) -> None:
        """``torch.compile`` failed at the first step: record that the blocks run eagerly."""
        self.speed = [
            replace_choice(c, "off", note) if c.setting == "torch_compile" else c for c in self.speed
        ]
        self.config = resolved_config(self.config, self.speed)
        say(f"note: {note}")
        if self.main:
            self.write()

    def write(self) -> None:
        config, options = self.config, self.objective.options
        derived = {
            "objective_options": dataclasses.asdict(options),
            "total_steps": self.steps,
            "world_size": self.world_size,
            "samples_per_step": self.world_size * config.micro_batch * config.grad_accum,
            "lora_modules": list(self.modules),
            "data": self.data,
            "blocksft_version": blocksft.__version__,
            "torch_version": torch.__version__,
            "engine": {c.setting: c.as_dict() for c in self.engine},
            "speed": {c.setting: c.as_dict() for c in self.speed},
        }
        payload = {"config": config_to_dict(config), "derived": derived, "resumes": self.resumes}
        write_json(config.logs_dir / "config.json", payload)
        ablation = {
            "BLOCK_SIZE": config.block_size,
            "PREFIX_MASK_RATE": config.prefix_mask_rate,
            "SUFFIX_MASK_PROB": options.suffix_mask_prob,
            "MICRO_BSIZE": config.micro_batch,
            "GRAD_ACC": config.grad_accum,
            "LR": config.lr,
            "EPOCHS": config.epochs,
            "MAX_SAMPLES": config.max_samples,
            "TOTAL_TRAIN_STEPS": self.steps,
            "SAVE_EVERY": config.save_every or self.steps,
            "CKPT_DIR": config.ckpt_dir,
            "SEED": config.seed,
            "MASK_ID": options.mask_id,
            "MAX_LEN": config.max_len,
            "OBJECTIVE": config.objective,
        }
        write_json(config.logs_dir / "ablation_config.json", ablation)


def resume_history(saved: dict | None, config: TrainConfig, resume_step: int) -> list[dict]:
    """The run's resumes with changed settings (``--allow-changes``), for ``config.json``."""
    history = list((saved or {}).get("resumes", []))
    changed = resume_changes(saved, config) if saved is not None else {}
    if changed:
        history.append({"step": resume_step, "changed": {k: list(v) for k, v in changed.items()}})
    return history


# ----- What the Trainer is built from ---------------------------------------------------------------


def build_objective(config: TrainConfig, mask_id: int) -> Objective:
    """The configured :class:`blocksft.objectives.Objective` (it validates its own options)."""
    return get_objective(
        config.objective,
        mask_id=mask_id,
        block_size=config.block_size,
        eps=config.mask_eps,
        prefix_mask_rate=config.prefix_mask_rate,
        suffix_mask_prob=config.suffix_mask_prob,
        supervise_padding=config.supervise_padding,
        loss_weighting=config.loss_weighting,
        loss_normalize=config.loss_normalize,
    )


def build_collator(config: TrainConfig, objective: Objective, pad_id: int) -> PadCollator:
    """How the run pads its batches: to ``--max-len`` or to each batch's longest record."""
    return PadCollator(
        pad_id=pad_id,
        multiple_of=config.pad_to_multiple_of,
        pad_to=config.max_len if config.pad_to_max_len else None,
        supervise_padding=config.supervise_padding,
        complete_blocks=config.block_size if objective.blockwise else None,
        max_len=config.max_len,
    )


def build_train_step(config: TrainConfig, objective: Objective) -> TrainStep:
    """Noise + forward + loss of one micro-batch, with the run's settings."""
    return TrainStep(
        objective,
        seed=config.seed,
        sparse_logits=config.sparse_logits,
        attend_padding=config.attend_padding,
        ce_chunk_size=config.ce_chunk_size,
    )


def lr_schedule_of(config: TrainConfig) -> WarmupCosine:
    """The run's warmup-cosine schedule (``--warmup-ratio``, ``--min-lr-ratio``, ``--warmup-type``)."""
    return WarmupCosine(config.warmup_ratio, config.min_lr_ratio, config.warmup_type)


def attach_adapters(model, config: TrainConfig):
    """LoRA on the configured targets (or every weight trainable); prints what is trained."""
    if config.full_finetune:
        model.requires_grad_(True)
        count = sum(p.numel() for p in model.parameters())
        say(f"full fine-tuning: {count:,} trainable parameters")
        return model, ()
    model, report = apply_lora(
        model,
        targets=config.lora_targets,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
    )
    say(report.summary())
    return model, report.modules


def flop_model_of(model, config: TrainConfig) -> FlopModel:
    """The shapes that decide a step's FLOPs, for the logs' FLOP counts."""
    mc = model.config
    trained = [p for p in model.parameters() if p.requires_grad]
    return FlopModel(
        body_params=sum(full_numel(p) for n, p in model.named_parameters() if ".blocks." in n),
        trained_params=None if config.full_finetune else sum(full_numel(p) for p in trained),
        head_params=mc.d_model * mc.embedding_size,
        n_layers=mc.n_layers,
        d_model=mc.d_model,
        recompute=is_on(config.gradient_checkpointing),
    )


def add_callbacks(trainer, exporter: MergedExporter, save_every: int, *extra) -> LossProgressCallback:
    """Our progress bar instead of the stock one, merged exports, and the other callbacks; returns
    the progress callback (to close its bar however training ends)."""
    trainer.remove_callback(ProgressCallback)
    bar = LossProgressCallback()
    for callback in (bar, ExportCallback(exporter, save_every), *extra):
        trainer.add_callback(callback)
    return bar
