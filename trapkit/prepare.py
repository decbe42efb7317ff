"""The ONE image-preparation path: an image and its boxes in, the model's uint8 inputs out.

Training (`al` embedding and fine-tuning), export (calibration, parity),
`classify`, the demo and the review page all call `prepare_image` (or, for
pixels already decoded, `crops_from_image`), with a `Preprocessing` made by
`Preprocessing.from_spec`: so a model sees the same pixels, byte for byte,
in every stage, and a crop it is trained on is the crop it later classifies.

For one image:
1. the header is read once (`trapkit.images.read_header`): upright size, EXIF
   orientation, capture time;
2. with boxes, only the rectangle the crops read is decoded, at a reduced JPEG
   DCT scale when every crop keeps at least `input_size` pixels across
   (`trapkit.crops.region_needed`, `min_decode_size`); without, the whole image;
3. each box becomes a square crop by the crop policy (`trapkit.crops`), the
   whole image is resized by `resize_mode`, with the spec's interpolation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from trapkit.crop_policy import CropPolicy
from trapkit.crops import crop_square, min_decode_size, region_needed
from trapkit.errors import TrapkitError
from trapkit.images import (FAILURE_UNREADABLE, ImageReadError, open_image, open_window, read_header, safe_join,
                            to_model_input, to_rgb)
from trapkit.spec import RESIZE_MODES, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides a model's input pixels, and which detections are items.

    `resize_mode` and `interpolation` apply to whole images and crops alike;
    `margin` is the crop policy's context; `threshold` and `categories` pick
    the detections that are classified (or trained on).
    """

    input_size: int
    resize_mode: str = "squash"
    interpolation: str = CropPolicy.interpolation
    margin: float = CropPolicy.margin
    threshold: float = CropPolicy.threshold
    categories: tuple[str, ...] = CropPolicy.categories

    def __post_init__(self):
        object.__setattr__(self, "categories", self.crop_policy.categories)  # validated there
        if self.resize_mode not in RESIZE_MODES:
            raise TrapkitError(f"unknown resize mode {self.resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")

    @classmethod
    def from_spec(cls, spec: ModelSpec, **overrides) -> Preprocessing:
        """The spec's preprocessing, with `overrides` (flags; None = not given) on top: one precedence rule."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"not preprocessing settings: {sorted(unknown)}")
        base = {"input_size": spec.input_size, "resize_mode": spec.resize_mode, "interpolation": spec.interpolation,
                "margin": spec.crop_margin, "threshold": spec.detection_threshold,
                "categories": spec.detection_categories}
        return cls(**base | {k: v for k, v in overrides.items() if v is not None})

    @property
    def crop_policy(self) -> CropPolicy:
        return CropPolicy(self.margin, self.threshold, self.categories, self.interpolation)


@dataclass
class Prepared:
    """One image's model inputs: `crops` (k, S, S, 3) uint8, one per box (or one for the whole image)."""

    crops: np.ndarray
    time: str | None = None  # EXIF capture time "YYYY:MM:DD HH:MM:SS"
    warnings: list[str] = field(default_factory=list)


def prepare_image(path: str | Path, boxes: list | None, prep: Preprocessing) -> Prepared:
    """Model inputs for the image at `path`: one crop per normalised [x, y, w, h] box, or the whole image (None).

    Raises `trapkit.images.ImageReadError` (with a failure `code`) when the image cannot be read.
    """
    size = prep.input_size
    header = read_header(path)
    if boxes is None:
        img, notes = open_image(path, min_size=(size, size))
        return Prepared(to_model_input(img, size, prep.resize_mode, prep.interpolation)[None], header.time, notes)
    if not boxes:
        return Prepared(np.zeros((0, size, size, 3), np.uint8), header.time, [])
    w, h = header.size
    mw, mh = min_decode_size(boxes, w, h, size, prep.margin)
    min_size = (mh, mw) if header.transposed else (mw, mh)  # draft works on the stored (unrotated) image
    window, notes = open_window(path, min_size=min_size, region=region_needed(boxes, w, h, size, prep.margin),
                                header=header)
    crops = np.stack([crop_square(window, b, size, prep.margin, prep.interpolation) for b in boxes])
    return Prepared(crops, header.time, notes)


@dataclass
class Attempt:
    """One work item of a batch job after `prepare_entry`: its crops, or the failure code and why."""

    crops: np.ndarray | None  # (k, S, S, 3) uint8; None when the image could not be read
    time: str | None = None
    warnings: list[str] = field(default_factory=list)
    failure: str | None = None  # a trapkit.images.FAILURE_* code
    message: str | None = None  # the details, for the log (may name local paths: never in shared results)


def prepare_entry(root: str | Path | None, file: str, boxes: list | None, prep: Preprocessing) -> Attempt:
    """`prepare_image` for `file` under `root` (through `safe_join`; `root=None`: `file` is already a full path)
    that never raises for a bad image: a batch job of a million photos records the failure and goes on.

    Every batch executor calls it (the local threads and the Ray tasks of `classify`, the embedding step).
    """
    try:
        path = Path(file) if root is None else safe_join(root, file)
        prepared = prepare_image(path, boxes, prep)
        return Attempt(prepared.crops, prepared.time, prepared.warnings)
    except ImageReadError as e:
        return Attempt(None, failure=e.code, message=str(e))
    except Exception as e:  # noqa: BLE001 - one strange file must not end a 100k-image run; recorded, not hidden
        log.debug("unexpected error on %s", ascii(file), exc_info=True)
        return Attempt(None, failure=FAILURE_UNREADABLE,
                       message=f"{ascii(file)} could not be processed ({e.__class__.__name__}: {e})")


def crops_from_image(img: Image.Image, boxes: list | None, prep: Preprocessing) -> np.ndarray:
    """(k, S, S, 3) uint8 model inputs from an upright RGB image already decoded (a video frame, an upload)."""
    size, img = prep.input_size, to_rgb(img)
    if boxes is None:
        return to_model_input(img, size, prep.resize_mode, prep.interpolation)[None]
    if not boxes:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([crop_square(img, b, size, prep.margin, prep.interpolation) for b in boxes])
