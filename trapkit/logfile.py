"""A debug log file for long commands (pipx's habit): a failure in hour five needs no rerun with -v.

`al` appends to RUN/trapkit.log, `classify` to OUT.log beside its --out: every
trapkit log record at DEBUG, with times, and the traceback of whatever ended
the command. What the person sees on the terminal is unchanged (one line per
user error; `-v` for tracebacks there too).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger("trapkit")


@contextlib.contextmanager
def debug_log(path: str | Path):
    """Append trapkit's DEBUG records to `path` while the block runs; the failure that ends it, with traceback."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # opened at the first record
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)  # the terminal's handler keeps its own level
    try:
        yield Path(path)
    except BaseException as e:
        log.debug("command ended by %s", e.__class__.__name__, exc_info=True)
        raise
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()
