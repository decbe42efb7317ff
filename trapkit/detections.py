"""MegaDetector batch output: read any `format_version` from 1.3 on, write 1.6.

The format (https://lila.science/megadetector-output-format):
`{"info": {"format_version", "detector", ...}, "detection_categories": {"1": "animal", ...},
"images": [{"file", "detections": [{"category", "conf", "bbox": [x, y, w, h]}] | null, "failure"?}]}`.
Boxes are normalised to the upright image. trapkit adds `classification_categories`,
`classification_category_descriptions`, per-detection `classifications` and
`info.classifier` / `info.classification_completion_time`; everything else in the
input is carried through untouched. An image trapkit cannot read keeps the
detector's `detections` and gets `classification_failure`, a short fixed code
(`trapkit.images.FAILURE_*`; the format's own `failure` means the detector
failed and requires `detections: null`).

Which detections are items (classified, or trained on) is decided in one
place, `qualifying`: at or above a confidence threshold, in the given
categories (names matched without regard to case), with a usable box.
"""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

from trapkit.crops import usable_box
from trapkit.errors import TrapkitError
from trapkit.images import is_text
from trapkit.typed_json import read_json

log = logging.getLogger(__name__)

MIN_FORMAT_VERSION = 1.3
# Items one image may yield: MegaDetector writes at most a few hundred boxes; a file asking for 10,000
# crops of one photo would take gigabytes. Past this, the most confident are items, the rest stay unclassified.
MAX_ITEMS_PER_IMAGE = 500
OUTPUT_FORMAT_VERSION = "1.6"
WHOLE_IMAGE_DETECTOR = "none (whole images classified)"
CLASSIFICATION_FAILURE = "classification_failure"


def load_detections(path: str | Path) -> dict:
    """Read and validate a MegaDetector batch output file. One-line `TrapkitError` naming the first problem."""
    path = Path(path)
    if path.is_dir():
        raise TrapkitError(f"detections file {path} is a folder; pass MegaDetector's output JSON file")
    doc = read_json(path, "detections file", "pass MegaDetector's complete output JSON")
    problem = first_problem(doc)
    if problem:
        raise TrapkitError(f"{path} is not MegaDetector batch output: {problem}")
    return doc


def first_problem(doc) -> str | None:
    """The first way `doc` breaks the MegaDetector batch format (>= 1.3), or None."""
    if not isinstance(doc, dict):
        return f"the top level is a JSON {type(doc).__name__}, expected an object"
    info = doc.get("info")
    if not isinstance(info, dict):
        return "missing 'info' object"
    version = info.get("format_version")
    try:
        number = float(version)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(version, bool) or not math.isfinite(number):
        return f"info.format_version is {_shown(version)}, expected a version such as \"1.6\""
    if number < MIN_FORMAT_VERSION:
        return f"format_version {version} is older than {MIN_FORMAT_VERSION}; rerun MegaDetector or convert the file"
    cats = doc.get("detection_categories")
    if not isinstance(cats, dict) or not cats:
        return "missing 'detection_categories' object"
    for k, v in cats.items():
        if not k.isdigit() or not isinstance(v, str) or not v:
            return f"detection_categories entry {k!r}: {v!r} must map a number string to a name"
    images = doc.get("images")
    if not isinstance(images, list):
        return "missing 'images' list"
    for i, im in enumerate(images):
        problem = _image_problem(im, cats)
        if problem:
            return f"images[{i}] {problem}"
    return None


def _image_problem(im, cats: dict) -> str | None:
    if not isinstance(im, dict):
        return "is not an object"
    if not isinstance(im.get("file"), str) or not im["file"]:
        return "has no 'file' string"
    if not is_text(im["file"]):
        return f"has a file name that is not valid Unicode text ({ascii(im['file'])})"
    failure = im.get("failure")
    if failure is not None and not isinstance(failure, str):
        return f"({im['file']}) has a non-string failure {failure!r}"
    dets = im.get("detections")
    if dets is None:
        return None if failure is not None or "detections" in im else f"({im['file']}) has no 'detections' list"
    if not isinstance(dets, list):
        return f"({im['file']}) 'detections' is not a list"
    for j, det in enumerate(dets):
        where = f"({im['file']}) detections[{j}]"
        if not isinstance(det, dict):
            return f"{where} is not an object"
        if not isinstance(det.get("category"), str) or det["category"] not in cats:
            return f"{where} has category {det.get('category')!r}, not in detection_categories"
        if not _is_number(det.get("conf")) or not 0.0 <= det["conf"] <= 1.0:
            return f"{where} has 'conf' {_shown(det.get('conf'))}, expected a confidence between 0 and 1"
        bbox = det.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            return f"{where} 'bbox' must be four numbers [x, y, w, h], got {bbox!r}"
    return None


def _shown(value) -> str:
    """A value for an error message: short, and printable (no terminal escape codes)."""
    return ascii(value)[:60]


def _is_number(v) -> bool:
    """A finite JSON number (Python's json reads NaN and Infinity too)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def whole_image_results(files: list[str]) -> dict:
    """A detector-less batch file: one full-frame `animal` box per image (plankton, fish, pre-cropped photos)."""
    return {
        "info": {"format_version": OUTPUT_FORMAT_VERSION, "detector": WHOLE_IMAGE_DETECTOR},
        "detection_categories": {"1": "animal"},
        "images": [{"file": f, "detections": [{"category": "1", "conf": 1.0, "bbox": [0.0, 0.0, 1.0, 1.0]}]}
                   for f in files],
    }


def qualifying(doc: dict, threshold: float, categories, notes: list[str] | None = None) -> dict[int, list[int]]:
    """{image index: [indices of its detections that are items]}: the ONE rule every stage uses.

    An item is a detection in `categories` (names, any case) at or above `threshold`
    with a box that has area inside the frame. Images the detector failed on, and
    images with no such detection, are left out. Unusable boxes are counted in a warning,
    and so are images with more than `MAX_ITEMS_PER_IMAGE` items (their most confident are kept):
    logged, or appended to `notes` for a caller that reports them itself.
    """
    cats = category_ids(doc, categories)
    items, unusable, crowded = {}, [], []
    for i, im in enumerate(doc["images"]):
        if im.get("failure") is not None:
            continue
        keep = []
        for j, d in enumerate(im.get("detections") or ()):
            if d["category"] in cats and d["conf"] >= threshold:
                if usable_box(d["bbox"]):
                    keep.append(j)
                else:
                    unusable.append(im["file"])
        if len(keep) > MAX_ITEMS_PER_IMAGE:
            crowded.append(im["file"])
            keep = sorted(sorted(keep, key=lambda j: -im["detections"][j]["conf"])[:MAX_ITEMS_PER_IMAGE])
        if keep:
            items[i] = keep
    found = []
    if crowded:
        found.append(f"{len(crowded)} image(s) have more than {MAX_ITEMS_PER_IMAGE} qualifying detections (e.g. "
                     f"{ascii(crowded[0])}); only the {MAX_ITEMS_PER_IMAGE} most confident of each are used")
    if unusable:
        found.append(f"{len(unusable)} detection box(es) with no area inside their image were left out (e.g. in "
                     f"{ascii(unusable[0])})")
    if notes is None:
        for note in found:
            log.warning("%s", note)
    else:
        notes += found
    return items


def category_ids(doc: dict, names) -> set[str]:
    """Detection category ids for `names`; an unknown name is an error listing the known ones."""
    by_name = {v.lower(): k for k, v in doc["detection_categories"].items()}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise TrapkitError(
            f"detection category {unknown[0]!r} is not in the detections file; "
            f"it has {', '.join(sorted(doc['detection_categories'].values()))}"
        )
    return {by_name[n.lower()] for n in names}


def classification_categories(labels, taxonomy=None) -> tuple[dict, dict | None]:
    """(`classification_categories`, `classification_category_descriptions` or None), ids "0", "1", ..."""
    cats = {str(i): name for i, name in enumerate(labels)}
    descriptions = {str(i): t for i, t in enumerate(taxonomy)} if taxonomy else None
    return cats, descriptions


def upgrade_to_output(doc: dict) -> dict:
    """The input as a 1.6 document: version string, failed images with `detections: null`."""
    doc["info"]["format_version"] = OUTPUT_FORMAT_VERSION
    for im in doc["images"]:
        if im.get("failure") is not None:
            im["detections"] = None
        elif im.get("detections") is None:
            im["detections"] = []
        for det in im["detections"] or ():
            det["conf"] = float(det["conf"])  # 1.6 readers expect floats, even for 0 and 1
    return doc
