"""``blocksft demo``: the whole method end to end on CPU in minutes (see :mod:`blocksft.demo.pipeline`).

The command line builds its parser from :mod:`blocksft.demo.config` without torch, so the pipeline
(which imports the whole package) is loaded on first use of ``run_demo`` or ``DemoResult``.
"""

from blocksft.demo.config import DemoConfig

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


def __getattr__(name: str):
    if name in ("DemoResult", "run_demo"):
        from blocksft.demo import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
