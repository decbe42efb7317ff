"""trapkit.serve.runtime: opening exported models in onnxruntime."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from trapkit.errors import TrapkitError
from trapkit.prepare import Preprocessing, prepare_image
from trapkit.serve.runtime import OnnxRuntime, open_runtime


def test_open_file_or_export_folder(tiny_onnx_path, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(tiny_onnx_path, folder / "model.onnx")
    for ref in (tiny_onnx_path, folder, str(folder)):
        with open_runtime(ref) as rt:
            assert rt.spec.labels == ("bear", "cattle", "dog", "elephant", "ocelot")
            assert rt.spec.input_size == 32 and "tiny-test-model" in rt.name


def test_predict_gives_probabilities_and_batches_agree(tiny_onnx_path, samples_dir):
    prep = Preprocessing(32)
    batch = np.concatenate([prepare_image(p, None, prep).crops for p in sorted(samples_dir.glob("*.jpg"))])  # (10, 32, 32, 3)
    with open_runtime(tiny_onnx_path) as rt:
        probs = rt.predict(batch)
        single = np.concatenate([rt.predict(batch[i:i + 1]) for i in range(len(batch))])
    assert probs.shape == (10, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, single, atol=1e-5)


def test_gpu_providers_that_cannot_start_fall_back_to_cpu(tiny_onnx_path, caplog, capfd):
    # onnxruntime-gpu lists CUDA and TensorRT even on machines without them.
    with caplog.at_level(logging.DEBUG, logger="trapkit.serve.runtime"):
        rt = OnnxRuntime(tiny_onnx_path, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert rt.providers[-1] == "CPUExecutionProvider"
    assert rt.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 5)
    if rt.providers == ["CPUExecutionProvider"]:
        assert "unavailable" in caplog.text
        assert "EP Error" not in capfd.readouterr().out  # onnxruntime's own fallback chatter is kept quiet


def test_missing_or_foreign_models_are_clear_errors(tmp_path):
    with pytest.raises(TrapkitError, match="no ONNX model at"):
        open_runtime(tmp_path / "nothing.onnx")
    with pytest.raises(TrapkitError, match="no ONNX model at .*model.onnx"):
        open_runtime(tmp_path)
    with pytest.raises(TrapkitError, match="give --model"):
        open_runtime(None)


def test_model_without_trapkit_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["probs"])], "plain",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.UINT8, [None, 4])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(TrapkitError, match="no 'trapkit.spec' metadata"):
        open_runtime(path)


def _graph_with_spec(path, nodes, spec_json: str, side: int = 32):
    """A tiny ONNX graph `images` (N, side, side, 3) uint8 -> `probs`, carrying a trapkit spec in its metadata."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                           [None, side, side, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)],
                              initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="trapkit.spec", value=spec_json)
    onnx.save(model, str(path))
    return path


def test_graph_and_spec_that_disagree_or_fail_at_run_time_are_one_line_errors(tmp_path, tiny_onnx_path):
    import numpy as np
    from onnx import helper

    from trapkit.graph import read_spec

    spec = read_spec(tiny_onnx_path)  # 32 px
    cast = helper.make_node("Cast", ["images"], ["f"], to=1)
    # A spec that says 48 px on a graph that takes 32: caught when the model opens, not at the first batch.
    with pytest.raises(TrapkitError, match="graph and its metadata disagree"):
        open_runtime(_graph_with_spec(tmp_path / "a.onnx", [cast, helper.make_node("Identity", ["f"], ["probs"])],
                                      spec.replace(input_size=48).to_json()))
    # A graph that fails while it runs (a reshape that cannot fit; an allocation too big fails the same way).
    runtime = open_runtime(_graph_with_spec(tmp_path / "b.onnx",
                                            [cast, helper.make_node("Reshape", ["f", "shape"], ["probs"])],
                                            spec.to_json()))
    with pytest.raises(TrapkitError, match="the model failed on a batch of 2 images"):
        runtime.predict(np.zeros((2, 32, 32, 3), np.uint8))


def test_triton_server_down_is_a_one_line_error(samples_dir, tiny_onnx_path, tmp_path, capsys):
    from trapkit.app.cli import main

    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--triton-url", "127.0.0.1:9",
                 "--triton-model", "tiny", "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("trapkit: error: Triton server at 127.0.0.1:9 is not reachable")
    assert not (tmp_path / "out.json").exists()


def test_triton_at_an_ipv6_address_keeps_its_brackets(samples_dir, tiny_onnx_path, tmp_path, capsys):
    from trapkit.app.cli import main

    code = main(["classify", str(samples_dir), "--model", str(tiny_onnx_path), "--triton-url", "http://[::1]:9",
                 "--triton-model", "tiny", "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("trapkit: error: Triton server at http://[::1]:9 is not reachable")


# -- --precision: which graph of an export folder runs ----------------------------------------------------

@pytest.fixture(scope="module")
def int8_export(tiny_model_dir, tmp_path_factory):
    """An export folder holding model.onnx (fp32) and model.int8.onnx."""
    from trapkit.app.cli import main

    out = tmp_path_factory.mktemp("int8_export") / "out"
    assert main(["export", str(tiny_model_dir), "--out", str(out), "--quantize", "int8", "--min-agreement", "0"]) == 0
    return out


def test_precision_picks_the_graph_of_an_export_folder(int8_export):
    with open_runtime(int8_export) as fp32, open_runtime(int8_export, precision="int8") as int8:
        assert (fp32.path.name, fp32.precision) == ("model.onnx", "fp32")
        assert (int8.path.name, int8.precision) == ("model.int8.onnx", "int8")
        assert "model.int8.onnx" in int8.name and int8.identity != fp32.identity  # resume tells them apart
        batch = np.zeros((2, 32, 32, 3), np.uint8)
        assert int8.predict(batch).shape == fp32.predict(batch).shape == (2, 5)


def test_precision_errors_are_one_line(int8_export, tiny_onnx_path, tmp_path):
    folder = tmp_path / "fp32_only"
    folder.mkdir()
    shutil.copy(tiny_onnx_path, folder / "model.onnx")
    with pytest.raises(TrapkitError, match="holds no int8 graph .model.int8.onnx.; export one with"):
        open_runtime(folder, precision="int8")
    with pytest.raises(TrapkitError, match="is a fp32 graph, not int8"):
        open_runtime(tiny_onnx_path, precision="int8")
    with pytest.raises(TrapkitError, match="is a int8 graph, not fp32"):
        open_runtime(int8_export / "model.int8.onnx", precision="fp32")
    with pytest.raises(TrapkitError, match="--precision picks a local graph"):
        open_runtime(int8_export, triton_url="127.0.0.1:9", precision="int8")


def test_classify_runs_the_int8_graph(int8_export, samples_dir, tmp_path, capsys):
    import json

    from trapkit.app.cli import main

    out = tmp_path / "out.json"
    assert main(["classify", str(samples_dir), "--model", str(int8_export), "--precision", "int8",
                 "--detections", str(samples_dir / "md_v5a_detections.json"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "model.int8.onnx" in doc["info"]["classifier"]
    assert any(d.get("classifications") for im in doc["images"] for d in im.get("detections") or [])
    assert main(["classify", str(samples_dir), "--model", str(int8_export), "--precision", "fp16",
                 "--out", str(tmp_path / "o.json")]) == 1
    assert "holds no fp16 graph" in capsys.readouterr().err
