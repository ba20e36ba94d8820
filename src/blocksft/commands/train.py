"""`blocksft train`: fine-tune with blockwise or full-sequence masked SFT (LoRA, DeepSpeed).

Every knob is a flag and a YAML key (``--config paper_blockwise`` or a path; flags win over the
file). Under a launcher use the module form, which also accepts the ``--local_rank`` that
``deepspeed`` passes: ``deepspeed --num_gpus 8 --module blocksft.train --config paper_blockwise``,
``torchrun --nproc_per_node 8 -m blocksft.train ...``.
"""

import argparse

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.config.train import TrainConfig, available_recipes, resolve_recipe


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config",
        help=f"YAML recipe: a file, or a shipped name ({', '.join(available_recipes())}); flags override it",
    )
    add_dataclass_arguments(parser, TrainConfig)
    # Launchers (deepspeed) pass the local rank as a flag; the Trainer reads it from the environment.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)


def build_train_config(args) -> TrainConfig:
    """The :class:`TrainConfig` for parsed arguments: defaults < recipe < flags."""
    recipe = resolve_recipe(args.config) if args.config else None
    return build_config(TrainConfig, args, recipe)


def run(args) -> int:
    config = build_train_config(args)
    from blocksft.train.run import run_train  # the heavy part (torch, transformers) loads only now

    run_train(config)
    return 0
