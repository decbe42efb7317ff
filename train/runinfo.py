"""What other stages may ask of a run, in one place (export builds on these; see docs/ARCHITECTURE.md).

- the run's taxonomy (`RUN/taxonomy.csv`): given once (`al init --taxonomy`, or the first
  `export --taxonomy`), carried by every later round and export;
- (more facts export asks for live beside it).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from trapkit.atomic import atomic_write_text
from trapkit.taxonomy import CSV_COLUMNS, read_taxonomy_csv
from trapkit.train.run import Run

log = logging.getLogger(__name__)


def run_taxonomy(run: Run, classes, warn: bool = True) -> tuple[str, ...] | None:
    """The run's taxonomy strings for `classes`, None without a taxonomy. Classes without a row (added by a later
    round) are said in one line and carry none until a row is added."""
    if not run.taxonomy_path.is_file():
        return None
    missing: list[str] = []
    strings = read_taxonomy_csv(run.taxonomy_path, list(classes), other_labels_ok=True, missing=missing)
    if missing and warn:
        log.warning("%s has no row for %s: %s no common name and no rollup until you add a row (label,taxonomy)",
                    run.taxonomy_path, ", ".join(missing), "it has" if len(missing) == 1 else "they have")
    return strings


def write_taxonomy(path: Path, classes, strings) -> None:
    """RUN/taxonomy.csv: one `label,taxonomy` row per class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(zip(classes, strings))
    atomic_write_text(path, buf.getvalue())
