"""Calibration images: whole photos plus MegaDetector crops; unreadable files skipped, not fatal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from trapkit.errors import TrapkitError
from trapkit.export.calibration import calibration_images
from trapkit.spec import ModelSpec

SPEC = ModelSpec(arch="test_efficientnet", labels=("a", "b"), input_size=32)


def test_bundled_photos_and_crops():
    images = calibration_images(SPEC)
    # 10 photos + the 13 animal boxes with conf >= 0.1 (the spec's crop policy: people and vehicles are not crops)
    assert images.shape == (23, 32, 32, 3) and images.dtype == np.uint8
    assert calibration_images(SPEC, whole_images=False).shape == (13, 32, 32, 3)
    wider = SPEC.replace(detection_categories=("animal", "person", "vehicle"))
    assert calibration_images(wider, whole_images=False).shape == (15, 32, 32, 3)


def test_own_folder_with_detections_and_bad_files(tmp_path, samples_dir):
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(samples_dir / "ocelot.jpg", folder / "sub" / "ocelot.jpg")
    shutil.copy(samples_dir / "blank.jpg", folder / "blank.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.json").write_text(json.dumps({"hello": "world"}))  # not MegaDetector output: ignored
    md = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    md["images"] = [dict(im, file="sub/ocelot.jpg") for im in md["images"] if im["file"] == "ocelot.jpg"]
    (folder / "md.json").write_text(json.dumps(md))
    images = calibration_images(SPEC, folder)
    assert images.shape == (3, 32, 32, 3)  # blank, ocelot whole, ocelot crop; broken.jpg skipped


def test_folder_without_readable_images(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"")
    with pytest.raises(TrapkitError, match="no readable images"):
        calibration_images(SPEC, tmp_path)
