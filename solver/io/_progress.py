"""Progress of a long loop: a tqdm bar on a terminal, plain periodic lines in a log.

A bar redraws itself with carriage returns, which a log file (``> run.log``, a batch
system's output) keeps as hundreds of lines glued into one. Where the stream is not a
terminal, :func:`progress` prints one plain line per tenth of the work instead, or after a
minute without one, each with the elapsed time and the time left at the average rate so far.
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress", "PlainProgress"]


class PlainProgress:
    """The part of tqdm's interface the loops use (``update``, ``close``, ``n``), as lines
        ``"{desc}: {n}/{total} (p %), {elapsed} s, about {left} s left"`` (the rate measured after
    the first update, which may include a compilation): one per ``every`` of
        the total, and after ``seconds`` without a line; nothing while disabled or in the first
        ``delay`` seconds."""

    def __init__(self, total: float, initial: float = 0.0, desc: str = "", unit: str = "",
                 disable: bool = False, file=None, every: float = 0.1,
                 seconds: float = 60.0, delay: float = 0.0):  # fmt: skip
        self.total, self.n, self.desc, self.unit = float(total), float(initial), desc, unit
        self.disable, self.file, self.delay = disable, file, delay
        self.every, self.seconds = every, seconds
        self.start = self.last = time.monotonic()
        self.first: tuple[float, float] | None = None
        self.next = self._step_after(self.n)

    def _step_after(self, n: float) -> float:
        step = self.every * self.total
        return (int(n / step) + 1) * step if step > 0 else float("inf")

    def update(self, k: float = 1.0) -> None:
        self.n += k
        now = time.monotonic()
        if self.first is None:  # the rate is taken after the first update: a first step
            self.first = (now, self.n)  # that compiles (numba) says nothing of the others
        if self.disable or now - self.start < self.delay:  # short loops say nothing
            self.next = self._step_after(self.n)
        elif self.n >= self.next or now - self.last >= self.seconds:
            self._line(now)
            self.next = self._step_after(self.n)

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.start
        t1, n1 = self.first
        left = (now - t1) * (self.total - self.n) / (self.n - n1) if self.n > n1 else float("nan")
        pct = 100 * self.n / self.total if self.total else 100.0
        if self.unit == "t":  # the time of an evolution
            where = f"t = {self.n:.4g}/{self.total:.4g}"
        else:
            where = f"{self.n:.0f}/{self.total:.0f}" + (f" {self.unit}" if self.unit else "")
        print(f"{self.desc}: {where} ({pct:.0f} %), "
              f"{elapsed:.0f} s, about {left:.0f} s left", file=self.file or sys.stderr,
              flush=True)  # fmt: skip

    def close(self) -> None:
        pass


def progress(total: float, *, initial: float = 0.0, desc: str = "", unit: str = "it",
             disable: bool = False, **bar_options):  # fmt: skip
    """A tqdm bar where stderr is a terminal, else :class:`PlainProgress` (same calls)."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                    **bar_options)  # fmt: skip
    return PlainProgress(total, initial, desc=desc, unit=unit, disable=disable,
                         delay=bar_options.get("delay", 0.0))  # fmt: skip
