"""What other stages may ask of a run, in one place (export builds on these; see docs/ARCHITECTURE.md).

- the run's taxonomy (`RUN/taxonomy.csv`): given once (`al init --taxonomy`, or the first
  `export --taxonomy`), carried by every later round and export;
- its export history (`RUN/exports/NNN/`: what each export shipped, with a copy of its model), the labels
  per class and where they came from (seed, pool, season), the model's validation figures, and the field
  accuracy of the previous export on the answers people gave after it: what export's change report says;
- the images an export calibrates and measures on (`export_inputs`).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from trapkit.atomic import atomic_write_text
from trapkit.taxonomy import CSV_COLUMNS, read_taxonomy_partly
from trapkit.train.run import OK, POOL, SEED, VALIDATION, Run, trained_mask

log = logging.getLogger(__name__)


def run_taxonomy(run: Run, classes, warn: bool = True) -> tuple[str, ...] | None:
    """The run's taxonomy strings for `classes`, None without a taxonomy. Classes without a row (added by a later
    round) are said in one line and carry none until a row is added."""
    if not run.taxonomy_path.is_file():
        return None
    strings, missing = read_taxonomy_partly(run.taxonomy_path, list(classes))
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


# -- what each export of a run shipped, and what changed since -----------------------------------------------

EXPORTS_DIR = "exports"
RECORD_FILENAME = "record.json"
RECORD_FORMAT_VERSION = 1
PRIOR_SOURCES = {SEED: "seed", VALIDATION: "validation"}


def find_run(model_dir: Path | None) -> Run | None:
    """The run whose deployable model is `model_dir` (RUN/model), or None for a model folder of its own."""
    if model_dir is None or model_dir.name != "model":
        return None
    run = Run(model_dir.parent)
    return run if run.state_path.is_file() and run.manifest_path.is_file() else None


def is_run(path: Path) -> bool:
    """Whether `path` is a run folder (it may have no model yet: a run started without labelled images)."""
    return Run(path).state_path.is_file()


def adopt_taxonomy(run: Run, classes, strings) -> None:
    """An export given a taxonomy makes it the run's: later rounds and exports carry it."""
    write_taxonomy(run.taxonomy_path, classes, strings)
    log.info("the taxonomy is now the run's (%s): later exports and rounds carry it", run.taxonomy_path)


def source_of(root: str, path: str, split: str, seasons) -> str:
    """Where a labelled item came from: seed, validation, pool, or the season (its name in the run)."""
    if split in PRIOR_SOURCES:
        return PRIOR_SOURCES[split]
    for season in seasons:
        if root == season.root and path.startswith(season.prefix + "/"):
            return season.prefix
    return "pool"


def labels_by_class(run: Run, df=None) -> dict[str, dict[str, int]]:
    """{class: {source: labels}} of the items the model learns from (validation and wrong boxes left out)."""
    df = run.load_manifest() if df is None else df
    seasons = run.settings().data.season_list()
    out: dict[str, dict[str, int]] = {}
    trained = df[trained_mask(df)]
    for root, path, split, label in zip(trained["root"], trained["path"], trained["split"], trained["label"]):
        counts = out.setdefault(label, {})
        source = source_of(root, path, split, seasons)
        counts[source] = counts.get(source, 0) + 1
    return out


def validation_figures(run: Run) -> dict:
    """The deployable model's validation figures: {"images", "accuracy", "per_class": {c: {precision, recall,
    support}}}, from its round's metrics."""
    from trapkit.typed_json import read_json

    path = run.model_dir / "metrics.json"
    card = read_json(path, "model metrics", "rerun 'trapkit al next'") if path.is_file() else {}
    precision, recall = card.get("per_class_precision") or {}, card.get("per_class_recall") or {}
    support, state = {}, run.load_state()
    round_metrics = run.round_dir(state.round) / "metrics.json"
    if round_metrics.is_file():
        support = read_json(round_metrics, "round metrics", "rerun 'trapkit al next'").get("per_class_support") or {}
    classes = list(state.classes)
    return {"images": card.get("validation_images"), "accuracy": card.get("accuracy"),
            "per_class": {c: {"precision": precision.get(c), "recall": recall.get(c), "support": support.get(c)}
                          for c in classes}}


def last_export(run: Run) -> tuple[dict, Path] | None:
    """(record, its folder) of the run's newest export, None before the first."""
    from trapkit.typed_json import read_versioned

    folders = sorted(p for p in (run.root / EXPORTS_DIR).glob("[0-9][0-9][0-9]") if (p / RECORD_FILENAME).is_file()) \
        if (run.root / EXPORTS_DIR).is_dir() else []
    if not folders:
        return None
    record = read_versioned(folders[-1] / RECORD_FILENAME, RECORD_FORMAT_VERSION, "export record",
                            "delete that exports/ folder to start the history again")
    return record, folders[-1]


def current_record(run: Run) -> dict:
    """What an export of the run's model ships now: round, classes, labels per class and source, validation."""
    state = run.load_state()
    previous = last_export(run)
    return {"format_version": RECORD_FORMAT_VERSION, "export": previous[0]["export"] + 1 if previous else 1,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "round": state.round, "classes": list(state.classes), "labels": labels_by_class(run),
            "validation": validation_figures(run)}


def record_export(run: Run, record: dict, graph_sha256: str, destinations: dict) -> Path:
    """Keep what this export shipped (RUN/exports/NNN/: record.json and a copy of the model, so later exports can
    measure it on the answers people give after it); returns the folder."""
    import shutil

    from trapkit.atomic import atomic_write_json

    folder = run.root / EXPORTS_DIR / f"{record['export']:03d}"
    staging = folder.with_name(f".{folder.name}.staging")  # a killed export's is removed by the next one
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run.model_dir, staging / "model")
    atomic_write_json(staging / RECORD_FILENAME, record | {"graph_sha256": graph_sha256, "destinations": destinations})
    shutil.rmtree(folder, ignore_errors=True)  # one left by an export killed between its two steps
    staging.rename(folder)
    return folder


@dataclass
class FieldAccuracy:
    """How the previous export did on the crops people verified after it: labels and its predictions, and for
    each whether it came from a classifier's output (a season reviewed as `trapkit classify` gave it: the field
    as users meet it) or was one active learning asked about (its hardest cases, so a lower figure)."""

    truth: list[str]
    predicted: list[str]
    classes: list[str]  # the previous model's classes
    classified: list[bool] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.truth)


def field_accuracy(run: Run, previous: tuple[dict, Path], batch_size: int = 32) -> FieldAccuracy:
    """The previous export's model run on every pool item labelled after it (wrong boxes left out): the most
    honest figure a user can get, measured on what people verified since."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from trapkit.prepare import Preprocessing
    from trapkit.progress import progress
    from trapkit.train.embed import load_items
    from trapkit.train.model import load_model

    record, folder = previous
    df = run.load_manifest()
    rows = df.index[trained_mask(df) & (df["split"] == POOL).to_numpy() & (df["label_round"] > record["round"]).to_numpy()]
    model = load_model(folder / "model").eval()
    classes = list(model.spec.labels)
    if not len(rows):
        return FieldAccuracy([], [], classes)
    items = run.items(df.loc[rows])
    prep = Preprocessing.from_spec(model.spec)
    truth, predicted, classified = [], [], []
    with ThreadPoolExecutor(2) as pool, torch.no_grad(), progress(len(rows), "the previous model on new labels") as bar:
        for start in range(0, len(rows), batch_size):
            batch = load_items(items[start:start + batch_size], prep, pool)
            if len(batch.images):
                probs, _ = model(torch.from_numpy(batch.images))
                predicted += [classes[i] for i in probs.argmax(dim=1).tolist()]
                part = df.loc[rows[start:start + batch_size]]
                truth += [label for label, ok in zip(part["label"], batch.ok) if ok]
                classified += [bool(guess) for guess, ok in zip(part["prior_guess"], batch.ok) if ok]
            bar.update(len(batch.ok))
    return FieldAccuracy(truth, predicted, classes, classified)


# -- what an export calibrates and measures on -----------------------------------------------------------

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
