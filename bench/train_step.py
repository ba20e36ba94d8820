"""Training-step GPU check (see ``blocksft.bench.train_step``): ``python bench/train_step.py [--help]``."""

import sys

from blocksft.bench.train_step import main

if __name__ == "__main__":
    sys.exit(main())
