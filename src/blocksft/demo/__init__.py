"""``blocksft demo``: the whole method end to end on CPU in minutes (see :mod:`blocksft.demo.pipeline`)."""

from blocksft.demo.config import DemoConfig
from blocksft.demo.pipeline import DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
