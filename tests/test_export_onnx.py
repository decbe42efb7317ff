"""The fused ONNX graph: I/O contract, metadata, parity with PyTorch, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from trapkit.errors import TrapkitError
from trapkit.export.onnx_export import (
    bundled_parity_images,
    export_onnx,
    load_source,
    ort_session,
    parity,
    run_session,
)
from trapkit.graph import read_metadata, read_spec
from trapkit.spec import ModelSpec


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_source(tiny_model_dir)


def test_graph_contract(tiny_onnx_path, tiny_model_dir):
    proto = onnx.load(str(tiny_onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    spec = ModelSpec.load(tiny_model_dir)
    (inp,) = proto.graph.input
    assert inp.name == "images"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 32, 32, 3]
    outputs = {o.name: o for o in proto.graph.output}
    assert list(outputs) == ["probs", "embedding"]
    for name, width in (("probs", 5), ("embedding", 16)):
        t = outputs[name].type.tensor_type
        assert t.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in t.shape.dim] == ["batch", width]
    meta = read_metadata(tiny_onnx_path)
    assert read_spec(tiny_onnx_path) == spec
    assert meta["labels"] == '["bear", "cattle", "dog", "elephant", "ocelot"]'
    assert meta["input_size"] == "32" and meta["resize_mode"] == "squash"
    assert np.allclose(eval(meta["mean"]), spec.mean) and np.allclose(eval(meta["std"]), spec.std)
    assert meta["trapkit_version"]


def test_parity_and_batching_on_real_photos(tiny_onnx_path, tiny_model):
    images = bundled_parity_images(tiny_model.spec)  # (10, 32, 32, 3) uint8
    prob_diff, emb_diff = parity(tiny_model, tiny_onnx_path, images)
    assert prob_diff <= 1e-4 and emb_diff <= 1e-4
    session = ort_session(tiny_onnx_path)
    batched, batched_emb = run_session(session, images)
    one_by_one, one_emb = run_session(session, images, batch_size=1)
    assert np.allclose(batched, one_by_one, atol=1e-6) and np.allclose(batched_emb, one_emb, atol=1e-6)
    assert np.allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched_emb, axis=1), 1.0, atol=1e-5)  # L2 inside the graph


def test_parity_failure_writes_nothing(tiny_model, tmp_path):
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(TrapkitError, match=r"differs from PyTorch by .* nothing written"):
        export_onnx(tiny_model, out, tolerance=1e-12)
    assert not out.exists()
    assert not list(tmp_path.rglob("*.onnx*"))


def test_explicit_parity_images(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    report = export_onnx(tiny_model, tmp_path / "model.onnx", parity_images=images)
    assert report.parity_images == 3 and report.max_prob_diff <= 1e-4 and report.path.is_file()
    with pytest.raises(TrapkitError, match="parity images must be uint8"):
        export_onnx(tiny_model, tmp_path / "other.onnx", parity_images=np.zeros((2, 16, 16, 3), np.uint8))
    assert not (tmp_path / "other.onnx").exists()


def test_load_source_run_folder(tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "run" / "model")
    assert load_source(tmp_path / "run").spec == ModelSpec.load(tiny_model_dir)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "has no spec.json"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
])
def test_load_source_errors(tmp_path, make, message):
    with pytest.raises(TrapkitError, match=message):
        load_source(make(tmp_path))


def test_damaged_weights(tiny_model_dir, tmp_path):
    import shutil

    damaged = shutil.copytree(tiny_model_dir, tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(TrapkitError, match="damaged"):
        load_source(damaged)


def test_unwritable_destination(tiny_model, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(TrapkitError, match="cannot write to"):
        export_onnx(tiny_model, tmp_path / "a_file" / "model.onnx")
