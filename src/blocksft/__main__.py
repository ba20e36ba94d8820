import sys

from blocksft.cli import main

sys.exit(main())
