"""Noising benchmark (see ``blocksft.bench.noise``): ``python bench/noise.py [--help]``."""

import sys

from blocksft.bench.noise import main

if __name__ == "__main__":
    sys.exit(main())
