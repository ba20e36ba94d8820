"""Run the generation benchmark from a checkout: ``python bench/generate.py [--help]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from blocksft.bench.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
