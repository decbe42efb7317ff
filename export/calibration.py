"""Images for int8 calibration and for measuring a reduced-precision graph's top-1 agreement.

A calibration folder holds photos, and optionally MegaDetector batch output
(`*.json` in the folder root): each photo is used whole (spec's resize
policy), and each detection at or above `min_conf` adds its square crop, the
same pixels the batch classifier will feed the model. Default: the bundled
camera-trap photos and their MegaDetector v5 crops.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trapkit.errors import TrapkitError
from trapkit.export.onnx_export import BUNDLED_PHOTOS
from trapkit.spec import ModelSpec

log = logging.getLogger(__name__)

MIN_CONF = 0.1  # MegaDetector's usual threshold for passing boxes to a classifier


def calibration_images(spec: ModelSpec, folder: str | Path | None = None, min_conf: float = MIN_CONF,
                       whole_images: bool = True) -> np.ndarray:
    """(N, S, S, 3) uint8: each photo whole (unless `whole_images=False`) then its detection crops.

    `folder` defaults to the bundled photos.
    """
    from trapkit.images import ImageReadError, iter_images, open_image, to_model_input
    from trapkit.serve.crops import CropPolicy, crop_square

    folder = Path(folder) if folder is not None else BUNDLED_PHOTOS
    boxes = _detection_boxes(folder, min_conf)
    margin = CropPolicy().margin
    out: list[np.ndarray] = []
    skipped = 0
    for path in tqdm(iter_images(folder), desc="calibration images", unit="img", leave=False, disable=None):
        try:
            img, _ = open_image(path)
        except ImageReadError as e:
            log.warning("skipping calibration image: %s", e)
            skipped += 1
            continue
        if whole_images:
            out.append(to_model_input(img, spec.input_size, spec.resize_mode))
        for bbox in boxes.get(path.relative_to(folder).as_posix(), []):
            out.append(crop_square(img, bbox, spec.input_size, margin))
    if not out:
        raise TrapkitError(f"no readable images in calibration folder {folder}; give a folder of photos")
    log.info("calibration set: %d inputs from %s (%d unreadable skipped)", len(out), folder, skipped)
    return np.stack(out)


def _detection_boxes(folder: Path, min_conf: float) -> dict[str, list[list[float]]]:
    """file -> normalised boxes at or above `min_conf`, from any MegaDetector output in the folder root."""
    from trapkit.serve.megadetector import first_problem

    boxes: dict[str, list[list[float]]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            log.debug("%s is not JSON; no crops from it", path)
            continue
        if first_problem(doc):
            log.debug("%s is not MegaDetector output; no crops from it", path)
            continue
        for image in doc["images"]:
            for det in image.get("detections") or []:
                if det["conf"] >= min_conf:
                    boxes.setdefault(image["file"].replace("\\", "/"), []).append(det["bbox"])
    return boxes
