"""How many torch threads a demo stage takes: ``--threads auto`` gives it the cores idle when it starts.

torch's CPU threads wait for each other at the end of every parallel operation, so a thread whose
core is taken by another process holds the others up: on a 2-core machine with one busy process, two
threads ran the demo several times slower than one. On an idle machine two threads are the faster.
The demo's numbers do not depend on the count (its matrices are too small for torch to split a sum
across threads; a test checks it), so the count can follow the load stage by stage.
"""

from __future__ import annotations

import os

import psutil  # an accelerate dependency


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores(sample_seconds: float = 0.5) -> float:
    """How many cores other work keeps busy now, measured over ``sample_seconds``."""
    return psutil.cpu_percent(interval=sample_seconds) / 100 * (os.cpu_count() or 1)


def threads_for(usable: int, busy: float) -> int:
    """The idle cores, rounded to the nearest whole core, at least one and at most ``usable``."""
    return max(1, min(usable, int(usable - busy + 0.5)))
