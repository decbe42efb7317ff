"""`trapkit quickstart` end to end: real offline Lite0 -> ONNX export -> Triton repository -> classify."""

import json

import pytest

from trapkit.app.cli import main


@pytest.mark.slow
def test_quickstart_classifies_the_bundled_photos(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart"]) == 0
    out = capsys.readouterr().out
    assert "ocelot.jpg" in out and "jaguar" in out  # the table names the cat

    result = json.loads((tmp_path / "quickstart-output" / "classifications.json").read_text())
    assert result["info"]["format_version"] == "1.6"
    labels = result["classification_categories"]
    ocelot = next(im for im in result["images"] if im["file"] == "ocelot.jpg")
    top = labels[ocelot["detections"][0]["classifications"][0][0]]
    assert any(cat in top for cat in ("jaguar", "leopard", "cheetah", "ocelot")), top

    model_dir = tmp_path / "model_repository" / "imagenet-efficientnet-lite0"
    assert (model_dir / "config.pbtxt").is_file() and (model_dir / "labels.txt").read_text().count("\n") == 1000
    onnx = tmp_path / "quickstart-output" / "export" / "model.onnx"
    assert [p.name for p in model_dir.iterdir() if p.is_dir()] == ["1"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx.read_bytes()
    assert main(["quickstart"]) == 0  # a rerun exports the same graph: no new version
    assert [p.name for p in model_dir.iterdir() if p.is_dir()] == ["1"]
