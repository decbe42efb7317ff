"""Region decoding (trapkit.images.open_window over trapkit._jpeg_region): the pixels
of a full decode, for only the rectangle the crops read."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from trapkit import images
from trapkit.images import EXIF_ORIENTATION, ImageReadError, Window, open_image, open_window
from trapkit.prepare import Preprocessing, prepare_image
from trapkit.crops import crop_square, min_decode_size, region_needed
from trapkit.spec import ModelSpec

from test_classify_crops import TOP_BOXES, _noisy_jpeg, assert_same_crop

REACH = images._UPSAMPLING_REACH



def _prepared(root, entry, dets, spec, margin):
    """Stage 1 of classify for one entry: the core's one preparation path on its boxes."""
    boxes = [entry["detections"][j]["bbox"] for j in dets]
    return prepare_image(root / entry["file"], boxes, Preprocessing.from_spec(spec, margin=margin))

def test_trapkit_is_built_with_region_decoding():
    assert images._jpeg_region is not None, (
        "trapkit._jpeg_region was not compiled: install libjpeg's headers (apt-get install libjpeg-dev), then run `make clean test`"
    )


def _inner(window: Window, full: np.ndarray, region) -> tuple[np.ndarray, np.ndarray]:
    """The window's and the full decode's pixels over `region` (in the window's scaled pixels)."""
    l, t, r, b = region
    got = np.asarray(window.image)[t - window.top:b - window.top, l - window.left:r - window.left]
    return got, full[t:b, l:r]


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_window_holds_the_full_decode_pixels(tmp_path, scale, progressive):
    path = _noisy_jpeg(tmp_path / "photo.jpg", progressive=progressive)
    min_size = (2048 // scale, 1536 // scale)
    full = np.asarray(open_image(path, min_size=min_size)[0])
    region = (700.3, 500.9, 1300.2, 1100.4)  # full-size pixels
    window, notes = open_window(path, min_size=min_size, region=region)
    assert not notes
    assert (window.width, window.height) == (full.shape[1], full.shape[0]) == (2048 // scale, 1536 // scale)
    # Only the rectangle (widened to a block boundary on the left) was decoded.
    assert window.image.width < window.width / 2 and window.image.height < window.height / 2
    scaled = tuple(int(v // scale) for v in region)
    got, want = _inner(window, full, scaled)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_scale_is_the_one_pillow_draft_picks(tmp_path):
    path = _noisy_jpeg(tmp_path / "photo.jpg")
    for min_size in [(2048, 1536), (1000, 1000), (1024, 700), (300, 400), (255, 191), (100, 10), (1, 1)]:
        window, _ = open_window(path, min_size=min_size, region=(0, 0, 50, 50))
        assert window.width == open_image(path, min_size=min_size)[0].width, min_size


def test_grayscale_jpeg_window_is_rgb_with_the_same_pixels(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (600, 800), dtype=np.uint8), "L").save(tmp_path / "ir.jpg", quality=90)
    full = np.asarray(open_image(tmp_path / "ir.jpg")[0])
    window, _ = open_window(tmp_path / "ir.jpg", region=(200, 100, 500, 400))
    assert window.image.mode == "RGB" and window.image.width < 800
    got, want = _inner(window, full, (200, 100, 500, 400))
    assert np.array_equal(got, want)


def test_crops_of_the_bundled_photos_match_a_full_decode(samples_dir):
    # Real camera-trap photos, real MegaDetector boxes, through the classify pipeline's stage 1.
    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    spec = ModelSpec(arch="test", labels=("a", "b"), input_size=224)
    checked = 0
    for entry in doc["images"]:
        dets = [j for j, d in enumerate(entry["detections"] or []) if d["conf"] >= 0.1]
        if not dets:
            continue
        item = _prepared(samples_dir, entry, dets, spec, 0.1)
        assert not item.warnings
        bboxes = [entry["detections"][j]["bbox"] for j in dets]
        with Image.open(samples_dir / entry["file"]) as header:
            w, h = header.size
        full, _ = open_image(samples_dir / entry["file"], min_size=min_decode_size(bboxes, w, h, 224, 0.1))
        for crop, bbox in zip(item.crops, bboxes):
            assert_same_crop(crop, crop_square(full, bbox, 224, 0.1))
            checked += 1
    assert checked >= 10


def test_truncation_inside_the_window_is_flagged_and_below_it_is_harmless(tmp_path):
    data = _noisy_jpeg(tmp_path / "whole.jpg").read_bytes()
    full = np.asarray(open_image(tmp_path / "whole.jpg")[0])
    region = region_needed(TOP_BOXES, 2048, 1536, 224, margin=0.1)
    (tmp_path / "cut_low.jpg").write_bytes(data[: int(len(data) * 0.8)])  # loses the bottom fifth only
    window, notes = open_window(tmp_path / "cut_low.jpg", region=region)
    assert not notes
    box = tuple(int(v) for v in region)
    got, want = _inner(window, full, (box[0] + REACH, box[1], box[2], box[3]))
    assert np.array_equal(got, want)
    (tmp_path / "cut_high.jpg").write_bytes(data[: len(data) // 10])  # ends above the crops
    window, notes = open_window(tmp_path / "cut_high.jpg", region=region)
    assert notes and "truncated" in notes[0]


def test_a_jpeg_libjpeg_cannot_decode_raises_its_message(tmp_path):
    data = _noisy_jpeg(tmp_path / "photo.jpg").read_bytes()
    header_only = data[: data.index(b"\xff\xda")]  # every table, no scan
    with pytest.raises(ValueError, match="missing SOS marker"):
        images._jpeg_region.decode(header_only, 1, 0, 0, 10, 10)
    (tmp_path / "no_scan.jpg").write_bytes(header_only)
    with pytest.raises(ImageReadError, match="no_scan.jpg"):
        open_window(tmp_path / "no_scan.jpg", region=(0, 0, 100, 100))


@pytest.mark.parametrize("args", [(3, 0, 0, 10, 10), (1, 10, 0, 10, 10), (1, -1, 0, 10, 10), (1, 0, 5000, 10, 6000)])
def test_bad_scale_or_rectangle_is_refused(tmp_path, args):
    data = _noisy_jpeg(tmp_path / "photo.jpg", size=(256, 192)).read_bytes()
    with pytest.raises(ValueError):
        images._jpeg_region.decode(data, *args)


def test_rotated_cmyk_and_png_images_are_decoded_whole(tmp_path):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    _noisy_jpeg(tmp_path / "rotated.jpg", size=(400, 300), exif=exif)
    Image.new("CMYK", (400, 300), (10, 200, 30, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("RGB", (400, 300), (10, 200, 30)).save(tmp_path / "flat.png")
    for name in ["rotated.jpg", "cmyk.jpg", "flat.png"]:
        window, _ = open_window(tmp_path / name, region=(10, 10, 50, 50))
        full, _ = open_image(tmp_path / name)
        assert (window.left, window.top) == (0, 0) and window.image.size == full.size == (window.width, window.height)
        assert np.array_equal(np.asarray(window.image)[:50, :50], np.asarray(full)[:50, :50])


def test_windows_decode_in_parallel_threads_alike(tmp_path):
    paths = [_noisy_jpeg(tmp_path / f"p{k}.jpg", size=(1024, 768)) for k in range(3)]
    region = (100, 200, 700, 600)
    alone = [np.asarray(open_window(p, region=region)[0].image) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: np.asarray(open_window(p, region=region)[0].image), paths * 4))
    for k, arr in enumerate(together):
        assert np.array_equal(arr, alone[k % 3])
