"""A season: deployments, media with capture times, and the observations a classify result makes of them.

What `trapkit camtrap-dp` writes and `trapkit report` analyses, read from a classify output (or its
`review --write-verified` copy), the images it was run on, and a deployments CSV:

- **Deployments**: each image belongs to the deployment named by its folder, the first `depth` folder levels
  under IMAGES_DIR ("north/cam_a" at depth 2). DEPLOYMENTS.csv has Camtrap DP's column names (any case),
  at least `deploymentID`, `latitude`, `longitude`; a missing `deploymentStart`/`deploymentEnd` is taken
  from the first and last photo. Times without an offset are in `--timezone`.
- **Media**: one per photo or video file (MegaDetector's `clip.mp4/frame000123.jpg` entries belong to
  `clip.mp4`). Photos are timed by EXIF DateTimeOriginal, videos by their container's creation time; with
  `file_times` the file's modification time stands in for a missing one, else such media are left out
  and named in one line.
- **Observations** (`Observation`, media level): one per qualifying detection (`trapkit.detections.qualifying`
  at the classify output's own threshold): the detection's top classification (the rollup, thresholds and
  smoothing classify applied are already in it), MegaDetector's person and vehicle as `human` and `vehicle`;
  one `blank` per media with no qualifying detection, `unclassified` where classify could not read the image
  or left an animal without a class. A `[wrong box]` answer removes its detection. Human answers (a verified
  copy's, or `--verified ANSWERS.csv`) replace the machine's and are `classificationMethod` human.
- **Events**: the media of one sequence (`trapkit.sequences`: same folder, capture times within the gap).

Names: a class's taxonomy string (`trapkit.taxonomy`) gives its scientific name ("Canis lupus", "Canidae"),
rank and common name; a class without one is named by its label. Non-taxa are recognised by name: blank,
empty, human, person, vehicle, animal, unknown.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from functools import cached_property
from pathlib import Path, PurePosixPath

from trapkit import detections as md
from trapkit import video as vid
from trapkit.answers import WRONG_BOX, read_answers, read_rows
from trapkit.atomic import atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.images import FAILURE_MISSING, ImageReadError, read_header, safe_join
from trapkit.machine import available_cpus
from trapkit.sequences import parse_exif_time, sequence_groups
from trapkit.taxonomy import RANKS, few, parse_taxon

log = logging.getLogger(__name__)

# Camtrap DP 1.0's deployments columns and the type of each that is not text.
DEPLOYMENT_COLUMNS = (
    "deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
    "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay", "cameraHeight",
    "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance", "timestampIssues", "baitUse", "featureType",
    "habitat", "deploymentGroups", "deploymentTags", "deploymentComments")
_TYPED = {"latitude": (float, -90, 90), "longitude": (float, -180, 180), "coordinateUncertainty": (int, 1, None),
          "cameraDelay": (int, 0, None), "cameraHeight": (float, 0, None), "cameraDepth": (float, 0, None),
          "cameraTilt": (int, -90, 90), "cameraHeading": (int, 0, 360), "detectionDistance": (float, 0, None),
          "timestampIssues": (bool, None, None), "baitUse": (bool, None, None)}
TEMPLATE_NAME = "deployments_template.csv"
OBSERVATION_TYPES = ("animal", "human", "vehicle", "blank", "unknown", "unclassified")
_NON_TAXA = {"blank": "blank", "empty": "blank", "human": "human", "person": "human", "people": "human",
             "vehicle": "vehicle", "animal": "animal", "unknown": "unknown"}
DEFAULT_THRESHOLD = 0.1  # classify's (the model spec's) default when the result does not record its own
DEFAULT_GAP = 60.0  # seconds: classify's default sequence gap
_READERS = 8  # most processes reading EXIF headers
_CHUNK = 2000  # files per task


@dataclass(frozen=True)
class Name:
    """What one class or answer means: observation type, scientific name (None for non-taxa), and more."""

    kind: str  # one of OBSERVATION_TYPES
    scientific: str | None  # "Canis lupus", "Canidae", or the label when the model has no taxonomy
    rank: str | None = None  # "species", "family", ... (None without taxonomy)
    path: tuple[str, ...] = ()  # class .. genus, capitalised, '' where empty
    common: str = ""
    label: str = ""

    @property
    def shown(self) -> str:
        """What a person reads: the common name, else the scientific name, else the type."""
        return self.common or self.scientific or self.kind


def name_of(label: str, description: str | None = None) -> Name:
    """The `Name` of a class from its label and optional 7-token taxonomy string."""
    taxon = None
    if description:
        try:
            taxon = parse_taxon(description)
        except ValueError:
            log.debug("unreadable taxonomy string for %r: %r", label, description)
    if taxon is not None and taxon.is_taxon:
        if taxon.path[3:5] == ("homo", "sapiens"):
            return Name("human", None, common=taxon.common, label=label)
        depth = taxon.depth
        latin = taxon.latin
        scientific = latin[:1].upper() + latin[1:]
        path = tuple(t.capitalize() for t in taxon.path[:4])
        rank = "subspecies" if depth == 5 and " " in taxon.path[4] else RANKS[depth - 1]
        return Name("animal", scientific, rank, path, taxon.common, label)
    key = (taxon.common if taxon is not None else label).strip().lower()
    if key in _NON_TAXA:
        kind = _NON_TAXA[key]
        return Name(kind, None, common="" if kind != "animal" else "animal", label=label)
    return Name("animal", label, common=taxon.common if taxon is not None else "", label=label)


@dataclass
class Deployment:
    id: str
    latitude: float | None = None
    longitude: float | None = None
    start: datetime | None = None  # aware
    end: datetime | None = None
    fields: dict[str, str] = field(default_factory=dict)  # the other Camtrap DP columns, as given
    start_from_photos: bool = False
    end_from_photos: bool = False
    timestamp_issues: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return self.fields.get("locationID") or self.fields.get("locationName") or self.id


@dataclass
class Media:
    id: str
    deployment: str
    file: str  # relative to IMAGES_DIR, '/'-separated
    timestamp: datetime  # aware
    mediatype: str
    time_source: str  # "exif", "video" or "file"
    entries: list[int] = field(default_factory=list)  # indices of RESULTS images (a video: its frame entries)
    event: str = ""
    frame_rate: float | None = None  # videos: to time each frame's observations


@dataclass(slots=True)
class Observation:
    """One media-level observation."""

    media: int  # index into Season.media
    detection: int | None  # index into its RESULTS entry's detections (None: blank or unclassified media)
    entry: int | None  # the RESULTS entry (a video frame's own entry)
    kind: str
    name: Name | None
    bbox: tuple[float, float, float, float] | None = None
    method: str = "machine"
    by: str = ""
    when: datetime | None = None
    probability: float | None = None
    offset: float = 0.0  # seconds after the media's timestamp (a video frame)


@dataclass(frozen=True)
class Verified:
    """A detection a person answered, beside what the model said (for accuracy)."""

    machine: str | None  # the model's top label, None when it gave none
    confidence: float | None
    human: str  # a label, or WRONG_BOX


@dataclass
class Season:
    deployments: dict[str, Deployment]
    media: list[Media]
    doc: dict
    names: dict[str, Name]  # classification category id -> Name
    threshold: float
    gap: float
    classified_by: str
    detected_by: str
    classified_at: datetime | None
    answers: dict[tuple[str, int | None], tuple[str, datetime | None, str]] = field(default_factory=dict)
    verified_by: str = ""
    review_time: datetime | None = None
    left_out: dict[str, list[str]] = field(default_factory=dict)  # why -> files

    def observations(self) -> Iterator[Observation]:
        """Every media-level observation, media by media (see the module docstring)."""
        items = md.qualifying(self.doc, self.threshold, list(self.doc["detection_categories"].values()))
        categories = self.doc["detection_categories"]
        for m, media in enumerate(self.media):
            found = unreadable = 0
            for i in media.entries:
                im = self.doc["images"][i]
                offset = 0.0
                if media.frame_rate:  # a video's frame entry: its time after the video's start
                    frame = vid.split_frame(im["file"])
                    offset = frame[1] / media.frame_rate if frame else 0.0
                if im.get("failure") is not None or im.get(md.CLASSIFICATION_FAILURE) is not None:
                    unreadable += 1
                for j in items.get(i, ()):
                    obs = self._observation(m, i, j, im, categories, offset)
                    if obs is not None:
                        found += 1
                        yield obs
            if not found:
                yield Observation(m, None, None, "unclassified" if unreadable else "blank", None,
                                  by=self.detected_by, when=None)

    def _observation(self, m, i, j, im, categories, offset) -> Observation | None:
        det = im["detections"][j]
        box = _bbox(det["bbox"])
        category = categories.get(det["category"], "").lower()
        answer = None
        if self.answers:
            file = im["file"].replace("\\", "/")
            answer = self.answers.get((file, j)) or self.answers.get((file, None))
        if category in ("person", "human", "vehicle") and answer is None:
            kind = "human" if category != "vehicle" else "vehicle"
            return Observation(m, j, i, kind, None, box, by=self.detected_by, probability=det["conf"], offset=offset)
        if answer is not None:
            species, when, who = answer
            if species == WRONG_BOX:
                return None
            return Observation(m, j, i, *self._named(species), box, "human", who or self.verified_by,
                               when or self.review_time, 1.0, offset)
        if det.get("wrong_box"):
            return None
        classes = det.get("classifications")
        if not classes:
            return Observation(m, j, i, "unclassified", None, box, by=self.classified_by, offset=offset)
        top, conf = classes[0]
        name = self.names.get(top) or name_of(str(top))
        if "classifications_before_review" in det:  # a review --write-verified copy: a person's answer
            return Observation(m, j, i, name.kind, name, box, "human", self.verified_by, self.review_time,
                               1.0, offset)
        return Observation(m, j, i, name.kind, name, box, by=self.classified_by, when=self.classified_at,
                           probability=float(conf), offset=offset)

    @cached_property
    def _names_by_label(self) -> dict[str, Name]:
        return {n.label: n for n in self.names.values()}

    def _named(self, species: str) -> tuple[str, Name]:
        name = self._names_by_label.get(species) or name_of(species)
        return name.kind, name

    def verified(self) -> list[Verified]:
        """Each answered detection with the model's top label beside the person's (for field accuracy)."""
        labels = self.doc.get("classification_categories") or {}
        out = []
        for i, im in enumerate(self.doc["images"]):
            file = im["file"].replace("\\", "/")
            for j, det in enumerate(im.get("detections") or ()):
                if "classifications_before_review" in det:
                    machine = det["classifications_before_review"] or [[None, None]]
                    human = WRONG_BOX if det.get("wrong_box") else labels.get((det.get("classifications") or
                                                                               [[None]])[0][0])
                elif (file, j) in self.answers or ((file, None) in self.answers and det.get("classifications")):
                    machine = det.get("classifications") or [[None, None]]
                    human = (self.answers.get((file, j)) or self.answers[(file, None)])[0]
                else:
                    continue
                if human is None:
                    continue
                top, conf = machine[0]
                out.append(Verified(labels.get(top) if top is not None else None, conf, human))
        return out


def _bbox(box) -> tuple[float, float, float, float]:
    """MegaDetector's [x, y, w, h] (top-left, relative: Camtrap DP's convention too), clipped to the frame."""
    x, y, w, h = (float(v) for v in box)
    x, y = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    return x, y, max(min(w, 1.0 - x), 1e-15), max(min(h, 1.0 - y), 1e-15)


# -- time -----------------------------------------------------------------------------------------------------------

def parse_timezone(text: str | None) -> tzinfo:
    """`--timezone`: an offset (+02:00, -0500, Z, UTC) or an IANA name (Europe/Berlin, with its summer time)."""
    if text is None:
        raise TrapkitError("give --timezone, the camera clocks' time zone (an offset such as +02:00, or a name "
                           "such as Europe/Berlin): Camtrap DP timestamps need one")
    t = text.strip()
    if t.upper() in ("Z", "UTC", "GMT"):
        return timezone.utc
    if t[:1] in "+-":
        digits = t[1:].replace(":", "")
        if digits.isdigit() and len(digits) in (2, 4):
            hours, minutes = int(digits[:2]), int(digits[2:] or 0)
            if hours <= 14 and minutes < 60:
                sign = 1 if t[0] == "+" else -1
                return timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(t)
    except (ValueError, KeyError, OSError):
        raise TrapkitError(f"--timezone {text!r} is neither an offset (+02:00) nor a time zone name "
                           "(Europe/Berlin)") from None


def parse_time(text: str, tz: tzinfo) -> datetime | None:
    """An ISO 8601 date-time (with or without offset; without: in `tz`), or an EXIF one; None when unreadable."""
    text = text.strip()
    if not text:
        return None
    exif = parse_exif_time(text) if len(text) >= 19 and text[4] == ":" else None
    try:
        value = exif or datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


# -- reading a season -----------------------------------------------------------------------------------------------

def read_season(results: str | Path, images: str | Path, deployments: str | Path | None, tz: tzinfo, *,
                depth: int = 1, gap: float | None = None, threshold: float | None = None,
                file_times: bool = False, verified: str | Path | None = None, verified_by: str = "",
                template_dir: str | Path | None = None) -> Season:
    """The season of a classify output (module docstring). Without `deployments`, a template CSV is written into
    `template_dir` and the command stops with one line."""
    images = Path(images)
    if not images.is_dir():
        raise TrapkitError(f"--images {images} is not a folder; give the IMAGES_DIR given to trapkit classify")
    doc = md.load_detections(results)
    if not doc["images"]:
        raise TrapkitError(f"{results} lists no images: an empty season has nothing to publish or analyse")
    info = doc["info"]
    meta = info.get("classifier_metadata") or {}
    threshold = threshold if threshold is not None else _number(meta.get("threshold"), DEFAULT_THRESHOLD)
    gap = gap if gap is not None else _number(meta.get("sequence_gap"), DEFAULT_GAP)
    by_deployment = _group_media(doc, depth, results)
    times, sources, missing = _capture_times(images, by_deployment, file_times)
    left_out: dict[str, list[str]] = {}
    if missing:
        left_out["no timestamp"] = missing
        log.warning("%d media have no capture time and are left out, with their observations: %s (add "
                    "--file-times to time them by the file's modification time)", len(missing), few(missing))
    if not any(times.values()):
        raise TrapkitError(f"no photo under {images} has a capture time (EXIF DateTimeOriginal); give --file-times "
                           "to use the files' modification times")
    if deployments is None:
        path = write_template(template_dir or images, by_deployment, times, tz)
        raise TrapkitError(f"no --deployments: wrote {path} with one row per deployment found "
                           f"({len(by_deployment)}); fill in latitude and longitude, then rerun with "
                           f"--deployments {path}")
    table = read_deployments(deployments, tz)
    unknown = sorted(set(by_deployment) - set(table))
    if unknown:
        raise TrapkitError(f"{deployments} has no row for the deployment folder{'s' if len(unknown) > 1 else ''} "
                           f"{few(unknown)}; add a row for each (deploymentID = the folder's name)")
    media = _media(images, by_deployment, times, sources, tz)
    _complete_deployments(table, media)
    _check_periods(table, media)
    _assign_events(media, gap)
    classifier = info.get("classifier") or "unknown classifier"
    version = meta.get("trapkit_version")
    season = Season(
        deployments=table, media=media, doc=doc,
        names={k: name_of(v, (doc.get("classification_category_descriptions") or {}).get(k))
               for k, v in (doc.get("classification_categories") or {}).items()},
        threshold=threshold, gap=gap,
        classified_by=f"{classifier} (trapkit {version})" if version else classifier,
        detected_by=str(info.get("detector") or "MegaDetector"),
        classified_at=_local(info.get("classification_completion_time")),
        verified_by=verified_by, review_time=_local((info.get("review") or {}).get("time")), left_out=left_out)
    if verified is not None:
        season.answers = read_verified(verified, doc)
    return season


def _number(value, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _local(text) -> datetime | None:
    """A time trapkit wrote with `time.strftime` (this computer's clock): in this computer's time zone."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text.strip()[:19], "%Y-%m-%d %H:%M:%S").astimezone()
    except ValueError:
        return None


def _media_file(file: str) -> str:
    frame = vid.split_frame(file) if "/frame" in file else None  # a video frame: clip.mp4/frame000123.jpg
    return frame[0] if frame is not None else file


def _group_media(doc: dict, depth: int, results) -> dict[str, dict[str, list[int]]]:
    """{deployment: {media file: [RESULTS entry indices]}}; photos above the deployment folders are refused."""
    out: dict[str, dict[str, list[int]]] = defaultdict(dict)
    outside = []
    for i, im in enumerate(doc["images"]):
        file = _media_file(im["file"].replace("\\", "/"))
        parts = file.split("/", depth)
        if len(parts) <= depth:
            outside.append(file)
            continue
        out["/".join(parts[:depth])].setdefault(file, []).append(i)
    if outside:
        raise TrapkitError(f"{len(outside)} media of {results} lie outside every deployment folder ({few(outside)}): "
                           f"each photo must be {depth} folder level{'s' if depth > 1 else ''} down (one folder per "
                           "deployment); move them, or give --deployment-depth")
    return dict(sorted(out.items()))


def _read_time(images: Path, file: str, file_times: bool) -> tuple[datetime | None, str, bool]:
    """(naive local capture time, or an aware one for videos; its source; whether the file exists)."""
    try:
        path = safe_join(images, file)
    except ImageReadError:
        return None, "", False
    taken, source = None, ""
    if vid.is_video_file(file):
        taken, source = video_time(path), "video"
    else:
        try:
            taken, source = parse_exif_time(read_header(path).time), "exif"
        except ImageReadError as e:
            if e.code == FAILURE_MISSING:
                return None, "", False
    if taken is None and file_times and path.is_file():
        taken, source = datetime.fromtimestamp(path.stat().st_mtime).replace(microsecond=0), "file"
    return taken, source, taken is not None or path.is_file()


def video_time(path: Path) -> datetime | None:
    """A video's recording start from its container's `creation_time` (aware, usually UTC); None when absent."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            text = container.metadata.get("creation_time") or (
                container.streams.video[0].metadata.get("creation_time") if container.streams.video else None)
    except (av.error.FFmpegError, OSError):
        return None
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(microsecond=0)


def _read_chunk(root: Path, files: list[str], file_times: bool) -> list[tuple[datetime | None, str, bool]]:
    return [_read_time(root, f, file_times) for f in files]


def _capture_times(images: Path, by_deployment, file_times: bool):
    files = [f for media in by_deployment.values() for f in media]
    root = images.resolve()
    # Reading an EXIF header is mostly Python (Pillow's parser): worker processes, each given chunks of files,
    # use every core; a small season is read here.
    parts = [files[k:k + _CHUNK] for k in range(0, len(files), _CHUNK)]
    if len(parts) > 1:
        import multiprocessing

        workers = min(len(parts), available_cpus(), _READERS)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            read = [r for part in pool.map(_read_chunk, [root] * len(parts), parts, [file_times] * len(parts))
                    for r in part]
    else:
        read = _read_chunk(root, files, file_times)
    if not any(exists for _, _, exists in read):
        raise TrapkitError(f"--images {images} holds none of the media of the results ({files[0]} is missing); "
                           "give the IMAGES_DIR given to trapkit classify")
    times = {f: t for f, (t, _, _) in zip(files, read)}
    sources = {f: s for f, (_, s, _) in zip(files, read)}
    return times, sources, [f for f in files if times[f] is None]


def media_id(file: str) -> str:
    """A short stable id for a media file (16 hex digits of its path's SHA-1)."""
    return hashlib.sha1(file.encode("utf-8")).hexdigest()[:16]


_MEDIATYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".tif": "image/tiff",
               ".tiff": "image/tiff", ".bmp": "image/bmp", ".webp": "image/webp", ".mp4": "video/mp4",
               ".mov": "video/quicktime", ".avi": "video/x-msvideo", ".mkv": "video/x-matroska",
               ".mpg": "video/mpeg", ".mpeg": "video/mpeg", ".flv": "video/x-flv"}


def _media(images: Path, by_deployment, times, sources, tz: tzinfo) -> list[Media]:
    out = []
    for deployment, files in by_deployment.items():
        for file, entries in files.items():
            taken = times[file]
            if taken is None:
                continue
            # EXIF and file times are the camera's local clock; a video's creation time is UTC, shown in `tz`.
            aware = taken.astimezone(tz) if taken.tzinfo is not None else taken.replace(tzinfo=tz)
            kind = _MEDIATYPES.get(os.path.splitext(file)[1].lower(), "image/jpeg")
            rate = vid.frame_rate(safe_join(images, file)) if kind.startswith("video/") else None
            out.append(Media(media_id(file), deployment, file, aware, kind, sources[file], entries, frame_rate=rate))
    return out


def _complete_deployments(table: dict[str, Deployment], media: list[Media]) -> None:
    """Start and end from the first and last photo where the CSV leaves them out."""
    span: dict[str, list[datetime]] = {}
    for m in media:
        s = span.setdefault(m.deployment, [m.timestamp, m.timestamp])
        s[0], s[1] = min(s[0], m.timestamp), max(s[1], m.timestamp)
    empty = []
    for d in table.values():
        first, last = span.get(d.id, (None, None))
        if d.start is None:
            d.start, d.start_from_photos = first, True
        if d.end is None:
            d.end, d.end_from_photos = last, True
        if d.start is None or d.end is None:
            empty.append(d.id)
    if empty:
        raise TrapkitError(f"deployment{'s' if len(empty) > 1 else ''} {few(empty)} took no timed photo and "
                           "give no deploymentStart/deploymentEnd; add both to the deployments CSV")


def _check_periods(table: dict[str, Deployment], media: list[Media]) -> None:
    """Photos outside their deployment's period and clocks that run backwards: warned, flagged, never dropped."""
    outside: dict[str, list[str]] = defaultdict(list)
    by_deployment: dict[str, list[Media]] = defaultdict(list)
    for m in media:
        by_deployment[m.deployment].append(m)
        d = table[m.deployment]
        if not d.start - timedelta(minutes=1) <= m.timestamp <= d.end + timedelta(minutes=1):
            outside[d.id].append(m.file)
    for dep, files in outside.items():
        table[dep].timestamp_issues.append(f"{len(files)} photos outside the deployment period")
        log.warning("deployment %s: %d photos are dated outside its start and end (%s): a clock that was reset, or "
                    "a wrong start or end in the deployments CSV; kept, and the deployment is marked "
                    "timestampIssues", dep, len(files), few(files))
    for dep, items in by_deployment.items():
        ordered = sorted(items, key=lambda m: m.file)
        back = [b.file for a, b in zip(ordered, ordered[1:])
                if PurePosixPath(a.file).parent == PurePosixPath(b.file).parent
                and b.timestamp < a.timestamp - timedelta(hours=1)]
        if back:
            table[dep].timestamp_issues.append(f"clock jumps back {len(back)} times")
            log.warning("deployment %s: the clock jumps back by more than an hour between consecutive files %d "
                        "times (e.g. at %s); marked timestampIssues", dep, len(back), back[0])
    overlapping = []
    by_camera: dict[str, list[Deployment]] = defaultdict(list)
    for d in table.values():
        camera = d.fields.get("cameraID")
        if camera:
            by_camera[camera].append(d)
    for camera, ds in by_camera.items():
        ds = sorted(ds, key=lambda d: d.start)
        overlapping += [f"{a.id} and {b.id} (camera {camera})" for a, b in zip(ds, ds[1:]) if b.start < a.end]
    if overlapping:
        log.warning("deployments of one camera overlap in time: %s; check their start and end", few(overlapping))


def _assign_events(media: list[Media], gap: float) -> None:
    files = [m.file for m in media]
    times = [m.timestamp.strftime("%Y:%m:%d %H:%M:%S") for m in media]
    for n, group in enumerate(sequence_groups(files, times, gap)):
        for i in group:
            media[i].event = f"e{n + 1:06d}"


# -- deployments CSV ------------------------------------------------------------------------------------------------

def read_deployments(path: str | Path, tz: tzinfo) -> dict[str, Deployment]:
    """DEPLOYMENTS.csv (module docstring), checked; every bad row named in one line."""
    path = Path(path)
    header, rows = read_rows(path)  # the tolerant reader: Excel's CSVs, UTF-16, ';' delimiters
    canonical = {c.lower(): c for c in DEPLOYMENT_COLUMNS}
    columns = [canonical.get(h.lower(), h) for h in header]
    for needed in ("deploymentID", "latitude", "longitude"):
        if needed not in columns:
            raise TrapkitError(f"deployments CSV {path} has no {needed} column (columns: {', '.join(header)}); it "
                               "needs at least deploymentID, latitude and longitude")
    out: dict[str, Deployment] = {}
    bad, repeated = [], []
    for line, cells in rows:
        row = {c: (cells[k].strip() if k < len(cells) else "") for k, c in enumerate(columns)}
        dep_id = row.get("deploymentID", "")
        where = f"line {line} ({dep_id or 'no deploymentID'})"
        if not dep_id:
            bad.append(f"{where}: no deploymentID")
            continue
        if dep_id in out:
            repeated.append(f"line {line} ({dep_id})")
            continue
        d = Deployment(dep_id, fields={c: v for c, v in row.items() if c in DEPLOYMENT_COLUMNS and v})
        for name, (kind, low, high) in _TYPED.items():
            text = row.get(name, "")
            if not text:
                if name in ("latitude", "longitude"):
                    bad.append(f"{where}: no {name}")
                continue
            value = _typed(text, kind)
            if value is None or (low is not None and value < low) or (high is not None and value > high):
                limits = f" between {low} and {high}" if high is not None else f" of at least {low}" if low is not None \
                    else ""
                bad.append(f"{where}: {name} {text!r} is not a{'n' if kind is int else ''} "
                           f"{ {float: 'number', int: 'integer', bool: 'true/false'}[kind]}{limits}")
            elif name == "latitude":
                d.latitude = float(value)
            elif name == "longitude":
                d.longitude = float(value)
        for name in ("deploymentStart", "deploymentEnd"):
            text = row.get(name, "")
            when = parse_time(text, tz) if text else None
            if text and when is None:
                bad.append(f"{where}: {name} {text!r} is not a date and time (2024-05-01T08:00:00, offset optional)")
            setattr(d, "start" if name.endswith("Start") else "end", when)
        if d.start and d.end and d.end < d.start:
            bad.append(f"{where}: deploymentEnd is before deploymentStart")
        feature = row.get("featureType", "")
        if feature and feature not in _FEATURE_TYPES:
            bad.append(f"{where}: featureType {feature!r} is not one of Camtrap DP's ({', '.join(_FEATURE_TYPES)})")
        out[dep_id] = d
    if repeated:
        raise TrapkitError(f"deployments CSV {path}: {few(repeated)} repeat a deploymentID; keep one row per "
                           "deployment")
    if bad:
        raise TrapkitError(f"deployments CSV {path}: {few(bad)}")
    if not out:
        raise TrapkitError(f"deployments CSV {path} has no rows; give one row per deployment")
    return out


_FEATURE_TYPES = ("roadPaved", "roadDirt", "trailHiking", "trailGame", "roadUnderpass", "roadOverpass", "roadBridge",
                  "culvert", "burrow", "nestSite", "carcass", "waterSource", "fruitingTree")


def _typed(text: str, kind):
    if kind is bool:
        return {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}.get(text.lower())
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or (kind is int and value != int(value)):
        return None
    return int(value) if kind is int else value


def write_template(folder: str | Path, by_deployment, times, tz: tzinfo) -> Path:
    """DEPLOYMENTS template: one row per deployment folder, start and end from its photos, coordinates empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = ("deploymentID", "locationID", "locationName", "latitude", "longitude", "deploymentStart",
               "deploymentEnd", "cameraID", "cameraModel", "cameraHeight", "baitUse", "featureType", "habitat",
               "deploymentComments")
    writer.writerow(columns)
    for dep, files in by_deployment.items():
        taken = [t if t.tzinfo is not None else t.replace(tzinfo=tz) for f in files if (t := times[f]) is not None]
        first, last = (iso(min(taken)), iso(max(taken))) if taken else ("", "")
        writer.writerow([dep, dep, "", "", "", first, last, "", "", "", "", "", "", ""])
    path = Path(folder) / TEMPLATE_NAME
    atomic_write_text(path, buf.getvalue())
    return path


# -- verified answers -----------------------------------------------------------------------------------------------

def read_verified(path: str | Path, doc: dict) -> dict[tuple[str, int | None], tuple[str, datetime | None, str]]:
    """{(file, detection or None): (species, reviewed time, reviewer)} from ANSWERS.csv (the review page's, or any
    answers CSV), checked against RESULTS: answers about detections RESULTS lacks mean another classify output."""
    answers = read_answers(path)
    labels = set((doc.get("classification_categories") or {}).values())
    detections = {im["file"].replace("\\", "/"): im.get("detections") or [] for im in doc["images"]}
    absent, foreign = [], []
    out = {}
    for a in answers:
        dets = detections.get(a.path)
        if dets is None or (a.detection is not None and a.detection >= len(dets)):
            absent.append(f"{a.path}#{'' if a.detection is None else a.detection}")
            continue
        if a.species != WRONG_BOX and a.species not in labels:
            foreign.append(f"{a.where} ({a.species})")
        out[a.key] = (a.species, _local(a.reviewed) if a.reviewed else None, a.reviewer)
    if absent:
        raise TrapkitError(f"--verified {path} answers {len(absent)} detections that RESULTS does not have "
                           f"({few(absent)}): the answers were made on another classify output; give that one")
    if foreign:
        raise TrapkitError(f"--verified {path} names classes the model of RESULTS does not have: {few(foreign)}; the "
                           "answers come from another model's classify output; give that one")
    return out
