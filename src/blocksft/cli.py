"""The ``blocksft`` command line: one subcommand per job, each a thin layer over the Python API.

Each subcommand lives in ``blocksft.commands.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``. The parser is built from the configuration dataclasses (:mod:`blocksft.config`),
which import no torch; each ``run`` loads the heavy package it calls, so the command line starts
fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from blocksft import __version__
from blocksft.commands import bench, demo, generate, merge, plot, prepare, train
from blocksft.commands import eval as eval_command
from blocksft.config.flags import OneLineParser
from blocksft.errors import BlocksftError

# name -> (module with add_arguments and run, one line of help)
COMMANDS = {
    "prepare": (prepare, "preprocess an instruction dataset into a record file (.pt) for training"),
    "train": (train, "fine-tune with blockwise or full-sequence masked SFT (LoRA, DeepSpeed)"),
    "generate": (generate, "decode with LLaDA's semi-autoregressive block sampler"),
    "eval": (eval_command, "GSM8K / MATH accuracy with semi-autoregressive decoding"),
    "merge": (merge, "merge a LoRA adapter into its base model and save a checkpoint"),
    "demo": (demo, "the whole method end to end on CPU in minutes (no download)"),
    "bench": (bench, "benchmarks against a re-implementation of the reference path"),
    "plot": (plot, "plot loss curves of one or more training runs"),
}


def quiet_library_bars() -> None:
    """Turn off the bars of huggingface_hub, transformers and datasets (loading weights, writing
    shards, mapping rows) when stderr is not a terminal; they read these settings when imported."""
    if not (sys.stderr is not None and sys.stderr.isatty()):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="blocksft",
        description="Blockwise SFT for masked diffusion language models (LLaDA).",
    )
    parser.add_argument("--version", action="version", version=f"blocksft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def main(argv: list[str] | None = None) -> int:
    quiet_library_bars()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand they were given to, not by the top-level parser
        _subcommand_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    # The command line as given, for commands that record it next to their outputs.
    args.invocation = ["blocksft", *(sys.argv[1:] if argv is None else argv)]
    try:
        module, _ = COMMANDS[args.command]
        return int(module.run(args) or 0)
    except BlocksftError as err:
        if args.debug:
            raise
        print(f"blocksft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"blocksft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
