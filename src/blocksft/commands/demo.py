"""`blocksft demo`: not built yet."""

import sys


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print("blocksft demo: not built yet", file=sys.stderr)
    return 2
