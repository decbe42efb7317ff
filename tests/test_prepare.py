"""The one image-preparation path (trapkit.prepare): what every stage feeds the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trapkit.crops import crop_square
from trapkit.errors import TrapkitError
from trapkit.images import open_image, to_model_input
from trapkit.prepare import Preprocessing, crops_from_image, prepare_image
from trapkit.spec import ModelSpec

SPEC = ModelSpec(arch="test", labels=("a", "b"), input_size=64, crop_margin=0.2, detection_threshold=0.3,
                 detection_categories=("animal", "person"))


def test_the_spec_gives_the_defaults_and_flags_override_them():
    prep = Preprocessing.from_spec(SPEC)
    assert (prep.input_size, prep.margin, prep.threshold, prep.categories) == (64, 0.2, 0.3, ("animal", "person"))
    flags = Preprocessing.from_spec(SPEC, margin=0.0, threshold=None, categories=("animal",))
    assert (flags.margin, flags.threshold, flags.categories) == (0.0, 0.3, ("animal",))  # None: not given
    with pytest.raises(TrapkitError, match="crop margin"):
        Preprocessing.from_spec(SPEC, margin=5.0)
    with pytest.raises(TrapkitError, match="interpolation"):
        Preprocessing(64, interpolation="lanczos")


def test_whole_images_and_crops_equal_what_decoding_everything_gives(samples_dir):
    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    (entry,) = [im for im in doc["images"] if im["file"] == "african_elephants.jpg"]
    boxes = [d["bbox"] for d in entry["detections"] if d["conf"] >= 0.3]
    prep = Preprocessing.from_spec(SPEC)
    full, _ = open_image(samples_dir / entry["file"])

    whole = prepare_image(samples_dir / entry["file"], None, prep)
    reference, _ = open_image(samples_dir / entry["file"], min_size=(64, 64))
    assert np.array_equal(whole.crops[0], to_model_input(reference, 64))

    region = prepare_image(samples_dir / entry["file"], boxes, prep)  # region and reduced-scale decode
    assert region.crops.shape == (len(boxes), 64, 64, 3) and region.crops.dtype == np.uint8
    assert region.time is not None  # the EXIF capture time, from the one header read
    decoded = crops_from_image(full, boxes, prep)  # pixels already decoded: a video frame, an upload
    for got, want, box in zip(region.crops, decoded, boxes):
        # Reduced-scale decoding may move a pixel by a grey level or two; never more on these photos.
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 2.0
        assert np.array_equal(want, crop_square(full, box, 64, 0.2))


def test_the_specs_interpolation_changes_the_pixels(samples_dir):
    path = samples_dir / "ocelot.jpg"
    bilinear = prepare_image(path, [[0.3, 0.3, 0.3, 0.3]], Preprocessing(64)).crops
    bicubic = prepare_image(path, [[0.3, 0.3, 0.3, 0.3]], Preprocessing(64, interpolation="bicubic")).crops
    assert not np.array_equal(bilinear, bicubic)
    full, _ = open_image(path)
    assert np.array_equal(crops_from_image(full, [[0.3, 0.3, 0.3, 0.3]], Preprocessing(64, interpolation="bicubic")),
                          crop_square(full, [0.3, 0.3, 0.3, 0.3], 64, 0.1, "bicubic")[None])


def test_no_boxes_gives_no_crops_and_a_bad_file_raises_with_a_code(tmp_path, samples_dir):
    from trapkit.images import FAILURE_UNREADABLE, ImageReadError

    assert prepare_image(samples_dir / "blank.jpg", [], Preprocessing(32)).crops.shape == (0, 32, 32, 3)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 nothing")
    with pytest.raises(ImageReadError) as e:
        prepare_image(tmp_path / "bad.jpg", None, Preprocessing(32))
    assert e.value.code == FAILURE_UNREADABLE


def test_spec_caps_refuse_sizes_no_model_has():
    with pytest.raises(TrapkitError, match="input_size 100000 is out of range"):
        SPEC.replace(input_size=100_000)
    with pytest.raises(TrapkitError, match="feat_dim -3 or head_hidden"):
        SPEC.replace(feat_dim=-3)
    old = SPEC.to_dict() | {"format_version": 1}
    for field in ("interpolation", "crop_margin", "detection_threshold", "detection_categories"):
        old.pop(field)
    upgraded = ModelSpec.from_dict(old)  # a format 1 spec reads as format 2 with the defaults
    assert upgraded.format_version == 2 and upgraded.crop_margin == 0.1 and upgraded.interpolation == "bilinear"
