"""Every knob of a training run in one dataclass, :class:`TrainConfig`, and the shipped recipes.

Each field is a flag of ``blocksft train`` (``--micro-batch`` and ``--micro_batch``) and a key of a
YAML recipe (``--config paper_blockwise`` or a path; the shipped ones are in ``recipes/``). Defaults
are the reference scripts' (``train_blockwise.py`` / ``train_fullseq.py``); where a default depends
on the objective (sample budget, checkpoint folder) it is ``None`` here and resolved in
``__post_init__``. Settings that take ``auto`` are resolved for the device when the run starts
(:mod:`blocksft.train.speed`, :mod:`blocksft.train.engine`); ``config.json`` beside the logs records
what ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blocksft.config.objective import (
    LossNormalize,
    LossWeighting,
    ObjectiveName,
    check_loss_options,
    check_noise_options,
)
from blocksft.errors import BlocksftError

# auto: resolved when the run starts (blocksft.train.speed); older configs' booleans read as on/off.
Switch = Literal["auto", "on", "off"]
SWITCH_SETTINGS = ("torch_compile", "gradient_checkpointing", "group_by_length")

# The reference's budgets: 200 (blockwise) and 300 (full-seq) steps of 32 samples on one GPU.
DEFAULT_MAX_SAMPLES = {"blockwise": 200 * 32, "blockwise_visible_suffix": 200 * 32, "fullseq": 300 * 32}

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEEPSPEED_DIR = Path(__file__).resolve().parent / "deepspeed"


def normalise_switch(value) -> str:
    """``auto``/``on``/``off`` from a flag, a YAML value or an older run's boolean."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).lower()
    text = {"true": "on", "false": "off"}.get(text, text)
    if text not in ("auto", "on", "off"):
        raise ValueError(f"expected auto, on or off, got {value!r}")
    return text


def is_on(value: str) -> bool:
    """A resolved switch as a bool (an ``auto`` must be resolved before anything reads it)."""
    if value == "auto":
        raise ValueError("an auto setting was read before it was resolved")
    return value == "on"


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """A training run: objective, data, model, LoRA, optimiser, schedule, saving and logging."""

    # ----- What to train -----
    objective: ObjectiveName = field(
        default="blockwise",
        metadata=_help(
            "blockwise (the paper), fullseq (classical masked SFT), or blockwise_visible_suffix "
            "(blockwise loss with the answer after the active block left visible)"
        ),
    )
    model: str = field(
        default="GSAI-ML/LLaDA-8B-Instruct", metadata=_help("base model: hub id or local folder")
    )
    tokenizer: str | None = field(
        default=None, metadata=_help("tokenizer hub id or folder (default: the model's)")
    )
    data: str = field(
        default="MathQA_256.pt",
        metadata=_help(
            "record file from `blocksft prepare` (or the reference pt.py)", aliases=("--data-file",)
        ),
    )
    max_len: int = field(default=256, metadata=_help("longest record allowed (prompt + answer tokens)"))
    mask_id: int | None = field(
        default=None,
        metadata=_help("mask token id (default: the model config's mask_token_id, 126336 for LLaDA)"),
    )
    # ----- Objective -----
    block_size: int = field(default=32, metadata=_help("answer block size (blockwise objectives)"))
    prefix_mask_rate: float = field(
        default=0.0,
        metadata=_help("mask rate of the answer prefix before the active block (never in the loss)"),
    )
    suffix_mask_prob: float | None = field(
        default=None,
        metadata=_help(
            "probability of masking each answer token after the active block (never in the loss); "
            "default: the objective's, 1.0 for blockwise (the paper), 0.0 for blockwise_visible_suffix"
        ),
    )
    mask_eps: float = field(default=1e-3, metadata=_help("smallest mask rate, in (0, 1]: p ~ U(mask_eps, 1)"))
    loss_weighting: LossWeighting = field(
        default="none", metadata=_help("per-token loss weight: none (reference) or inv_p (LLaDA's 1/p)")
    )
    loss_normalize: LossNormalize = field(
        default="per_sample_masked",
        metadata=_help(
            "per_sample_masked (reference: mean over each sample's loss tokens, then over samples), "
            "answer_len (LLaDA SFT, with inv_p), batch_tokens (batch sum / maskable tokens), "
            "batch_masked (batch sum / loss tokens)"
        ),
    )
    supervise_padding: bool = field(
        default=False,
        metadata=_help(
            "LLaDA's SFT recipe: the EOS padding is answer (noised, trained, attended, counted by "
            "answer_len); each batch is padded to its longest record (blockwise: at least to each row's "
            "last block end), or to --max-len with --pad-to-max-len (blockwise: its blocks trained too)"
        ),
    )
    # ----- Batching -----
    micro_batch: int = field(
        default=32, metadata=_help("samples per device per forward pass", aliases=("--micro-bsize",))
    )
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step per device"))
    pad_to_multiple_of: int = field(
        default=8, metadata=_help("pad each batch to its longest record rounded up to this multiple")
    )
    pad_to_max_len: bool = field(
        default=False,
        metadata=_help("pad every batch to --max-len, as the reference does (the paper recipes set it)"),
    )
    attend_padding: bool = field(
        default=False,
        metadata=_help(
            "let the model attend to padding (the reference passes no attention mask); the result then "
            "depends on the padded length, so pair it with --pad-to-max-len to reproduce the reference"
        ),
    )
    sparse_logits: bool = field(
        default=True,
        metadata=_help("compute LM-head logits only where loss is taken; --no-sparse-logits = full logits"),
    )
    ce_chunk_size: int = field(
        default=0,
        metadata=_help(
            "run the LM head and the cross-entropy together over this many loss positions at a time, "
            "with their gradients computed on the spot: no [N, vocab] logits are kept (0 = off)"
        ),
    )
    group_by_length: Switch = field(
        default="auto",
        metadata=_help(
            "put records of similar length in the same micro-batch (less padding): lengths are sorted "
            "within windows of --length-group-steps steps of an epoch; same items, another order. auto: "
            "on a GPU when the loss is a per-sample mean and padding is neither fixed, attended nor trained"
        ),
    )
    length_group_steps: int = field(
        default=50, metadata=_help("with --group-by-length: optimizer steps per sorting window")
    )
    shuffle: bool = field(default=True, metadata=_help("shuffle the samples each epoch (seeded)"))
    drop_exhausted: bool = field(
        default=False,
        metadata=_help(
            "leave samples whose blocks are all used out of later epochs (the reference keeps them as "
            "loss-free rows)"
        ),
    )
    num_workers: int = field(default=0, metadata=_help("data-loader worker processes"))
    # ----- Budget -----
    epochs: int = field(default=1, metadata=_help("passes over the samples (blockwise: one block each)"))
    max_samples: int | None = field(
        default=None,
        metadata=_help("samples used from the record file (default 6400 blockwise, 9600 fullseq; 0 = all)"),
    )
    total_steps: int | None = field(
        default=None,
        metadata=_help(
            "optimizer steps (default: max_samples * epochs / (world * micro_batch * grad_accum))"
        ),
    )
    # ----- Optimiser -----
    lr: float = field(default=1e-5, metadata=_help("peak learning rate (AdamW)"))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2"))
    adam_eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_ratio: float = field(default=0.1, metadata=_help("warmup, as a fraction of the steps, in [0, 1)"))
    warmup_type: Literal["linear", "log"] = field(
        default="linear",
        metadata=_help(
            "warmup curve: linear (transformers' cosine_with_min_lr) or log (DeepSpeed WarmupCosineLR's "
            "default, what the reference runs: the first two steps at 0, then log(k - 1) / log(warmup))"
        ),
    )
    min_lr_ratio: float = field(default=0.01, metadata=_help("cosine decay floor, as a fraction of --lr"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping (0 = off)"))
    seed: int = field(default=42, metadata=_help("seed of data order, block schedule, noise and LoRA init"))
    # ----- LoRA -----
    full_finetune: bool = field(default=False, metadata=_help("train every weight instead of LoRA adapters"))
    lora_r: int = field(default=256, metadata=_help("LoRA rank"))
    lora_alpha: float = field(default=512.0, metadata=_help("LoRA alpha (scaling = alpha / r)"))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout"))
    lora_targets: str = field(
        default="reference",
        metadata=_help(
            "reference (q_proj,k_proj,v_proj,up_proj: what the reference script effectively adapts), all "
            "(every linear layer of the blocks), or a comma list of block layer names"
        ),
    )
    # ----- Precision and engines -----
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto",
        metadata=_help(
            "weights and merged checkpoints: auto = bf16 on a GPU that has it, else fp32 (resolved for the "
            "device when the run starts, printed and recorded; not the checkpoint's dtype, unlike eval)"
        ),
    )
    deepspeed: str | None = field(
        default="auto",
        metadata=_help(
            "DeepSpeed config: zero2, zero3 (shipped), a JSON path, none; auto = zero2 on GPUs when "
            "deepspeed is installed, else none (printed with the reason and recorded)"
        ),
    )
    gradient_checkpointing: Switch = field(
        default="auto",
        metadata=_help(
            "recompute activations in the backward pass (saves memory); auto: on a GPU only when the "
            "estimated peak memory without it exceeds nine tenths of the free memory"
        ),
    )
    torch_compile: Switch = field(
        default="auto",
        metadata=_help(
            "compile each transformer block with torch.compile (dynamic shapes; the first steps compile); "
            "auto: on a GPU, back to eager with a note if compiling fails"
        ),
    )
    use_cpu: bool = field(default=False, metadata=_help("train on CPU even when a GPU is present"))
    # ----- Saving and logging -----
    ckpt_dir: str | None = field(
        default=None,
        metadata=_help(
            "checkpoint root: merged models go to <ckpt_dir>_stepNNNN, logs to <ckpt_dir>_logs "
            "(default ckpts_stagewise_sft_<block_size> / ckpts_fullseq_sft)"
        ),
    )
    save_every: int = field(
        default=0, metadata=_help("save a merged checkpoint every N steps (0 = only at the end)")
    )
    checkpoint_every: int = field(
        default=50,
        metadata=_help("save resumable state (optimizer, scheduler, RNG) every N steps (0 = never)"),
    )
    keep_checkpoints: int = field(
        default=2, metadata=_help("resumable states kept on disk (older ones deleted)")
    )
    resume: bool = field(
        default=False, metadata=_help("continue the run in <ckpt_dir>_logs from its last complete state")
    )
    allow_changes: str = field(
        default="",
        metadata=_help(
            "with --resume: settings that may differ from the run's, as a comma list (lr, max_grad_norm), "
            "e.g. --allow-changes lr --lr 5e-6 after a NaN stop; each change is recorded in config.json"
        ),
    )
    log_every: int = field(default=1, metadata=_help("write a CSV row every N optimizer steps"))
    report_to: Literal["none", "tensorboard", "wandb"] = field(
        default="none", metadata=_help("also report metrics to TensorBoard or Weights & Biases")
    )

    def __post_init__(self):
        for name in SWITCH_SETTINGS:
            setattr(self, name, normalise_switch(getattr(self, name)))
        for name in ("max_len", "block_size", "micro_batch", "grad_accum", "epochs", "pad_to_multiple_of"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lora_r", "log_every", "length_group_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("save_every", "checkpoint_every", "keep_checkpoints", "num_workers", "ce_chunk_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lora_dropout", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        # A warmup of the whole run would never reach the peak learning rate nor decay from it.
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        suffix = 1.0 if self.suffix_mask_prob is None else self.suffix_mask_prob  # None: the objective's
        # The ranges of ObjectiveOptions, named by field as every check here is.
        check_noise_options(
            eps=self.mask_eps, prefix_mask_rate=self.prefix_mask_rate, suffix_mask_prob=suffix, spell=str
        )
        check_loss_options(self.loss_weighting, self.loss_normalize, spell=str)
        if self.ce_chunk_size and not self.sparse_logits:
            raise ValueError("ce_chunk_size works on the loss positions only: it needs sparse_logits")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.total_steps is not None and self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if self.max_samples is None:
            self.max_samples = DEFAULT_MAX_SAMPLES[self.objective]
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0 (0 = all), got {self.max_samples}")
        if self.ckpt_dir is None:
            self.ckpt_dir = (
                "ckpts_fullseq_sft"
                if self.objective == "fullseq"
                else f"ckpts_stagewise_sft_{self.block_size}"
            )
        if self.deepspeed is not None and self.deepspeed.lower() == "none":
            self.deepspeed = None
        refused = [name for name in self.allowed_changes if name not in CHANGEABLE_ON_RESUME]
        if refused:
            raise ValueError(
                f"--allow-changes {','.join(refused)}: only {', '.join(CHANGEABLE_ON_RESUME)} may change "
                "when resuming (the others change the data plan or the model)"
            )
        if self.allowed_changes and not self.resume:
            raise ValueError("--allow-changes only applies with --resume")

    @property
    def allowed_changes(self) -> list[str]:
        """``allow_changes`` as a list of setting names."""
        return [name.strip().replace("-", "_") for name in self.allow_changes.split(",") if name.strip()]

    @property
    def logs_dir(self) -> Path:
        return Path(f"{self.ckpt_dir}_logs")

    @property
    def checkpoints_dir(self) -> Path:
        """Where the resumable states (Trainer checkpoints) live."""
        return self.logs_dir / "checkpoints"


# Settings a resumed run may change; every other one must equal the interrupted run's.
RESUMABLE_CHANGES = (
    "resume",
    "allow_changes",
    "ce_chunk_size",
    "gradient_checkpointing",
    "torch_compile",
    "report_to",
    "num_workers",
    "save_every",
    "checkpoint_every",
    "keep_checkpoints",
)


# Settings that may change on resume when named in --allow-changes: the optimiser's step size and
# clipping (what a NaN stop calls for). The new peak LR rescales the restored schedule.
CHANGEABLE_ON_RESUME = ("lr", "max_grad_norm")


def config_differences(saved: dict, current: dict) -> dict[str, tuple]:
    """Fields whose values differ between a saved run config and the current one (for --resume).

    A field the saved config lacks (added to blocksft after that run started) had its default.
    """
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in RESUMABLE_CHANGES}
    old = {n: saved.get(n, default) for n, default in fields.items()}
    for name in set(SWITCH_SETTINGS) & set(old):
        # Runs saved before these became auto/on/off recorded booleans (False was the default).
        old[name] = normalise_switch(old[name] if name in saved else False)
    for name in ("dtype", "deepspeed"):
        # Runs saved before these were recorded as resolved wrote "auto": it resolves as it did then.
        if old[name] == "auto":
            old[name] = current.get(name)
    return {n: (old[n], current.get(n)) for n in sorted(fields) if old[n] != current.get(n)}


def available_recipes() -> list[str]:
    """Names of the YAML recipes shipped with blocksft (``--config NAME``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A ``--config`` value: an existing YAML path, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else name_or_path}.yaml"
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    raise BlocksftError(
        f"--config {name_or_path}: no such file and no shipped recipe of that name "
        f"(shipped: {', '.join(available_recipes())})"
    )
