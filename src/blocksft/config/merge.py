"""The knobs of ``blocksft merge``: which adapter goes into which base, and where the result goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class MergeConfig:
    """What ``blocksft merge`` merges, and into what."""

    base: str = field(default="GSAI-ML/LLaDA-8B-Instruct", metadata={"help": "base model: hub id or folder"})
    adapter: str = field(default="", metadata={"help": "PEFT LoRA adapter folder (adapter_config.json)"})
    output: str = field(default="", metadata={"help": "checkpoint folder to create (must not exist)"})
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": "merged weights' dtype (auto = the base checkpoint's)"}
    )
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer to save (default: the base's)"})

    def __post_init__(self):
        if not self.adapter or not self.output:
            raise ValueError("--adapter and --output are required")
