"""`blocksft train`: not built yet."""

import sys


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print("blocksft train: not built yet", file=sys.stderr)
    return 2
