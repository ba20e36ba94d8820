"""Benchmarks runnable after ``pip install`` (``blocksft bench <name>``); ``bench/`` holds the results.

Each module ``blocksft.bench.<name>`` has ``main(argv: list[str] | None) -> int`` and prints a
ratio against a baseline measured in the same run.
"""
