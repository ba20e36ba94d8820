"""`blocksft prepare`: preprocess an instruction dataset into a record file (the reference pt.py)."""

from __future__ import annotations

import shlex


def add_arguments(parser) -> None:
    from blocksft.config import add_dataclass_arguments
    from blocksft.data.prepare import PrepareConfig

    parser.add_argument("--config", default=None, metavar="YAML", help="read settings from a YAML file")
    add_dataclass_arguments(parser, PrepareConfig)


def run(args) -> int:
    from blocksft.config import build_config
    from blocksft.data.prepare import PrepareConfig, run_prepare
    from blocksft.data.prepare_report import format_summary

    config = build_config(PrepareConfig, args, args.config)
    invocation = getattr(args, "invocation", None)
    result = run_prepare(config, command=shlex.join(invocation) if invocation else None)
    print(format_summary(result, config))
    return 0
