"""`blocksft merge --base MODEL --adapter ADAPTER --output FOLDER`: fold a LoRA adapter into its base.

The result is a checkpoint like the ones training writes: safetensors in the chosen dtype (bf16
for LLaDA by default: the base's own), config with ``auto_map``, modeling files, tokenizer, and the
adapter under ``adapter/``.
"""

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


def add_arguments(parser) -> None:
    from blocksft.config import add_dataclass_arguments

    add_dataclass_arguments(parser, MergeConfig)


def run(args) -> int:
    from blocksft.config import build_config
    from blocksft.train.checkpoint import merge_adapter

    config = build_config(MergeConfig, args)
    output = merge_adapter(
        config.base, config.adapter, config.output, dtype=config.dtype, tokenizer=config.tokenizer
    )
    print(f"wrote {output}")
    return 0
