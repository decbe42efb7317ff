"""Progress a person can follow wherever the output goes.

On a terminal: a tqdm bar. Anywhere else (a log file under nohup, a Slurm job, a pipe): a line through
`logging` at least every `PROGRESS_SECONDS` (30) with the count done, the total and an estimate of the time
left, and one at the end, so stderr and the run's log file (`trapkit.logfile`) both show a long step moving
(on a terminal the lines go to the log file alone). The environment variable TRAPKIT_PROGRESS_SECONDS sets
another interval (0: a line for every update).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator

log = logging.getLogger("trapkit.progress")

PROGRESS_SECONDS = 30.0
INTERVAL_ENV = "TRAPKIT_PROGRESS_SECONDS"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, PROGRESS_SECONDS)))
    except ValueError:
        return PROGRESS_SECONDS


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`update(n)` as work is done; `close()` (or leave the `with` block) at the end.

    A line goes out at least every interval while the step runs, even when one update takes longer (a
    ticker thread), and once at the end; on a terminal the lines go to the log file only (DEBUG), beside
    the bar.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "item"):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self._bar = None
        self._level = logging.INFO
        if sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
            self._level = logging.DEBUG  # the bar shows it; the run's log file still gets the lines
        self._start = time.monotonic()
        self._every = _interval()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._ticker = None
        if self._every > 0:
            self._ticker = threading.Thread(target=self._tick, name=f"progress: {desc}", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._closed.wait(self._every):
            self._say()

    def _say(self) -> None:
        with self._lock:
            log.log(self._level, "%s", self.line())

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._every == 0:
            self._say()

    def line(self) -> str:
        """'embedding: 1,200 of 40,000 items (3%), 0:01:10 so far, about 0:37:40 left'."""
        elapsed = time.monotonic() - self._start
        text = f"{self.desc}: {self.done:,}"
        if self.total:
            text += f" of {self.total:,} {self.unit}s ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}s"
        text += f", {_duration(elapsed)} so far"
        if self.total and self.done and self.done < self.total:
            text += f", about {_duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.done:
            self._say()  # the last line: how many, in how long

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "item") -> Progress:
    return Progress(total, desc, unit)


def tracked(iterable: Iterable, desc: str, unit: str = "item", total: int | None = None) -> Iterator:
    """`iterable`, reporting progress per element."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, unit) as bar:
        for x in iterable:
            yield x
            bar.update()
