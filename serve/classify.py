"""The batch classifier: MegaDetector detections in, the same file with species out.

Pipeline (one pass, three overlapping stages):

1. Worker threads each take one image and prepare its model inputs through the
   core's one preparation path (`trapkit.prepare.prepare_image`): header read
   once (size, EXIF orientation and time), decoded ONCE for all its crops, only
   the rectangle they read, at a reduced JPEG DCT scale when every crop keeps
   at least the model's input size. The decoders release the GIL.
2. The main thread gathers crops in image order into batches of `batch_size`
   across images.
3. Up to `concurrency` batches run on the runtime at once (onnxruntime or
   Triton), beside the decoding threads.

Work is checkpointed (atomically) every `checkpoint_every` images. Batches
never straddle a checkpoint boundary, so a resumed run feeds the model exactly
the same batches as an uninterrupted one and writes the same output.
Which detections are classified, and how they are cropped, is the model's
own crop policy (`trapkit.prepare.Preprocessing.from_spec`), unless flags
say otherwise. Images that cannot be read keep the detector's boxes,
unclassified, with a `classification_failure` code (`trapkit.images.FAILURE_*`;
details go to the log), and the run goes on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trapkit import __version__
from trapkit import detections as md
from trapkit.atomic import atomic_write_json
from trapkit.errors import TrapkitError
from trapkit.images import ImageReadError, is_image_file, iter_images, safe_join
from trapkit.prepare import prepare_entry
from trapkit.serve import outputs
from trapkit.serve.settings import ClassifySettings
from trapkit.serve.smoothing import smooth_sequences
from trapkit.typed_json import read_versioned

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: failures are FAILURE_* codes
CONF_DECIMALS = 4
# Test hook (documented in tests/test_classify_resume.py): SIGKILL this process
# after preparing that many images, to prove --resume recovers from a hard kill
# (or send the signal named in KILL_SIGNAL_ENV: SIGINT is a Ctrl-C).
KILL_AFTER_ENV = "TRAPKIT_TEST_KILL_AFTER_IMAGES"
KILL_SIGNAL_ENV = "TRAPKIT_TEST_KILL_SIGNAL"


@dataclass(frozen=True)
class ClassifyPaths:
    """Where images come from and results go. `detections=None` classifies whole images.

    The destinations are checked on construction, so a bad one fails before the model
    loads, not after the last image.
    """

    images_dir: Path
    out: Path
    detections: Path | None = None
    csv: Path | None = None
    sort_into: Path | None = None
    link: bool = False

    def __post_init__(self):
        for flag, path in (("--out", self.out), ("--csv", self.csv)):
            if path is None:
                continue
            path = Path(path)
            if path.is_dir():
                raise TrapkitError(f"{flag} {path} is a folder; give a file name (a new file inside it, say)")
            if self.detections and _same_file(path, self.detections):
                raise TrapkitError(
                    f"{flag} {path} is the detections file; give a new file name so MegaDetector's output is kept"
                )
            _check_writable(flag, path, path.parent)
        if self.sort_into is not None:
            folder = Path(self.sort_into)
            if folder.exists() and not folder.is_dir():
                raise TrapkitError(f"--sort-into {folder} is a file; give a folder")
            _check_writable("--sort-into", folder, folder)

    @property
    def checkpoint(self) -> Path:
        return self.out.with_name(self.out.name + ".checkpoint.json")


def _same_file(a, b) -> bool:
    return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)  # links included


def _check_writable(flag: str, path: Path, folder: Path) -> None:
    """A one-line error unless files can be made in `folder` (created later if missing)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise TrapkitError(f"cannot write {flag} {path}: {existing} is a file, not a folder; choose another place")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise TrapkitError(
            f"cannot write {flag} {path}: no file can be made in {existing} ({e.strerror or e}); "
            "choose a writable place"
        ) from None


@dataclass
class Staged:
    """One image after stage 1: its crops (k, S, S, 3) uint8 for detections `det_indices`, or a failure code."""

    index: int
    det_indices: list[int]
    crops: np.ndarray | None = None
    failure: str | None = None  # a trapkit.images.FAILURE_* code
    warnings: list[str] = field(default_factory=list)
    time: str | None = None  # EXIF "YYYY:MM:DD HH:MM:SS"


def classify_images(paths: ClassifyPaths, runtime, settings: ClassifySettings = ClassifySettings(),
                    resume: bool = False, executor=None):
    """Classify, write `paths.out` (and CSV / sorted folders), return a `trapkit.serve.outputs.Summary`.

    `executor(job, todo, done)` runs stages 1-3 over the image indices `todo`, adding each image's
    `job.record` to `done` and calling `job.save_checkpoint(done)` as blocks complete: this process's
    threads by default, or a cluster (`trapkit.serve.ray_classify.RayExecutor`). Both write the same
    checkpoints, so a run started by one resumes with the other.
    """
    job = _Job(paths, runtime, settings)
    if paths.detections is not None:
        job.check_images_found()
    done = _load_checkpoint(paths.checkpoint, job.fingerprint, resume)
    todo = [i for i in sorted(job.targets) if str(i) not in done]
    log.info("%d images to classify (%d detections), %d already done%s", len(todo),
             sum(len(job.targets[i]) for i in todo), len(done), " (resumed)" if done else "")
    if executor is None:
        job.run(todo, done)
    else:
        executor(job, todo, done)

    result = job.assemble(done)
    if settings.smooth is not None:
        smooth_sequences(result, {int(i): r.get("time") for i, r in done.items()}, settings.smooth)
    atomic_write_json(paths.out, result)
    summary = outputs.summarize(result, done)
    if paths.csv:
        outputs.write_csv(paths.csv, result, done)
    if paths.sort_into:
        outputs.sort_into(result, paths.images_dir, paths.sort_into, link=paths.link)
    paths.checkpoint.unlink(missing_ok=True)  # the output now holds everything the checkpoint did
    return summary


class _Job:
    """One classify run: its input document, what to classify in it, and the stages over it."""

    def __init__(self, paths: ClassifyPaths, runtime, settings: ClassifySettings):
        self.paths, self.runtime, self.settings = paths, runtime, settings
        self.whole = paths.detections is None  # no detector: each image is one full-frame item
        self.prep = settings.preprocessing(runtime.spec)
        self.doc = _input_document(paths)
        self.targets = self._targets()
        self.fingerprint = _fingerprint(self.doc, runtime, settings)

    def _targets(self) -> dict[int, list[int]]:
        """{image index: [detection indices to classify]} (`trapkit.detections.qualifying`), image files only."""
        images = self.doc["images"]
        if self.whole:
            return {i: [0] for i in range(len(images))}
        targets = md.qualifying(self.doc, self.prep.threshold, self.prep.categories)
        not_images = [i for i in targets if not is_image_file(images[i]["file"])]
        if not_images:
            # Videos (MegaDetector frame results) and other files are carried through as they are.
            log.warning("%d entries are not image files (videos?); left as they are", len(not_images))
        return {i: dets for i, dets in targets.items() if i not in set(not_images)}

    def check_images_found(self) -> None:
        """Stop before any work when not one image to classify is under IMAGES_DIR: the folder is wrong."""
        files = [self.doc["images"][i]["file"] for i in sorted(self.targets)]
        if files and not any(_is_file(self.paths.images_dir, f) for f in files):
            raise TrapkitError(
                f"none of the {len(files)} images to classify in {self.paths.detections} is under "
                f"{self.paths.images_dir} ({files[0]} is missing); IMAGES_DIR is probably the wrong folder: "
                "give the one MegaDetector's file paths start from"
            )

    def work(self, i: int) -> tuple[str, list | None]:
        """(file relative to IMAGES_DIR, boxes to crop or None for the whole image) of image `i`."""
        entry = self.doc["images"][i]
        return entry["file"], None if self.whole else [entry["detections"][j]["bbox"] for j in self.targets[i]]

    def prepare(self, i: int) -> Staged:
        """Stage 1 for one image: decode once (reduced and cut to the crops' rectangle) and cut every crop."""
        attempt = prepare_entry(self.paths.images_dir, *self.work(i), self.prep)
        return self.staged(i, attempt)

    def staged(self, i: int, attempt) -> Staged:
        """Image `i` after stage 1, from its `trapkit.prepare.Attempt` (made here, or on a Ray worker)."""
        if attempt.failure:
            log.warning("not classified: %s", attempt.message)
        return Staged(i, self.targets[i], attempt.crops, attempt.failure, attempt.warnings, attempt.time)

    def record(self, item: Staged, results: dict) -> dict:
        """The checkpointed record of one image, from its crops' (C,) probabilities in `results[(i, j)]`."""
        return _record(item, results, self.settings.top_k)

    def save_checkpoint(self, done: dict) -> None:
        atomic_write_json(self.paths.checkpoint, {
            "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "done": done}, indent=None)

    def run(self, todo: list[int], done: dict) -> None:
        """Stages 1-3 over `todo`, recording each image into `done` and checkpointing every `checkpoint_every`."""
        from tqdm import tqdm

        settings = self.settings
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        batcher = _Batcher(self.runtime, settings)
        bar = tqdm(total=len(todo), unit="img", desc="classify", disable=None)
        try:
            with ThreadPoolExecutor(settings.workers, thread_name_prefix="decode") as pool:
                chunk: list[Staged] = []
                for n, item in enumerate(_ordered_map(pool, self.prepare, todo, lookahead=4 * settings.workers), 1):
                    chunk.append(item)
                    if item.crops is not None:
                        batcher.add(item)
                    if kill_after and n >= kill_after:
                        # Raised in this (the main) thread, so a SIGINT is handled before the next line runs.
                        signal.raise_signal(getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL")))
                    if len(chunk) == settings.checkpoint_every or n == len(todo):
                        results = batcher.finish()
                        for p in chunk:
                            done[str(p.index)] = self.record(p, results)
                        self.save_checkpoint(done)
                        bar.update(len(chunk))
                        chunk = []
        finally:
            bar.close()
            batcher.close()

    def assemble(self, done: dict) -> dict:
        """The output document: the input upgraded to 1.6 with classifications merged in."""
        out = md.upgrade_to_output(copy.deepcopy(self.doc))
        stale = 0
        for im in out["images"]:
            im.pop(md.CLASSIFICATION_FAILURE, None)  # an earlier run's; this run's are set below
            for d in im["detections"] or ():
                # The model's categories replace any earlier ones, so no earlier class id may survive.
                d.pop("classifications_before_smoothing", None)
                stale += d.pop("classifications", None) is not None
        if stale:
            log.warning("replaced earlier classifications on %d detections", stale)
        spec = self.runtime.spec
        out["classification_categories"], descriptions = md.classification_categories(spec.labels, spec.taxonomy)
        if descriptions:
            out["classification_category_descriptions"] = descriptions
        else:
            out.pop("classification_category_descriptions", None)
        for i, record in done.items():
            im = out["images"][int(i)]
            if record["failure"]:
                if self.whole:  # a made-up full-frame box is no detection
                    im["failure"], im["detections"] = record["failure"], None
                else:  # the detector's boxes stay, unclassified
                    im[md.CLASSIFICATION_FAILURE] = record["failure"]
                continue
            for j, classes in record["classifications"].items():
                im["detections"][int(j)]["classifications"] = classes
        info = out["info"]
        info["classifier"] = self.runtime.name
        info["classification_completion_time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        prep = self.prep
        info["classifier_metadata"] = {
            "trapkit_version": __version__, "threshold": prep.threshold, "categories": list(prep.categories),
            "top_k": self.settings.top_k, "crop_margin": prep.margin, "input_size": prep.input_size,
            "interpolation": prep.interpolation,
            "smoothing": asdict(self.settings.smooth) if self.settings.smooth is not None else None,
        }
        return out


def _fingerprint(doc: dict, runtime, settings: ClassifySettings) -> str:
    """What the results depend on: the input, the model and the settings that change outputs."""
    h = hashlib.sha256()
    h.update(json.dumps(doc, sort_keys=True).encode())
    h.update(runtime.spec.to_json().encode())
    h.update(str(getattr(runtime, "identity", "")).encode())  # the weights, where the runtime knows them
    prep = settings.preprocessing(runtime.spec)
    h.update(json.dumps({"top_k": settings.top_k, **asdict(prep)}, sort_keys=True).encode())
    return h.hexdigest()


def _input_document(paths: ClassifyPaths) -> dict:
    if not Path(paths.images_dir).is_dir():
        raise TrapkitError(f"image folder {paths.images_dir} does not exist; check the path")
    if paths.detections is None:
        root = Path(paths.images_dir)
        files = [p.relative_to(root).as_posix() for p in iter_images(root)]
        if not files:
            raise TrapkitError(f"no images found under {root}; check the folder")
        return md.whole_image_results(files)
    return md.load_detections(paths.detections)


def _is_file(root, file: str) -> bool:
    try:
        return safe_join(root, file).is_file()
    except ImageReadError:
        return False


def _load_checkpoint(path: Path, fingerprint: str, resume: bool) -> dict:
    if not path.exists():
        if resume:
            log.info("no checkpoint at %s; starting from the beginning", path)
        return {}
    if not resume:
        raise TrapkitError(
            f"{path} holds an interrupted run; add --resume to continue it, or delete it to start over"
        )
    advice = "delete it to start over"
    try:
        state = read_versioned(path, CHECKPOINT_VERSION, "checkpoint", advice)
    except TrapkitError as e:
        raise TrapkitError(f"{e} (the checkpoint is unreadable)") from None
    if state.get("version") != CHECKPOINT_VERSION or not _is_checkpoint(state):
        raise TrapkitError(f"{path} is not a trapkit classify checkpoint of this version; {advice}")
    if state.get("fingerprint") != fingerprint:
        raise TrapkitError(
            f"checkpoint {path} was made with other detections, model or settings; "
            "rerun with the original options, or delete it to start over"
        )
    return state["done"]


def _is_checkpoint(state: dict) -> bool:
    """The structure `_record` writes: {"done": {image index: {classifications, failure, warnings, time}}}."""
    done = state.get("done")
    if not isinstance(done, dict) or not isinstance(state.get("fingerprint"), str):
        return False
    for key, record in done.items():
        if not (key.isdigit() and isinstance(record, dict) and isinstance(record.get("classifications"), dict)
                and isinstance(record.get("warnings"), list)
                and all(isinstance(record.get(k), (str, type(None))) for k in ("failure", "time"))):
            return False
    return True


def _ordered_map(pool, fn, items, lookahead: int):
    """`fn` over `items` on `pool`, results in input order, at most `lookahead` in flight."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= lookahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Batcher:
    """Gathers crops across images into fixed-size batches; up to `concurrency` batches run at once."""

    def __init__(self, runtime, settings: ClassifySettings):
        self.runtime = runtime
        self.batch_size = settings.batch_size
        self.concurrency = settings.concurrency
        self.keys: list[tuple[int, int]] = []
        self.crops: list[np.ndarray] = []
        self.pending: deque = deque()
        self.results: dict[tuple[int, int], np.ndarray] = {}
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="infer")

    def add(self, item: Staged) -> None:
        for j, crop in zip(item.det_indices, item.crops):
            self.keys.append((item.index, j))
            self.crops.append(crop)
            if len(self.crops) == self.batch_size:
                self._submit()

    def _submit(self) -> None:
        keys, batch = self.keys, np.stack(self.crops)  # (B, S, S, 3) uint8
        self.keys, self.crops = [], []
        self.pending.append((keys, self.pool.submit(self.runtime.predict, batch)))
        while len(self.pending) > self.concurrency:
            self._collect()

    def _collect(self) -> None:
        keys, future = self.pending.popleft()
        probs = future.result()  # (B, C) float32
        if probs.shape[0] != len(keys):
            raise TrapkitError(
                f"the model returned {probs.shape[0]} rows for {len(keys)} crops; check the model server"
            )
        self.results.update(zip(keys, probs))

    def finish(self) -> dict[tuple[int, int], np.ndarray]:
        """Run what is left (a short batch at a checkpoint boundary) and hand back every result so far."""
        if self.crops:
            self._submit()
        while self.pending:
            self._collect()
        results, self.results = self.results, {}
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def top_k(probs: np.ndarray, k: int) -> list[list]:
    """[[class id, conf], ...] for one (C,) probability vector, descending, ties by class index."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [[str(int(c)), round(float(probs[c]), CONF_DECIMALS)] for c in order]


def _record(p: Staged, results: dict, k: int) -> dict:
    """The checkpointed result of one image (plain JSON)."""
    classifications = {} if p.failure else {str(j): top_k(results[(p.index, j)], k) for j in p.det_indices}
    return {"classifications": classifications, "failure": p.failure, "warnings": p.warnings, "time": p.time}
