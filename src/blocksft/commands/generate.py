"""`blocksft generate`: not built yet."""

import sys


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print("blocksft generate: not built yet", file=sys.stderr)
    return 2
