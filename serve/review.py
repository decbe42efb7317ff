"""`trapkit review`: verify a classify result crop by crop on the grid (trapkit/grid.py).

Items are the detections that carry `classifications` (what `trapkit classify`
classified), shown with their top-1 species and confidence and cut by the crop
policy: the model's with `--model`, else the margin the result records
(`info.classifier_metadata.crop_margin`).
Decisions go to ANSWERS.csv through the answers book (`trapkit.answers`), one
row per detection: `File, RelativePath, Detection, Species, Reviewed` and, with
`--reviewer`, `Reviewer` (Timelapse's folder convention, `Detection` = the
index in that image's `detections`), the format `trapkit al next --labels`
ingests; "not an animal / wrong box" is the reserved species `[wrong box]`.
Rows the page does not know (other files, extra columns) are kept as they are.
A crop whose classification is a taxon above the model's classes (a rollup's
"canidae") is shown as a guess to confirm (`a` keeps it) or refine; taxa are
never number keys.

`--write-verified OUT.json`: a copy of RESULTS where each verified detection
carries the human's species at confidence 1.0 (the model's list kept in
`classifications_before_review`); a wrong box loses its classifications and
gets `"wrong_box": true`; `info.review` counts them. It is rewritten after
saves (in the background) and when the page stops.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from pathlib import Path, PurePosixPath

import numpy as np

from trapkit import detections as md
from trapkit.answers import WRONG_BOX, AnswersBook, item_key, now
from trapkit.atomic import atomic_write_json
from trapkit.crop_policy import CropPolicy, check_margin
from trapkit.errors import TrapkitError
from trapkit.grid import FileGridSource, GridApp, GridItem
from trapkit.images import ImageReadError, is_file_under, safe_join
from trapkit.serve.settings import ClassifySettings
from trapkit.serve.smoothing import sequences

log = logging.getLogger(__name__)

_EMBED_BATCH = 32


class ReviewSource(FileGridSource):
    """A classify result as a grid source (see trapkit.grid.GridSource)."""

    def __init__(self, results: str | Path, images: str | Path, answers: str | Path, model: str | Path | None = None,
                 verified: str | Path | None = None, gap_seconds: float | None = None,
                 features: str | Path | None = None, reviewer: str = ""):
        super().__init__()
        self.results = Path(results)
        self.images = Path(images)
        self.doc = md.load_detections(self.results)
        self.categories = self.doc.get("classification_categories") or {}
        meta = self.doc["info"].get("classifier_metadata") or {}
        self.margin = check_margin(meta.get("crop_margin", CropPolicy.margin))  # a damaged file: one line
        # The gap the result was classified (and smoothed) with, else classify's default.
        recorded = meta.get("sequence_gap")
        self.gap_seconds = gap_seconds if gap_seconds is not None else \
            float(recorded) if isinstance(recorded, (int, float)) else ClassifySettings.sequence_gap
        if self.gap_seconds < 0:
            raise TrapkitError(f"--sequence-gap {self.gap_seconds} must be at least 0 seconds")
        self._items, self._image_of = self._read_items()
        self._check_images()
        self.verified = Path(verified) if verified else None
        if self.verified is not None:
            self._check_verified_path()
        self.book = AnswersBook(answers)
        self.book.check_writable()
        self.answers_path = self.book.path
        self.reviewer = reviewer
        self.title = f"trapkit review: {self.results.name}"
        self.model = model
        self._runtime = None
        self._stored = self._read_features(features) if features is not None else None
        if model is not None:  # loaded now, so a bad model fails before the page opens
            runtime = self._open_runtime()
            if runtime.embedding_size is None:
                raise TrapkitError(f"--model {model} has no 'embedding' output to compare crops with; re-export it "
                                   "with 'trapkit export'")
            self.margin = runtime.spec.crop_margin  # the model's crop policy wins over the result's record
        self._sequence_of: dict[int, tuple[int, ...]] = {}
        self._writer = _VerifiedWriter(self) if self.verified is not None else None
        self._stop = threading.Event()
        self._exif_thread = threading.Thread(target=self._read_times_in_background, name="exif", daemon=True)
        self._exif_thread.start()

    # -- checks --------------------------------------------------------------------------

    def _read_items(self) -> tuple[list[GridItem], dict[str, int]]:
        items, image_of = [], {}
        for i, im in enumerate(self.doc["images"]):
            file = im["file"].replace("\\", "/")
            for j, det in enumerate(im.get("detections") or ()):
                classes = det.get("classifications")
                if not classes:
                    continue
                top_id, conf = classes[0][0], classes[0][1]
                key = item_key(file, j)
                items.append(GridItem(key, file, j, tuple(det["bbox"]), self.categories.get(str(top_id), str(top_id)),
                                      float(conf)))
                image_of[key] = i
        if not items:
            raise TrapkitError(f"{self.results} has no classifications; run 'trapkit classify' on it first "
                               "(review checks a classifier's species)")
        return items, image_of

    def _check_images(self) -> None:
        if not self.images.is_dir():
            raise TrapkitError(f"--images {self.images} is not a folder; give the folder RESULTS' file paths "
                               "start from")
        files = sorted({it.file for it in self._items})
        if not any(is_file_under(self.images, f) for f in files):
            raise TrapkitError(f"none of the {len(files)} images of {self.results.name} is under {self.images} "
                               f"({files[0]} is missing); --images is probably the wrong folder: give the one "
                               "RESULTS' file paths start from")

    def _check_verified_path(self) -> None:
        out = self.verified
        if out.is_dir():
            raise TrapkitError(f"--write-verified {out} is a folder; give a JSON file name")
        if out.exists() and os.path.samefile(out, self.results):
            raise TrapkitError(f"--write-verified {out} is RESULTS itself; give a new file name so the classifier's "
                               "output is kept")
        if not out.parent.is_dir():
            raise TrapkitError(f"cannot write --write-verified {out}: the folder {out.parent} does not exist")

    # -- GridSource ----------------------------------------------------------------------

    def classes(self) -> list[str]:
        """The model's classes: what number keys and `/` offer."""
        return [name for k, name in self._categories() if not self._is_taxon(k)]

    def taxa(self) -> list[str]:
        """Categories above the classes (a rollup's "canidae", "animal"): shown as guesses to confirm or refine."""
        return [name for k, name in self._categories() if self._is_taxon(k)]

    def _categories(self) -> list[tuple[str, str]]:
        return [(k, self.categories[k]) for k in sorted(self.categories, key=lambda k: (len(k), k))]

    def _is_taxon(self, category_id: str) -> bool:
        meta = self.doc["info"].get("classifier_metadata") or {}
        n = meta.get("model_classes")  # results written before it was recorded: every category is a class
        return isinstance(n, int) and category_id.isdigit() and int(category_id) >= n

    def items(self) -> list[GridItem]:
        return self._items

    def answers(self) -> dict[str, str]:
        """{item key: species} of every answered detection (whole-image rows of the file are kept, unshown)."""
        return {item_key(*k): a.species for k, a in self.book.answers().items()}

    def save(self, changes: dict[str, str | None]) -> dict[str, str]:
        keys = {it.key: (it.file, it.detection) for it in self._items}
        self.book.merge({keys[k]: s for k, s in changes.items()}, reviewed=now(), reviewer=self.reviewer)
        if self._writer is not None:
            self._writer.changed()
        return self.answers()

    def image_path(self, file: str) -> Path:
        return safe_join(self.images, file)

    def sequence(self, item: GridItem) -> list[str]:
        """Keys of every crop in the item's sequence: images of its folder within the gap (as `classify --smooth`)."""
        index = self._image_of[item.key]
        if index not in self._sequence_of:
            folder = _folder(item.file)
            members = sorted({self._image_of[it.key] for it in self._items if _folder(it.file) == folder})
            times = {i: self._time(i) for i in members}
            # The one call into the smoothing rule's grouping: its sequences are ours.
            for group in sequences(self.doc["images"], times, self.gap_seconds):
                for i in group:
                    self._sequence_of[i] = tuple(group)
        chosen = set(self._sequence_of[index])
        return [it.key for it in self._items if self._image_of[it.key] in chosen]

    def embeddings(self, items: list[GridItem]) -> np.ndarray | None:
        """(n, D) float32: the fused graph's `embedding` output on each crop: stored (`--features`), else computed
        with `--model` on crops cut as the model's crops are."""
        if self._stored is not None:
            table, row_of = self._stored
            missing = [it.key for it in items if it.key not in row_of]
            if missing:
                raise TrapkitError(f"the features table has no row for {missing[0]}; give the table 'trapkit "
                                   "classify --features' wrote with this result")
            return table[[row_of[it.key] for it in items]]
        if self.model is None:
            return None
        from trapkit.prepare import Preprocessing, prepare_image
        from trapkit.progress import tracked

        runtime = self._open_runtime()
        prep = Preprocessing.from_spec(runtime.spec)
        by_file: dict[str, list[int]] = {}
        for n, it in enumerate(items):
            by_file.setdefault(it.file, []).append(n)
        rows, crops, parts = [], [], []

        def run() -> None:
            parts.append((rows[:], runtime.predict(np.stack(crops), embedding=True)[1]))  # (B, D)
            rows.clear()
            crops.clear()

        for file, members in tracked(by_file.items(), "embedding crops", "image"):
            try:
                got = prepare_image(safe_join(self.images, file), [items[n].bbox for n in members], prep).crops
            except ImageReadError as e:
                log.warning("review: %s", e)
                got = np.full((len(members), prep.input_size, prep.input_size, 3), 128, np.uint8)
            for n, crop in zip(members, got):
                rows.append(n)
                crops.append(crop)
                if len(crops) == _EMBED_BATCH:
                    run()
        if crops:
            run()
        out = np.zeros((len(items), parts[0][1].shape[1]), np.float32)
        for members, vectors in parts:
            out[members] = vectors
        return out

    def _read_features(self, path) -> tuple[np.ndarray, dict[str, int]]:
        """The (N, D) embeddings of a `classify --features` table and {item key: row}, checked against RESULTS."""
        from trapkit.feature_table import read_features

        table = read_features(path)
        keys = [item_key(str(f).replace("\\", "/"), int(d))
                for f, d in zip(table.frame["file"], table.frame["detection_index"])]
        row_of = {k: i for i, k in enumerate(keys)}
        if not any(it.key in row_of for it in self._items):
            raise TrapkitError(f"--features {path} holds none of the detections of {self.results.name}; give the "
                               "table 'trapkit classify --features' wrote with this result")
        return table.features, row_of

    def _open_runtime(self):
        if self._runtime is None:
            from trapkit.serve.runtime import open_runtime

            self._runtime = open_runtime(self.model)
        return self._runtime

    # -- EXIF times ----------------------------------------------------------------------

    def _time(self, index: int) -> str | None:
        return self.capture_time(self.doc["images"][index]["file"].replace("\\", "/"))

    def _read_times_in_background(self) -> None:
        """Capture times of every image, so the first `e` in a big folder need not wait for its headers."""
        for index in sorted(set(self._image_of.values())):
            if self._stop.is_set():
                return
            self._time(index)

    # -- the verified copy ---------------------------------------------------------------

    def write_verified(self) -> dict:
        """Write --write-verified now; returns its info.review block."""
        doc = verified_results(self.doc, self.answers(), self.answers_path.name)
        atomic_write_json(self.verified, doc)
        return doc["info"]["review"]

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.close()


class _VerifiedWriter:
    """Rewrites --write-verified after saves, off the request thread; changes during a write cause one more."""

    def __init__(self, source: ReviewSource):
        self.source = source
        self.event = threading.Event()
        self.stopping = False
        self.lock = threading.Lock()
        source.write_verified()
        self.thread = threading.Thread(target=self._loop, name="verified", daemon=True)
        self.thread.start()

    def changed(self) -> None:
        self.event.set()

    def _loop(self) -> None:
        while True:
            self.event.wait()
            self.event.clear()
            if self.stopping:
                return
            with self.lock:
                try:
                    self.source.write_verified()
                except Exception:  # noqa: BLE001 - the answers are safe; the copy is written again at the end
                    log.exception("could not write %s", self.source.verified)

    def close(self) -> None:
        self.stopping = True
        self.event.set()
        self.thread.join(timeout=60)
        with self.lock:
            review = self.source.write_verified()
        log.info("wrote %s (%d verified, %d wrong boxes)", self.source.verified, review["verified_detections"],
                 review["wrong_boxes"])


def verified_results(doc: dict, answers: dict[str, str], answers_name: str) -> dict:
    """A copy of `doc` with the human's species at confidence 1.0 on verified detections (see the module doc)."""
    out = md.upgrade_to_output(copy.deepcopy(doc))
    cats = out.setdefault("classification_categories", {})
    by_name = {v: k for k, v in cats.items()}
    verified = wrong = 0
    for im in out["images"]:
        file = im["file"].replace("\\", "/")
        for j, det in enumerate(im.get("detections") or ()):
            species = answers.get(item_key(file, j))
            if not species:
                continue
            if "classifications" in det:
                det["classifications_before_review"] = det.pop("classifications")
            if species == WRONG_BOX:
                det["wrong_box"] = True
                wrong += 1
                continue
            if species not in by_name:  # a class the model does not have: a new category id
                new = str(max((int(k) for k in cats if k.isdigit()), default=-1) + 1)
                cats[new] = by_name[species] = species
            det["classifications"] = [[by_name[species], 1.0]]
            verified += 1
    out["info"]["review"] = {
        "verified_detections": verified, "wrong_boxes": wrong, "answers": answers_name,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return out


def _folder(file: str) -> str:
    return str(PurePosixPath(file).parent)


def open_review(results, images, answers, model=None, verified=None, gap_seconds=None, features=None,
                reviewer: str = "") -> GridApp:
    """The review grid for RESULTS (not yet serving); every bad input fails here, in one line."""
    source = ReviewSource(results, images, answers, model=model, verified=verified, gap_seconds=gap_seconds,
                          features=features, reviewer=reviewer)
    try:
        return GridApp(source)
    except BaseException:
        source.close()
        raise


def serve_review(results, images, answers, model=None, verified=None, gap_seconds=None, features=None,
                 reviewer: str = "", host="127.0.0.1", port=None) -> None:
    """Serve the review page until Ctrl+C."""
    from trapkit import grid

    app = open_review(results, images, answers, model=model, verified=verified, gap_seconds=gap_seconds,
                      features=features, reviewer=reviewer)
    log.info("%d crops to review in %s; answers go to %s", len(app.items), results, answers)
    grid.serve(app, host, port)
