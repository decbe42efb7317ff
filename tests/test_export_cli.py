"""`trapkit export` in-process: the whole path from a run folder, precision variants, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest

from cli_helpers import one_line_error

from trapkit.app.cli import main
from trapkit.export.onnx_export import ort_session, run_session
from trapkit.graph import read_metadata, read_spec
from trapkit.spec import ModelSpec


@pytest.fixture
def run_dir(tiny_model_dir, tmp_path):
    """A run folder as training leaves it: RUN/model with spec, weights and validation metrics."""
    model = shutil.copytree(tiny_model_dir, tmp_path / "run" / "model")
    (model / "metrics.json").write_text(json.dumps(
        {"round": 2, "accuracy": 0.9, "macro_precision": 0.8, "macro_recall": 0.85,
         "per_class_recall": {"bear": 0.5}, "validation_images": 10}))
    return tmp_path / "run"


def test_run_to_onnx_triton_and_hub(run_dir, tmp_path, capsys):
    out, repo, hub = tmp_path / "out", tmp_path / "repo", tmp_path / "hub"
    assert main(["export", str(run_dir), "--out", str(out), "--triton", str(repo), "--name", "species",
                 "--triton-backend", "python", "--hub-folder", str(hub), "--license", "cc-by-4.0"]) == 0
    printed = capsys.readouterr().out
    assert "max |probs diff|" in printed and str(repo / "species" / "1") in printed
    assert read_spec(out / "model.onnx") == ModelSpec.load(run_dir / "model")
    report = json.loads((out / "export_report.json").read_text())
    assert report["precision"] == "fp32" and report["parity"]["max_prob_diff"] <= 1e-4
    assert (repo / "species" / "1" / "model.py").is_file()
    assert "value: 0.9" in (hub / "README.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx"]  # no temp files left


@pytest.mark.parametrize("flags, precision", [(["--precision", "fp16"], "fp16"),
                                              (["--quantize", "int8", "--min-agreement", "0"], "int8")])
def test_variants_keep_the_interface(tiny_model_dir, tmp_path, samples_dir, flags, precision):
    out = tmp_path / precision
    assert main(["export", str(tiny_model_dir), "--out", str(out), *flags]) == 0
    path = out / f"model.{precision}.onnx"  # beside the fp32 model.onnx
    onnx.checker.check_model(str(path), full_check=True)
    assert read_metadata(path)["trapkit.precision"] == precision
    assert read_metadata(out / "model.onnx")["trapkit.precision"] == "fp32"
    report = json.loads((out / "export_report.json").read_text())
    # 30% of the 10 bundled photos + 13 MegaDetector animal crops, held out from calibration
    assert report["agreement"]["images"] == 7 and "held-out" in report["agreement"]["measured_on"]
    from trapkit.export.onnx_export import bundled_parity_images

    images = bundled_parity_images(ModelSpec.load(tiny_model_dir))
    probs, emb = run_session(ort_session(path), images)
    assert probs.dtype == np.float32 and emb.dtype == np.float32 and probs.shape == (10, 5)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-2)


@pytest.mark.parametrize("make_args, message", [
    (lambda t, m: [str(t / "missing")], "does not exist"),
    (lambda t, m: [str(t)], "has no spec.json"),
    (lambda t, m: [str(m), "--precision", "fp16", "--quantize", "int8"], "exclude each other"),
    (lambda t, m: [str(m), "--name", "x"], "--name only applies with --triton REPO"),
    (lambda t, m: [str(m), "--triton", str(t / "r"), "--tensorrt"], "add --triton-gpu"),
    (lambda t, m: [str(m), "--quantize", "int8", "--min-agreement", "1.5"], "not a fraction"),
    (lambda t, m: [str(m), "--quantize", "int8", "--calibration", str(t / "nope")], "calibration folder"),
    (lambda t, m: [str(m), "--calibration", str(t)], "--calibration only applies with --quantize int8 or --precision"),
    (lambda t, m: [str(m), "--min-agreement", "0.5"], "--min-agreement only applies with --quantize int8"),
    (lambda t, m: [str(m), "--precision", "fp16", "--min-agreement", "0.5"], "add --quantize int8"),
    (lambda t, m: [str(m), "--tolerance", "0"], "must be a positive number"),
    (lambda t, m: [str(m), "--triton", str(t / "r"), "--max-batch-size", "0"], "at least 1"),
])
def test_one_line_errors(tmp_path, tiny_model_dir, capsys, make_args, message):
    err = one_line_error(["export", *make_args(tmp_path, tiny_model_dir), "--out", str(tmp_path / "out")], capsys)
    assert message in err
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_damaged_weights_error(tiny_model_dir, tmp_path, capsys):
    damaged = shutil.copytree(tiny_model_dir, tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes(b"\0" * 64)
    assert "damaged" in one_line_error(["export", str(damaged), "--out", str(tmp_path / "out"), "--hub-folder",
                                str(tmp_path / "hub")], capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "hub").exists()  # no empty folders left behind


def test_unwritable_out_error(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = one_line_error(["export", str(tiny_model_dir), "--out", str(tmp_path / "file" / "out")], capsys)
    assert "cannot write to" in err


@pytest.mark.slow
def test_imagenet_lite0_int8_refused_below_agreement(tmp_path, capsys):
    """The real Lite0: int8 loses top-1 agreement on the bundled photos, so the default threshold refuses it."""
    err = one_line_error(["export", "imagenet-lite0", "--out", str(tmp_path / "out"), "--quantize", "int8"], capsys)
    assert re.search(r"agrees with fp32 on only \d+\.\d% of 7 held-out images", err)
    assert not (tmp_path / "out").exists()  # nothing written, no temp files, no empty folder left


def test_a_failed_triton_copy_leaves_the_previous_export_whole(run_dir, tiny_model_dir, tmp_path, capsys):
    out, repo = tmp_path / "out", tmp_path / "repo"
    assert main(["export", str(tiny_model_dir), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    spec = ModelSpec.load(run_dir / "model")
    spec.replace(labels=tuple(f"new {x}" for x in spec.labels)).save(run_dir / "model")  # a retrained model
    repo.mkdir()
    (repo / "species").write_text("not a folder")  # where the Triton model would go
    assert main(["export", str(run_dir), "--out", str(out), "--triton", str(repo), "--name", "species"]) == 1
    assert "cannot write Triton model into" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old model and its report, nothing half-new


def test_the_clis_copies_of_export_names_match_their_homes():
    """export/cli.py keeps a few names without importing the heavy modules (--help stays instant)."""
    from trapkit.export import cli, pipeline, triton

    assert cli.BACKENDS == triton.BACKENDS and cli.CHANGES_FILENAME == pipeline.CHANGES_FILENAME
