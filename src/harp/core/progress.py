"""The one progress bar of harp, and its honest estimate of the time a step will take.

A :class:`ProgressBar` draws a rich bar with the time remaining when asked for, and,
shown or not, measures the rate of the first steps: when the whole step will take
:data:`ANNOUNCE_SECONDS` or more, it logs one line saying how long, once, early. So a
user learns up front that proxy pretraining, a warm-up, a gradient store or HARP's
calls will take minutes, from this machine's own pace, not from a guess.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import Any

__all__ = ["ANNOUNCE_SECONDS", "ProgressBar", "format_duration"]

log = logging.getLogger(__name__)

#: A step expected to take at least this many seconds announces its estimate.
ANNOUNCE_SECONDS = 30.0

#: Seconds of measurement before an estimate is trusted (a step's first batches
#: carry one-off costs: allocation, warm caches, kernel selection).
_MEASURE_SECONDS = 2.0


def format_duration(seconds: float) -> str:
    """A duration as a person says it: ``"40 s"``, ``"3 min 5 s"``, ``"1 h 12 min"``.

    Examples
    --------
    >>> format_duration(42.4), format_duration(185), format_duration(4350)
    ('42 s', '3 min 5 s', '1 h 12 min')
    """
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes} min" + (f" {secs} s" if secs and minutes < 10 else "")
    hours, rest = divmod(total, 3600)
    return f"{hours} h" + (f" {rest // 60} min" if rest // 60 else "")


class ProgressBar:
    """A transient rich progress bar with an ETA, and one estimate line when long.

    Parameters
    ----------
    enabled : bool
        Show the bar (typically ``context.progress``). The estimate line is logged
        either way.
    description : str
        Text left of the bar, and the name of the step in the estimate line.
    total : int or None
        Steps to completion (None: unknown, no estimate).
    unit : str, default "step"
        What one step is, for the estimate line ("step", "shard", "call", "batch").
    announce_over : float, default ANNOUNCE_SECONDS
        Log the estimate when the whole step is expected to take this long or more.

    Examples
    --------
    >>> with ProgressBar(False, "work", 3) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    >>> bar.done
    3
    """

    def __init__(
        self,
        enabled: bool,
        description: str,
        total: int | None,
        *,
        unit: str = "step",
        announce_over: float = ANNOUNCE_SECONDS,
    ) -> None:
        self.enabled = bool(enabled)
        self.description = description
        self.total = total
        self.unit = unit
        self.announce_over = float(announce_over)
        self.done = 0
        self.announced = False
        self._bar: Any = None
        self._task: Any = None
        self._start = time.perf_counter()
        self._first: tuple[float, int] | None = None

    def __enter__(self) -> ProgressBar:
        self._start = time.perf_counter()
        if self.enabled:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._task = self._bar.add_task(self.description, total=self.total)
            self._bar.start()
        return self

    def advance(self, steps: int = 1, *, description: str | None = None) -> None:
        """Move the bar on by ``steps`` (and change its text, when given)."""
        self.done += steps
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, self.done)
        if not self.announced:
            self._maybe_announce(now)
        if self._bar is not None:
            extra = {} if description is None else {"description": description}
            self._bar.update(self._task, advance=steps, **extra)

    def remaining_seconds(self) -> float | None:
        """Seconds left at the rate measured so far (None before any step)."""
        rate = self._rate(time.perf_counter())
        if rate is None or not self.total:
            return None
        return max(0, self.total - self.done) / rate

    def _rate(self, now: float) -> float | None:
        if self._first is None or self.done == 0:
            return None
        first_at, first_done = self._first
        if self.done > first_done and now > first_at:
            # Rate past the first step, which carries the one-off costs.
            return (self.done - first_done) / (now - first_at)
        return self.done / max(now - self._start, 1e-9)

    def _maybe_announce(self, now: float) -> None:
        if not self.total or self.done >= self.total or self._first is None:
            return
        first_at, first_done = self._first
        if self.done == first_done or now - first_at < _MEASURE_SECONDS:
            return
        rate = (self.done - first_done) / (now - first_at)  # past the first step
        self.announced = True
        left = (self.total - self.done) / rate
        if now - self._start + left < self.announce_over:
            return
        units = self.unit + (
            "es" if self.unit.endswith(("s", "ch", "sh", "x")) else "s"
        )
        if rate < 1:
            per = f"{1 / rate:.1f} s per {self.unit}"
        elif rate < 1000:
            per = f"{rate:.3g} {units}/s"
        else:  # "7,690 tokens/s", not "7.69e+03"
            per = f"{round(rate, -int(math.log10(rate)) + 2):,.0f} {units}/s"
        log.info(
            "%s: about %s more (%d of %d %s done, %s on this machine)",
            self.description,
            format_duration(left),
            self.done,
            self.total,
            units,
            per,
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
