"""The knobs of ``blocksft eval`` that are not the sampler's (those are in
:class:`~blocksft.config.sampler.SamplerConfig`), and where each run writes its rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PROMPT_STYLES = ("alpaca", "chat", "plain")


@dataclass
class EvalConfig:
    """What to evaluate and where to write it; decoding settings live in ``SamplerConfig``."""

    model: list[str] | None = field(
        default=None,
        metadata={"help": "checkpoint folder(s) or hub id(s); several run the block-length grid over models"},
    )
    task: Literal["gsm8k", "math"] = field(default="gsm8k", metadata={"help": "benchmark"})
    data: str | None = field(
        default=None,
        metadata={"help": "local JSONL (or hub dataset id) of the task's problems; none: the task's hub set"},
    )
    split: str = field(default="test", metadata={"help": "dataset split (hub datasets)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N problems"})
    block_length: str = field(
        default="32",
        metadata={
            "help": "inference block length; a comma list (8,16,32,64) runs the grid "
            "(gen length and total steps held fixed)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "prompts decoded together (left-padded)"})
    output: str | None = field(
        default=None,
        metadata={
            "help": "results JSONL (resumed if it exists); none: results/<task>-<model>-g<G>-b<B>-s<S>.jsonl"
        },
    )
    prompt_style: str = field(
        default="alpaca",
        metadata={
            "help": "alpaca (training's wrapper in the chat template), chat (question in the chat template), "
            "plain (no template), or a wrapper text containing {query} (or a file holding one), put in "
            "the chat template"
        },
    )
    seed: int = field(default=42, metadata={"help": "seeds sampling (temperature > 0, random remasking)"})
    dtype: str = field(
        default="auto", metadata={"help": "auto (the checkpoint's own dtype), bf16, fp16 or fp32"}
    )
    device: str = field(default="auto", metadata={"help": "auto: cuda:LOCAL_RANK with a GPU, else cpu"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "use the checkpoint's published modeling code instead of blocksft's"}
    )

    def __post_init__(self):
        if self.model is not None and not self.model:
            raise ValueError("--model needs at least one checkpoint")
        if self.model is not None and len(set(self.model)) != len(self.model):
            raise ValueError(f"--model lists a checkpoint twice: {self.model}")
        self.block_lengths  # noqa: B018 - parses and checks the list
        tags = [model_tag(m) for m in self.model or []]
        if len(set(tags)) != len(tags):
            raise ValueError(
                f"grid file names would collide: the models {self.model} share a last path component"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        style = self.prompt_style
        if style not in PROMPT_STYLES and "{query}" not in style and not Path(style).is_file():
            raise ValueError(
                f"--prompt-style must be one of {', '.join(PROMPT_STYLES)}, a template text containing "
                f"{{query}} or a file holding one; got {style!r}"
            )

    @property
    def block_lengths(self) -> list[int]:
        """``block_length`` as a list of ints (one value: a single run)."""
        items = [item.strip() for item in str(self.block_length).split(",")]
        if not items or not all(re.fullmatch(r"\d+", item) and int(item) > 0 for item in items):
            raise ValueError(
                f"--block-length takes positive integers separated by commas, got {self.block_length!r}"
            )
        values = [int(item) for item in items]
        if len(set(values)) != len(values):
            raise ValueError(f"--block-length lists a value twice: {self.block_length!r}")
        return values

    @property
    def is_grid(self) -> bool:
        return len(self.block_lengths) > 1 or len(self.model or []) > 1


def model_tag(model: str) -> str:
    """A short file-name-safe name for a checkpoint: its last path component."""
    name = Path(model.rstrip("/\\")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def output_path(config: EvalConfig, model: str, block_length: int, gen_length: int, steps: int) -> Path:
    """Where one (model, block length) run writes its rows.

    A single run writes ``--output`` (or an automatic name); a grid run writes one file per cell
    next to ``--output``: ``<stem>.<model>.b<B>.jsonl``.
    """
    if not config.is_grid:
        if config.output is not None:
            return Path(config.output)
        return (
            Path("results") / f"{config.task}-{model_tag(model)}-g{gen_length}-b{block_length}-s{steps}.jsonl"
        )
    stem = grid_stem(config)
    return stem.parent / f"{stem.name}.{model_tag(model)}.b{block_length}.jsonl"


def grid_stem(config: EvalConfig) -> Path:
    """The common prefix of a grid's files (``<stem>.grid.md`` etc.)."""
    if config.output is None:
        return Path("results") / f"{config.task}-grid"
    path = Path(config.output)
    return path.with_suffix("") if path.suffix == ".jsonl" else path
