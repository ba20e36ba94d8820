"""The knobs of ``blocksft plot``: which column against which budget, and how to draw it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

X_AXES = {
    "step": "optimizer step",
    "samples": "samples seen",
    "supervised_tokens": "supervised (loss-bearing) tokens",
    "tokens": "processed tokens",
    "flops": "estimated training FLOPs",
}


@dataclass
class PlotConfig:
    """How ``blocksft plot`` draws the runs."""

    output: str = field(default="loss.png", metadata={"help": "PNG to write"})
    metric: str = field(
        default="loss", metadata={"help": "CSV column on the y axis (loss, lr, grad_norm, ...)"}
    )
    x: Literal["step", "samples", "supervised_tokens", "tokens", "flops"] = field(
        default="step", metadata={"help": "x axis: the step, or a cumulative budget"}
    )
    smooth: float = field(
        default=0.0, metadata={"help": "exponential moving average weight in [0, 1) (0 = raw values)"}
    )
    log_y: bool = field(default=False, metadata={"help": "logarithmic y axis (losses spanning decades)"})
    labels: list[str] | None = field(default=None, metadata={"help": "legend labels, one per run"})
    title: str | None = field(default=None, metadata={"help": "figure title"})

    def __post_init__(self):
        if not 0.0 <= self.smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {self.smooth}")
