"""Run the training-step benchmark from a checkout: ``python bench/train.py [--help]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from blocksft.bench.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
