"""``python -m blocksft.train [flags]``: ``blocksft train`` as a module, for distributed launchers.

``deepspeed --module blocksft.train`` puts ``--local_rank=N`` before the flags, which the
``blocksft`` entry point would read as a top-level option; here every argument goes to ``train``.
"""

import sys

from blocksft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
