"""`blocksft generate`: decode one prompt with LLaDA's semi-autoregressive sampler and print the answer.

blocksft generate --model GSAI-ML/LLaDA-8B-Instruct --chat --prompt "What is 12 * 7?"
blocksft generate --model ./ckpt_step0200 --chat --prompt "..." --threshold 0.9 --cache prefix --stream
"""

from __future__ import annotations

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.config.generate import GenerateConfig


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file with these options; flags given here override it")
    add_dataclass_arguments(parser, GenerateConfig)


def run(args) -> int:
    config = build_config(GenerateConfig, args, getattr(args, "config", None))
    from blocksft.generation.run import run_generate  # the heavy part (torch, the model) loads only now

    print(run_generate(config))
    return 0
