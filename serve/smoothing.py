"""Smoothing, as MegaDetector does it: an image (or sequence) that says cow/cow/cow/cow/deer is cows.

`--smooth image|sequence|both` follows the semantics and defaults of
`megadetector.postprocessing.classification_postprocessing`
(`smooth_classification_results_image_level`, `..._sequence_level`,
`ClassificationSmoothingOptions`); `SmoothingOptions` carries the same fields and
defaults, and the tests run MegaDetector's functions on trapkit's unsmoothed output
and require the same top-1 for every detection. For one image (image level), or all
images of one sequence together (sequence level), only detections that count take part:
classified, detection confidence >= 0.15, of a category named in
`detection_category_names_to_smooth` (`animal`). Votes are their top-1 classes at
confidence >= 0.5, ranked by count (ties: first seen). Then, in order:

1. "Other" classes (`other`, `unknown`, `animal`, `blank`, ...) become the dominant class
   when it has at least 2 votes and is not "other" itself.
2. A class with at most 1 vote becomes the dominant class when that has at least 4 and
   more votes (with taxonomy, never turning a child taxon into its parent).
3. With taxonomy, a higher taxon becomes its most specific, most common descendant among
   the votes (scored level x 1.0 + count x 0.01).
4. With taxonomy, same-family classes become a dominant genus or species (off by default:
   `max_detections_nondominant_class_same_family = -1`).

Only the top-1 class changes, keeping its confidence (as MegaDetector does); trapkit keeps
the rest of the top-k (minus the new class) and the original list in
`classifications_before_smoothing`. `both` smooths images first, then sequences, as
MegaDetector's two functions would in that order.

Sequences (`sequences`): images in one folder whose EXIF times are at most `gap_seconds`
apart (chained, after sorting by time); frames of one video (`clip.mp4/frame000012.jpg`)
are one sequence, in frame order; images without a time are sequences of their own.
`cct_document` writes them as COCO Camera Traps `images` with `seq_id` (`--sequences-out`),
the input MegaDetector's sequence-level function reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from trapkit.errors import TrapkitError
from trapkit.sequences import parse_exif_time, sequence_groups
from trapkit.video import split_frame

log = logging.getLogger(__name__)

SMOOTH_MODES = ("image", "sequence", "both")
CCT_VERSION = "1.1"
FAMILY_LEVEL = 5  # MegaDetector's taxonomy levels: 0 non-taxonomic, 3 class, 4 order, 5 family, 6 genus, 7 species
# MegaDetector's "no cv result" string: level 0 although its class token is filled.
_NO_CV_RESULT = ("f2efdae9-efb8-48fb-8a91-eccf79ab4ffb;no cv result;no cv result;no cv result;no cv result;"
                 "no cv result;no cv result")


@dataclass(frozen=True)
class SmoothingOptions:
    """MegaDetector's `ClassificationSmoothingOptions`, same names and defaults (debug fields left out)."""

    min_detections_to_overwrite_secondary: int = 4
    max_detections_nondominant_class: int = 1
    min_detections_to_overwrite_secondary_same_family: int = 2
    max_detections_nondominant_class_same_family: int = -1
    min_detections_to_overwrite_other: int = 2
    other_category_names: tuple[str, ...] = ("other", "unknown", "no cv result", "animal", "blank", "mammal")
    classification_confidence_threshold: float = 0.5
    detection_confidence_threshold: float = 0.15
    propagate_classifications_through_taxonomy: bool = True
    taxonomy_propagation_level_weight: float = 1.0
    taxonomy_propagation_count_weight: float = 0.01
    detection_category_names_to_smooth: tuple[str, ...] | None = ("animal",)


@dataclass(frozen=True)
class SmoothSettings:
    """`mode`: image, sequence or both (the sequences themselves come from `sequences`)."""

    mode: str = "sequence"
    options: SmoothingOptions = field(default_factory=SmoothingOptions)

    def __post_init__(self):
        if self.mode not in SMOOTH_MODES:
            raise TrapkitError(f"--smooth {self.mode!r} is not a smoothing mode; use one of {', '.join(SMOOTH_MODES)}")

    @property
    def sequences(self) -> bool:
        return self.mode in ("sequence", "both")


@dataclass(frozen=True)
class SmoothReport:
    image_level: int = 0
    sequence_level: int = 0
    changed: int = 0  # detections whose top-1 differs from the model's in the end


def sequences(images: list[dict], times: dict[int, str | None], gap_seconds: float) -> list[list[int]]:
    """Image indices grouped into sequences (module docstring). Only indices in `times` are grouped.

    Photos are grouped by `trapkit.sequences` (the grouping `al` selects by); the frames of one video are one.
    """
    by_video: dict[str, list[tuple[int, int]]] = {}
    photos = []
    for i in times:
        frame = split_frame(images[i]["file"])
        if frame is not None:
            by_video.setdefault(frame[0], []).append((frame[1], i))
        else:
            photos.append(i)
    groups = [[photos[k] for k in group] for group in
              sequence_groups([images[i]["file"] for i in photos], [times[i] for i in photos], gap_seconds)]
    groups += [[i for _, i in sorted(frames)] for frames in by_video.values()]
    return sorted(groups)


def cct_document(images: list[dict], groups: list[list[int]], times: dict[int, str | None]) -> dict:
    """COCO Camera Traps with one `images` entry per image: `seq_id`, `seq_num_frames`, `frame_num`, ..."""
    out = []
    for n, group in enumerate(groups):
        for frame_num, i in enumerate(group):
            file = images[i]["file"]
            frame = split_frame(file)
            entry = {"id": file, "file_name": file, "seq_id": f"seq{n:06d}", "seq_num_frames": len(group),
                     "frame_num": frame_num,
                     "location": frame[0] if frame else str(PurePosixPath(file).parent)}
            taken = parse_exif_time(times.get(i))
            if taken is not None:
                entry["datetime"] = taken.strftime("%Y-%m-%d %H:%M:%S")
            out.append(entry)
    return {"info": {"version": CCT_VERSION, "description": "sequences trapkit classify smoothed over"},
            "images": out, "categories": [], "annotations": []}


def smooth(result: dict, settings: SmoothSettings, groups: list[list[int]] | None = None) -> SmoothReport:
    """Smooth a classify output in place; `groups` (from `sequences`) for sequence level."""
    if settings.mode != "image" and groups is None:
        raise ValueError("sequence smoothing needs the sequence groups")
    o = settings.options
    context = _Context.of(result, o)
    images = result["images"]
    originals: dict[int, tuple[dict, list]] = {}  # id(det) -> (det, its classifications before smoothing)
    image_level = sequence_level = 0
    if settings.mode in ("image", "both"):
        for im in images:
            image_level += _smooth_group(list(im.get("detections") or ()), o, context, originals)
    if settings.mode in ("sequence", "both"):
        for group in groups:
            dets = [d for i in group for d in images[i].get("detections") or ()]
            sequence_level += _smooth_group(dets, o, context, originals)
    changed = 0
    for det, before in originals.values():
        if det["classifications"][0][0] == before[0][0]:
            det["classifications"] = before  # changed and changed back
        else:
            det["classifications_before_smoothing"] = before
            changed += 1
    log.info("smoothing (%s) changed %d detections (%d image-level, %d sequence-level changes)",
             settings.mode, changed, image_level, sequence_level)
    return SmoothReport(image_level, sequence_level, changed)


@dataclass(frozen=True)
class _Context:
    """Category facts the rules need: ids of "other" classes, descriptions (first of any '|' list) and
    their clean forms (the five rank tokens, ';' stripped at the ends), categories to smooth."""

    other: frozenset
    descriptions: dict | None
    clean: dict | None
    smoothed: frozenset | None  # detection category ids; None: all

    @classmethod
    def of(cls, result: dict, o: SmoothingOptions) -> _Context:
        by_name = {name: cid for cid, name in result.get("classification_categories", {}).items()}
        other = frozenset(by_name[n] for n in o.other_category_names if n in by_name)
        smoothed = None
        if o.detection_category_names_to_smooth is not None:
            by_det_name = {name: cid for cid, name in result["detection_categories"].items()}
            smoothed = frozenset(by_det_name[n] for n in o.detection_category_names_to_smooth if n in by_det_name)
        descriptions = clean = None
        if "classification_category_descriptions" in result:
            descriptions = {k: v.split("|")[0] for k, v in result["classification_category_descriptions"].items()}
            clean = {k: _clean(v) for k, v in descriptions.items()}
        return cls(other, descriptions, clean, smoothed)


class _Vote:
    """One detection's current top-1 class and confidence, and whether it takes part."""

    __slots__ = ("det", "cat", "conf", "relevant")

    def __init__(self, det: dict, context: _Context, o: SmoothingOptions):
        self.det = det
        top = det["classifications"][0]
        self.cat, self.conf = top[0], top[1]
        self.relevant = det["conf"] >= o.detection_confidence_threshold and (
            context.smoothed is None or det["category"] in context.smoothed)


def _smooth_group(dets: list[dict], o: SmoothingOptions, cx: _Context, originals: dict) -> int:
    """The four rules over one image's or sequence's detections; returns how many top-1s changed."""
    votes = [_Vote(d, cx, o) for d in dets if d.get("classifications")]
    counts = _count(votes, o)
    if len(counts) <= 1:
        return 0
    starting = [v.cat for v in votes]
    thr = o.classification_confidence_threshold
    voting = [v for v in votes if v.relevant and v.conf >= thr]

    # 1. "Other" classes to the dominant class. A tie between an "other" class and a real one goes to the real one.
    keys = list(counts)
    if len(keys) > 1 and keys[0] in cx.other and keys[1] not in cx.other and counts[keys[0]] == counts[keys[1]]:
        keys[0], keys[1] = keys[1], keys[0]
    top, top_count = keys[0], counts[keys[0]]
    if top_count >= o.min_detections_to_overwrite_other and top not in cx.other:
        for v in voting:
            if v.cat in cx.other:
                v.cat = top

    # 2. Rare classes to the dominant class.
    counts = _count(votes, o)
    top, top_count = next(iter(counts.items()))
    taxonomic = bool(cx.clean) and len(counts) > 1
    if top not in cx.other and top_count >= o.min_detections_to_overwrite_secondary:
        for v in voting:
            if v.cat == top:
                continue
            if taxonomic and (not cx.clean[v.cat] or cx.clean[top] in cx.clean[v.cat]):
                continue  # not "animal", and never a child into its parent: rule 3 goes the other way
            if top_count > counts[v.cat] and counts[v.cat] <= o.max_detections_nondominant_class:
                v.cat = top

    # 3. Higher taxa to their most specific, most common descendant.
    counts = _count(votes, o)
    taxonomic = bool(cx.clean) and len(counts) > 1  # MegaDetector reuses this value in rule 4
    if taxonomic and o.propagate_classifications_through_taxonomy:
        for v in voting:
            mine = cx.clean[v.cat]
            if not mine:
                continue
            scores = {}
            for cand, n in counts.items():
                theirs = cx.clean[cand]
                if cand == v.cat or not theirs or theirs == mine or mine not in theirs:
                    continue
                scores[cand] = (_level(cx.descriptions[cand]) * o.taxonomy_propagation_level_weight
                                + n * o.taxonomy_propagation_count_weight)
            if scores:
                v.cat = max(scores, key=scores.get)  # ties: the first (most votes) wins

    # 4. Same-family classes to a dominant genus or species.
    counts = _count(votes, o)
    top, top_count = next(iter(counts.items()))
    if taxonomic:
        top_tokens = cx.descriptions[top].split(";")
        top_level = _level(cx.descriptions[top])
    if (taxonomic and o.min_detections_to_overwrite_secondary_same_family > 0 and top not in cx.other
            and top_level > FAMILY_LEVEL and top_count >= o.min_detections_to_overwrite_secondary_same_family):
        for v in voting:
            n = counts[v.cat]
            if v.cat == top or n > o.max_detections_nondominant_class_same_family or n == top_count:
                continue
            tokens = cx.descriptions[v.cat].split(";")
            if not tokens[3] or not top_tokens[3] or tokens[3] != top_tokens[3]:
                continue
            if tokens[4] == top_tokens[4] and _level(cx.descriptions[v.cat]) > top_level:
                continue  # never a species into its own genus
            v.cat = top

    changed = 0
    for v, was in zip(votes, starting):
        if v.cat != was:
            changed += 1
            _set_top(v.det, v.cat, originals)
    return changed


def _count(votes: list[_Vote], o: SmoothingOptions) -> dict[str, int]:
    """Votes per class, most first, ties in order of first appearance (MegaDetector's stable sort)."""
    counts: dict[str, int] = {}
    for v in votes:
        if v.relevant and v.conf >= o.classification_confidence_threshold:
            counts[v.cat] = counts.get(v.cat, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: kv[1], reverse=True))


def _set_top(det: dict, cat: str, originals: dict) -> None:
    """The top-1 becomes `cat` with the model's top-1 confidence; the rest of the model's list follows."""
    det_id = id(det)
    if det_id not in originals:
        originals[det_id] = (det, det["classifications"])
    before = originals[det_id][1]
    det["classifications"] = [[cat, before[0][1]]] + [c for c in before[1:] if c[0] != cat]


def _clean(description: str) -> str:
    """MegaDetector's `clean_taxonomy_string(...).strip(';').lower()`: the rank tokens of a 7- or 5-token string."""
    tokens = description.split(";")
    if len(tokens) == 7:
        tokens = tokens[1:-1]
    elif len(tokens) != 5:
        raise TrapkitError(f"classification description {description!r} is not a 7-token taxonomy string; "
                           "re-export the model with --taxonomy")
    return ";".join(tokens).strip(";").lower()


def _level(description: str) -> int:
    """MegaDetector's `taxonomy_level_index`: 0 non-taxonomic, 3 class .. 7 species, 8 subspecies."""
    if description == _NO_CV_RESULT:
        return 0
    tokens = description.split(";")
    if len(tokens) == 7:
        tokens = tokens[1:-1]
    depth = next((i for i, t in enumerate(tokens) if not t), 5)
    if depth == 0:
        return 0
    if depth < 5:
        return depth + 2
    return 8 if " " in tokens[4] else 7
