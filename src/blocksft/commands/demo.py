"""`blocksft demo`: pretrain a tiny base, fine-tune it both ways, evaluate, report."""

from __future__ import annotations

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.demo.config import DemoConfig


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, metavar="YAML", help="read settings from a YAML file")
    add_dataclass_arguments(parser, DemoConfig)


def run(args) -> int:
    from blocksft.demo.pipeline import run_demo

    config = build_config(DemoConfig, args, args.config)
    result = run_demo(config)
    summary = result.report.read_text().split("![accuracy")[0].split("\n", 2)[2]  # below the title
    print(f"\n{summary.strip()}\n")
    print(f"report: {result.report}  ({result.seconds / 60:.1f} min)")
    return 0
