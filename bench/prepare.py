"""`blocksft prepare` against the reference's row-at-a-time loop: see blocksft.bench.prepare."""

import sys

from blocksft.bench.prepare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
