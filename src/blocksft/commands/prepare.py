"""`blocksft prepare`: not built yet."""

import sys


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print("blocksft prepare: not built yet", file=sys.stderr)
    return 2
