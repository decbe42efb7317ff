"""The run directory: plain files, every write atomic, one command at a time.

```
RUN/
  settings.json            resolved settings (defaults < config < flags), versioned; written when a round commits
  state.json               round counter, class names in head order, embedder version; written LAST in a round
  manifest.csv             one row per item (an image, or one MegaDetector detection in it): split, root, path,
                           detection, bbox, label, label_round, status, reason, time, added_round, prior_guess,
                           prior_confidence, taxon (an answer above the class level, kept aside), conf and
                           category (the detector's)
  embedder/<version>.safetensors  the fine-tuned embedding model's weights; their metadata holds the settings
                           that rebuild it (backbone, feat_dim, input_size), checked on load
  embeddings/<version>.npy (N, D) float16 memory-mapped, row i = manifest row i
  model/                   deployable Classifier (spec.json + model.safetensors) + metrics.json
  requests/round-NNN.csv   Timelapse label request, one row per image; round-NNN.guesses.csv lists each
                           selected item (image, detection index, box) with the model's guess
  inbox/                   answer CSVs to ingest (the labelling page saves here); inbox/done/ after ingestion
  rounds/NNN/              settings.json, metrics.json, confusion.csv, confusion.png, request.json
  taxonomy.csv             label,taxonomy strings of the run's classes (`al init --taxonomy`, or the first
                           `export --taxonomy`): every round's spec and every later export carry them
  exports/NNN/             what each `trapkit export` of the run shipped (export/history)
  trapkit.log              every `al` command's DEBUG log, appended
  .lock, .inbox.lock       OS file locks: one `al init/next` at a time; answers files read, written and moved
                           one at a time
  .commit/                 a round being committed (see below)
```

Paths: an item's `path` names its image relative to its `root`'s folder: the seed
(`labelled`), the validation folder, the pool (`unlabelled`, seasons inside the
pool folder included, under their path in it), or `season:PREFIX` for a season
that lies elsewhere, whose paths start with `PREFIX/` (the season folder's name),
so that every image of the run has one name.

A round is one transaction: the manifest (new items, labels, unreadable
images), the settings (new seasons, flags), the model and the state change
together or not at all. The round writes them into `.commit/`, then a
`READY` mark (the commit point), then moves them into place, state.json last;
the inbox files it read move to `inbox/done/` after that. A kill before the
mark leaves the run as it was (the next command removes `.commit/`; answers
are still in their files and the inbox, so rerunning the command redoes the
round); a kill after it is finished by the next command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from trapkit import __version__
from trapkit.answers import WRONG_BOX
from trapkit.atomic import atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.images import safe_join
from trapkit.train.settings import RunSettings
from trapkit.typed_json import checked, read_versioned

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 3  # 2: classes and problems typed, images without detections counted; 3: run_id
# Splits, and the image roots their paths are relative to.
SEED, VALIDATION, POOL = "seed", "validation", "pool"
LABELLED_ROOT, VALIDATION_ROOT, POOL_ROOT = "labelled", "validation", "unlabelled"
# Row status: readable, or not (the reason says why).
OK, UNREADABLE = "ok", "unreadable"
SEASON_ROOT = "season:"  # + the season's prefix: the root of a season outside the pool folder
MANIFEST_COLUMNS = ("split", "root", "path", "detection", "bbox", "label", "label_round", "status", "reason",
                    "time", "added_round", "prior_guess", "prior_confidence", "taxon", "conf", "category")
# Manifests written by earlier versions lack the later columns; they load with these values.
_LATER_COLUMNS = {"detection": "", "bbox": "", "time": "", "added_round": "0", "prior_guess": "",
                  "prior_confidence": "", "taxon": "", "conf": "", "category": ""}
COMMIT_DIR, READY = ".commit", "READY"
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
    run_id: str = ""  # made at `al init`: tells this study's exports from another run's of the same name
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

    def choices_path(self, n: int) -> Path:
        return self.requests_dir / f"round-{n:03d}.choices.txt"

    def round_detections_path(self, n: int) -> Path:
        return self.requests_dir / f"round-{n:03d}.detections.json"

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
            self.recover()
            self._clean_stale_files()
            yield

    @contextlib.contextmanager
    def locked(self, what: str):
        """Hold the run's lock (no log file): another command reading the run while no round moves it."""
        self.require()
        with _file_lock(self.root / ".lock", what, wait=False, run=self.root):
            self.recover()
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
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
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
        atomic_write_text(self.manifest_path, _manifest_csv(df))

    def items(self, df, settings: RunSettings | None = None) -> list[Item]:
        """One `Item` per manifest row: the image file and the detection's box (None: the whole image)."""
        roots = image_roots(settings or self.settings())
        for name in sorted(set(df["root"])):
            # A missing folder (an unplugged drive) must stop the round, not mark every image unreadable.
            if name not in roots or not roots[name].is_dir():
                raise TrapkitError(f"the {name} image folder {roots.get(name, '(not in settings.json)')} is missing; "
                                   "reconnect its drive or restore it, then run the command again")
        resolved = {name: root.resolve() for name, root in roots.items()}
        paths: dict[tuple[str, str], Path] = {}  # one Path per image, shared by its detections
        items = []
        for r, p, box in zip(df["root"], df["path"], df["bbox"]):
            path = paths.get((r, p))
            if path is None:
                path = paths[(r, p)] = safe_join(resolved[r], _under_root(r, p))
            items.append(Item(path, parse_box(box)))
        return items

    def pool_file(self, path: str, settings: RunSettings | None = None) -> Path:
        """The image file of a pool path (a season's included); `ImageReadError` for one that escapes."""
        settings = settings or self.settings()
        for season in settings.data.season_list():
            if season.root != POOL_ROOT and path.startswith(season.prefix + "/"):
                return safe_join(season.folder, _under_root(season.root, path))
        return safe_join(settings.data.unlabelled, path)

    # -- committing a round ----------------------------------------------------------
    commit_dir = property(lambda self: self.root / COMMIT_DIR)
    staged_model_dir = property(lambda self: self.root / COMMIT_DIR / "model")

    def stage(self) -> Path:
        """An empty `.commit/` for the round to write its model into; returns it."""
        shutil.rmtree(self.commit_dir, ignore_errors=True)
        self.commit_dir.mkdir()
        return self.commit_dir

    def commit(self, df, settings: RunSettings, state: RunState, ingested: dict[str, str] | None = None) -> None:
        """Make the staged model, `df`, `settings` and `state` the run's, all together (module docstring), then
        move the inbox files the round ingested (`ingested`: {file name: sha256 of the bytes read}) to done/."""
        staged = self.commit_dir
        atomic_write_text(staged / "manifest.csv", _manifest_csv(df))
        atomic_write_json(staged / "settings.json", settings.to_dict())
        atomic_write_json(staged / "state.json", asdict(state))
        atomic_write_json(staged / "ingested.json", ingested or {})
        atomic_write_text(staged / READY, f"{state.round}\n")  # the commit point
        kill_point("committed")
        self._roll_forward()

    def recover(self) -> None:
        """Finish a commit a kill interrupted after its commit point, or drop one that never reached it."""
        if (self.commit_dir / READY).is_file():
            log.info("finishing the commit of a round that was interrupted while it was being saved")
            self._roll_forward()
        elif self.commit_dir.exists():
            shutil.rmtree(self.commit_dir)

    def _roll_forward(self) -> None:
        staged = self.commit_dir
        model = staged / "model"
        if model.is_dir():
            old = staged / "model.old"
            if self.model_dir.is_dir():
                os.replace(self.model_dir, old)
            os.replace(model, self.model_dir)
            shutil.rmtree(old, ignore_errors=True)
        for name in ("manifest.csv", "settings.json", "state.json"):  # state last: it names the round
            if (staged / name).is_file():
                os.replace(staged / name, self.root / name)
        if (staged / "ingested.json").is_file():
            self._move_ingested(json.loads((staged / "ingested.json").read_text(encoding="utf-8")))
        version = self.load_state().embedder_version  # older embedders and their embeddings are done with
        for old in [*self.embeddings_dir.glob("*.npy"), *self.embedder_dir.glob("*.safetensors")]:
            if old.stem != version:
                old.unlink(missing_ok=True)
        shutil.rmtree(staged)

    def _move_ingested(self, ingested: dict[str, str]) -> None:
        """Move to inbox/done/ each file that still holds what was ingested; one changed since (the labelling
        page saved into it meanwhile) stays, and the next round reads it again (re-reading changes nothing)."""
        if not ingested:
            return
        done = self.inbox_dir / "done"
        done.mkdir(parents=True, exist_ok=True)
        with self.inbox_lock():
            for name, digest in ingested.items():
                path = self.inbox_dir / name
                if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                    log.info("%s changed while the round read it; left in the inbox for the next round", path)
                    continue
                target, k = done / path.name, 1
                while target.exists():
                    target, k = done / f"{path.stem}-{k}{path.suffix}", k + 1
                os.replace(path, target)


def trained_mask(df):
    """(N,) bool: rows the embedder and head learn from: labelled with a class (not WRONG_BOX), readable, not
    validation."""
    return ((df["split"] != VALIDATION) & (df["label"] != "") & (df["label"] != WRONG_BOX)
            & (df["status"] == OK)).to_numpy()


def _manifest_csv(df) -> str:
    """The manifest as CSV, its columns in order (any later column a caller's frame lacks at its default)."""
    df = df.assign(**{c: v for c, v in _LATER_COLUMNS.items() if c not in df.columns})
    buf = io.StringIO()
    df.loc[:, list(MANIFEST_COLUMNS)].to_csv(buf, index=False)
    return buf.getvalue()


def image_roots(settings: RunSettings) -> dict[str, Path]:
    """Each manifest `root` name -> its image folder (seasons outside the pool folder included)."""
    data = settings.data
    roots = {LABELLED_ROOT: Path(data.labelled), POOL_ROOT: Path(data.unlabelled),
             VALIDATION_ROOT: Path(data.validation or "")}
    roots.update({s.root: s.folder for s in data.season_list() if s.root != POOL_ROOT})
    return roots


def _under_root(root: str, path: str) -> str:
    """A manifest path relative to its root's folder: a season outside the pool drops its prefix."""
    if root.startswith(SEASON_ROOT):
        return path[len(root) - len(SEASON_ROOT) + 1:]
    return path


KILL_ENV = "TRAPKIT_TEST_KILL_AT"
KILL_SIGNAL_ENV = "TRAPKIT_TEST_KILL_SIGNAL"  # default SIGKILL; SIGSTOP pauses there (a test then SIGCONTs it)


def kill_point(name: str) -> None:
    """Test-only crash hook: with TRAPKIT_TEST_KILL_AT=<name> the process signals itself here (SIGKILL, or the
    signal named in TRAPKIT_TEST_KILL_SIGNAL).

    Points: ingested, finetuned, embedded, model-saved, request-written (the round, before its commit point),
    committed (just after it).
    """
    if os.environ.get(KILL_ENV) == name:
        import signal

        os.kill(os.getpid(), getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL")))


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
