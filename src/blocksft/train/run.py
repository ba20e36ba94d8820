"""``run_train(config)``: a whole training run, top to bottom.

Engine and folders -> tokenizer, model, mask id -> records and the item plan -> LoRA -> Trainer ->
train (or resume) -> final merged checkpoint and the budget. Launch it with ``python``/``blocksft
train`` (one process; CPU for tests), ``torchrun``, ``deepspeed --module blocksft.train`` or
``accelerate launch``: the Trainer picks the distributed setup up from the launcher.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from blocksft.errors import BlocksftError

from .callbacks import (
    CompleteMarkerCallback,
    ExportCallback,
    LossProgressCallback,
    MergedExporter,
    read_exports,
)
from .checkpoint import remove_partial_exports
from .config import TrainConfig, resolve_deepspeed_config
from .data import ItemDataset, PadCollator, group_by_length, plan_items, schedule_state_at, steps_for
from .logs import CsvLog, budget_summary, format_budget, say, write_json, write_run_config
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
from .speed import (
    Choice,
    format_choices,
    free_device_memory,
    is_on,
    replace_choice,
    resolve_checkpointing,
    resolve_compile,
    resolve_grouping,
    run_memory_estimate,
)
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
    from contextlib import nullcontext

    from accelerate import PartialState

    from blocksft.outputs import check_output_path, claim

    # ----- Engine and output folders -----
    on_gpu = uses_gpu(config)
    grouping = resolve_grouping(config, on_gpu)  # before the resume check: it decides the data order
    config = dataclasses.replace(config, group_by_length=grouping.ran)
    args = training_arguments(config)
    check_engine(config, args.deepspeed)
    check_output_path(config.logs_dir, f"--ckpt-dir {config.ckpt_dir}: its logs folder", kind="folder")
    world_size = start_distributed(args)
    state = PartialState()
    # One writer per run folder: rank 0 holds the claim for the run's life (a second run on the same
    # --ckpt-dir stops here; the kernel frees it if this process dies).
    lock = Path(config.ckpt_dir).with_name(f".{Path(config.ckpt_dir).name}.lock")
    with claim(lock, f"--ckpt-dir {config.ckpt_dir}") if state.is_main_process else nullcontext():
        return _train_claimed(config, args, world_size, state, callbacks, grouping=grouping)


def _train_claimed(
    config: TrainConfig, args, world_size: int, state, callbacks, *, grouping: Choice
) -> TrainResult:
    """:func:`run_train` once the run folder is this run's (``grouping``: the length-grouping choice,
    made before the resume check since it decides the data order)."""
    on_gpu = uses_gpu(config)
    from transformers import AutoConfig

    import blocksft.model  # noqa: F401  (registers LLaDA with the Auto classes)
    from blocksft.data.records import check_no_mask_tokens, load_records, records_sha256
    from blocksft.generation.text import resolve_mask_id
    from blocksft.model.loading import load_model, load_tokenizer

    saved = saved_run(config.logs_dir) if config.resume else None
    resume_from = check_output(config, saved)
    finished = finished_run(config)
    if finished is not None:
        exports = [p for _, p in sorted(read_exports(config.logs_dir).items())]
        say(
            f"the run in {config.logs_dir} finished already ({finished['steps']} steps; merged "
            f"checkpoints {', '.join(map(str, exports)) or 'none recorded'}): nothing to do"
        )
        return TrainResult(finished["steps"], exports, config.logs_dir, finished)
    if state.is_main_process:
        for folder in remove_partial_exports(config.ckpt_dir):
            say(f"removed {folder}, a merged checkpoint left half-written by an interrupted run")
    state.wait_for_everyone()  # every rank has checked before rank 0 writes anything

    # ----- Tokenizer, records, mask id and objective: all checked before the weights load -----
    tokenizer = load_tokenizer(config.tokenizer or config.model)
    records = load_records(config.data, tokenizer=tokenizer, max_len=config.max_len)
    data = {"records_sha256": records_sha256(records)}
    if config.max_samples:
        records = records[: config.max_samples]
    data["trained_records_sha256"] = records_sha256(records) if config.max_samples else data["records_sha256"]
    if config.resume:
        check_data_identity(saved, data, config.data)
    model_config = AutoConfig.from_pretrained(config.model)
    pad_id = padding_id(tokenizer, model_config)
    mask_id = resolve_mask_id(model_config, tokenizer, config.mask_id, pad_id=pad_id)
    check_no_mask_tokens(records, mask_id, config.data)
    objective = build_objective(config, mask_id)
    model = load_model(config.model, dtype=training_dtype(config))

    # ----- The block schedule, the item plan, steps -----
    schedule, items, steps = plan_run(config, objective, records, world_size)
    args.max_steps = steps
    samples_per_step = world_size * config.micro_batch * config.grad_accum

    def schedule_state(step: int) -> dict:
        return schedule_state_at(schedule, items, step * samples_per_step)

    if resume_from:
        check_schedule(resume_from, schedule, schedule_state(checkpoint_step(resume_from)))

    # ----- LoRA (or full fine-tuning) -----
    from transformers import set_seed

    set_seed(config.seed)
    model, lora_modules = attach_adapters(model, config)

    # ----- Speed settings: auto resolved for this device and model, printed and recorded -----
    choices = [grouping, *resolve_model_speed(config, model, objective, on_gpu)]
    config = dataclasses.replace(config, **{c.setting: c.ran for c in choices})
    for name, value in checkpointing_arguments(type(args), is_on(config.gradient_checkpointing)).items():
        setattr(args, name, value)
    say(format_choices(choices))

    resume_step = checkpoint_step(resume_from) if resume_from else 0
    resumes = resume_history(saved, config, resume_step)

    def write_config() -> None:
        speed = {c.setting: c.as_dict() for c in choices}
        run_config = dataclasses.replace(config, **{c.setting: c.ran for c in choices})
        write_run_config(
            run_config,
            objective,
            steps=steps,
            world_size=world_size,
            modules=lora_modules,
            data=data,
            resumes=resumes,
            speed=speed,
        )

    def back_to_eager(note: str) -> None:
        choices[:] = [replace_choice(c, "off", note) if c.setting == "torch_compile" else c for c in choices]
        say(f"note: {note}")
        if state.is_main_process:
            write_config()

    if is_on(config.torch_compile):
        compile_blocks(model, on_fallback=back_to_eager)

    # ----- Logs and the Trainer -----
    csv_log = None
    if state.is_main_process:
        config.logs_dir.mkdir(parents=True, exist_ok=True)
        csv_log = CsvLog(config.logs_dir, resume_step=resume_step)
        write_config()
    trainer = BlockSFTTrainer(
        model=model,
        args=args,
        train_dataset=ItemDataset(records, items),
        data_collator=build_collator(config, objective, pad_id),
        processing_class=tokenizer,
        train_step=build_train_step(config, objective),
        lr_schedule=lr_schedule_of(config),
        meter=StepMeter(flop_model=flop_model_of(model, config)),
        csv_log=csv_log,
    )
    exporter = MergedExporter(
        trainer, ckpt_dir=config.ckpt_dir, tokenizer=tokenizer, logs_dir=config.logs_dir
    )
    bar = add_callbacks(
        trainer, exporter, config.save_every, CompleteMarkerCallback(schedule_state), *callbacks
    )

    # ----- Train, then the last merged checkpoint and the budget -----
    if resume_from:
        say(f"resuming from {resume_from} (step {resume_step} of {steps})")
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        bar.close()
    if trainer.state.global_step not in exporter.exported_steps:
        exporter.export(trainer.state.global_step)
    budget = {}
    if state.is_main_process:
        budget = budget_summary(config.logs_dir / "train_loss.csv")
        write_json(config.logs_dir / "budget.json", budget)
        say(format_budget(budget))
    state.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    return TrainResult(trainer.state.global_step, exporter.exports, config.logs_dir, budget, model)


# ----- Engine -------------------------------------------------------------------------------------


def uses_gpu(config: TrainConfig) -> bool:
    """Whether the run trains on GPUs (one is visible and ``--use-cpu`` is not set)."""
    return torch.cuda.is_available() and not config.use_cpu


def training_dtype(config: TrainConfig) -> str:
    """``bf16`` on a GPU that supports it (or as asked), ``fp32`` on CPU."""
    if config.dtype != "auto":
        return config.dtype
    on_gpu = uses_gpu(config)
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"


def training_arguments(config: TrainConfig):
    """The ``TrainingArguments`` for a config (``max_steps`` is set once the data is planned)."""
    from transformers import TrainingArguments

    on_gpu = uses_gpu(config)
    dtype = training_dtype(config)
    if not 0.0 <= config.warmup_ratio < 1.0:
        raise BlocksftError(f"--warmup-ratio must be in [0, 1), got {config.warmup_ratio}")
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
        **checkpointing_arguments(TrainingArguments, config.gradient_checkpointing == "on"),
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


def lr_schedule_of(config: TrainConfig) -> WarmupCosine:
    """The run's warmup-cosine schedule (``--warmup-ratio``, ``--min-lr-ratio``, ``--warmup-type``)."""
    return WarmupCosine(config.warmup_ratio, config.min_lr_ratio, config.warmup_type)


def checkpointing_arguments(arguments_class, enabled: bool) -> dict:
    """Gradient checkpointing under the name this transformers has (``activation_checkpointing``
    replaced ``gradient_checkpointing``, which now warns), non-reentrant."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments_class)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False}}


def start_distributed(args) -> int:
    """Set the distributed backend up now (ZeRO-3 partitions the model while loading it); the world size."""
    world_size = args.world_size  # first access initialises the process group
    if args.deepspeed and args.use_cpu and world_size > 1:
        # accelerate's CPU path leaves DeepSpeed's own process group uninitialised, which ZeRO-3's
        # partitioned model loading needs (on GPUs accelerate initialises it).
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    return world_size


def check_engine(config: TrainConfig, deepspeed_config: str | None) -> None:
    """Refuse options the engine cannot honour: the chunked head reads the head's weight directly,
    which ZeRO-3 partitions across ranks."""
    import json

    if not (config.ce_chunk_size and deepspeed_config):
        return
    stage = json.loads(Path(deepspeed_config).read_text()).get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise BlocksftError(
            "--ce-chunk-size does not work with DeepSpeed ZeRO-3 (the LM head is partitioned): "
            "use --deepspeed zero2 or --ce-chunk-size 0"
        )


def resolve_model_speed(config: TrainConfig, model, objective, on_gpu: bool) -> list[Choice]:
    """``torch_compile`` and ``gradient_checkpointing`` for a run whose model is built (see
    :mod:`blocksft.train.speed`); the memory estimate only when checkpointing is ``auto`` on a GPU."""
    estimate = free = None
    if on_gpu and config.gradient_checkpointing == "auto":
        estimate = run_memory_estimate(model, config, blockwise=objective.blockwise)
        free = free_device_memory()
    return [resolve_compile(config, on_gpu), resolve_checkpointing(config, on_gpu, estimate, free)]


def compile_blocks(model, backend: str = "inductor", on_fallback=None) -> None:
    """``torch.compile`` each transformer block's forward (dynamic shapes: batches differ in length).

    The blocks, not the whole model: the number of loss positions makes the head's input
    data-dependent in size, which breaks a whole-model graph. The compiled forward is an instance
    attribute of the block; deleting it goes back to eager. ``backend``: ``torch.compile``'s (tests
    trace with ``"eager"``, which skips code generation).

    Compiling happens at a block's first call. If it fails there (no working compiler, an
    unsupported operation: a ``TorchDynamoException``), every block goes back to eager, that call
    runs eagerly, and ``on_fallback(note)`` is told once; errors of the compiled code itself
    (out of memory, ...) are raised as they are.
    """
    from torch._dynamo.exc import TorchDynamoException

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = list(base.blocks)
    failed: list[str] = []

    def guarded(block, compiled):
        def forward(*args, **kwargs):
            if not failed:
                try:
                    return compiled(*args, **kwargs)
                except TorchDynamoException as error:
                    failed.append(compile_failure_note(error))
                    for each in blocks:
                        each.__dict__.pop("forward", None)
                    if on_fallback is not None:
                        on_fallback(failed[0])
            return type(block).forward(block, *args, **kwargs)

        return forward

    for block in blocks:
        block.forward = guarded(block, torch.compile(block.forward, dynamic=True, backend=backend))


def compile_failure_note(error: Exception) -> str:
    """One line saying why compiling failed (the compiler's own error, when dynamo wrapped it)."""
    inner = getattr(error, "inner_exception", None) or error
    text = (str(inner).strip().splitlines() or [""])[0][:200]
    reason = f"{type(error).__name__}: {type(inner).__name__}: {text}"
    return f"torch.compile failed ({reason}); the blocks run eagerly"


def add_callbacks(trainer, exporter: MergedExporter, save_every: int, *extra) -> LossProgressCallback:
    """Our progress bar instead of the stock one, merged exports, and the other callbacks; returns
    the progress callback (to close its bar however training ends)."""
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    bar = LossProgressCallback()
    for callback in (bar, ExportCallback(exporter, save_every), *extra):
        trainer.add_callback(callback)
    return bar


def resume_history(saved: dict | None, config: TrainConfig, resume_step: int) -> list[dict]:
    """The run's resumes with changed settings (``--allow-changes``), for ``config.json``."""
    history = list((saved or {}).get("resumes", []))
    changed = resume_changes(saved, config) if saved is not None else {}
    if changed:
        history.append({"step": resume_step, "changed": {k: list(v) for k, v in changed.items()}})
    return history


# ----- Model, tokens -----------------------------------------------------------------------------


def padding_id(tokenizer, model_config) -> int:
    """The pad id (the reference falls back to EOS when the tokenizer has no pad token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, model_config.pad_token_id):
        if candidate is not None:
            return int(candidate)
    raise BlocksftError("the tokenizer has neither a pad nor an EOS token: cannot pad batches")


def attach_adapters(model, config: TrainConfig):
    """LoRA on the configured targets (or every weight trainable); prints what is trained."""
    from .lora import apply_lora

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
    def count(params):
        return sum(int(getattr(p, "ds_numel", p.numel())) for p in params)

    mc = model.config
    return FlopModel(
        body_params=count(p for n, p in model.named_parameters() if ".blocks." in n),
        trained_params=None
        if config.full_finetune
        else count(p for p in model.parameters() if p.requires_grad),
        head_params=mc.d_model * mc.embedding_size,
        n_layers=mc.n_layers,
        d_model=mc.d_model,
        recompute=is_on(config.gradient_checkpointing),
    )


# ----- Data ---------------------------------------------------------------------------------------


def plan_run(config: TrainConfig, objective, records, world_size: int):
    """The block schedule, the items the run trains on (in order) and its optimizer steps (printed)."""
    schedule = block_schedule(config, objective, records)
    samples_per_step = world_size * config.micro_batch * config.grad_accum
    items = plan_items(schedule, config.epochs, blockwise=objective.blockwise)
    steps = steps_for(items, samples_per_step, config.total_steps)
    say(describe_plan(config, schedule, items, steps, samples_per_step, world_size))
    say(f"logs in {config.logs_dir}/, merged checkpoints in {config.ckpt_dir}_stepNNNN/")
    items = items[: steps * samples_per_step]
    if is_on(resolve_grouping(config, uses_gpu(config)).ran):  # run_train has resolved it already
        items = group_by_length(
            items,
            [len(r["full_ids"]) for r in records],
            slice_size=world_size * config.micro_batch,
            window=config.length_group_steps * samples_per_step,
            seed=config.seed,
        )
    return schedule, items, steps


def build_objective(config: TrainConfig, mask_id: int):
    """The configured :class:`blocksft.objectives.Objective` (it validates its own options)."""
    from blocksft.objectives import get_objective

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


def build_collator(config: TrainConfig, objective, pad_id: int) -> PadCollator:
    """How the run pads its batches: to ``--max-len`` or to each batch's longest record."""
    return PadCollator(
        pad_id=pad_id,
        multiple_of=config.pad_to_multiple_of,
        pad_to=config.max_len if config.pad_to_max_len else None,
        supervise_padding=config.supervise_padding,
        complete_blocks=config.block_size if objective.blockwise else None,
        max_len=config.max_len,
    )


def build_train_step(config: TrainConfig, objective) -> TrainStep:
    """Noise + forward + loss of one micro-batch, with the run's settings."""
    return TrainStep(
        objective,
        seed=config.seed,
        sparse_logits=config.sparse_logits,
        attend_padding=config.attend_padding,
        ce_chunk_size=config.ce_chunk_size,
    )


def block_schedule(config: TrainConfig, objective, records):
    """The seeded block schedule over the records (one rank: the Trainer's loader shards the items)."""
    from blocksft.schedule import BlockSchedule

    prompt_lens = [int(r["prompt_len"]) for r in records]
    answer_lens = [len(r["full_ids"]) - p for r, p in zip(records, prompt_lens)]
    fixed_len = config.max_len if config.pad_to_max_len else None
    counts = objective.block_counts(prompt_lens, answer_lens, max_len=fixed_len)
    return BlockSchedule(
        counts if counts is not None else [1] * len(records),
        seed=config.seed,
        shuffle=config.shuffle,
        drop_exhausted=config.drop_exhausted,
    )


def describe_plan(config, schedule, items, steps, samples_per_step, world_size) -> str:
    """What the run will do, and when its budget ends it early."""
    text = (
        f"{config.objective}: {schedule.num_samples:,} samples x {config.epochs} epoch(s); "
        f"{steps} optimizer steps of {samples_per_step} samples (world size {world_size} x micro-batch "
        f"{config.micro_batch} x grad-accum {config.grad_accum})"
    )
    if config.objective != "fullseq":
        used = sum(item.block >= 0 for item in items[: steps * samples_per_step])
        text += f"; {used:,} of {schedule.total_pairs:,} (sample, block) pairs"
        if used == schedule.total_pairs and config.epochs > schedule.epochs_to_cover:
            text += f": all used after epoch {schedule.epochs_to_cover}, so the run stops early there"
    return text
