"""Settings of ``blocksft demo``: the default run (minutes on 2 CPU cores) and ``--quick``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from blocksft.demo.task import TaskSpec


def _help(text: str) -> dict:
    return {"help": text}


# --quick: a smoke run of the same pipeline in well under a minute (the tests run it). It replaces
# only the settings left at their defaults, so `--quick --sft-steps 50` keeps its 50.
QUICK = dict(
    n_train=600,
    n_test=24,
    d_model=32,
    n_layers=2,
    n_heads=2,
    mlp_hidden_size=64,
    pretrain_steps=12,
    sft_steps=12,
    micro_batch=8,
    eval_block_lengths="8,32",
)


@dataclass
class DemoConfig:
    """Everything ``blocksft demo`` does is set here."""

    out: str = field(default="blocksft-demo", metadata=_help("output folder (report.md, plots, checkpoints)"))
    seed: int = field(default=0, metadata=_help("seeds the task, the models, the data order and the noise"))
    quick: bool = field(
        default=False, metadata=_help("a tiny smoke run of the same pipeline (well under a minute)")
    )
    overwrite: bool = field(default=False, metadata=_help("replace an existing output folder"))
    # The task
    n_train: int = field(
        default=20000, metadata=_help("training problems (SFT; their stories also pretrain)")
    )
    n_test: int = field(default=200, metadata=_help("held-out test problems"))
    min_steps: int = field(default=3, metadata=_help("fewest reasoning steps (answer lines) per problem"))
    max_steps: int = field(default=3, metadata=_help("most reasoning steps per problem"))
    max_value: int = field(default=12, metadata=_help("largest count in a story"))
    max_operand: int = field(default=3, metadata=_help("largest gain or loss in one step"))
    # The model
    family: Literal["llada", "dream"] = field(
        default="llada",
        metadata=_help(
            "model family of the tiny model: its architecture, special tokens and chat template "
            "(dream: grouped key/value heads, q/k/v biases, shifted logits, ChatML)"
        ),
    )
    vocab_size: int = field(
        default=600, metadata=_help("tokenizer vocabulary budget (BPE trained on the task)")
    )
    d_model: int = field(default=128, metadata=_help("model width"))
    n_layers: int = field(default=4, metadata=_help("transformer blocks"))
    n_heads: int = field(default=4, metadata=_help("attention heads"))
    mlp_hidden_size: int = field(default=384, metadata=_help("SwiGLU hidden size"))
    init_std: float = field(
        default=0.1,
        metadata=_help("std of the random init (LLaDA's 0.02 leaves this tiny model on a long plateau)"),
    )
    # Training
    pretrain_steps: int = field(default=800, metadata=_help("masked-diffusion pretraining steps of the base"))
    pretrain_lr: float = field(default=2e-3, metadata=_help("pretraining peak learning rate"))
    sft_steps: int = field(default=800, metadata=_help("optimizer steps of each SFT run (equal for both)"))
    budget: Literal["equal-flops", "equal-tokens"] = field(
        default="equal-flops",
        metadata=_help(
            "equal-flops: both SFT runs take --sft-steps steps of the same samples (same processed "
            "tokens and FLOPs); equal-tokens: Blockwise SFT takes as many steps as it needs to supervise "
            "as many tokens as full-sequence SFT's --sft-steps (about 4x: the blocks per answer)"
        ),
    )
    sft_lr: float = field(default=1e-3, metadata=_help("SFT peak learning rate (full fine-tuning)"))
    micro_batch: int = field(default=32, metadata=_help("samples per optimizer step"))
    block_size: int = field(default=8, metadata=_help("Blockwise SFT's training block size"))
    # Evaluation
    gen_length: int = field(default=32, metadata=_help("tokens generated per problem"))
    eval_block_lengths: str = field(
        default="4,8,16,32", metadata=_help("inference block lengths (each divides --gen-length)")
    )
    eval_batch_size: int = field(default=100, metadata=_help("problems decoded together"))
    threads: str = field(
        default="auto",
        metadata=_help(
            "torch CPU threads: a count, or auto: each stage takes the cores idle when it starts "
            "(the numbers do not depend on it)"
        ),
    )

    def __post_init__(self):
        if self.quick:
            defaults = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
            for name, value in QUICK.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        if not self.out:
            raise ValueError("out must not be empty")
        if self.family not in ("llada", "dream"):
            raise ValueError(f"family must be llada or dream, got {self.family!r}")
        if self.budget not in ("equal-flops", "equal-tokens"):
            raise ValueError(f"budget must be equal-flops or equal-tokens, got {self.budget!r}")
        self.threads = str(self.threads)
        if self.threads != "auto" and not (self.threads.isdigit() and int(self.threads) >= 1):
            raise ValueError(f"threads must be auto or a count >= 1, got {self.threads!r}")
        for name in ("n_train", "n_test", "pretrain_steps", "sft_steps", "micro_batch", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.task  # noqa: B018 - checks the task's ranges
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"--d-model {self.d_model} must be a multiple of --n-heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"--d-model {self.d_model} / --n-heads {self.n_heads} gives heads of "
                f"{self.d_model // self.n_heads} dimensions; rotary embeddings need an even head size"
            )
        bad = [b for b in self.block_lengths if self.gen_length % b]
        if bad:
            raise ValueError(
                f"every eval block length must divide gen_length {self.gen_length}; {bad} do not"
            )

    @property
    def fixed_threads(self) -> int | None:
        """The thread count asked for, or None for auto."""
        return None if self.threads == "auto" else int(self.threads)

    @property
    def task(self) -> TaskSpec:
        return TaskSpec(self.min_steps, self.max_steps, self.max_value, self.max_operand)

    @property
    def block_lengths(self) -> list[int]:
        try:
            values = [int(item) for item in str(self.eval_block_lengths).split(",")]
        except ValueError as err:
            raise ValueError(
                f"eval_block_lengths takes integers separated by commas, got {self.eval_block_lengths!r}"
            ) from err
        if not values or min(values) < 1:
            raise ValueError(f"eval_block_lengths must be positive, got {self.eval_block_lengths!r}")
        return values
