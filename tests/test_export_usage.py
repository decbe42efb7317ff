"""The examples of the model card and the Triton README use the model as it was trained: run as written, they
cut the crops trapkit cuts and give trapkit's answers."""

from __future__ import annotations

import json
import re
import runpy
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from trapkit.export.hub_folder import HubSettings, write_hub_folder
from trapkit.export.usage import CROP_FUNCTION, constants
from trapkit.spec import ModelSpec

BOXES = [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0], [0.9, 0.85, 0.2, 0.3], [-0.1, 0.4, 0.3, 0.2],
         [0.5, 0.5, 0.001, 0.002], [0.3, 0.1, 0.05, 0.8]]


@pytest.mark.parametrize("margin, interpolation", [(0.1, "bilinear"), (0.0, "bicubic"), (0.5, "bilinear")])
def test_the_cards_crop_function_is_trapkits_crop(samples_dir, margin, interpolation):
    """The dozen lines of Pillow in the examples cut, pixel for pixel, what trapkit.crops cuts from the same
    decoded photo, for ordinary boxes and for boxes past the frame, huge or tiny."""
    from trapkit.crops import crop_square

    spec = ModelSpec(arch="x", labels=("a", "b"), input_size=64, crop_margin=margin, interpolation=interpolation)
    scope = {"Image": Image}
    exec(constants(spec) + "\n" + CROP_FUNCTION, scope)
    doc = json.loads((samples_dir / "md_v5a_detections.json").read_text())
    boxes = [(im["file"], d["bbox"]) for im in doc["images"] for d in im["detections"] if d["conf"] >= 0.1]
    boxes += [("ocelot.jpg", b) for b in BOXES]
    for file, box in boxes:
        img = ImageOps.exif_transpose(Image.open(samples_dir / file)).convert("RGB")
        mine = np.asarray(scope["crop"](img, box), np.uint8)
        assert np.array_equal(mine, crop_square(img, box, 64, margin, interpolation)), (file, box)


def test_the_cards_onnxruntime_example_gives_trapkits_answers(tmp_path, tiny_model_dir, samples_dir, monkeypatch,
                                                              capsys):
    """Run as written (photos/ and md.json beside model.onnx), the card's script prints, for every detection
    `trapkit classify` classifies, the same top-1 class; the confidences differ only by trapkit's reduced-scale
    JPEG decoding."""
    from trapkit.app.cli import main
    from trapkit.export.pipeline import export_model

    export_model(tiny_model_dir, tmp_path / "export", hub=HubSettings(tmp_path / "hub"))
    folder = tmp_path / "hub"
    card = (folder / "README.md").read_text()
    assert "never the whole photo" in card and "img.resize((32, 32)" not in card
    snippet = re.search(r"## Use with onnxruntime alone.*?```python\n(.*?)```", card, re.S).group(1)
    shutil.copytree(samples_dir, folder / "photos")
    shutil.copy(samples_dir / "md_v5a_detections.json", folder / "md.json")
    (folder / "snippet.py").write_text(snippet)
    monkeypatch.chdir(folder)
    runpy.run_path("snippet.py")
    printed = [line.split(" ") for line in capsys.readouterr().out.splitlines()]
    theirs = {(file, int(j)): (label, float(conf)) for file, j, label, conf in printed}

    assert main(["classify", str(folder / "photos"), "--model", str(tmp_path / "export"), "--detections",
                 str(folder / "md.json"), "--out", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    names = out["classification_categories"]
    ours = {(im["file"], j): (names[d["classifications"][0][0]], d["classifications"][0][1])
            for im in out["images"] for j, d in enumerate(im["detections"] or ()) if d.get("classifications")}
    assert set(theirs) == set(ours) and len(ours) >= 7
    for key, (label, conf) in ours.items():
        assert theirs[key][1] == pytest.approx(conf, abs=0.02), key
        assert theirs[key][0] == label or abs(theirs[key][1] - conf) < 0.02, key


def test_a_whole_image_model_gets_the_whole_image_example(tmp_path, tiny_onnx_path, samples_dir, monkeypatch,
                                                          capsys):
    from trapkit.export.onnx_export import ort_session, run_session
    from trapkit.graph import read_spec
    from trapkit.prepare import Preprocessing, prepare_image

    spec = read_spec(tiny_onnx_path)
    folder = write_hub_folder(tiny_onnx_path, spec, HubSettings(tmp_path / "hub"), on_detections=False)
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    shutil.copy(samples_dir / "ocelot.jpg", folder / "photo.jpg")
    (folder / "snippet.py").write_text(snippet)
    monkeypatch.chdir(folder)
    runpy.run_path("snippet.py")
    label, confidence = capsys.readouterr().out.rsplit(" ", 1)
    inputs = prepare_image(folder / "photo.jpg", None, Preprocessing.from_spec(spec)).crops  # (1, 32, 32, 3)
    probs, _ = run_session(ort_session(tiny_onnx_path), inputs)
    assert label == spec.labels[int(probs[0].argmax())]
    assert float(confidence) == pytest.approx(float(probs[0].max()), abs=1e-2)  # full decode vs draft decode
