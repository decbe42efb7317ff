"""Images for int8 calibration and for measuring a reduced-precision graph's top-1 agreement.

A calibration folder holds photos, and optionally MegaDetector batch output
(`*.json` in the folder root): each photo is used whole (spec's resize
policy), and each of its detections that the model's crop policy takes
(`trapkit.detections.qualifying`: threshold, categories, usable box) adds its
square crop, the same pixels the batch classifier will feed the model, through
the same function (`trapkit.prepare.prepare_image`). Default: the bundled
camera-trap photos and their MegaDetector v5 crops.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trapkit.detections import first_problem, qualifying
from trapkit.errors import TrapkitError
from trapkit.images import ImageReadError, iter_images
from trapkit.prepare import Preprocessing, prepare_image
from trapkit.progress import tracked
from trapkit.samples import SAMPLES_DIR
from trapkit.spec import ModelSpec
from trapkit.typed_json import read_json

log = logging.getLogger(__name__)


def calibration_images(spec: ModelSpec, folder: str | Path | None = None, whole_images: bool = True) -> np.ndarray:
    """(N, S, S, 3) uint8: each photo whole (unless `whole_images=False`) then its detection crops.

    `folder` defaults to the bundled photos.
    """
    folder = Path(folder) if folder is not None else SAMPLES_DIR
    prep = Preprocessing.from_spec(spec)
    boxes = _detection_boxes(folder, prep)
    out: list[np.ndarray] = []  # (k, S, S, 3) uint8 each
    skipped = 0
    for path in tracked(iter_images(folder), "calibration images", "image"):
        try:
            if whole_images:
                out.append(prepare_image(path, None, prep).crops)
            out.append(prepare_image(path, boxes.get(path.relative_to(folder).as_posix(), []), prep).crops)
        except ImageReadError as e:
            log.warning("skipping calibration image: %s", e)
            skipped += 1
    images = np.concatenate(out) if out else np.zeros((0,))
    if not len(images):
        raise TrapkitError(f"no readable images in calibration folder {folder}; give a folder of photos")
    log.info("calibration set: %d inputs from %s (%d unreadable skipped)", len(images), folder, skipped)
    return images


def _detection_boxes(folder: Path, prep: Preprocessing) -> dict[str, list[list[float]]]:
    """file -> normalised boxes of the items by the model's crop policy, from any MegaDetector output in the root."""
    boxes: dict[str, list[list[float]]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = read_json(path, "calibration JSON", "not used")
        except TrapkitError:
            log.debug("%s is not JSON; no crops from it", path)
            continue
        if first_problem(doc):
            log.debug("%s is not MegaDetector output; no crops from it", path)
            continue
        try:
            items = qualifying(doc, prep.threshold, prep.categories)
        except TrapkitError as e:  # the file has none of the model's detection categories
            log.warning("no crops from %s: %s", path, e)
            continue
        for i, dets in items.items():
            image = doc["images"][i]
            boxes.setdefault(image["file"].replace("\\", "/"), []).extend(image["detections"][j]["bbox"] for j in dets)
    return boxes
