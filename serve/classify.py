"""The batch classifier: MegaDetector detections in, the same file with species out.

Pipeline (one pass, three overlapping stages):

1. Worker threads each take one image, read its header (size, EXIF orientation
   and time), decode it ONCE for all its crops, at a reduced JPEG DCT scale when
   every crop keeps at least the model's input size, and cut the crops
   (`trapkit.serve.crops`). Pillow releases the GIL while decoding.
2. The main thread gathers crops in image order into batches of `batch_size`
   across images.
3. Up to `concurrency` batches run on the runtime at once (onnxruntime or
   Triton), beside the decoding threads.

Work is checkpointed (atomically) every `checkpoint_every` images. Batches
never straddle a checkpoint boundary, so a resumed run feeds the model exactly
the same batches as an uninterrupted one and writes the same output.
Images that cannot be read keep the detector's boxes, unclassified, with a
`classification_failure` string, and the run goes on.
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
from PIL import Image

from trapkit import __version__
from trapkit.atomic import atomic_write_json
from trapkit.errors import TrapkitError
from trapkit.images import (
    EXIF_ORIENTATION, ImageReadError, is_image_file, iter_images, open_image, open_window, safe_join,
    to_model_input,
)
from trapkit.serve import megadetector as md
from trapkit.serve import outputs
from trapkit.serve.crops import CropPolicy, crop_square, min_decode_size, region_needed
from trapkit.serve.smoothing import SmoothSettings, sequences, smooth

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CONF_DECIMALS = 4
# Test hook (documented in tests/test_classify_resume.py): SIGKILL this process
# after preparing that many images, to prove --resume recovers from a hard kill
# (or send the signal named in KILL_SIGNAL_ENV: SIGINT is a Ctrl-C).
KILL_AFTER_ENV = "TRAPKIT_TEST_KILL_AFTER_IMAGES"
KILL_SIGNAL_ENV = "TRAPKIT_TEST_KILL_SIGNAL"
_EXIF_DATETIME_ORIGINAL, _EXIF_DATETIME, _EXIF_IFD = 36867, 306, 0x8769


@dataclass(frozen=True)
class ClassifySettings:
    """What to classify and how. Changing any of the first four invalidates a checkpoint."""

    threshold: float = 0.1
    categories: tuple[str, ...] = ("animal",)
    top_k: int = 5
    margin: float = 0.1
    smooth: SmoothSettings | None = None  # None: no sequence smoothing
    batch_size: int = 32
    workers: int = 2
    concurrency: int = 1
    checkpoint_every: int = 500

    def __post_init__(self):
        CropPolicy(self.margin)  # validates the margin
        for name in ("top_k", "batch_size", "workers", "concurrency", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrapkitError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise TrapkitError(f"threshold {self.threshold} is out of range; use a detection confidence in [0, 1]")


@dataclass(frozen=True)
class Parallelism:
    """Decoding threads, batches in flight, and onnxruntime threads per batch."""

    workers: int
    concurrency: int
    threads: int

    @classmethod
    def for_cpus(cls, cpus: int, workers: int | None = None, concurrency: int | None = None,
                 threads: int | None = None) -> Parallelism:
        """Defaults for `cpus` cores, any given value kept.

        A few batches in flight with fewer threads each beat one batch on every
        core: onnxruntime's threads then never wait on each other (single-thread
        Lite0 costs ~20% less CPU per crop than two threads on one batch), and the
        decoding threads fill the gaps (bench/bench_classify.py).
        """
        if any(v is not None and v < 0 for v in (workers, concurrency, threads)):
            raise TrapkitError("--workers, --concurrency and --threads must be positive")
        concurrency = concurrency or min(cpus, 4)
        return cls(workers or cpus, concurrency, threads or max(1, cpus // concurrency))


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
class Prepared:
    """One image after stage 1: its crops (k, S, S, 3) uint8 for detections `det_indices`, or a failure."""

    index: int
    det_indices: list[int]
    crops: np.ndarray | None = None
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    time: str | None = None  # EXIF "YYYY:MM:DD HH:MM:SS"


def classify_images(paths: ClassifyPaths, runtime, settings: ClassifySettings = ClassifySettings(),
                    resume: bool = False):
    """Classify, write `paths.out` (and CSV / sorted folders), return a `trapkit.serve.outputs.Summary`."""
    whole = paths.detections is None
    doc = _input_document(paths)
    targets = _targets(doc, settings, whole)
    if not whole:
        _check_images_found(paths, doc, targets)
    fingerprint = _fingerprint(doc, runtime, settings)
    done = _load_checkpoint(paths.checkpoint, fingerprint, resume)
    todo = [i for i in sorted(targets) if str(i) not in done]
    log.info("%d images to classify (%d detections), %d already done%s", len(todo),
             sum(len(targets[i]) for i in todo), len(done), " (resumed)" if done else "")
    _run(paths, runtime, settings, doc, targets, todo, done, fingerprint, whole)

    result = _assemble(doc, done, runtime, settings, whole)
    if settings.smooth is not None:
        times = {i: done.get(str(i), {}).get("time") for i in range(len(result["images"]))}
        smooth(result, settings.smooth, sequences(result["images"], times, settings.smooth.gap_seconds))
    atomic_write_json(paths.out, result)
    summary = outputs.summarize(result, done)
    if paths.csv:
        outputs.write_csv(paths.csv, result, done)
    if paths.sort_into:
        outputs.sort_into(result, paths.images_dir, paths.sort_into, link=paths.link)
    paths.checkpoint.unlink(missing_ok=True)  # the output now holds everything the checkpoint did
    return summary


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


def _targets(doc: dict, settings: ClassifySettings, whole: bool) -> dict[int, list[int]]:
    """{image index: [detection indices to classify]} for readable images with matching detections."""
    cats = md.category_ids(doc, settings.categories) if not whole else set(doc["detection_categories"])
    targets, not_images = {}, 0
    for i, im in enumerate(doc["images"]):
        if im.get("failure") is not None or not im.get("detections"):
            continue
        if not is_image_file(im["file"]):
            not_images += 1  # videos (MegaDetector frame results) and other files are carried through as they are
            continue
        dets = [j for j, d in enumerate(im["detections"]) if d["category"] in cats and d["conf"] >= settings.threshold]
        if dets:
            targets[i] = dets
    if not_images:
        log.warning("%d entries are not image files (videos?); left as they are", not_images)
    return targets


def _check_images_found(paths: ClassifyPaths, doc: dict, targets: dict) -> None:
    """Stop before any work when not one image to classify is under IMAGES_DIR: the folder is wrong."""
    files = [doc["images"][i]["file"] for i in sorted(targets)]
    if files and not any(_is_file(paths.images_dir, f) for f in files):
        raise TrapkitError(
            f"none of the {len(files)} images to classify in {paths.detections} is under {paths.images_dir} "
            f"({files[0]} is missing); IMAGES_DIR is probably the wrong folder: give the one MegaDetector's file "
            "paths start from"
        )


def _is_file(root, file: str) -> bool:
    try:
        return safe_join(root, file).is_file()
    except ImageReadError:
        return False


def _fingerprint(doc: dict, runtime, settings: ClassifySettings) -> str:
    """What the results depend on: the input, the model and the settings that change outputs."""
    h = hashlib.sha256()
    h.update(json.dumps(doc, sort_keys=True).encode())
    h.update(runtime.spec.to_json().encode())
    h.update(str(getattr(runtime, "identity", "")).encode())  # the weights, where the runtime knows them
    keep = {k: v for k, v in asdict(settings).items() if k in ("threshold", "categories", "top_k", "margin")}
    h.update(json.dumps(keep, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _load_checkpoint(path: Path, fingerprint: str, resume: bool) -> dict:
    if not path.exists():
        if resume:
            log.info("no checkpoint at %s; starting from the beginning", path)
        return {}
    if not resume:
        raise TrapkitError(
            f"{path} holds an interrupted run; add --resume to continue it, or delete it to start over"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrapkitError(
            f"checkpoint {path} is unreadable ({e.__class__.__name__}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "done" not in state:
        raise TrapkitError(f"{path} is not a trapkit classify checkpoint; delete it to start over")
    if state.get("fingerprint") != fingerprint:
        raise TrapkitError(
            f"checkpoint {path} was made with other detections, model or settings; "
            "rerun with the original options, or delete it to start over"
        )
    return state["done"]


def _run(paths, runtime, settings, doc, targets, todo, done, fingerprint, whole) -> None:
    from tqdm import tqdm

    spec = runtime.spec
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    kill_signal = getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL"))
    images = doc["images"]

    def prepare(i: int) -> Prepared:
        return prepare_image(paths.images_dir, images[i], i, targets[i], spec, settings.margin, whole)

    def save() -> None:
        atomic_write_json(paths.checkpoint, {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
                                             "done": done}, indent=None)

    batcher = _Batcher(runtime, settings)
    bar = tqdm(total=len(todo), unit="img", desc="classify", disable=None)
    try:
        with ThreadPoolExecutor(settings.workers, thread_name_prefix="decode") as pool:
            chunk: list[Prepared] = []
            for n, item in enumerate(_ordered_map(pool, prepare, todo, lookahead=4 * settings.workers), 1):
                chunk.append(item)
                if item.crops is not None:
                    batcher.add(item)
                if kill_after and n >= kill_after:
                    os.kill(os.getpid(), kill_signal)
                if len(chunk) == settings.checkpoint_every or n == len(todo):
                    results = batcher.finish()
                    for p in chunk:
                        done[str(p.index)] = _record(p, results, settings.top_k)
                    save()
                    bar.update(len(chunk))
                    chunk = []
    finally:
        bar.close()
        batcher.close()


def prepare_image(root, entry: dict, index: int, det_indices: list[int], spec, margin: float,
                  whole: bool) -> Prepared:
    """Stage 1 for one image: decode once (reduced when crops allow) and cut every crop."""
    out = Prepared(index, det_indices)
    size = spec.input_size
    try:
        path = safe_join(root, entry["file"])
        header = _probe(path)
        bboxes = [entry["detections"][j]["bbox"] for j in det_indices]
        if header is not None:
            out.time = header[2]
        if whole:
            img, out.warnings = open_image(path, min_size=(size, size))
            out.crops = to_model_input(img, size, spec.resize_mode)[None]
        else:
            min_size = region = None  # the whole image when the header is unreadable
            if header is not None:
                (w, h), transposed, _ = header
                mw, mh = min_decode_size(bboxes, w, h, size, margin)
                min_size = (mh, mw) if transposed else (mw, mh)  # draft works on the stored (unrotated) image
                region = region_needed(bboxes, w, h, size, margin)
            window, out.warnings = open_window(path, min_size=min_size, region=region)
            out.crops = np.stack([crop_square(window, b, size, margin) for b in bboxes])
    except ImageReadError as e:
        out.failure = str(e)
    except Exception as e:  # noqa: BLE001 - one strange file must not end a 100k-image run; recorded, not hidden
        log.debug("unexpected error on %s", entry.get("file"), exc_info=True)
        out.failure = f"{entry.get('file')} could not be processed ({e.__class__.__name__}: {e})"
    if out.failure:
        log.warning("%s", out.failure)
    return out


def _probe(path: Path):
    """((width, height) upright, rotated by 90 degrees?, EXIF time) from the header, or None if unreadable."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            transposed = exif.get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            taken = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)
            w, h = img.size
    except Exception:  # noqa: BLE001 - open_image reports the real problem next
        return None
    return ((h, w) if transposed else (w, h)), transposed, (str(taken).strip("\x00 ") if taken else None)


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

    def add(self, item: Prepared) -> None:
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


def _record(p: Prepared, results: dict, k: int) -> dict:
    """The checkpointed result of one image (plain JSON)."""
    classifications = {} if p.failure else {str(j): top_k(results[(p.index, j)], k) for j in p.det_indices}
    return {"classifications": classifications, "failure": p.failure, "warnings": p.warnings, "time": p.time}


def _assemble(doc: dict, done: dict, runtime, settings: ClassifySettings, whole: bool) -> dict:
    """The output document: the input upgraded to 1.6 with classifications merged in."""
    out = md.upgrade_to_output(copy.deepcopy(doc))
    stale = 0
    for im in out["images"]:
        im.pop(md.CLASSIFICATION_FAILURE, None)  # an earlier run's; this run's are set below
        for d in im["detections"] or ():
            # The model's categories replace any earlier ones, so no earlier class id may survive.
            d.pop("classifications_before_smoothing", None)
            stale += d.pop("classifications", None) is not None
    if stale:
        log.warning("replaced earlier classifications on %d detections", stale)
    spec = runtime.spec
    out["classification_categories"], descriptions = md.classification_categories(spec.labels, spec.taxonomy)
    if descriptions:
        out["classification_category_descriptions"] = descriptions
    else:
        out.pop("classification_category_descriptions", None)
    for i, record in done.items():
        im = out["images"][int(i)]
        if record["failure"]:
            if whole:  # a made-up full-frame box is no detection
                im["failure"], im["detections"] = record["failure"], None
            else:  # the detector's boxes stay, unclassified
                im[md.CLASSIFICATION_FAILURE] = record["failure"]
            continue
        for j, classes in record["classifications"].items():
            im["detections"][int(j)]["classifications"] = classes
    info = out["info"]
    info["classifier"] = runtime.name
    info["classification_completion_time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    info["classifier_metadata"] = {
        "trapkit_version": __version__, "threshold": settings.threshold, "categories": list(settings.categories),
        "top_k": settings.top_k, "crop_margin": settings.margin, "input_size": spec.input_size,
        "smoothing": asdict(settings.smooth) if settings.smooth is not None else None,
    }
    return out
