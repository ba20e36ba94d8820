"""Regenerate the README's demo results from runs: ``python bench/demo_results.py [--help]``.

Runs ``blocksft demo`` for every seed, one after the other, then rewrites the README between its
``<!-- demo-results:begin -->`` and ``<!-- demo-results:end -->`` markers (see
:mod:`blocksft.demo.published`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from blocksft.demo.published import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
