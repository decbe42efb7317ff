"""How a detection box becomes a model input: the cropping policy.

MegaDetector boxes are `[x, y, w, h]`, normalised to [0, 1], relative to the
upright image (EXIF orientation applied), origin top-left. trapkit turns one
into a model input like this:

1. The image is opened with `trapkit.images.open_window`: EXIF orientation is
   applied before any box is used, and grayscale, CMYK, palette or 16-bit
   images are converted to RGB.
2. The box is clipped to the image (a stray box that reaches past it, or is
   huge, keeps only what lies inside). The crop is a square centred on the box
   whose side is the box's longer side in pixels plus `margin` of it on each
   side (`side = long * (1 + 2 * margin)`), so the animal keeps its aspect
   ratio and a little context.
3. The square is shifted (clamped) to lie inside the image. Only when it is
   larger than the image in a dimension does it run off the edge: it then
   covers that whole dimension, as close to centred on the box as it can, and
   the part outside the image is padded black (`PAD_VALUE`).
4. The square is resized to the model's `input_size` with the spec's
   interpolation, the resampling training uses (`trapkit.images.to_model_input`):
   Pillow's, or, for bilinear on the region decoder's pixels,
   `trapkit/_resample.c`, which computes Pillow's result bit for bit without
   copying the pixels into a Pillow image.

Whole images (no detector) skip steps 2-3 and use the spec's own
`resize_mode`, exactly as in training. Because a crop only needs
`input_size` pixels across, a JPEG can be decoded at a reduced DCT scale
(`draft`) whenever every crop of the image keeps at least that many pixels:
`decode_scale` works out how far, and since the crops read nothing outside
the rectangle around them (`region_needed`), only that rectangle is decoded.

A box with no area inside the frame (zero or negative size, or wholly
outside) is not a detection anything can be cut from: `usable_box` says so,
and `trapkit.detections.qualifying` leaves such boxes out.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from trapkit.images import PIL_FILTERS, REDUCING_GAP, Window

try:
    from trapkit import _resample  # compiled at install, beside the region decoder
except ImportError:  # pragma: no cover - depends on how trapkit was built
    _resample = None

PAD_VALUE = 0


def usable_box(bbox) -> bool:
    """Whether a normalised [x, y, w, h] box has area inside the frame (a crop can show something)."""
    x, y, w, h = (float(v) for v in bbox)
    return w > 0 and h > 0 and min(x + w, 1.0) > max(x, 0.0) and min(y + h, 1.0) > max(y, 0.0)


def square_region(bbox, width: int, height: int, margin: float) -> tuple[float, float, float]:
    """(left, top, side) in pixels of the square crop for a normalised `bbox` on a width x height image.

    The square may extend past the image only in a dimension it is larger than.
    """
    x, y, w, h = (float(v) for v in bbox)
    # The box is clipped to the image first, so a stray detector box (far outside, or huge) crops what is there.
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    w, h = min(max(x + w, 0.0), 1.0) - x0, min(max(y + h, 0.0), 1.0) - y0
    bw, bh = max(w, 0.0) * width, max(h, 0.0) * height
    side = max(bw, bh, 1.0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + max(w, 0.0) / 2) * width, (y0 + max(h, 0.0) / 2) * height
    return _clamp(cx - side / 2, side, width), _clamp(cy - side / 2, side, height), side


def _clamp(start: float, side: float, extent: int) -> float:
    # Smaller than the image: keep inside [0, extent]. Larger: cover the whole
    # extent, as close to centred on the box as possible.
    lo, hi = sorted((0.0, float(extent) - side))
    return min(max(start, lo), hi)


def crop_square(image: Image.Image | Window, bbox, size: int, margin: float,
                interpolation: str = "bilinear") -> np.ndarray:
    """(size, size, 3) uint8 model input for one normalised box on a decoded upright RGB image.

    A `Window` (part of an image) must hold every pixel the crop reads (`region_needed`).
    """
    resample = PIL_FILTERS[interpolation]
    window = image if isinstance(image, Window) else Window.whole(image)
    left, top, side = square_region(bbox, window.width, window.height, margin)
    box = (left, top, left + side, top + side)
    if left >= 0 and top >= 0 and box[2] <= window.width + 1e-6 and box[3] <= window.height + 1e-6:
        # Resample straight from the region: no intermediate copy of a large crop.
        box = _shift((left, top, min(box[2], window.width), min(box[3], window.height)), -window.left, -window.top)
        if interpolation == "bilinear" and _can_resample_in_place(window, box, size):
            # Pillow's arithmetic bit for bit, on the decoder's own buffer (trapkit/_resample.c).
            rgb = _resample.resize(window.rgb, *window.rgb_size, *box, size)
            return np.frombuffer(rgb, np.uint8).reshape(size, size, 3)
        out = window.image.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)
    else:
        # Runs off the edge: paste the part inside the image onto a padded square.
        l, t, s = int(round(left)), int(round(top)), max(1, int(round(side)))
        canvas = Image.new("RGB", (s, s), (PAD_VALUE,) * 3)
        inside = (max(l, 0), max(t, 0), min(l + s, window.width), min(t + s, window.height))
        canvas.paste(window.image.crop(_shift(inside, -window.left, -window.top)), (inside[0] - l, inside[1] - t))
        out = canvas.resize((size, size), resample, reducing_gap=REDUCING_GAP)
    return np.asarray(out, dtype=np.uint8)


def _can_resample_in_place(window: Window, box, size: int) -> bool:
    """The compiled resampler can make this crop: packed RGB holding the box, and a box Pillow
    would resample directly (its `reducing_gap` first shrinks boxes 2 x gap x size or wider)."""
    w, h = window.rgb_size
    return (_resample is not None and window.rgb is not None
            and 0 <= box[0] and 0 <= box[1] and box[2] <= w and box[3] <= h
            and max(box[2] - box[0], box[3] - box[1]) < 2 * REDUCING_GAP * size)


def _shift(box, dx: int, dy: int) -> tuple:
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


def decode_scale(bboxes, width: int, height: int, size: int, margin: float) -> float:
    """Largest factor (<= 1) by which a width x height image may shrink with every crop keeping >= `size` px."""
    if not bboxes:
        return 1.0
    smallest = min(square_region(b, width, height, margin)[2] for b in bboxes)
    return min(1.0, size / smallest)


def region_needed(bboxes, width: int, height: int, size: int, margin: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom): the rectangle of a width x height image the crops of `bboxes` read.

    The squares' bounding box, plus the resampling filter's reach around it
    (bilinear reaches one output pixel, `side / size` input pixels) and a little
    slack, clamped to the image.
    """
    left, top, right, bottom = float(width), float(height), 0.0, 0.0
    for b in bboxes:
        x, y, side = square_region(b, width, height, margin)
        reach = 2 * side / size + 8
        left, top = min(left, x - reach), min(top, y - reach)
        right, bottom = max(right, x + side + reach), max(bottom, y + side + reach)
    return max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom)


def min_decode_size(bboxes, width: int, height: int, size: int, margin: float) -> tuple[int, int]:
    """The (w, h) to pass as `open_image(min_size=...)` so every crop keeps `size` pixels across."""
    s = decode_scale(bboxes, width, height, size, margin)
    return math.ceil(width * s), math.ceil(height * s)
