"""`blocksft merge --base MODEL --adapter ADAPTER --output FOLDER`: fold a LoRA adapter into its base.

The result is a checkpoint like the ones training writes: safetensors in the chosen dtype (bf16
for LLaDA by default: the base's own), config with ``auto_map``, modeling files, tokenizer, and the
adapter under ``adapter/``.
"""

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.config.merge import MergeConfig


def add_arguments(parser) -> None:
    add_dataclass_arguments(parser, MergeConfig)


def run(args) -> int:
    config = build_config(MergeConfig, args)
    from blocksft.train.export import merge_adapter  # the heavy part (torch, PEFT) loads only now

    output = merge_adapter(
        config.base, config.adapter, config.output, dtype=config.dtype, tokenizer=config.tokenizer
    )
    print(f"wrote {output}")
    return 0
