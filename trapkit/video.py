"""Camera-trap video: MegaDetector's frame-level results in, frames decoded once, video-level results out.

MegaDetector runs on sampled video frames and names each one after its video:
`clip.mp4/frame000123.jpg` is frame 123 (counted from 0, in decoding order, as
OpenCV reads them) of `clip.mp4`. `read_frames` decodes exactly the wanted frames
of one video in a single pass with PyAV (FFmpeg), without converting the frames
it skips. Frames it cannot give get a short fixed failure code (MegaDetector's
habit) and the run goes on:

- `FAILURE_MISSING` / `FAILURE_UNREADABLE`: no such file, or FFmpeg cannot open it
  (not a video, or an MP4 cut before its index);
- `FAILURE_NO_FRAMES`: a video stream with no frames, or no video stream;
- `FAILURE_TRUNCATED`: decoding ended (or failed) before the wanted frame, short of
  the frame count the container announces;
- `FAILURE_PAST_END`: the video is whole and shorter than the wanted frame.

`video_results` turns frame-level results into MegaDetector's video-level file, in
the shape of `megadetector.detection.video_utils.frame_results_to_video_results`
(one entry per video; per detection category its most confident detection,
classifications included, with `frame_number`), plus the `frame_rate` and
`frames_processed` that format 1.5+ needs (`validate_batch_results` checks them).

PyAV is imported inside the functions that decode (`pip install trapkit[video]`).
Videos are read as stored: a rotation flag in the container (phone videos) is not applied.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

# MegaDetector's list (video_utils.VIDEO_EXTENSIONS), so both agree on what a video is.
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mpeg", ".mpg", ".mov", ".mkv", ".flv"})
FRAME_NAME = "frame{:06d}.jpg"  # MegaDetector's _frame_number_to_filename
_FRAME_RE = re.compile(r"frame(\d+)\.jpg")
FAILURE_MISSING = "video missing"
FAILURE_UNREADABLE = "video unreadable"
FAILURE_NO_FRAMES = "video has no frames"
FAILURE_TRUNCATED = "video truncated"
FAILURE_PAST_END = "frame past end of video"


class VideoReadError(TrapkitError):
    """A video that cannot be opened at all. `code`: one of the `FAILURE_*` strings."""

    def __init__(self, message: str, code: str = FAILURE_UNREADABLE):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # video packets in the container: the frames a whole file decodes to
    frame_rate: float | None


def require_av() -> None:
    """A one-line error, before any work, when PyAV is not installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise TrapkitError("reading video needs PyAV; install it with: pip install 'trapkit[video]'") from None


def is_video_file(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in VIDEO_EXTENSIONS


def split_frame(file: str) -> tuple[str, int] | None:
    """("clip.mp4", 123) for MegaDetector's "clip.mp4/frame000123.jpg"; None for anything else."""
    path = PurePosixPath(file)
    match = _FRAME_RE.fullmatch(path.name)
    if match is None or not is_video_file(path.parent.name):
        return None
    return str(path.parent), int(match.group(1))


def frame_file(video: str, number: int) -> str:
    return f"{video}/{FRAME_NAME.format(number)}"


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoReadError(f"{path} does not exist or is not a file", FAILURE_MISSING)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"{path} cannot be opened as a video ({e.__class__.__name__})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream", FAILURE_NO_FRAMES)
    return container


def probe(path: str | Path) -> VideoInfo:
    """Frame count (by reading the packets, nothing decoded) and frame rate of one video."""
    import av

    container = _open(Path(path))
    try:
        stream = container.streams.video[0]
        frames = 0
        try:
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as e:  # a damaged tail: count what is there
            log.warning("%s: packets end early (%s)", path, e.__class__.__name__)
        return VideoInfo(frames, _rate(stream))
    finally:
        container.close()


def frame_rate(path: str | Path) -> float | None:
    """The container's frame rate (nothing decoded); None when unknown or unreadable."""
    try:
        container = _open(Path(path))
    except VideoReadError:
        return None
    try:
        return _rate(container.streams.video[0])
    finally:
        container.close()


def _rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def read_frames(path: str | Path, wanted: Iterable[int]) -> Iterator[tuple[int, object, str | None]]:
    """(frame number, PIL RGB image or None, failure code or None) for each wanted frame, in increasing order.

    One decoding pass, stopped after the last wanted frame. Raises `VideoReadError`
    when the video cannot be opened; frames it cannot reach come back with a failure.
    """
    import av

    wanted = sorted(set(int(n) for n in wanted))
    if not wanted:
        return
    container = _open(Path(path))
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
        announced = stream.frames  # 0 when the container does not say
        targets = iter(wanted)
        want = next(targets)
        decoded = 0
        error = None
        try:
            for frame in container.decode(stream):
                if decoded == want:
                    yield want, frame.to_image(), None  # RGB; frames between wanted ones are never converted
                    want = next(targets, None)
                    if want is None:
                        return
                decoded += 1
        except av.error.FFmpegError as e:
            error = e
            log.warning("%s: decoding stopped after %d frames (%s)", path, decoded, e.__class__.__name__)
        if decoded == 0:
            code = FAILURE_NO_FRAMES
        elif error is not None or decoded < announced:
            code = FAILURE_TRUNCATED
        else:
            code = FAILURE_PAST_END
        log.warning("%s: %d frames decoded; frame %d and later wanted ones: %s", path, decoded, want, code)
        while want is not None:
            yield want, None, code
            want = next(targets, None)
    finally:
        container.close()


def video_results(frames_doc: dict, frame_rates: dict[str, float | None] | None = None) -> dict:
    """MegaDetector's video-level file from a frame-level one (module docstring); the input is not changed.

    Entries that are neither video frames nor videos are left out (MegaDetector's
    `skip_with_warning`); video-level entries are kept as they are. A video none of
    whose frames was read gets `failure` and
    `detections: null` with `frame_rate` -1, as MegaDetector writes failed videos; an
    unknown frame rate is 0, as OpenCV reports it.
    """
    frame_rates = frame_rates or {}
    doc = {k: copy.deepcopy(v) for k, v in frames_doc.items() if k != "images"}
    videos: dict[str, list[tuple[int, dict]]] = {}
    skipped = 0
    for im in frames_doc["images"]:
        frame = split_frame(im["file"])
        if frame is not None:
            videos.setdefault(frame[0], []).append((frame[1], im))
        elif is_video_file(im["file"]):
            videos.setdefault(im["file"], []).append((-1, im))  # already video-level
        else:
            skipped += 1
    if skipped:
        log.warning("%d entries are not video frames; left out of the video-level file", skipped)
    out = []
    for video, frames in videos.items():
        if len(frames) == 1 and frames[0][0] < 0:
            out.append(copy.deepcopy(frames[0][1]))  # MegaDetector's own video-level entry: kept as it is
            continue
        processed, detections, failures = [], [], []
        for number, im in frames:  # input order, as MegaDetector collects them
            if number < 0 or im.get("detections") is None:
                failures.append(im.get("failure") or FAILURE_NO_FRAMES)
                continue
            processed.append(number)
            detections += [{**copy.deepcopy(d), "frame_number": number} for d in im["detections"]]
        entry = {"file": video}
        if processed:
            rate = frame_rates.get(video)
            entry["frame_rate"] = float(rate) if rate else 0.0
            # Per category, its most confident detection over all frames (nth_highest_confidence = 1);
            # sorted() is stable, so ties go to the first listed, as there.
            entry["detections"] = [ranked[0] for cat in frames_doc["detection_categories"]
                                   if (ranked := sorted((d for d in detections if d["category"] == cat),
                                                        key=lambda d: d["conf"], reverse=True))]
        else:
            entry["frame_rate"], entry["failure"], entry["detections"] = -1.0, failures[0], None
        entry["frames_processed"] = sorted(processed)
        out.append(entry)
    doc["images"] = out
    return doc
