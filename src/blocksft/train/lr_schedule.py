"""The learning-rate schedule: warmup, then cosine decay to a floor, as a pure function of the step.

Two warmup curves, both ending in the same cosine decay to ``min_ratio`` x the peak:

* ``linear`` (the default of ``blocksft train``): ``transformers``' ``cosine_with_min_lr`` schedule,
  bit for bit. Warmup takes ``ceil(warmup_ratio x total)`` steps; step ``k`` (1-based) runs at
  ``(k - 1) / warmup`` of the peak, the first step at 0, the step after warmup at the peak.
* ``log``: DeepSpeed's ``WarmupCosineLR`` with its default ``warmup_type`` (logarithmic), configured
  as the reference scripts configure it (``warmup_min_ratio 0``, ``warmup_num_steps = int(0.1 x
  total)``, at least 2 as DeepSpeed enforces), bit for bit, including when DeepSpeed's engine steps
  it: after the optimizer, starting from iteration -1, so steps 1 and 2 both run at 0 and step
  ``k`` at ``log(k - 1) / log(warmup)`` of the peak up to step ``warmup + 1``.

After warmup both are ``min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2``, ``progress``
going from 0 to 1 over the remaining steps (the two libraries' formulas agree there to the bit).
:func:`lr_multiplier` is indexed the way ``torch.optim.lr_scheduler.LambdaLR`` (which the Trainer
steps after each optimizer step) indexes it: by the number of optimizer steps already done.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

from torch.optim.lr_scheduler import LambdaLR

WarmupType = Literal["linear", "log"]
WARMUP_TYPES = ("linear", "log")


def warmup_steps_for(total_steps: int, warmup_ratio: float, warmup_type: WarmupType) -> int:
    """Warmup length in optimizer steps (0: no warmup).

    ``linear``: ``ceil(total x ratio)``, the Trainer's rounding; ``log``: ``int(ratio x total)``, the
    reference's rounding, and at least 2 (DeepSpeed raises the warmup to 2 steps).
    """
    if warmup_ratio == 0:
        return 0
    if warmup_type == "linear":
        return math.ceil(total_steps * warmup_ratio)
    return max(2, int(warmup_ratio * total_steps))


def lr_multiplier(
    step: int, *, total_steps: int, warmup_steps: int, min_ratio: float, warmup_type: WarmupType
) -> float:
    """Learning rate of the optimizer step that follows ``step`` completed steps, over the peak.

    Args:
        step: optimizer steps already done (0 for the first step).
        total_steps: steps of the run.
        warmup_steps: from :func:`warmup_steps_for`.
        min_ratio: the cosine's floor, a fraction of the peak.
        warmup_type: ``linear`` or ``log`` (see the module docstring).
    """
    if warmup_type == "log" and warmup_steps and step <= warmup_steps:
        # DeepSpeed: iteration step - 1; iteration -1 (before its first step) gives 0, iteration i
        # gives log(i + 1) / log(warmup) (the same expression, so the same float).
        return 0.0 if step == 0 else (1.0 / math.log(warmup_steps)) * math.log(step)
    if warmup_type == "linear" and step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = min(1.0, float(step - warmup_steps) / float(max(1, total_steps - warmup_steps)))
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, factor * (1 - min_ratio) + min_ratio)


@dataclass(frozen=True)
class WarmupCosine:
    """The run's schedule settings; :meth:`build` makes the scheduler for a number of steps.

    Attributes:
        warmup_ratio: warmup as a fraction of the steps.
        min_ratio: the cosine's floor as a fraction of the peak.
        warmup_type: ``linear`` or ``log``.
    """

    warmup_ratio: float
    min_ratio: float
    warmup_type: WarmupType = "linear"

    def __post_init__(self):
        if self.warmup_type not in WARMUP_TYPES:
            raise ValueError(
                f"warmup_type must be one of {', '.join(WARMUP_TYPES)}, got {self.warmup_type!r}"
            )

    def multiplier(self, total_steps: int):
        """``step -> multiplier`` for a run of ``total_steps`` (a picklable partial)."""
        return functools.partial(
            lr_multiplier,
            total_steps=total_steps,
            warmup_steps=warmup_steps_for(total_steps, self.warmup_ratio, self.warmup_type),
            min_ratio=self.min_ratio,
            warmup_type=self.warmup_type,
        )

    def build(self, optimizer, total_steps: int):
        """A ``LambdaLR`` over ``optimizer`` (its ``lr`` is the peak), stepped after each optimizer step."""
        return LambdaLR(optimizer, self.multiplier(total_steps))
