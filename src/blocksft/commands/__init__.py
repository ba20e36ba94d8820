"""Subcommands of the ``blocksft`` command line (light modules; the work is in the package)."""
