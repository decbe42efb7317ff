"""Camera-trap sequences: the photos of one burst, for smoothing (`classify --smooth`) and for selection (`al`).

A sequence is a run of images in the same folder whose EXIF capture times are
at most `gap_seconds` apart (chained, after sorting by time). An image
without an EXIF time is a sequence of its own. This is the grouping
`trapkit.serve.smoothing.sequences` applies to a MegaDetector file; active
learning uses it to ask about at most one detection per burst in a round.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath


def parse_exif_time(text: str | None) -> datetime | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (the only EXIF form) to a datetime; None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.strptime(text.strip()[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def sequence_ids(files: list[str], times: list[str | None], gap_seconds: float) -> list[int]:
    """One sequence id per image: `files` are '/'-separated paths, `times` their EXIF times (or None).

    Ids are 0, 1, ... in the order of each sequence's first image (by folder, then time).
    """
    ids = [-1] * len(files)
    for n, group in enumerate(sequence_groups(files, times, gap_seconds)):
        for i in group:
            ids[i] = n
    return ids


def sequence_groups(files: list[str], times: list[str | None], gap_seconds: float) -> list[list[int]]:
    """Indices of `files` grouped into sequences, each in time order, the groups sorted by first index."""
    by_folder: dict[str, list[tuple[datetime, int]]] = {}
    alone = []
    for i, (file, text) in enumerate(zip(files, times)):
        taken = parse_exif_time(text)
        if taken is None:
            alone.append(i)
        else:
            by_folder.setdefault(str(PurePosixPath(file).parent), []).append((taken, i))
    groups = [[i] for i in alone]
    for folder in sorted(by_folder):
        shots = sorted(by_folder[folder])
        current, last = [], None
        for taken, i in shots:
            if last is not None and (taken - last).total_seconds() > gap_seconds:
                groups.append(current)
                current = []
            current.append(i)
            last = taken
        groups.append(current)
    return sorted(groups)
