"""`blocksft eval`: GSM8K / MATH accuracy under semi-autoregressive decoding, and paired comparisons.

blocksft eval --model CKPT --task gsm8k --gen-length 256 --block-length 32 --steps 256
blocksft eval --model A B --block-length 8,16,32,64        # grid: table + heatmap
blocksft eval --compare a.jsonl b.jsonl                    # McNemar's paired test
"""

from __future__ import annotations

import argparse

from blocksft.config.eval import EvalConfig
from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.config.sampler import SamplerConfig
from blocksft.evaluate import results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, EvalConfig)
    sampler = parser.add_argument_group("decoding (the sampler's settings)")
    add_dataclass_arguments(sampler, SamplerConfig, exclude=("block_length",))
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.jsonl", "B.jsonl"),
        help="compare two results files on their shared problems (accuracies, McNemar's test); runs nothing",
    )


def run(args: argparse.Namespace) -> int:
    if args.compare:
        print(results.format_comparison(results.compare_files(*args.compare)))
        return 0
    config = build_config(EvalConfig, args)
    # --block-length may be a list (the grid): the sampler is checked with each value in run_eval.
    sampler_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "block_length"})
    sampler_args.block_length = config.block_lengths[0]
    sampler = build_config(SamplerConfig, sampler_args)
    from blocksft.evaluate.runner import run_eval  # the heavy part (torch, the model) loads only now

    run_eval(config, sampler)
    return 0
