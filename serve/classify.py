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

With `ClassifyPaths.features`, the graph's `embedding` output comes back with
the probabilities from the same batches, and each checkpointed chunk's
embeddings are kept beside the checkpoint until the features table is
written (`trapkit.feature_table`).

Work is checkpointed (atomically) every `checkpoint_every` images. Batches
never straddle a checkpoint boundary, so a resumed run feeds the model exactly
the same batches as an uninterrupted one and writes the same output.
Which detections are classified, and how they are cropped, is the model's
own crop policy (`trapkit.prepare.Preprocessing.from_spec`), unless flags
say otherwise. Images that cannot be read keep the detector's boxes,
unclassified, with a `classification_failure` code (`trapkit.images.FAILURE_*`;
details go to the log), and the run goes on.

MegaDetector's frame-level video results (`clip.mp4/frame000123.jpg`) are
classified from the video itself: each video is one unit of stage 1, decoded
once for all its wanted frames (`trapkit.video.read_frames`), each frame
cut by `trapkit.prepare.crops_from_image`; frames it cannot give get a
`trapkit.video.FAILURE_*` code. Without detections, `frame_sample`
classifies every N-th frame of every video whole.

Each detection's full probability vector then goes through
`trapkit.serve.postprocess` (allow-list, per-class thresholds, rollup) before
its top-k is written, and the assembled output through
`trapkit.serve.smoothing` when asked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trapkit import __version__, feature_table
from trapkit import detections as md
from trapkit import video as vid
from trapkit.atomic import atomic_write_json, check_writable
from trapkit.errors import TrapkitError
from trapkit.images import ImageReadError, is_file_under, is_image_file, iter_files, iter_images, safe_join
from trapkit.prepare import crops_from_image, prepare_entry
from trapkit.serve import outputs
from trapkit.serve.postprocess import Plan, build_plan, classify, plain_plan, used_categories
from trapkit.serve.settings import ClassifySettings
from trapkit.serve.smoothing import cct_document, sequences, smooth
from trapkit.typed_json import read_versioned

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: failures are FAILURE_* codes
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
    sequences_out: Path | None = None  # COCO Camera Traps: the sequences smoothing used
    video_out: Path | None = None  # MegaDetector's video-level file
    features: Path | None = None  # the features table (.parquet or .csv), `trapkit.feature_table`

    def __post_init__(self):
        if self.features is not None:
            feature_table.check_suffix("--features", self.features)
        files = (("--out", self.out), ("--csv", self.csv), ("--sequences-out", self.sequences_out),
                 ("--video-out", self.video_out), ("--features", self.features))
        given = [(flag, Path(path)) for flag, path in files if path is not None]
        for (flag, path), (other, again) in ((a, b) for n, a in enumerate(given) for b in given[n + 1:]):
            if path.resolve() == again.resolve():
                raise TrapkitError(f"{flag} and {other} are the same file {path}; give each its own name")
        for flag, path in files:
            if path is None:
                continue
            path = Path(path)
            if path.is_dir():
                raise TrapkitError(f"{flag} {path} is a folder; give a file name (a new file inside it, say)")
            if self.detections and _same_file(path, self.detections):
                raise TrapkitError(
                    f"{flag} {path} is the detections file; give a new file name so MegaDetector's output is kept"
                )
            check_writable(flag, path, path.parent)
        if self.sort_into is not None:
            folder = Path(self.sort_into)
            if folder.exists() and not folder.is_dir():
                raise TrapkitError(f"--sort-into {folder} is a file; give a folder")
            check_writable("--sort-into", folder, folder)

    @property
    def checkpoint(self) -> Path:
        return self.out.with_name(self.out.name + ".checkpoint.json")

    @property
    def feature_parts(self) -> Path:
        """The checkpointed chunks' embeddings (a folder), beside the checkpoint."""
        return self.out.with_name(self.out.name + ".checkpoint.features")


def _same_file(a, b) -> bool:
    return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)  # links included


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
    meta = feature_table.FeatureMeta.for_run(runtime, job.prep, job.whole) if paths.features else None
    job.features = feature_table.FeatureParts.open(paths.feature_parts, paths.checkpoint, done, meta)
    todo = [i for i in sorted(job.targets) if str(i) not in done]
    log.info("%d images to classify (%d detections), %d already done%s", len(todo),
             sum(len(job.targets[i]) for i in todo), len(done), " (resumed)" if done else "")
    if executor is None:
        job.run(todo, done)
    else:
        executor(job, todo, done)

    result = job.assemble(done)
    groups = times = None
    if paths.sequences_out or (settings.smooth is not None and settings.smooth.sequences):
        times = {i: done.get(str(i), {}).get("time") for i in range(len(result["images"]))}
        groups = sequences(result["images"], times, settings.sequence_gap)
    if settings.smooth is not None:
        smooth(result, settings.smooth, groups)
    atomic_write_json(paths.out, result)
    if paths.sequences_out:
        atomic_write_json(paths.sequences_out, cct_document(result["images"], groups, times))
    if paths.video_out:
        atomic_write_json(paths.video_out, vid.video_results(result, job.frame_rates()))
    summary = outputs.summarize(result, done)
    if paths.csv:
        outputs.write_csv(paths.csv, result, done)
    if paths.sort_into:
        outputs.sort_into(result, paths.images_dir, paths.sort_into, link=paths.link)
    if job.features:
        job.features.write(paths.features, result, done)
    paths.checkpoint.unlink(missing_ok=True)  # the output now holds everything the checkpoint did
    if job.features:
        job.features.remove()
    return summary


class _Job:
    """One classify run: its input document, what to classify in it, and the stages over it."""

    def __init__(self, paths: ClassifyPaths, runtime, settings: ClassifySettings):
        self.paths, self.runtime, self.settings = paths, runtime, settings
        self.whole = paths.detections is None  # no detector: each image is one full-frame item
        spec = runtime.spec
        self.prep = settings.preprocessing(spec)
        # Bad CSVs and flags fail here, before any image is read.
        self.plan: Plan = (build_plan(spec.labels, spec.taxonomy, settings.post) if settings.post.active
                           else plain_plan(spec.labels, spec.taxonomy))
        self.doc = _input_document(paths, settings.frame_sample)
        self.frames = self._frames()
        self.videos = self._videos()
        self.targets = self._targets()
        if any(i in self.frames or i in self.videos for i in self.targets):
            vid.require_av()
        self.fingerprint = _fingerprint(self.doc, runtime, settings, self.plan)
        self.features: feature_table.FeatureParts | None = None  # set by classify_images with --features

    def _frames(self) -> dict[int, tuple[str, int]]:
        """{image index: (video, frame number)} for MegaDetector frame entries read from their video.

        A frame whose "video" is a folder (frames already extracted to files) is read as an image.
        """
        out, folders = {}, {}
        for i, im in enumerate(self.doc["images"]):
            frame = vid.split_frame(im["file"])
            if frame is None:
                continue
            if frame[0] not in folders:
                try:
                    folders[frame[0]] = safe_join(self.paths.images_dir, frame[0]).is_dir()
                except ImageReadError:
                    folders[frame[0]] = False  # refused again, with its failure, when read
            if not folders[frame[0]]:
                out[i] = frame
        return out

    def _videos(self) -> set[int]:
        """Indices of MegaDetector's video-level entries (`clip.mp4`, each detection with its `frame_number`)."""
        return {i for i, im in enumerate(self.doc["images"])
                if vid.is_video_file(im["file"]) and im.get("failure") is None and im.get("detections")
                and all(isinstance(d.get("frame_number"), int) and d["frame_number"] >= 0 for d in im["detections"])}

    def _targets(self) -> dict[int, list[int]]:
        """{image index: [detection indices to classify]} (`trapkit.detections.qualifying`), images and frames."""
        images = self.doc["images"]
        if self.whole:
            return {i: [0] for i, im in enumerate(images) if im.get("failure") is None}
        targets = md.qualifying(self.doc, self.prep.threshold, self.prep.categories)
        other = {i for i in targets if i not in self.frames and i not in self.videos
                 and not is_image_file(images[i]["file"])}
        if other:
            log.warning("%d entries are neither images nor videos; left as they are", len(other))
        return {i: dets for i, dets in targets.items() if i not in other}

    def check_images_found(self) -> None:
        """Stop before any work when not one image to classify is under IMAGES_DIR: the folder is wrong."""
        files = [self.frames[i][0] if i in self.frames else self.doc["images"][i]["file"] for i in sorted(self.targets)]
        if files and not any(is_file_under(self.paths.images_dir, f) for f in files):
            raise TrapkitError(
                f"none of the {len(files)} images to classify in {self.paths.detections} is under "
                f"{self.paths.images_dir} ({files[0]} is missing); IMAGES_DIR is probably the wrong folder: "
                "give the one MegaDetector's file paths start from"
            )

    def work(self, i: int) -> tuple[str, list | None]:
        """(file relative to IMAGES_DIR, boxes to crop or None for the whole image) of image `i` (a photo)."""
        entry = self.doc["images"][i]
        return entry["file"], None if self.whole else [entry["detections"][j]["bbox"] for j in self.targets[i]]

    def units(self, todo: list[int]) -> list[list[int]]:
        """Stage 1's units of work: one image, or every wanted frame of one video (decoded in one pass)."""
        units, where = [], {}
        for i in todo:
            video = self.frames[i][0] if i in self.frames else None
            if video is None:
                units.append([i])
            elif video in where:
                units[where[video]].append(i)
            else:
                where[video] = len(units)
                units.append([i])
        return [sorted(u, key=lambda i: self.frames[i][1]) if u[0] in self.frames else u for u in units]

    def prepare_unit(self, unit: list[int]) -> list[Staged]:
        if unit[0] in self.frames:
            return self.prepare_frames(unit)
        if unit[0] in self.videos:
            return [self.prepare_video(unit[0])]
        return [self.prepare(unit[0])]

    def prepare_video(self, i: int) -> Staged:
        """Stage 1 for a video-level entry: its detections' frames decoded in one pass, each box cut from its
        own frame. Detections on frames the video cannot give stay unclassified (noted in the warnings);
        the entry fails only when none can be classified."""
        im = self.doc["images"][i]
        out = Staged(i, [])
        by_number: dict[int, list[int]] = {}
        for j in self.targets[i]:
            by_number.setdefault(im["detections"][j]["frame_number"], []).append(j)
        crops, failures = {}, {}
        try:
            for number, img, failure in vid.read_frames(safe_join(self.paths.images_dir, im["file"]), by_number):
                if failure is not None:
                    failures[number] = failure
                    continue
                for j, crop in zip(by_number[number], crops_from_image(
                        img, [im["detections"][j]["bbox"] for j in by_number[number]], self.prep)):
                    crops[j] = crop
        except (vid.VideoReadError, ImageReadError) as e:
            out.failure = e.code
            log.warning("not classified: %s", e)
            return out
        except Exception as e:  # noqa: BLE001 - as for images: recorded, the run goes on
            out.failure = vid.FAILURE_UNREADABLE
            log.warning("not classified: %s could not be decoded (%s: %s)", ascii(im["file"]), e.__class__.__name__, e)
            return out
        for code in sorted(set(failures.values())):
            out.warnings.append(f"{code}: frames {', '.join(str(n) for n in sorted(failures) if failures[n] == code)}")
        if not crops:
            out.failure = next(iter(failures.values()), vid.FAILURE_NO_FRAMES)
            return out
        out.det_indices = sorted(crops)
        out.crops = np.stack([crops[j] for j in out.det_indices])
        return out

    def prepare_frames(self, unit: list[int]) -> list[Staged]:
        """Stage 1 for the wanted frames of one video: one decoding pass, each frame cut like a photo."""
        images = self.doc["images"]
        video = self.frames[unit[0]][0]
        staged = {i: Staged(i, self.targets[i]) for i in unit}
        by_number: dict[int, list[int]] = {}
        for i in unit:
            by_number.setdefault(self.frames[i][1], []).append(i)
        try:
            for number, img, failure in vid.read_frames(safe_join(self.paths.images_dir, video), by_number):
                for i in by_number[number]:
                    if failure is not None:
                        staged[i].failure = failure
                        continue
                    boxes = None if self.whole else [images[i]["detections"][j]["bbox"] for j in staged[i].det_indices]
                    staged[i].crops = crops_from_image(img, boxes, self.prep)
        except (vid.VideoReadError, ImageReadError) as e:
            code = e.code
            log.warning("not classified: %s", e)
        except Exception as e:  # noqa: BLE001 - as for images: recorded, the run goes on
            code = vid.FAILURE_UNREADABLE
            log.warning("not classified: %s could not be decoded (%s: %s)", ascii(video), e.__class__.__name__, e)
            log.debug("unexpected error on %s", ascii(video), exc_info=True)
        else:
            code = None
        for st in staged.values():
            if st.crops is None and st.failure is None:
                st.failure = code or vid.FAILURE_UNREADABLE
        return [staged[i] for i in unit]

    def frame_rates(self) -> dict[str, float | None]:
        """Each video's frame rate, from its container (for the video-level file)."""
        rates = {}
        for im in self.doc["images"]:
            frame = vid.split_frame(im["file"])
            if frame is not None and frame[0] not in rates:
                try:
                    rates[frame[0]] = vid.frame_rate(safe_join(self.paths.images_dir, frame[0]))
                except ImageReadError:
                    rates[frame[0]] = None
        return rates

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
        return _record(item, results, self.plan, self.settings.top_k)

    def save_checkpoint(self, done: dict) -> None:
        atomic_write_json(self.paths.checkpoint, {
            "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "done": done}, indent=None)

    def run(self, todo: list[int], done: dict) -> None:
        """Stages 1-3 over `todo`, recording each image into `done` and checkpointing every `checkpoint_every`."""
        from tqdm import tqdm

        settings = self.settings
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        units = self.units(todo)
        batcher = _Batcher(self.runtime, settings, embedding=self.features is not None)
        bar = tqdm(total=len(todo), unit="img", desc="classify", disable=None)
        try:
            with ThreadPoolExecutor(settings.workers, thread_name_prefix="decode") as pool:
                chunk: list[Staged] = []
                n = 0
                staged = _ordered_map(pool, self.prepare_unit, units, lookahead=4 * settings.workers)
                for k, items in enumerate(staged, 1):
                    for item in items:
                        n += 1
                        chunk.append(item)
                        if item.crops is not None:
                            batcher.add(item)
                        if kill_after and n >= kill_after:
                            # Raised in this (the main) thread, so a SIGINT is handled before the next line runs.
                            signal.raise_signal(getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL")))
                    # Units (a video's frames) are never split, so a resumed run sees the same units and batches.
                    if len(chunk) >= settings.checkpoint_every or k == len(units):
                        results = batcher.finish()
                        for p in chunk:
                            done[str(p.index)] = self.record(p, results)
                        if self.features:  # before the checkpoint that commits the chunk
                            self.features.add([p.index for p in chunk], batcher.take_embeddings())
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
        used = {c[0] for r in done.values() for classes in r["classifications"].values() for c in classes}
        out["classification_categories"], descriptions = used_categories(self.plan, used)
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
        prep, post = self.prep, self.settings.post
        info["classifier_metadata"] = {
            "trapkit_version": __version__, "threshold": prep.threshold, "categories": list(prep.categories),
            # Ids below this are the model's classes; the others are taxa above them (rollup, allow-lists).
            "model_classes": self.runtime.spec.num_classes,
            "top_k": self.settings.top_k, "crop_margin": prep.margin, "input_size": prep.input_size,
            "interpolation": prep.interpolation,
            # File names only: local paths never go into shared results.
            "postprocess": {"rollup": post.rollup, "allow_list": post.allow_list and Path(post.allow_list).name,
                            "class_thresholds": post.class_thresholds and Path(post.class_thresholds).name},
            "smoothing": asdict(self.settings.smooth) if self.settings.smooth is not None else None,
            "sequence_gap": self.settings.sequence_gap, "frame_sample": self.settings.frame_sample,
        }
        return out


def _fingerprint(doc: dict, runtime, settings: ClassifySettings, plan: Plan | None = None) -> str:
    """What the checkpointed records depend on: the input, the model, the settings that change outputs,
    and the post-processing plan (the CSVs' content, not their names)."""
    h = hashlib.sha256()
    h.update(json.dumps(doc, sort_keys=True).encode())
    h.update(runtime.spec.to_json().encode())
    h.update(str(getattr(runtime, "identity", "")).encode())  # the weights, where the runtime knows them
    prep = settings.preprocessing(runtime.spec)
    h.update(json.dumps({"top_k": settings.top_k, **asdict(prep)}, sort_keys=True).encode())
    plan = plan or plain_plan(runtime.spec.labels, runtime.spec.taxonomy)
    h.update(json.dumps(plan.describe(), sort_keys=True).encode())
    return h.hexdigest()


def _input_document(paths: ClassifyPaths, frame_sample: int | None = None) -> dict:
    if not Path(paths.images_dir).is_dir():
        raise TrapkitError(f"image folder {paths.images_dir} does not exist; check the path")
    if paths.detections is None:
        root = Path(paths.images_dir)
        files = [p.relative_to(root).as_posix() for p in iter_images(root)]
        videos = [p.relative_to(root).as_posix() for p in iter_files(root, vid.is_video_file)] if frame_sample else []
        if videos:
            vid.require_av()
        if not files and not videos:
            raise TrapkitError(f"no images{' or videos' if frame_sample else ''} found under {root}; check the folder")
        doc = md.whole_image_results(files)
        doc["images"] += _sampled_frames(root, videos, frame_sample)
        return doc
    return md.load_detections(paths.detections)


def _sampled_frames(root: Path, videos: list[str], every: int) -> list[dict]:
    """Frame entries 0, N, 2N, ... of each video, one full-frame box each; a video that cannot be
    opened, or has no frames, gets one failed entry (frame 0) so it is counted and reported."""
    box = md.whole_image_results(["x"])["images"][0]["detections"]
    entries = []
    for video in videos:
        try:
            count = vid.probe(safe_join(root, video)).frames
            failure = None if count else vid.FAILURE_NO_FRAMES
        except (vid.VideoReadError, ImageReadError) as e:
            count, failure = 0, e.code
            log.warning("not classified: %s", e)
        if failure:
            entries.append({"file": vid.frame_file(video, 0), "failure": failure, "detections": None})
        entries += [{"file": vid.frame_file(video, n), "detections": copy.deepcopy(box)} for n in range(0, count, every)]
    return entries


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
    """Gathers crops across images into fixed-size batches; up to `concurrency` batches run at once.

    With `embedding`, each batch returns the graph's embedding beside the probabilities (one run of the
    graph), kept in `embeddings` until `take_embeddings`.
    """

    def __init__(self, runtime, settings: ClassifySettings, embedding: bool = False):
        self.runtime = runtime
        self.embedding = embedding
        self.embeddings: dict[tuple[int, int], np.ndarray] = {}  # (image, detection) -> (D,) float32
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
        kwargs = {"embedding": True} if self.embedding else {}
        self.pending.append((keys, self.pool.submit(self.runtime.predict, batch, **kwargs)))
        while len(self.pending) > self.concurrency:
            self._collect()

    def _collect(self) -> None:
        keys, future = self.pending.popleft()
        probs, embedding = future.result() if self.embedding else (future.result(), None)  # (B, C), (B, D)
        for rows in (probs, embedding):
            if rows is not None and rows.shape[0] != len(keys):
                raise TrapkitError(
                    f"the model returned {rows.shape[0]} rows for {len(keys)} crops; check the model server"
                )
        self.results.update(zip(keys, probs))
        if embedding is not None:
            self.embeddings.update(zip(keys, embedding))

    def finish(self) -> dict[tuple[int, int], np.ndarray]:
        """Run what is left (a short batch at a checkpoint boundary) and hand back every result so far."""
        if self.crops:
            self._submit()
        while self.pending:
            self._collect()
        results, self.results = self.results, {}
        return results

    def take_embeddings(self) -> dict[tuple[int, int], np.ndarray]:
        """The embeddings of every result handed back by `finish` so far."""
        embeddings, self.embeddings = self.embeddings, {}
        return embeddings

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _record(p: Staged, results: dict, plan: Plan, k: int) -> dict:
    """The checkpointed result of one image (plain JSON): each detection's full (C,) probabilities
    through the post-processing plan, then its top k."""
    classifications = {} if p.failure else {str(j): classify(results[(p.index, j)], plan, k) for j in p.det_indices}
    return {"classifications": classifications, "failure": p.failure, "warnings": p.warnings, "time": p.time}
