"""Checkpoints and --resume: a run killed with SIGKILL continues to the same output.

The kill uses a test hook in trapkit.serve.classify: with the environment
variable TRAPKIT_TEST_KILL_AFTER_IMAGES=n, the process SIGKILLs itself after
preparing n images (mid-way between checkpoints), exactly like `kill -9`.
With TRAPKIT_TEST_KILL_SIGNAL=SIGINT it sends itself a Ctrl-C instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from classify_helpers import burst_of_copies
from trapkit.app.cli import main
from trapkit.serve.classify import CHECKPOINT_VERSION, KILL_AFTER_ENV, KILL_SIGNAL_ENV


@pytest.fixture
def burst(samples_dir, tmp_path):
    return burst_of_copies(samples_dir, tmp_path)


def _argv(images, md, model, out, *extra) -> list[str]:
    return ["classify", str(images), "--model", str(model), "--detections", str(md), "--out", str(out),
            "--csv", str(out.with_suffix(".csv")), "--checkpoint-every", "4", "--batch-size", "5", *extra]


def _comparable(path) -> dict:
    doc = json.loads(path.read_text())
    doc["info"].pop("classification_completion_time")
    return doc


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_output(burst, tiny_onnx_path, tmp_path):
    images, md = burst
    reference = tmp_path / "reference.json"
    assert main(_argv(images, md, tiny_onnx_path, reference)) == 0

    out = tmp_path / "out.json"
    checkpoint = tmp_path / "out.json.checkpoint.json"
    env = {**os.environ, KILL_AFTER_ENV: "10"}  # killed after 10 images: 8 checkpointed, 2 lost
    killed = subprocess.run([sys.executable, "-m", "trapkit.app.cli", *_argv(images, md, tiny_onnx_path, out)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    state = json.loads(checkpoint.read_text())
    assert len(state["done"]) == 8

    # Without --resume the checkpoint is not silently thrown away.
    assert main(_argv(images, md, tiny_onnx_path, out)) == 1
    assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 0
    assert _comparable(out) == _comparable(reference)
    assert out.with_suffix(".csv").read_text() == reference.with_suffix(".csv").read_text()
    assert not checkpoint.exists()


def test_ctrl_c_message_says_how_to_resume(burst, tiny_onnx_path, tmp_path, capsys, monkeypatch):
    images, md = burst
    reference = tmp_path / "reference.json"
    assert main(_argv(images, md, tiny_onnx_path, reference)) == 0
    out = tmp_path / "out.json"
    monkeypatch.setenv(KILL_AFTER_ENV, "6")
    monkeypatch.setenv(KILL_SIGNAL_ENV, "SIGINT")
    assert main(_argv(images, md, tiny_onnx_path, out)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("trapkit: interrupted;") and "trapkit classify: add --resume" in err
    monkeypatch.delenv(KILL_AFTER_ENV)
    # What the message says works, and rerunning without --resume is refused as it warned.
    assert main(_argv(images, md, tiny_onnx_path, out)) == 1
    assert "add --resume" in capsys.readouterr().err
    assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 0
    assert _comparable(out) == _comparable(reference)


def test_resume_refuses_a_checkpoint_from_other_settings(burst, tiny_onnx_path, tmp_path, capsys):
    images, md = burst
    out = tmp_path / "out.json"
    checkpoint = tmp_path / "out.json.checkpoint.json"
    checkpoint.write_text(json.dumps({"version": CHECKPOINT_VERSION, "fingerprint": "0" * 64, "done": {}}))
    assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 1
    assert "was made with other detections, model or settings" in capsys.readouterr().err
    checkpoint.write_text("{not json")
    assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 1
    assert "is unreadable" in capsys.readouterr().err
    for damaged in ({"version": CHECKPOINT_VERSION, "fingerprint": "0" * 64, "done": {"0": "oops"}},
                    {"version": CHECKPOINT_VERSION, "fingerprint": 7, "done": {}}, [1, 2]):
        checkpoint.write_text(json.dumps(damaged))  # valid JSON, wrong structure: one line, not a traceback
        assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 1
        err = capsys.readouterr().err
        assert "delete it to start over" in err and "Traceback" not in err
    checkpoint.unlink()
    assert main(_argv(images, md, tiny_onnx_path, out, "--resume")) == 0  # nothing to resume: a fresh run


def test_checkpoints_tell_models_with_the_same_spec_apart(tiny_onnx_path, tmp_path, samples_dir):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from trapkit.serve.classify import ClassifySettings, _fingerprint
    from trapkit.detections import load_detections
    from trapkit.serve.runtime import open_runtime

    proto = onnx.load(str(tiny_onnx_path))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))  # a weight tensor: retrained model, same spec
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(proto, str(tmp_path / "retrained.onnx"))
    doc, settings = load_detections(samples_dir / "md_v5a_detections.json"), ClassifySettings()
    with open_runtime(tiny_onnx_path) as a, open_runtime(tmp_path / "retrained.onnx") as b:
        assert a.spec == b.spec
        assert _fingerprint(doc, a, settings) != _fingerprint(doc, b, settings)
        assert _fingerprint(doc, a, settings) != _fingerprint(doc, a, ClassifySettings(threshold=0.2))
        assert _fingerprint(doc, a, settings) == _fingerprint(doc, a, ClassifySettings(batch_size=4, workers=1))
