"""Model inputs prepared on an NVIDIA GPU: JPEGs decoded there, cropped and resized there, kept in device memory.

The CPU path (`trapkit.prepare`) stays the reference and the default. With a
GPU, PyTorch with CUDA and a device JPEG decoder, `DevicePreparer` does the
same steps for batches of images:

1. on the CPU, in threads: each image's header (`trapkit.images.read_header`:
   upright size, EXIF orientation and time, the pixel limit) and its bytes;
2. the batch's JPEGs decoded on the device at full size (nvImageCodec, else
   torchvision's nvJPEG), then turned upright by their EXIF orientation, and
   box-averaged by the JPEG DCT scale the CPU path decodes them at (Pillow's
   `draft`: 1/2, 1/4 or 1/8 where every crop keeps the model's input size);
3. each box's square (`trapkit.crops.square_region`, the CPU path's geometry,
   padding included) resized to the model's input by Pillow's own arithmetic
   (`resize`: its box-filter pre-shrink by whole factors past
   `trapkit.images.REDUCING_GAP`, then its separable bilinear or bicubic filter
   with the coefficients and 8-bit rounding Pillow uses), as matrix products;
4. the crops stay on the device: onnxruntime reads them there (I/O binding,
   `trapkit.serve.runtime.OnnxRuntime.predict_device`), PyTorch embedders too.

Anything else (PNG, TIFF, CMYK JPEGs, a JPEG the device decoder refuses, a
truncated file) goes through the CPU path, and its crops are copied over.

How close to the CPU path: on the same decoded pixels, `resize` is Pillow's
result bit for bit in float64 (the tests run it so on CPU tensors) and within
one level in float32 (what the GPU runs). The decoded pixels differ: libjpeg's
scaled IDCT is not a box average of the full decode, and nvJPEG's IDCT is not
libjpeg-turbo's. tests/test_gpu.py states the bounds on the bundled photos
(mean difference per crop), and bench/bench_gpu.py measures top-1 agreement
with the CPU path.

Everything here runs on CPU tensors too (`device="cpu"`, torchvision's CPU
decoder): that is how it is tested without a GPU.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trapkit.crops import PAD_VALUE, min_decode_size, square_region
from trapkit.errors import TrapkitError
from trapkit.images import REDUCING_GAP, Header, ImageReadError, draft_scale, read_header, safe_join
from trapkit.machine import DECODE_CHOICES, nvidia_gpu_present
from trapkit.prepare import Attempt, Preprocessing, prepare_entry

log = logging.getLogger(__name__)

DECODERS = ("nvimgcodec", "torchvision")  # device JPEG decoders, first found wins
INSTALL_HINT = "pip install 'trapkit[gpu]'"
_PRECISION = float(1 << 22)  # Pillow's fixed-point weights for 8-bit images (PRECISION_BITS = 32 - 8 - 2)
_EDGE = 1e-6  # as trapkit.crops.crop_square: a square this close to the edge is inside


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}  # Pillow's filters and their support


# -- choosing the path --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeChoice:
    """Where images are decoded: `decoder` (one of DECODERS) on the GPU, or None for the CPU path; `reason`
    says why in one line, and `gpu_here` whether a GPU was seen (so the CPU path is worth a warning)."""

    decoder: str | None
    reason: str
    gpu_here: bool = False


def choose_decoder(want: str = "auto") -> DecodeChoice:
    """Decode on the GPU when `want` allows it and this machine can: an NVIDIA GPU, PyTorch with CUDA, and a
    device JPEG decoder. Imports nothing heavy when no GPU is present."""
    if want not in DECODE_CHOICES:
        raise TrapkitError(f"--decode {want!r}: use one of {', '.join(DECODE_CHOICES)}")
    if want == "cpu":
        return DecodeChoice(None, "--decode cpu")
    if not nvidia_gpu_present():
        return DecodeChoice(None, "no NVIDIA GPU here")
    try:
        import torch
    except ImportError:
        return DecodeChoice(None, f"PyTorch is not installed ({INSTALL_HINT})", True)
    if not torch.cuda.is_available():
        return DecodeChoice(None, "PyTorch cannot use the GPU (a CPU build of torch, or no CUDA driver)", True)
    found = next((name for name in DECODERS if _decoder_importable(name)), None)  # import only up to the first
    if found is None:
        return DecodeChoice(None, f"no GPU JPEG decoder is installed (nvImageCodec or torchvision; {INSTALL_HINT})",
                            True)
    return DecodeChoice(found, f"JPEGs decoded on the GPU by {found}", True)


def _decoder_importable(name: str) -> bool:
    try:
        if name == "nvimgcodec":
            from nvidia import nvimgcodec  # noqa: F401
        else:
            from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


# -- Pillow's resampling, as tensor operations ----------------------------------------------------------


def coefficients(in_size: int, in0: float, in1: float, out_size: int, interpolation: str) -> tuple[np.ndarray, int]:
    """(out_size, n) float64 weights and the first input index they read, so out[i] = sum_j w[i, j] * in[first + j]:
    Pillow's `precompute_coeffs` for input span [in0, in1) and its 8-bit fixed-point rounding of the weights."""
    filt, support = FILTERS[interpolation]
    # Pillow's C side takes the box as C floats, and subtracts them as floats.
    span = float(np.float32(in1) - np.float32(in0))
    in0 = float(np.float32(in0))
    scale = span / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    center = in0 + (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C casts truncate
    hi = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    first = int(lo.min())
    cols = np.arange(first, max(int(hi.max()), first + 1))
    w = filt((cols[None, :] - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where((cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]), w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # summed in order, as Pillow does (a pairwise sum rounds differently)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    w = np.where(w < 0, np.trunc(w * _PRECISION - 0.5), np.trunc(w * _PRECISION + 0.5))
    return w / _PRECISION, first


def resize(img, size: tuple[int, int], box: tuple[float, float, float, float] | None = None,
           interpolation: str = "bilinear", dtype=None):
    """Pillow's `Image.resize(size, filter, box, reducing_gap=REDUCING_GAP)` on an (H, W, 3) uint8 tensor:
    (size[1], size[0], 3) uint8, on the tensor's device. `dtype`: float64 gives Pillow's result bit for bit,
    float32 (the default on a GPU) within one level."""
    import torch

    dtype = dtype or (torch.float64 if img.device.type == "cpu" else torch.float32)
    h, w = img.shape[:2]
    box = tuple(box) if box is not None else (0, 0, w, h)
    if (w, h) == tuple(size) and box == (0, 0, w, h):
        return img.clone()
    fx = int((box[2] - box[0]) / size[0] / REDUCING_GAP) or 1
    fy = int((box[3] - box[1]) / size[1] / REDUCING_GAP) or 1
    if fx > 1 or fy > 1:
        support = FILTERS[interpolation][1] - 0.5
        sx, sy = support * (box[2] - box[0]) / size[0], support * (box[3] - box[1]) / size[1]
        safe = (max(0, int(box[0] - sx)), max(0, int(box[1] - sy)),
                min(w, math.ceil(box[2] + sx)), min(h, math.ceil(box[3] + sy)))
        img = _reduce(img, fx, fy, safe)
        box = ((box[0] - safe[0]) / fx, (box[1] - safe[1]) / fy, (box[2] - safe[0]) / fx, (box[3] - safe[1]) / fy)
    return _resample(img, box, size, interpolation, dtype)


def _reduce(img, fx: int, fy: int, box: tuple[int, int, int, int]):
    """Pillow's `Image.reduce((fx, fy), box)`: the mean of each fx x fy block of `box` (short blocks at the
    right and bottom edges averaged over what they hold) in Pillow's integer arithmetic, (sum + n / 2) times a
    float-made reciprocal, shifted; (ceil(h / fy), ceil(w / fx), 3) uint8."""
    import torch

    region = img[box[1]:box[3], box[0]:box[2]]
    h, w = region.shape[:2]
    oh, ow = -(-h // fy), -(-w // fx)
    padded = torch.nn.functional.pad(region.to(torch.int32), (0, 0, 0, ow * fx - w, 0, oh * fy - h))
    sums = padded.reshape(oh, fy, ow, fx, 3).sum(dim=(1, 3), dtype=torch.int64)
    rows = torch.clamp(h - torch.arange(oh, device=img.device) * fy, max=fy)
    cols = torch.clamp(w - torch.arange(ow, device=img.device) * fx, max=fx)
    n = (rows[:, None] * cols[None, :])[..., None]  # pixels in each block
    # Pillow's division_UINT32: (float)(1 << 32) / (256 * n) in C floats, truncated.
    multiplier = torch.floor(torch.tensor(4294967296.0, dtype=torch.float32, device=img.device)
                             / (256 * n).to(torch.float32)).to(torch.int64)
    return (((sums + n // 2) * multiplier) >> 24).clamp_(0, 255).to(torch.uint8)


def _resample(img, box, size: tuple[int, int], interpolation: str, dtype):
    """Pillow's separable resampling (horizontal pass, 8-bit in between, then vertical) of `box` to `size`."""
    import torch

    h, w = img.shape[:2]
    kx, x0 = coefficients(w, box[0], box[2], size[0], interpolation)  # (out_w, nx)
    ky, y0 = coefficients(h, box[1], box[3], size[1], interpolation)  # (out_h, ny)
    region = img[y0:y0 + ky.shape[1], x0:x0 + kx.shape[1]].permute(2, 0, 1).to(dtype)  # (3, ny, nx)
    kx = torch.as_tensor(kx[:, :region.shape[2]], dtype=dtype, device=img.device)
    ky = torch.as_tensor(ky[:, :region.shape[1]], dtype=dtype, device=img.device)
    rows = torch.floor(region @ kx.T + 0.5).clamp_(0, 255)  # (3, ny, out_w)
    out = torch.floor(ky @ rows + 0.5).clamp_(0, 255)  # (3, out_h, out_w)
    return out.permute(1, 2, 0).to(torch.uint8).contiguous()


def crop_squares(img, boxes: list, size: int, margin: float, interpolation: str = "bilinear", dtype=None):
    """(k, S, S, 3) uint8 on the tensor's device: `trapkit.crops.crop_square` for each normalised box on an
    upright (H, W, 3) uint8 tensor (the square clamped inside the image, or padded black where it is larger)."""
    import torch

    h, w = img.shape[:2]
    crops = []
    for bbox in boxes:
        left, top, side = square_region(bbox, w, h, margin)
        if left >= 0 and top >= 0 and left + side <= w + _EDGE and top + side <= h + _EDGE:
            box = (left, top, min(left + side, w), min(top + side, h))
            crops.append(resize(img, (size, size), box, interpolation, dtype))
            continue
        l, t, s = int(round(left)), int(round(top)), max(1, int(round(side)))
        canvas = img.new_full((s, s, 3), PAD_VALUE)
        x0, y0, x1, y1 = max(l, 0), max(t, 0), min(l + s, w), min(t + s, h)
        canvas[y0 - t:y1 - t, x0 - l:x1 - l] = img[y0:y1, x0:x1]
        crops.append(resize(canvas, (size, size), None, interpolation, dtype))
    return torch.stack(crops) if crops else img.new_zeros((0, size, size, 3))


def whole_image(img, size: int, resize_mode: str = "squash", interpolation: str = "bilinear", dtype=None):
    """(1, S, S, 3) uint8: `trapkit.images.to_model_input` on an upright (H, W, 3) uint8 tensor."""
    h, w = img.shape[:2]
    if resize_mode == "center_crop":
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        out = resize(img, (rw, rh), None, interpolation, dtype)
        left, top = (rw - size) // 2, (rh - size) // 2
        return out[top:top + size, left:left + size][None].contiguous()
    return resize(img, (size, size), None, interpolation, dtype)[None]


def upright(img, orientation: int):
    """An (H, W, 3) tensor as stored, turned upright by its EXIF orientation (what Pillow's exif_transpose does)."""
    if orientation in (5, 6, 7, 8):
        img = img.transpose(0, 1)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation)
    return img.flip(flips) if flips else img


# -- decoding on the device --------------------------------------------------------------------------------


class _TorchvisionDecoder:
    """torchvision's `decode_jpeg`: nvJPEG, batched, on a CUDA device (libjpeg-turbo on the CPU)."""

    def __init__(self, device):
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device, self.decode_jpeg, self.mode = device, decode_jpeg, ImageReadMode.RGB

    def decode(self, blobs: list[bytes]) -> list:
        import torch

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            images = self.decode_jpeg(data, mode=self.mode, device=self.device)
        except RuntimeError:  # one bad file fails the batch: each alone, so only it goes to the CPU path
            images = [self._one(d) for d in data]
        return [None if im is None else im.permute(1, 2, 0) for im in images]  # (3, H, W) -> (H, W, 3)

    def _one(self, data):
        try:
            return self.decode_jpeg(data, mode=self.mode, device=self.device)
        except RuntimeError as e:
            log.debug("the device decoder refused a JPEG: %s", e)
            return None


class _NvImageCodecDecoder:
    """NVIDIA nvImageCodec: batched decoding on the GPU's hardware JPEG engines where it has them."""

    def __init__(self, device):
        from nvidia import nvimgcodec

        self.device = device
        self.decoder = nvimgcodec.Decoder(device_id=device.index or 0)
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.RGB)

    def decode(self, blobs: list[bytes]) -> list:
        import torch

        images = self.decoder.decode(list(blobs), params=self.params)  # None where one failed
        return [None if im is None else torch.as_tensor(im, device=self.device) for im in images]


_DECODER_CLASSES = {"nvimgcodec": _NvImageCodecDecoder, "torchvision": _TorchvisionDecoder}


@dataclass
class _Read:
    header: Header
    data: bytes


class DevicePreparer:
    """`prepare(rows)`: (root, file, boxes) work rows -> `trapkit.prepare.Attempt`s, as `prepare_entry` gives them,
    except that each `crops` is a (k, S, S, 3) uint8 tensor on `device`. One instance per process (or thread)."""

    def __init__(self, prep: Preprocessing, device: str = "cuda", decoder: str = "torchvision", readers: int = 4,
                 dtype=None):
        import torch

        self.prep, self.device, self.dtype = prep, torch.device(device), dtype
        self.decoder = _DECODER_CLASSES[decoder](self.device)
        self.readers = ThreadPoolExecutor(readers, thread_name_prefix="read")
        self.refused = False  # the device decoder failed a whole batch once: said once

    def prepare(self, rows: list[tuple[str | Path | None, str, list | None]]) -> list[Attempt]:
        read = list(self.readers.map(_read, rows))
        jpegs = [n for n, r in enumerate(read) if isinstance(r, _Read) and r.header.format == "JPEG"
                 and r.header.mode in ("RGB", "L")]
        out: list[Attempt | None] = [r if isinstance(r, Attempt) else None for r in read]
        for n, img in zip(jpegs, self._decode([read[n].data for n in jpegs])):
            header = read[n].header
            if img is None:
                continue
            img = upright(img, header.orientation)
            if (img.shape[1], img.shape[0]) == header.size:  # else not what the header says: the CPU path decides
                out[n] = Attempt(self._cut(img, rows[n][2]), header.time, [])
        for n, row in enumerate(rows):
            if out[n] is None:
                out[n] = self._on_cpu(row)
        if self.device.type == "cuda":  # finished before anyone reads the crops (onnxruntime: on its own stream)
            import torch

            torch.cuda.current_stream(self.device).synchronize()
        return out

    def _decode(self, blobs: list[bytes]) -> list:
        if not blobs:
            return []
        try:
            return self.decoder.decode(blobs)
        except Exception as e:  # noqa: BLE001 - the CPU path still works: say so once, go on
            if not self.refused:
                log.warning("the GPU decoder failed (%s: %s); those images are decoded on the CPU",
                            e.__class__.__name__, e)
                self.refused = True
            return [None] * len(blobs)

    def _cut(self, img, boxes: list | None):
        p = self.prep
        h, w = img.shape[:2]
        # The CPU path decodes at a reduced JPEG DCT scale where every crop keeps its size; the nearest on a full
        # decode is the box average over the same factor: the same geometry after it, and pixels within a level
        # or two of libjpeg's scaled IDCT.
        scale = draft_scale((w, h), (p.input_size,) * 2 if boxes is None
                            else min_decode_size(boxes, w, h, p.input_size, p.margin))
        if scale > 1:
            img = _reduce(img, scale, scale, (0, 0, w, h))
        if boxes is None:
            return whole_image(img, p.input_size, p.resize_mode, p.interpolation, self.dtype)
        return crop_squares(img, boxes, p.input_size, p.margin, p.interpolation, self.dtype)

    def _on_cpu(self, row) -> Attempt:
        import torch

        attempt = prepare_entry(*row, self.prep)
        if attempt.crops is not None:
            attempt.crops = torch.from_numpy(attempt.crops).to(self.device)
        return attempt

    def close(self) -> None:
        self.readers.shutdown(wait=True)


def _read(row) -> _Read | Attempt | None:
    """On the CPU: a work row's header and bytes, or its failure (a missing, refused or too-large image)."""
    root, file, _ = row
    try:
        path = Path(file) if root is None else safe_join(root, file)
        header = read_header(path)
        return _Read(header, path.read_bytes() if header.format == "JPEG" else b"")
    except ImageReadError as e:
        return Attempt(None, failure=e.code, message=str(e))
    except OSError:
        return None  # anything odd: the CPU path records it as it would
