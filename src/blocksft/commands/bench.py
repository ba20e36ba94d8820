"""`blocksft bench NAME [args...]`: run the benchmark module ``blocksft.bench.NAME``."""

import argparse
import importlib
import pkgutil

import blocksft.bench
from blocksft.errors import BlocksftError


def available_benchmarks() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(blocksft.bench.__path__) if not m.name.startswith("_"))


def add_arguments(parser) -> None:
    parser.add_argument(
        "name", help=f"benchmark to run (available: {', '.join(available_benchmarks()) or 'none'})"
    )
    parser.add_argument(
        "bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark (see its --help)"
    )


def run(args) -> int:
    names = available_benchmarks()
    if args.name not in names:
        raise BlocksftError(f"unknown benchmark {args.name!r}; available: {', '.join(names) or 'none'}")
    return int(importlib.import_module(f"blocksft.bench.{args.name}").main(args.bench_args) or 0)
