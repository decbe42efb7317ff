"""Progress lines for people who are not watching a terminal: counted, timed, and never silent for long."""

from __future__ import annotations

import logging
import threading

from trapkit.progress import Progress


class _Lines(logging.Handler):
    def __init__(self, wanted: int):
        super().__init__()
        self.lines, self.wanted, self.enough = [], wanted, threading.Event()

    def emit(self, record):
        self.lines.append(record.getMessage())
        if len(self.lines) >= self.wanted:
            self.enough.set()


def _listening(wanted: int) -> _Lines:
    handler = _Lines(wanted)
    logger = logging.getLogger("trapkit.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler


def test_a_line_comes_while_a_single_step_takes_long(monkeypatch):
    """No update for a while (one slow batch): the ticker still says where the step is, until it closes."""
    monkeypatch.setenv("TRAPKIT_PROGRESS_SECONDS", "0.01")
    handler = _listening(3)
    try:
        bar = Progress(100, "embedding")
        bar.update(40)
        assert handler.enough.wait(30)  # lines keep coming with no further update
        bar.close()
        last = handler.lines[-1]
    finally:
        logging.getLogger("trapkit.progress").removeHandler(handler)
    assert handler.lines[0].startswith("embedding: 40 of 100 items (40%), 0:00:")
    assert "left" in handler.lines[0] and last.startswith("embedding: 40 of 100 items")


def test_every_update_with_interval_zero_and_a_last_line(monkeypatch):
    monkeypatch.setenv("TRAPKIT_PROGRESS_SECONDS", "0")
    handler = _listening(99)
    try:
        with Progress(3, "fine-tuning", "step") as bar:
            for _ in range(3):
                bar.update()
    finally:
        logging.getLogger("trapkit.progress").removeHandler(handler)
    assert [line.split(",")[0] for line in handler.lines] == [
        "fine-tuning: 1 of 3 steps (33%)", "fine-tuning: 2 of 3 steps (67%)", "fine-tuning: 3 of 3 steps (100%)",
        "fine-tuning: 3 of 3 steps (100%)"]
