"""The compiled crop resampler (trapkit._resample): Pillow's bilinear resize, bit for bit,
on packed RGB, with and without its AVX2 passes; and crop_square's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trapkit.images import Window
from trapkit.samples import SAMPLES_DIR
from trapkit import crops
from trapkit.crops import crop_square


def test_trapkit_is_built_with_the_resampler():
    assert crops._resample is not None, (
        "trapkit._resample was not compiled: install a C compiler (apt-get install gcc libc6-dev), then run `make clean test`"
    )


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real camera-trap photo, shrunk, with an odd width so rows are not aligned to anything."""
    path = sorted(SAMPLES_DIR.glob("*.jpg"))[0]
    with Image.open(path) as img:
        return img.convert("RGB").resize((1021, 767), Image.BILINEAR)


BOXES = [
    (0.0, 0.0, 1021.0, 767.0),  # the whole image
    (0.0, 0.0, 224.0, 224.0),  # already the output size: Pillow skips both passes
    (10.5, 20.25, 458.7, 468.95),  # about 2x down
    (700.1, 400.3, 1021.0, 767.0),  # up to the right and bottom edges
    (500.0, 300.0, 600.0, 400.0),  # upscaling
    (3.3, 5.7, 1000.2, 760.1),  # 4.5x down: wide filters
    (250.0, 100.0, 1000.0, 300.0),  # not square
]


@pytest.mark.parametrize("simd", [True, False], ids=["avx2-if-present", "scalar"])
@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("size", [224, 97])
def test_resize_is_pillows_bilinear_exactly(photo, box, size, simd):
    want = np.asarray(photo.resize((size, size), Image.BILINEAR, box=box))
    raw = crops._resample.resize(photo.tobytes(), photo.width, photo.height, *box, size, simd)
    got = np.frombuffer(raw, np.uint8).reshape(size, size, 3)
    assert np.array_equal(got, want)


def test_random_boxes_match_pillow_exactly(photo):
    rng = np.random.default_rng(0)
    raw = photo.tobytes()
    for _ in range(40):
        side = rng.uniform(20, 760)
        left, top = rng.uniform(0, photo.width - side), rng.uniform(0, photo.height - side)
        box = (left, top, left + side, top + side)
        want = np.asarray(photo.resize((224, 224), Image.BILINEAR, box=box))
        got = np.frombuffer(crops._resample.resize(raw, photo.width, photo.height, *box, 224), np.uint8)
        assert np.array_equal(got.reshape(224, 224, 3), want), box


@pytest.mark.parametrize("args", [
    (100, 100, -1.0, 0.0, 50.0, 50.0, 32),  # box starts outside
    (100, 100, 0.0, 0.0, 100.5, 50.0, 32),  # box ends outside
    (100, 100, 50.0, 0.0, 50.0, 50.0, 32),  # empty box
    (100, 100, 0.0, 0.0, 50.0, 50.0, 0),  # no output
    (200, 100, 0.0, 0.0, 50.0, 50.0, 32),  # more pixels claimed than the buffer holds
])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError, match="inside a width x height RGB image"):
        crops._resample.resize(bytes(100 * 100 * 3), *args)


def test_crop_square_resamples_the_decoders_buffer_as_pillow_would(photo):
    """A window holding packed RGB (as the region decoder returns it) gives the crops that a
    Pillow image of the same pixels gives, without making that image; a box Pillow would
    first shrink (`reducing_gap`) goes through Pillow, with the same result."""
    def window(**pixels):
        return Window(100, 50, 2000, 1500, **pixels)  # photo's pixels sit at (100, 50) of a 2000 x 1500 image

    packed, pillow = window(rgb=photo.tobytes(), rgb_size=photo.size), window(_image=photo)
    bbox = [0.3, 0.2, 0.1, 0.12]  # a 198 px square inside the window
    for size in (224, 64, 8):
        assert np.array_equal(crop_square(packed, bbox, size, 0.1), crop_square(pillow, bbox, size, 0.1))
        if size == 224:
            assert packed._image is None  # resampled in place: no Pillow copy
    assert packed._image is not None  # at 8 px Pillow shrinks a 198 px box first: Pillow did it
    assert crops._can_resample_in_place(packed, (500, 250, 698, 448), 64)
    assert not crops._can_resample_in_place(packed, (500, 250, 698, 448), 8)
    assert not crops._can_resample_in_place(packed, (900, 250, 1098, 448), 224)  # past the decoded pixels
    assert not crops._can_resample_in_place(pillow, (500, 250, 698, 448), 224)  # no packed RGB
