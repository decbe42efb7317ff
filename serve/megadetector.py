"""MegaDetector batch output: read any `format_version` from 1.3 on, write 1.6.

The format (https://lila.science/megadetector-output-format):
`{"info": {"format_version", "detector", ...}, "detection_categories": {"1": "animal", ...},
"images": [{"file", "detections": [{"category", "conf", "bbox": [x, y, w, h]}] | null, "failure"?}]}`.
Boxes are normalised to the upright image. trapkit adds `classification_categories`,
`classification_category_descriptions`, per-detection `classifications` and
`info.classifier` / `info.classification_completion_time`; everything else in the
input is carried through untouched. An image trapkit cannot read keeps the
detector's `detections` and gets `classification_failure` (the format's own
`failure` means the detector failed and requires `detections: null`).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

from trapkit.errors import TrapkitError

MIN_FORMAT_VERSION = 1.3
OUTPUT_FORMAT_VERSION = "1.6"
WHOLE_IMAGE_DETECTOR = "none (whole images classified)"
CLASSIFICATION_FAILURE = "classification_failure"


def load_detections(path: str | Path) -> dict:
    """Read and validate a MegaDetector batch output file. One-line `TrapkitError` naming the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrapkitError(f"detections file {path} does not exist; pass MegaDetector's output JSON") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrapkitError(f"cannot read detections file {path} ({e.__class__.__name__}); is it a JSON file?") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrapkitError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); is the file complete?"
        ) from None
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
        return f"info.format_version is {version!r}, expected a version such as \"1.6\""
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
        if not _is_number(det.get("conf")):
            return f"{where} has no numeric 'conf'"
        bbox = det.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            return f"{where} 'bbox' must be four numbers [x, y, w, h], got {bbox!r}"
    return None


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
