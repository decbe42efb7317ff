"""Reading images the way every trapkit stage must agree on.

Training, export parity checks and serving all go through `read_header`,
`open_image`/`open_window` and `to_model_input` (through `trapkit.prepare`),
so a model sees the same pixels in every stage: EXIF orientation applied, any
mode converted to RGB, then resized by the spec's policy into a (H, W, 3)
uint8 array.

An image that cannot be read raises `ImageReadError`, whose `code` is one of
the short fixed `FAILURE_*` strings (what batch results record and count)
and whose message gives the details (what the log shows).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from trapkit.crop_policy import INTERPOLATIONS
from trapkit.errors import TrapkitError

try:
    from trapkit import _jpeg_region  # compiled at install when libjpeg's headers are there
except ImportError:  # pragma: no cover - depends on how trapkit was built
    _jpeg_region = None

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
# Camera traps top out near 50 MP; anything past ~179 MP (twice Pillow's warning
# level, where Pillow itself refuses) is refused as too large, with that said.
MAX_IMAGE_PIXELS = 2 * 89_478_485
EXIF_ORIENTATION = 0x0112
_EXIF_IFD, _EXIF_DATETIME_ORIGINAL, _EXIF_DATETIME = 0x8769, 36867, 306
PIL_FILTERS = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}  # name -> Pillow's filter
REDUCING_GAP = 3.0  # Pillow pre-shrinks by whole factors first when downscaling more than this
# Per-image failure codes: short, fixed, countable (MegaDetector's habit); details go to the log.
FAILURE_MISSING = "image missing"
FAILURE_NOT_FILE = "not a regular file"
FAILURE_EMPTY = "image empty"
FAILURE_TOO_LARGE = "image too large"
FAILURE_UNREADABLE = "image unreadable"
FAILURE_PATH = "path outside image folder"
# Pixels a region decode adds on each side: where libjpeg cuts a row, chroma
# upsampling has no neighbour to read, so the outermost pixels differ from a full decode.
_UPSAMPLING_REACH = 2


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
    """An image that cannot be read: missing, empty, corrupt, or too large. `code`: a `FAILURE_*` string."""

    def __init__(self, message: str, code: str = FAILURE_UNREADABLE):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Header:
    """What an image's header says, read once: upright size, how it is stored, when it was taken."""

    size: tuple[int, int]  # (width, height) upright, EXIF orientation applied
    transposed: bool  # stored rotated by 90 degrees (EXIF orientation 5-8)
    orientation: int
    format: str | None
    mode: str
    time: str | None  # EXIF capture time "YYYY:MM:DD HH:MM:SS"

    @property
    def upright_jpeg(self) -> bool:
        """An RGB or grayscale JPEG stored upright: what the region decoder reads."""
        return self.format == "JPEG" and self.mode in ("RGB", "L") and self.orientation == 1


def read_header(path: str | Path) -> Header:
    """The image's `Header`, from one open of the file; `ImageReadError` when it is no readable image."""
    path = Path(path)
    with _reading(path), _open_header(path) as img:
        exif = img.getexif()
        orientation = exif.get(EXIF_ORIENTATION, 1)
        orientation = orientation if isinstance(orientation, int) else 1
        taken = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)
        transposed = orientation in (5, 6, 7, 8)
        w, h = img.size
        return Header((h, w) if transposed else (w, h), transposed, orientation, img.format, img.mode,
                      str(taken).strip("\x00 ") if taken else None)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def iter_images(root: str | Path) -> list[Path]:
    """Every image file under `root`, sorted, hidden files and folders skipped.

    Linked folders are followed (a subset of a pool made of links, `classify --sort-into --link`),
    each real folder once, so a link that loops back is not walked forever. A file name that is not
    valid UTF-8 (a camera or an old copy tool's Latin-1, say) stops the scan with one line naming it:
    results, CSVs and Timelapse all need names as text, so it is renamed once rather than mangled.
    """
    return iter_files(root, is_image_file)


def iter_files(root: str | Path, accept) -> list[Path]:
    """Every file under `root` whose name `accept(name)` takes, walked as `iter_images` walks (videos, say)."""
    root = Path(root)
    if not root.is_dir():
        raise TrapkitError(f"image folder {root} does not exist; check the path")
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".") and accept(f)
                  and os.path.isfile(os.path.join(folder, f))]
    bad = [p for p in found if not is_text(str(p.relative_to(root)))]
    if bad:
        raise TrapkitError(
            f"{len(bad)} file name(s) under {root} are not valid UTF-8 (e.g. {ascii(str(bad[0].relative_to(root)))}); "
            "rename them, for example with 'convmv -f latin1 -t utf-8 -r --notest FOLDER', then run again")
    return sorted(found)


def is_text(name: str) -> bool:
    """Whether a name is valid Unicode text (a name read from non-UTF-8 bytes holds lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_join(root: str | Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and any that climb out of `root` with `..`.

    The check is on the path as written: symlinks inside `root` are followed, because
    they are the user's own (a subset pool of links, `trapkit classify --sort-into --link`).
    """
    rel = str(relative).replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ImageReadError(f"path {relative!r} is absolute; give it relative to the image folder", FAILURE_PATH)
    normal = os.path.normpath(rel)
    if normal == ".." or normal.startswith("../"):
        raise ImageReadError(f"path {relative!r} escapes the image folder; refusing to read it", FAILURE_PATH)
    return Path(root).resolve() / normal


def is_file_under(root: str | Path, relative: str) -> bool:
    """Whether `relative` (as `safe_join` takes it) names a file under `root`; False for an escaping path."""
    try:
        return safe_join(root, relative).is_file()
    except ImageReadError:
        return False


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
    with _reading(path):
        img = _open_header(path)
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
    return to_rgb(img), notes


@dataclass
class Window:
    """The decoded part of an image: pixels from (`left`, `top`) of an upright RGB
    image that is `width` x `height` as decoded (after any DCT scaling).

    The region decoder hands its pixels over as packed RGB rows (`rgb`,
    `rgb_size` = (w, h)), which crops resample where they lie; `image` makes a
    Pillow image of them (a copy) only when something asks for one.
    """

    left: int
    top: int
    width: int
    height: int
    rgb: bytes | None = None
    rgb_size: tuple[int, int] = (0, 0)
    _image: Image.Image | None = None

    @classmethod
    def whole(cls, img: Image.Image) -> Window:
        return cls(0, 0, img.width, img.height, _image=img)

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = Image.frombuffer("RGB", self.rgb_size, self.rgb, "raw", "RGB", 0, 1)
        return self._image


def open_window(path: str | Path, min_size: tuple[int, int] | None = None,
                region: tuple[float, float, float, float] | None = None,
                header: Header | None = None) -> tuple[Window, list[str]]:
    """Decode only `region` of an image, as `open_image(path, min_size)` would. Returns (window, warnings).

    `region` is (left, top, right, bottom) in pixels of the full-size upright
    image, and must include any resampling filter's reach; None: all of it.
    An upright RGB or grayscale JPEG is decoded by libjpeg-turbo over that
    rectangle alone (`trapkit._jpeg_region`): the pixels in it are those of a
    full decode, for about 0.65x the time on camera-trap photos. Anything else,
    or a trapkit built without its compiled part, decodes with Pillow down to
    the region's bottom row, and the window is then the whole image.
    `header`: the image's `Header` when the caller has read it already.
    """
    path = Path(path)
    if _jpeg_region is not None:
        header = header or read_header(path)
        if header.upright_jpeg:
            return _decode_window(path, header.size, min_size, region)
    img, notes = open_image(path, min_size=min_size, rows=None if region is None else math.ceil(region[3]))
    return Window.whole(img), notes


def _decode_window(path: Path, size: tuple[int, int], min_size, region) -> tuple[Window, list[str]]:
    scale = _draft_scale(size, min_size)
    width, height = -(-size[0] // scale), -(-size[1] // scale)  # libjpeg rounds scaled sides up
    region = region or (0, 0, size[0], size[1])
    left, top, right, bottom = (
        max(0, math.floor(region[0] / scale) - _UPSAMPLING_REACH),
        max(0, math.floor(region[1] / scale) - _UPSAMPLING_REACH),
        min(width, math.ceil(region[2] / scale) + _UPSAMPLING_REACH),
        min(height, math.ceil(region[3] / scale) + _UPSAMPLING_REACH),
    )
    with _reading(path):
        pixels, x0, y0, w, h, truncated = _jpeg_region.decode(path.read_bytes(), scale, left, top, right, bottom)
    notes: list[str] = []
    if truncated:
        _note_truncated(path, notes)
    return Window(x0, y0, width, height, rgb=pixels, rgb_size=(w, h)), notes


def _draft_scale(size: tuple[int, int], min_size: tuple[int, int] | None) -> int:
    """The DCT scale denominator Pillow's `draft` picks to keep `size` at least `min_size`."""
    if min_size is None:
        return 1
    most = min(size[0] // max(1, min_size[0]), size[1] // max(1, min_size[1]))
    return next(s for s in (8, 4, 2, 1) if most >= s)


@contextlib.contextmanager
def _reading(path: Path):
    """Whatever Pillow or libjpeg raise on a bad file becomes one ImageReadError naming it."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from ~89 MP; trapkit's own limit (MAX_IMAGE_PIXELS) is checked in _open_header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError(f"{path} is over trapkit's limit of {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels per image; "
                             "downscale or split it", FAILURE_TOO_LARGE) from None
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path} is not a readable image ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path} could not be decoded ({e})") from None


def _open_header(path: Path) -> Image.Image:
    """The lazily opened image, after the checks no decode should start without.

    Only regular files are opened: a FIFO or device named like an image would block the read forever.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageReadError(f"{path} does not exist", FAILURE_MISSING) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(f"{path} is a folder, not an image", FAILURE_NOT_FILE)
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(f"{path} is not a regular file (a pipe or device?), not an image", FAILURE_NOT_FILE)
    if info.st_size == 0:
        raise ImageReadError(f"{path} is an empty file (0 bytes)", FAILURE_EMPTY)
    img = Image.open(path)
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{path} is {img.width}x{img.height} pixels ({img.width * img.height / 1e6:.0f} MP), over trapkit's limit "
            f"of {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels per image; downscale or split it", FAILURE_TOO_LARGE)
    return img


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
    _note_truncated(path, notes)
    return img


def _note_truncated(path: Path, notes: list[str]) -> None:
    notes.append(f"{path.name} is truncated; classified from the part that decodes")
    log.warning("%s is truncated; using the part that decodes", path)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, P, CMYK, I;16, I, F, RGBA) to 3-channel RGB."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Deep grayscale (scientific cameras, float TIFFs): the brightest pixel becomes 255.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        top = float(arr.max())
        top = top if top > 0 else 1.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def to_model_input(img: Image.Image, size: int, resize_mode: str = "squash",
                   interpolation: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 at `size` x `size`, by the spec's resize policy.

    squash: stretch to a square (crops from detector boxes are already square).
    center_crop: scale the short side to `size`, cut the centre square.
    """
    img = to_rgb(img)
    resample = PIL_FILTERS[interpolation]
    if resize_mode == "center_crop":
        scale = size / min(img.width, img.height)
        w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
        img = img.resize((w, h), resample, reducing_gap=REDUCING_GAP)
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), resample, reducing_gap=REDUCING_GAP)
    return np.asarray(img, dtype=np.uint8)
