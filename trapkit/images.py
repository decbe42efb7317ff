"""Reading images the way every trapkit stage must agree on.

Training, export parity checks and serving all go through `open_image` and
`to_model_input`, so a model sees the same pixels in every stage: EXIF
orientation applied, any mode converted to RGB, then resized by the spec's
policy into a (H, W, 3) uint8 array.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from trapkit.errors import TrapkitError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
# Pillow's default bomb limit (~89 MP) warns; twice it raises. Camera traps top
# out near 50 MP, so refuse anything past 2x the default outright.
MAX_IMAGE_PIXELS = 2 * 89_478_485
EXIF_ORIENTATION = 0x0112


class _SharedExclusiveLock:
    """Many decoders at once (shared), or the one partial-decode retry alone (exclusive).

    Pillow only has a module-wide switch for partial decodes; while it is on, a
    truncated file decoded in another thread would pass silently, so ordinary
    decodes hold the shared side and the retry the exclusive side.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_truncated_lock = _SharedExclusiveLock()


class ImageReadError(TrapkitError):
    """An image that cannot be read: missing, empty, corrupt, or too large."""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def iter_images(root: str | Path) -> list[Path]:
    """Every image file under `root`, sorted, hidden folders skipped."""
    root = Path(root)
    if not root.is_dir():
        raise TrapkitError(f"image folder {root} does not exist; check the path")
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def safe_join(root: str | Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and any that escape `root` (`..`, symlinks)."""
    rel = str(relative).replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ImageReadError(f"path {relative!r} is absolute; give it relative to the image folder")
    root_resolved = Path(root).resolve()
    full = (root_resolved / rel).resolve()
    if full != root_resolved and root_resolved not in full.parents:
        raise ImageReadError(f"path {relative!r} escapes the image folder; refusing to read it")
    return full


def open_image(path: str | Path, min_size: tuple[int, int] | None = None,
               rows: int | None = None) -> tuple[Image.Image, list[str]]:
    """Open an image upright and in RGB. Returns (image, warnings).

    `min_size` (w, h) lets JPEG decode at a reduced DCT scale (Pillow `draft`)
    as long as the result stays at least that large: 2-4x faster on 12 MP photos.
    `rows`: only the top `rows` rows (of the full-size upright image) will be
    used, so an upright JPEG stops decoding below them; the rows under are left
    black. A truncated file that decodes partially is returned with a warning.
    """
    path = Path(path)
    notes: list[str] = []
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path} is an empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageReadError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path} is a folder, not an image") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageReadError(
                    f"{path} is {img.width}x{img.height} pixels, over the {MAX_IMAGE_PIXELS:,} pixel safety limit"
                )
            full_height = img.height
            if min_size is not None and img.format == "JPEG":
                # draft keeps each side >= the requested size; scale is a power of 2.
                img.draft("RGB", (max(1, min_size[0]), max(1, min_size[1])))
            stop_row = None
            if rows is not None:  # in rows of the image as decoded (draft may have shrunk it)
                stop_row = _stop_decoding_after(img, math.ceil(rows * img.height / full_height) + 1)
            img = _load_allowing_truncation(img, path, notes, stop_row)
            # In place: without it Pillow copies the whole image even when it is already upright
            # (35 ms for 12 MP, as long as the decode itself at reduced scale).
            ImageOps.exif_transpose(img, in_place=True)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path} is not a readable image ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path} could not be decoded ({e})") from None
    return to_rgb(img), notes


def _stop_decoding_after(img: Image.Image, rows: int) -> int | None:
    """Shorten an upright RGB JPEG's decode to its top `rows` rows; the last row to decode, or None.

    Pillow has no region decode, but its JPEG decoder writes rows top down and
    stops at the end of its tile: libjpeg then objects that the image was not
    read to the end, which `_load_allowing_truncation` accepts once that row is there.
    """
    if img.format != "JPEG" or img.mode != "RGB" or len(img.tile) != 1:
        return None
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return None  # stored rotated or flipped: the upright top is not the stored top
    tile = img.tile[0]
    x0, y0, x1, y1 = tile.extents
    keep = min(y1 - y0, rows)
    if keep >= y1 - y0:
        return None
    img.tile = [tile._replace(extents=(x0, y0, x1, y0 + keep))]
    return y0 + keep - 1


def _row_decoded(img: Image.Image, row: int) -> bool:
    # For a load that ran to the end of its tile (Pillow then clears `tile`). Pillow stores
    # RGB as RGBX: the decoder sets X to 255 in each row it writes; a new image is all 0.
    return img.crop((0, row, 1, row + 1)).tobytes("raw", "RGBX")[3] == 255


def _load_allowing_truncation(img: Image.Image, path: Path, notes: list[str],
                              stop_row: int | None = None) -> Image.Image:
    try:
        with _truncated_lock.shared():
            img.load()
        return img
    except OSError as e:
        if stop_row is not None and not img.tile and _row_decoded(img, stop_row):
            return img  # stopped on purpose below the rows in use: libjpeg's complaint, not damage
        if "truncated" not in str(e):
            raise
    # Pillow only offers a module-wide switch for partial decodes: flip it for
    # this one retry, with no other decode running, and restore it.
    with _truncated_lock.exclusive():
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img = Image.open(path)
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    notes.append(f"{path.name} is truncated; classified from the part that decodes")
    log.warning("%s is truncated; using the part that decodes", path)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, P, CMYK, I;16, RGBA) to 3-channel RGB."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8), "L")
    return img.convert("RGB")


def to_model_input(img: Image.Image, size: int, resize_mode: str = "squash") -> np.ndarray:
    """(H, W, 3) uint8 at `size` x `size`, by the spec's resize policy.

    squash: stretch to a square (crops from detector boxes are already square).
    center_crop: scale the short side to `size`, cut the centre square.
    """
    img = to_rgb(img)
    if resize_mode == "center_crop":
        scale = size / min(img.width, img.height)
        w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
        img = img.resize((w, h), Image.BILINEAR, reducing_gap=3.0)
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_model_input(path: str | Path, size: int, resize_mode: str = "squash") -> np.ndarray:
    """Open `path` and return its (size, size, 3) uint8 model input."""
    img, _ = open_image(path, min_size=(size, size))
    return to_model_input(img, size, resize_mode)
