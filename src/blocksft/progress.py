"""Progress of long loops: a live bar on a terminal, a plain line now and then in a log file.

Cluster jobs send stderr to a file, where a redrawn bar becomes thousands of ``\\r`` updates.
:func:`progress` gives a tqdm bar when the stream is a terminal and a :class:`LineProgress`
otherwise, which prints one line when another tenth of the work is done or 30 seconds have passed,
whichever comes first, and at the end. Both have tqdm's ``update``, ``set_postfix``, ``write`` and
``close``, and are context managers. (The libraries' own bars are turned off in a process that logs
to a file by :func:`blocksft.cli.quiet_library_bars`.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm


def progress(
    total: int,
    desc: str,
    *,
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    stream=None,
    every_seconds: float = 30.0,
    every_fraction: float = 0.1,
):
    """A progress reporter for ``total`` units of work, ``initial`` of them done before (a resumed
    run); see the module docstring."""
    stream = stream if stream is not None else sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            file=stream,
            disable=disable,
            dynamic_ncols=True,
        )
    return LineProgress(
        total,
        desc,
        unit=unit,
        initial=initial,
        stream=stream,
        every_seconds=every_seconds,
        every_fraction=every_fraction,
    )


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineProgress:
    """tqdm's interface, printing a whole line at most every ``every_seconds`` or ``every_fraction``.

    Args:
        total: units of work.
        desc: what is being done (starts every line).
        unit: the unit's name.
        initial: units done before this process started (the time left is estimated without them).
        stream: where lines go (default stderr).
        every_seconds, every_fraction: a line when either much time or work has passed since the last.
        clock: seconds (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "it",
        initial: int = 0,
        stream=None,
        every_seconds: float = 30.0,
        every_fraction: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds, self.every_fraction, self.clock = every_seconds, every_fraction, clock
        self.n = self.initial = self.last_n = initial
        self.postfix = ""
        self.start = self.last_time = clock()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        step = max(1, int(self.total * self.every_fraction)) if self.total else None
        if now - self.last_time >= self.every_seconds or (step and self.n - self.last_n >= step):
            self._print(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._print(self.clock())
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self, now: float) -> str:
        """The progress line at time ``now``."""
        elapsed = now - self.start
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        parts = [f"{self.desc}: {done}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and self.initial < self.n < self.total:
            parts.append(f"~{_clock(elapsed * (self.total - self.n) / (self.n - self.initial))} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.last_time, self.last_n = now, self.n


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
