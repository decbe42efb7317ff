"""Sequence smoothing: let a burst of photos outvote one unsure classification.

Camera traps shoot bursts; the animal in frame 3 is almost always the animal in
frames 1, 2 and 4. Rule (off unless `--smooth`):

1. Sequences: images in the same folder whose EXIF capture times are at most
   `gap_seconds` apart (chained, after sorting by time). Images without an
   EXIF time form sequences of their own and are never changed.
2. Votes: every classified detection in the sequence whose top-1 confidence is
   at least `min_conf` votes for its top-1 label. The sequence's label is the
   most-voted one if it has at least `min_votes` votes and strictly more than
   any other label (ties change nothing).
3. Fixes: a detection whose top-1 confidence is below `min_conf` and whose
   top-1 label differs is relabelled: the sequence's label takes the first
   place with the old top-1 confidence (MegaDetector's smoothing keeps the
   confidence too), the old label is dropped from the list, and the original
   list is kept in `classifications_before_smoothing`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmoothSettings:
    gap_seconds: float = 60.0
    min_conf: float = 0.5
    min_votes: int = 2

    def __post_init__(self):
        if self.gap_seconds < 0 or not 0 <= self.min_conf <= 1 or self.min_votes < 1:
            raise TrapkitError("smoothing needs --sequence-gap >= 0, a confidence in [0, 1] and at least one vote")


def parse_exif_time(text: str | None) -> datetime | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (the only EXIF form) to a datetime; None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.strptime(text.strip()[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def sequences(images: list[dict], times: dict[int, str | None], gap_seconds: float) -> list[list[int]]:
    """Image indices grouped into sequences (see the module docstring). Only indices in `times` are grouped."""
    by_folder: dict[str, list[tuple[datetime, int]]] = {}
    groups: list[list[int]] = []
    for i, text in times.items():
        taken = parse_exif_time(text)
        if taken is None:
            groups.append([i])
        else:
            by_folder.setdefault(str(PurePosixPath(images[i]["file"]).parent), []).append((taken, i))
    for shots in by_folder.values():
        shots.sort()
        current, last = [], None
        for taken, i in shots:
            if last is not None and (taken - last).total_seconds() > gap_seconds:
                groups.append(current)
                current = []
            current.append(i)
            last = taken
        groups.append(current)
    return sorted(groups)


def smooth_sequences(result: dict, times: dict[int, str | None], settings: SmoothSettings) -> int:
    """Apply the rule in place to `result` (a classify output). Returns how many detections changed."""
    images = result["images"]
    changed = 0
    for group in sequences(images, times, settings.gap_seconds):
        dets = [d for i in group for d in images[i].get("detections") or () if d.get("classifications")]
        votes = Counter(d["classifications"][0][0] for d in dets if d["classifications"][0][1] >= settings.min_conf)
        ranked = votes.most_common(2)
        if not ranked or ranked[0][1] < settings.min_votes or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
            continue
        label = ranked[0][0]
        for d in dets:
            top_id, top_conf = d["classifications"][0]
            if top_conf < settings.min_conf and top_id != label:
                d["classifications_before_smoothing"] = d["classifications"]
                d["classifications"] = [[label, top_conf]] + [c for c in d["classifications"][1:] if c[0] != label]
                changed += 1
    log.info("sequence smoothing changed %d detections", changed)
    return changed
