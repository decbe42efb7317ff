"""The run directory: plain files, every write atomic, one command at a time.

```
RUN/
  settings.json            resolved settings (defaults < config < flags), versioned; written when a round commits
  state.json               round counter, class names in head order, embedder version; written LAST in a round
  manifest.csv             one row per item (an image, or one MegaDetector detection in it): split, root, path,
                           detection, bbox, label, label_round, status, reason, time, added_round, prior_guess,
                           prior_confidence
  embedder/<version>.safetensors  the fine-tuned embedding model's weights; their metadata holds the settings
                           that rebuild it (backbone, feat_dim, input_size), checked on load
  embeddings/<version>.npy (N, D) float16 memory-mapped, row i = manifest row i
  model/                   deployable Classifier (spec.json + model.safetensors) + metrics.json
  requests/round-NNN.csv   Timelapse label request, one row per image; round-NNN.guesses.csv lists each
                           selected item (image, detection index, box) with the model's guess
  inbox/                   answer CSVs to ingest (the labelling page saves here); inbox/done/ after ingestion
  rounds/NNN/              settings.json, metrics.json, confusion.csv, confusion.png, request.json
  taxonomy.csv             label,taxonomy strings given to `al init --taxonomy` (every round's spec carries them)
  trapkit.log              every `al` command's DEBUG log, appended
  .lock, .inbox.lock       OS file locks: one `al init/next` at a time; answers files read, written and moved
                           one at a time
```

A round commits when state.json is written. A kill before that leaves the
previous round's state, and the next `al next` redoes the round from the
manifest; labels live in the manifest from the moment they are ingested, and
one row holds one label, so none can be lost or counted twice.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from trapkit import __version__
from trapkit.atomic import atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.images import safe_join
from trapkit.train.settings import RunSettings
from trapkit.typed_json import checked, read_versioned

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 2  # 2: classes and problems typed; pool images without detections counted
# Splits, and the image roots their paths are relative to.
SEED, VALIDATION, POOL = "seed", "validation", "pool"
LABELLED_ROOT, VALIDATION_ROOT, POOL_ROOT = "labelled", "validation", "unlabelled"
# Row status: readable, or not (the reason says why).
OK, UNREADABLE = "ok", "unreadable"
MANIFEST_COLUMNS = ("split", "root", "path", "detection", "bbox", "label", "label_round", "status", "reason",
                    "time", "added_round", "prior_guess", "prior_confidence")
# Manifests written before runs on detections lack the later columns; they load with these values.
_LATER_COLUMNS = {"detection": "", "bbox": "", "time": "", "added_round": "0", "prior_guess": "",
                  "prior_confidence": ""}
LOG_FILENAME = "trapkit.log"


@dataclass
class RunState:
    round: int = 0  # last completed round; 0 = `al init` has not finished
    classes: tuple[str, ...] = ()  # head index order (`trapkit.train.loop.head_classes` decides it)
    embedder_version: str | None = None
    labels_at_finetune: int = 0
    labels_at_round: int = 0
    scan_problems: tuple[str, ...] = ()
    images_without_detections: int = 0  # pool images whose detections were all below the threshold: left out
    format_version: int = STATE_FORMAT_VERSION


@dataclass(frozen=True)
class Item:
    """What one manifest row asks the model to look at: an image, or one box in it."""

    path: Path
    box: tuple[float, float, float, float] | None = None  # normalised [x, y, w, h]; None: the whole image


def format_box(bbox) -> str:
    """A box as the manifest stores it: four numbers, exactly as read (repr round-trips a float)."""
    return " ".join(repr(float(v)) for v in bbox)


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The box `format_box` wrote; None for an empty cell (a whole image)."""
    values = text.split()
    return tuple(float(v) for v in values) if values else None


class Run:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------
    settings_path = property(lambda self: self.root / "settings.json")
    state_path = property(lambda self: self.root / "state.json")
    manifest_path = property(lambda self: self.root / "manifest.csv")
    model_dir = property(lambda self: self.root / "model")
    embedder_dir = property(lambda self: self.root / "embedder")
    embeddings_dir = property(lambda self: self.root / "embeddings")
    requests_dir = property(lambda self: self.root / "requests")
    inbox_dir = property(lambda self: self.root / "inbox")
    log_path = property(lambda self: self.root / LOG_FILENAME)
    taxonomy_path = property(lambda self: self.root / "taxonomy.csv")

    def round_dir(self, n: int) -> Path:
        return self.root / "rounds" / f"{n:03d}"

    def request_path(self, n: int) -> Path:
        return self.requests_dir / f"round-{n:03d}.csv"

    def guesses_path(self, n: int) -> Path:
        return self.requests_dir / f"round-{n:03d}.guesses.csv"

    def embeddings_path(self, version: str) -> Path:
        return self.embeddings_dir / f"{version}.npy"

    def embedder_path(self, version: str) -> Path:
        return self.embedder_dir / f"{version}.safetensors"

    # -- one command at a time ----------------------------------------------------
    @contextlib.contextmanager
    def command(self, what: str):
        """Hold the run's lock for a whole `al init/next`, log to RUN/trapkit.log, clear what a killed run left.

        A second command on the same run stops at once with a one-line error naming the first.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self.logging(what), _file_lock(self.root / ".lock", what, wait=False, run=self.root):
            self._clean_stale_files()
            yield

    @contextlib.contextmanager
    def logging(self, what: str):
        """Append trapkit's DEBUG log to RUN/trapkit.log while the block runs (`trapkit.logfile`)."""
        from trapkit.logfile import debug_log

        with debug_log(self.log_path):
            log.debug("trapkit %s: %s %s", __version__, what, self.root)
            yield

    @contextlib.contextmanager
    def inbox_lock(self):
        """Held while an answers file in the inbox is read, written or moved (moments, never a whole round)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.root / ".inbox.lock", "answers", wait=True, run=self.root):
            yield

    def _clean_stale_files(self) -> None:
        """Remove temporary files (`.NAME.xxx.tmp`) a killed command left: under the lock none is being written.

        The inbox's are removed under the inbox lock, as the labelling page writes there at any time.
        """
        stale = [p for p in self.root.rglob(".*.tmp") if self.inbox_dir not in p.parents]
        with self.inbox_lock():
            stale += list(self.inbox_dir.glob(".*.tmp")) if self.inbox_dir.is_dir() else []
            for p in stale:
                p.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted command", len(stale))

    # -- state ------------------------------------------------------------------
    def require(self) -> None:
        if not self.state_path.is_file() or not self.manifest_path.is_file():
            raise TrapkitError(f"{self.root} is not a trapkit run; start one with 'trapkit al init {self.root} ...'")

    def settings(self) -> RunSettings:
        return RunSettings.load(self.settings_path)

    def load_state(self) -> RunState:
        self.require()
        advice = "the run folder is damaged; put back state.json from a backup"
        d = read_versioned(self.state_path, STATE_FORMAT_VERSION, "run state", advice)
        hints = typing.get_type_hints(RunState)
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise TrapkitError(f"run state {self.state_path} has unknown fields {unknown}; {advice}")
        values = {k: checked(v, hints[k], f"run state {self.state_path} field {k}", advice) for k, v in d.items()}
        values["format_version"] = STATE_FORMAT_VERSION  # an older state read here is a current one
        return RunState(**values)

    def save_state(self, state: RunState) -> None:
        atomic_write_json(self.state_path, asdict(state))

    # -- manifest ---------------------------------------------------------------
    def load_manifest(self):
        import pandas as pd

        df = pd.read_csv(self.manifest_path, dtype=str, keep_default_na=False)
        missing = set(MANIFEST_COLUMNS) - set(df.columns) - set(_LATER_COLUMNS)
        if missing:
            raise TrapkitError(f"{self.manifest_path} lacks columns {sorted(missing)}; the run folder is damaged")
        for column, value in _LATER_COLUMNS.items():
            if column not in df.columns:
                df[column] = value
        for column in ("label_round", "added_round"):
            df[column] = pd.to_numeric(df[column].replace("", "-1")).astype(int)
        return df.loc[:, list(MANIFEST_COLUMNS)]

    def save_manifest(self, df) -> None:
        buf = io.StringIO()
        df.loc[:, list(MANIFEST_COLUMNS)].to_csv(buf, index=False)
        atomic_write_text(self.manifest_path, buf.getvalue())

    def image_root(self, root_name: str, settings: RunSettings | None = None) -> Path:
        data = (settings or self.settings()).data
        return Path({LABELLED_ROOT: data.labelled, POOL_ROOT: data.unlabelled,
                     VALIDATION_ROOT: data.validation or ""}[root_name])

    def items(self, df, settings: RunSettings | None = None) -> list[Item]:
        """One `Item` per manifest row: the image file and the detection's box (None: the whole image)."""
        settings = settings or self.settings()
        roots = {name: self.image_root(name, settings) for name in (LABELLED_ROOT, POOL_ROOT, VALIDATION_ROOT)}
        for name in sorted(set(df["root"])):
            # A missing folder (an unplugged drive) must stop the round, not mark every image unreadable.
            if not roots[name].is_dir():
                raise TrapkitError(f"the {name} image folder {roots[name]} is missing; reconnect its drive or "
                                   "restore it, then run the command again")
        resolved = {name: root.resolve() for name, root in roots.items()}
        paths: dict[tuple[str, str], Path] = {}  # one Path per image, shared by its detections
        items = []
        for r, p, box in zip(df["root"], df["path"], df["bbox"]):
            path = paths.get((r, p))
            if path is None:
                path = paths[(r, p)] = safe_join(resolved[r], p)
            items.append(Item(path, parse_box(box)))
        return items


class ExportInputs:
    """What an export of a run calibrates and measures on (`trapkit.export.quantize`): the run's readable items
    in manifest order, `calibration` ones (seed and pool, never validation) and `validation` ones with their
    labels, each loaded as the run's embedding saw it (`trapkit.train.embed.load_items`)."""

    def __init__(self, run: Run, manifest):
        readable = manifest[manifest["status"] == OK]
        self._run = run
        self._calibration = readable[readable["split"] != VALIDATION]
        self._validation = readable[readable["split"] == VALIDATION]
        self.calibration_count = len(self._calibration)
        self.validation_labels: tuple[str, ...] = tuple(self._validation["label"])

    def calibration(self, positions, prep):
        """(images (n, S, S, 3) uint8, the `positions` that could be read) of those calibration items."""
        return self._load(self._calibration, positions, prep)

    def validation(self, positions, prep):
        """(images (n, S, S, 3) uint8, the `positions` that could be read) of those validation items."""
        return self._load(self._validation, positions, prep)

    def _load(self, rows, positions, prep):
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np

        from trapkit.train.embed import load_items

        positions = np.asarray(positions, dtype=np.int64)
        items = self._run.items(rows.iloc[positions])  # whole images, or detections cut by the run's crop policy
        with ThreadPoolExecutor(2) as pool:
            batch = load_items(items, prep, pool)
        return batch.images, positions[np.flatnonzero(batch.ok)]


def export_inputs(run_dir: str | Path) -> ExportInputs | None:
    """The `ExportInputs` of the run in `run_dir`; None when it holds none (a model folder)."""
    run = Run(run_dir)
    if not run.manifest_path.is_file():
        return None
    return ExportInputs(run, run.load_manifest())


# -- locks and the log ---------------------------------------------------------------------

@contextlib.contextmanager
def _file_lock(path: Path, what: str, wait: bool, run: Path):
    """An OS lock on `path` (released by the OS if the process dies). Not waiting: a one-line error when held."""
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            _lock(f, wait)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another trapkit command"
            raise TrapkitError(f"{run} is busy: {holder} is working on it; wait for it to finish, then run this "
                               "again") from None
        f.seek(0)
        f.truncate()
        f.write(f"'trapkit {what}' (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        try:
            yield
        finally:
            _unlock(f)
    finally:
        f.close()


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    def _lock(f, wait: bool) -> None:
        f.seek(0)
        while True:
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                if not wait:
                    raise BlockingIOError from None
                time.sleep(0.1)

    def _unlock(f) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(f, wait: bool) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))

    def _unlock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
