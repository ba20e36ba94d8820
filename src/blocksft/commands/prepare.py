"""`blocksft prepare`: preprocess an instruction dataset into a record file (the reference pt.py)."""

from __future__ import annotations

import shlex

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.config.prepare import PrepareConfig


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, metavar="YAML", help="read settings from a YAML file")
    add_dataclass_arguments(parser, PrepareConfig)


def run(args) -> int:
    config = build_config(PrepareConfig, args, args.config)
    # The heavy part (datasets, tokenizers, torch) loads only now.
    from blocksft.data.prepare import run_prepare
    from blocksft.data.prepare_report import format_summary

    invocation = getattr(args, "invocation", None)
    result = run_prepare(config, command=shlex.join(invocation) if invocation else None)
    print(format_summary(result, config))
    return 0
