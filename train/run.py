"""The run directory: plain files, every write atomic.

```
RUN/
  settings.json            resolved settings (defaults < config < flags)
  state.json               round counter, class names in head order, embedder version; written LAST in a round
  manifest.csv             one row per image: split, root, path, label, label_round, status, reason
  embedder/                finetuned embedding model (spec.json + model.safetensors)
  embeddings/<version>.npy (N, D) float16 memory-mapped, row i = manifest row i
  model/                   deployable Classifier (spec.json + model.safetensors) + metrics.json
  requests/round-NNN.csv   Timelapse label request; round-NNN.guesses.csv the model's guesses
  inbox/                   answer CSVs to ingest (the labelling page saves here); inbox/done/ after ingestion
  rounds/NNN/              settings.json, metrics.json, confusion.csv, confusion.png
```

A round commits when state.json is written. A kill before that leaves the
previous round's state, and the next `al next` redoes the round from the
manifest; labels live in the manifest from the moment they are ingested, and
one row holds one label, so none can be lost or counted twice.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trapkit.atomic import atomic_write_json, atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.images import safe_join
from trapkit.train.settings import RunSettings

STATE_FORMAT_VERSION = 1
MANIFEST_COLUMNS = ("split", "root", "path", "label", "label_round", "status", "reason")
SPLITS = ("seed", "validation", "pool")


@dataclass
class RunState:
    round: int = 0  # last completed round; 0 = `al init` has not finished
    classes: list[str] = field(default_factory=list)  # head index order; new classes are appended
    embedder_version: str | None = None
    labels_at_finetune: int = 0
    labels_at_round: int = 0
    scan_problems: list[str] = field(default_factory=list)
    format_version: int = STATE_FORMAT_VERSION


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
    taxonomy_path = property(lambda self: self.root / "taxonomy.csv")

    def round_dir(self, n: int) -> Path:
        return self.root / "rounds" / f"{n:03d}"

    def request_path(self, n: int) -> Path:
        return self.requests_dir / f"round-{n:03d}.csv"

    def guesses_path(self, n: int) -> Path:
        return self.requests_dir / f"round-{n:03d}.guesses.csv"

    def embeddings_path(self, version: str) -> Path:
        return self.embeddings_dir / f"{version}.npy"

    # -- state ------------------------------------------------------------------
    def require(self) -> None:
        if not self.state_path.is_file() or not self.manifest_path.is_file():
            raise TrapkitError(f"{self.root} is not a trapkit run; start one with 'trapkit al init {self.root} ...'")

    def settings(self) -> RunSettings:
        return RunSettings.load(self.settings_path)

    def load_state(self) -> RunState:
        self.require()
        d = json.loads(self.state_path.read_text(encoding="utf-8"))
        if d.get("format_version", 1) > STATE_FORMAT_VERSION:
            raise TrapkitError(f"{self.state_path} was written by a newer trapkit; upgrade trapkit")
        return RunState(**d)

    def save_state(self, state: RunState) -> None:
        atomic_write_json(self.state_path, asdict(state))

    # -- manifest ---------------------------------------------------------------
    def load_manifest(self):
        import pandas as pd

        df = pd.read_csv(self.manifest_path, dtype=str, keep_default_na=False)
        missing = set(MANIFEST_COLUMNS) - set(df.columns)
        if missing:
            raise TrapkitError(f"{self.manifest_path} lacks columns {sorted(missing)}; the run folder is damaged")
        df["label_round"] = pd.to_numeric(df["label_round"].replace("", "-1")).astype(int)
        return df

    def save_manifest(self, df) -> None:
        buf = io.StringIO()
        df.loc[:, list(MANIFEST_COLUMNS)].to_csv(buf, index=False)
        atomic_write_text(self.manifest_path, buf.getvalue())

    def image_root(self, root_name: str, settings: RunSettings | None = None) -> Path:
        data = (settings or self.settings()).data
        return Path({"labelled": data.labelled, "unlabelled": data.unlabelled, "validation": data.validation or ""}[root_name])

    def image_paths(self, df, settings: RunSettings | None = None) -> list[Path]:
        settings = settings or self.settings()
        roots = {name: self.image_root(name, settings) for name in ("labelled", "unlabelled", "validation")}
        for name in sorted(set(df["root"])):
            # A missing folder (an unplugged drive) must stop the round, not mark every image unreadable.
            if not roots[name].is_dir():
                raise TrapkitError(f"the {name} image folder {roots[name]} is missing; reconnect its drive or "
                                   "restore it, then run the command again")
        return [safe_join(roots[r], p) for r, p in zip(df["root"], df["path"])]
