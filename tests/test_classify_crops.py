"""The cropping policy of trapkit.crops, and stage 1 of the pipeline (decode once, crop, draft)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trapkit.images import EXIF_ORIENTATION, open_image
from trapkit.prepare import Preprocessing, prepare_image
from trapkit.crops import crop_square, decode_scale, min_decode_size, region_needed, square_region
from trapkit.spec import ModelSpec



def _prepared(root, entry, dets, spec, margin):
    """Stage 1 of classify for one entry: the core's one preparation path on its boxes."""
    boxes = [entry["detections"][j]["bbox"] for j in dets]
    return prepare_image(root / entry["file"], boxes, Preprocessing.from_spec(spec, margin=margin))

def _spec(size: int) -> ModelSpec:
    return ModelSpec(arch="test", labels=("a", "b"), input_size=size)


def test_square_is_centred_on_the_box_with_margin():
    # 1000 x 500 image, box 100 x 50 px at (400, 200): long side 100, margin 0.1 -> 120 px square.
    left, top, side = square_region([0.4, 0.4, 0.1, 0.1], 1000, 500, margin=0.1)
    assert side == pytest.approx(120.0)
    assert (left + side / 2, top + side / 2) == pytest.approx((450.0, 225.0))


def test_square_is_clamped_inside_the_image_near_an_edge():
    left, top, side = square_region([0.95, 0.0, 0.05, 0.1], 1000, 500, margin=0.2)  # box touches the top-right corner
    assert side == pytest.approx(70.0)
    assert left + side == pytest.approx(1000.0) and top == pytest.approx(0.0)


@pytest.mark.parametrize("stray, inside", [
    ([0.8, 0.5, 1e300, 0.2], [0.8, 0.5, 0.2, 0.2]),  # huge width: what lies in the image
    ([-0.1, -0.2, 0.3, 0.4], [0.0, 0.0, 0.2, 0.2]),  # starts above and left of the image
    ([1.5, 0.5, 0.1, 0.1], [1.0, 0.5, 0.0, 0.1]),  # wholly outside: a 1 px wide sliver at the edge
])
def test_a_box_outside_the_image_is_clipped_to_it_first(stray, inside):
    assert square_region(stray, 1000, 500, 0.1) == pytest.approx(square_region(inside, 1000, 500, 0.1))


def test_square_larger_than_the_image_covers_it_and_pads():
    # A box spanning the full height of a wide image: the square is taller than the image.
    left, top, side = square_region([0.1, 0.0, 0.2, 1.0], 400, 100, margin=0.1)
    assert side == pytest.approx(120.0)
    assert top == pytest.approx(-10.0)  # 10 px of padding above and below, image centred
    img = Image.new("RGB", (400, 100), (200, 200, 200))
    crop = crop_square(img, [0.1, 0.0, 0.2, 1.0], 24, margin=0.1)  # (24, 24, 3)
    assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8
    assert crop[0].max() == 0 and crop[-1].max() == 0  # padded rows are black
    assert crop[12].min() == 200  # the image itself in the middle


def test_crop_content_comes_from_the_box():
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[100:200, 200:300] = (255, 0, 0)  # a red square exactly at the box
    crop = crop_square(Image.fromarray(arr), [0.5, 1 / 3, 0.25, 1 / 3], 32, margin=0.0)
    assert crop[..., 0].mean() > 250 and crop[..., 1].mean() < 5


def test_exif_orientation_is_applied_before_boxes(tmp_path):
    # Upright 300 x 200 photo with a red block in the upper-left; stored rotated, EXIF orientation 6.
    upright = np.full((200, 300, 3), 40, np.uint8)
    upright[20:80, 30:90] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.ROTATE_90)  # 200 x 300 on disk
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    img, _ = open_image(path)
    assert img.size == (300, 200)
    entry = {"file": "rotated.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.3]}]}
    item = _prepared(tmp_path, entry, [0], _spec(32), 0.0)
    red = item.crops[0].astype(int)
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60  # the box found the red block upright


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "I;16"])
def test_any_mode_becomes_rgb_crops(tmp_path, mode):
    arr = (np.arange(120 * 160) % 251).reshape(120, 160).astype(np.uint8)
    img = Image.fromarray(arr, "L").convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 200)
    name = f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    img.save(tmp_path / name)
    entry = {"file": name, "detections": [{"category": "1", "conf": 0.9, "bbox": [0.2, 0.2, 0.5, 0.5]}]}
    item = _prepared(tmp_path, entry, [0], _spec(32), 0.1)
    assert item.crops.shape == (1, 32, 32, 3) and item.crops.dtype == np.uint8


def test_decode_scale_keeps_every_crop_at_input_size():
    # 4000 x 3000 image; the smallest box is 800 px wide -> square 960 px; 224 px input -> scale 224/960.
    boxes = [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]]
    assert decode_scale(boxes, 4000, 3000, 224, margin=0.1) == pytest.approx(224 / 960)
    w, h = min_decode_size(boxes, 4000, 3000, 224, margin=0.1)
    assert (w, h) == (934, 700)
    assert decode_scale([[0.1, 0.1, 0.01, 0.01]], 4000, 3000, 224, margin=0.1) == 1.0  # tiny box: full decode


def test_reduced_decode_matches_full_decode(tmp_path):
    # A smooth 2048 x 1536 JPEG with one big box: draft decodes at 1/4 and the crop barely changes.
    yy, xx = np.mgrid[0:1536, 0:2048]
    arr = np.stack([(xx // 8) % 256, (yy // 6) % 256, ((xx + yy) // 14) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=92)
    bbox = [0.3, 0.3, 0.5, 0.5]
    entry = {"file": "big.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": bbox}]}
    reduced = _prepared(tmp_path, entry, [0], _spec(224), 0.1).crops[0]
    w, h = min_decode_size([bbox], 2048, 1536, 224, 0.1)
    assert open_image(tmp_path / "big.jpg", min_size=(w, h))[0].width == 512  # 1/4 scale
    full, _ = open_image(tmp_path / "big.jpg")
    reference = crop_square(full, bbox, 224, 0.1)
    diff = np.abs(reduced.astype(int) - reference.astype(int))
    assert diff.mean() < 3.0, diff.mean()


def assert_same_crop(crop: np.ndarray, reference: np.ndarray) -> None:
    """The same pixels resampled; a window's box is shifted by its offset, which can
    move a resampling weight's last bit and so a value by one grey level, rarely."""
    diff = np.abs(crop.astype(int) - reference.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


def _noisy_jpeg(path, size=(2048, 1536), **save_options):
    """A JPEG full of detail (noise over gradients), so a decode that skipped or damaged rows shows."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(0, 60, (size[1], size[0], 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90, **save_options)
    return path


# Two small boxes in the top half of a 2048 x 1536 photo: full-scale decode, nothing needed below ~row 560.
TOP_BOXES = [[0.1, 0.1, 0.05, 0.08], [0.6, 0.2, 0.06, 0.1]]


def _bottom_row(bboxes) -> int:
    return int(np.ceil(region_needed(bboxes, 2048, 1536, 224, margin=0.1)[3]))


def test_region_needed_covers_the_squares_and_the_filter_around_them():
    squares = [square_region(b, 2048, 1536, 0.1) for b in TOP_BOXES]
    left, top, right, bottom = region_needed(TOP_BOXES, 2048, 1536, 224, margin=0.1)
    assert min(x for x, _, _ in squares) - 20 < left < min(x for x, _, _ in squares)
    assert min(y for _, y, _ in squares) - 20 < top < min(y for _, y, _ in squares)
    assert max(x + s for x, _, s in squares) < right < max(x + s for x, _, s in squares) + 20
    assert max(y + s for _, y, s in squares) < bottom < max(y + s for _, y, s in squares) + 20
    # A box at the bottom-right corner: clamped to the image.
    assert region_needed([[0.8, 0.8, 0.2, 0.2]], 2048, 1536, 224, margin=0.1)[2:] == (2048, 1536)


@pytest.mark.parametrize("progressive", [False, True])
def test_decoding_stops_below_the_lowest_crop_and_crops_are_unchanged(tmp_path, progressive):
    path = _noisy_jpeg(tmp_path / "top.jpg", progressive=progressive)
    full, _ = open_image(path)
    rows = _bottom_row(TOP_BOXES)
    partial, notes = open_image(path, rows=rows)
    assert partial.size == full.size and not notes
    assert np.array_equal(np.asarray(partial)[:rows], np.asarray(full)[:rows])
    assert np.asarray(partial)[-200:].max() == 0  # the bottom was never decoded
    entry = {"file": "top.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": b} for b in TOP_BOXES]}
    crops = _prepared(tmp_path, entry, [0, 1], _spec(224), 0.1).crops
    for crop, bbox in zip(crops, TOP_BOXES):
        assert_same_crop(crop, crop_square(full, bbox, 224, 0.1))


def test_reduced_scale_decode_also_stops_below_the_lowest_crop(tmp_path):
    # One big box near the top: decoded at 1/2 scale, and only down to the crop's bottom.
    _noisy_jpeg(tmp_path / "big.jpg")
    bbox = [0.3, 0.02, 0.35, 0.3]
    entry = {"file": "big.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": bbox}]}
    w, h = min_decode_size([bbox], 2048, 1536, 224, 0.1)
    reduced, _ = open_image(tmp_path / "big.jpg", min_size=(w, h))
    both, _ = open_image(tmp_path / "big.jpg", min_size=(w, h), rows=_bottom_row([bbox]))
    assert both.width == reduced.width < 2048 and np.asarray(both)[-100:].max() == 0
    crop = _prepared(tmp_path, entry, [0], _spec(224), 0.1).crops[0]
    assert_same_crop(crop, crop_square(reduced, bbox, 224, 0.1))


def test_rotated_photos_are_decoded_whole(tmp_path):
    # EXIF "rotate 180": the upright top is the stored bottom, so stopping early would lose it.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 3
    path = _noisy_jpeg(tmp_path / "rot.jpg", exif=exif)
    full, _ = open_image(path)
    partial, _ = open_image(path, rows=_bottom_row(TOP_BOXES))
    assert np.array_equal(np.asarray(partial), np.asarray(full))


def test_truncation_below_the_crops_is_harmless_and_above_them_is_flagged(tmp_path):
    data = _noisy_jpeg(tmp_path / "whole.jpg").read_bytes()
    full, _ = open_image(tmp_path / "whole.jpg")
    rows = _bottom_row(TOP_BOXES)
    (tmp_path / "cut_low.jpg").write_bytes(data[: int(len(data) * 0.8)])  # loses the bottom fifth only
    img, notes = open_image(tmp_path / "cut_low.jpg", rows=rows)
    assert not notes and np.array_equal(np.asarray(img)[:rows], np.asarray(full)[:rows])
    (tmp_path / "cut_high.jpg").write_bytes(data[: len(data) // 10])  # ends above the crops
    img, notes = open_image(tmp_path / "cut_high.jpg", rows=rows)
    assert notes and "truncated" in notes[0]


def test_truncated_files_are_flagged_while_other_threads_decode(tmp_path, samples_dir):
    # A partial-decode retry flips a Pillow-wide switch; truncated files decoded at
    # the same moment in other threads must still be noticed.
    from concurrent.futures import ThreadPoolExecutor

    data = (samples_dir / "ocelot.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(data[:2000])  # truncated in the header: retried, then fails
    names = ["truncated.jpg", "corrupt.jpg"] * 12
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: open_image_or_error(tmp_path / n), names))
    for name, result in zip(names, results):
        if name == "truncated.jpg":
            assert result and "truncated" in result[0], result


def open_image_or_error(path):
    from trapkit.images import ImageReadError

    try:
        return open_image(path)[1]
    except ImageReadError:
        return None
