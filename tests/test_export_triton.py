"""Triton repository writer: every config parses with Triton's own protobuf schema and matches the graph."""

from __future__ import annotations

import ast
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from trapkit.errors import TrapkitError
from trapkit.export.triton import TritonResult, TritonSettings, write_triton_model
from trapkit.spec import ModelSpec

ONNX_TO_TRITON = {onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.FLOAT: mc.TYPE_FP32}


def parse_config(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def assert_matches_graph(config: mc.ModelConfig, onnx_path) -> None:
    graph = onnx.load(str(onnx_path)).graph
    for triton_tensors, onnx_tensors in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in triton_tensors] == [t.name for t in onnx_tensors]
        for t, o in zip(triton_tensors, onnx_tensors):
            onnx_dims = [d.dim_value for d in o.type.tensor_type.shape.dim]
            assert list(t.dims) == onnx_dims[1:]  # batch axis left to max_batch_size
            assert t.data_type == ONNX_TO_TRITON[o.type.tensor_type.elem_type]


@pytest.fixture
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec.load(tiny_model_dir)


CONFIGS = [
    dict(),
    dict(gpu=True, tensorrt=True, max_batch_size=64),
    dict(openvino=True, max_batch_size=1),
    dict(backend="python"),
    dict(backend="python", gpu=True),
]


@pytest.mark.parametrize("options", CONFIGS)
def test_config_parses_and_matches_graph(tmp_path, tiny_onnx_path, spec, options):
    settings = TritonSettings(repo=tmp_path / "repo", **options)
    version_dir = write_triton_model(tiny_onnx_path, spec, settings).version_dir
    model_dir = tmp_path / "repo" / "tiny-test-model"
    assert version_dir == model_dir / "1"
    config = parse_config(model_dir / "config.pbtxt")
    assert config.name == "tiny-test-model"
    assert config.backend == settings.backend
    assert config.max_batch_size == settings.max_batch_size
    assert_matches_graph(config, tiny_onnx_path)
    probs = next(o for o in config.output if o.name == "probs")
    assert probs.label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().splitlines() == list(spec.labels)
    assert max(config.dynamic_batching.preferred_batch_size) == settings.max_batch_size
    (group,) = config.instance_group
    assert group.kind == (mc.ModelInstanceGroup.KIND_GPU if settings.gpu else mc.ModelInstanceGroup.KIND_CPU)
    assert config.version_policy.HasField("all")  # every version stays servable
    assert ModelSpec.from_json(config.parameters["trapkit.spec"].string_value) == spec
    accel = config.optimization.execution_accelerators
    assert [a.name for a in accel.gpu_execution_accelerator] == (["tensorrt"] if settings.tensorrt else [])
    assert [a.name for a in accel.cpu_execution_accelerator] == (["openvino"] if settings.openvino else [])
    assert (version_dir / "model.onnx").read_bytes() == tiny_onnx_path.read_bytes()
    assert (version_dir / "model.py").is_file() == (settings.backend == "python")


def test_spec_parameter_survives_awkward_labels():
    from trapkit.export.triton import pbtxt_escape, spec_json

    spec = ModelSpec(arch="x", labels=('say "cheese"', "back\\slash", "Hirschkäfer", "新"))
    text = f'name: "m" parameters {{ key: "trapkit.spec" value {{ string_value: "{pbtxt_escape(spec_json(spec))}" }} }}'
    config = text_format.Parse(text, mc.ModelConfig())
    assert ModelSpec.from_json(config.parameters["trapkit.spec"].string_value) == spec


def _another_graph(onnx_path: Path, tmp_path: Path) -> Path:
    """The same model with other bytes (a retrained head, say): same inputs, outputs and classes."""
    import onnx

    proto = onnx.load(str(onnx_path))
    proto.doc_string = "retrained"
    out = tmp_path / "other.onnx"
    onnx.save(proto, str(out))
    return out


def test_versions_keep_their_history(tmp_path, tiny_onnx_path, spec):
    settings = TritonSettings(repo=tmp_path, name="species")
    assert write_triton_model(tiny_onnx_path, spec, settings) == TritonResult(tmp_path / "species" / "1", True)
    # The same graph again (an unchanged run exported twice): no version 2.
    assert write_triton_model(tiny_onnx_path, spec, settings) == TritonResult(tmp_path / "species" / "1", False)
    other = _another_graph(tiny_onnx_path, tmp_path)
    assert write_triton_model(other, spec, settings) == TritonResult(tmp_path / "species" / "2", True)
    assert write_triton_model(other, spec, settings).new is False
    assert sorted(p.name for p in (tmp_path / "species").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert all(ModelSpec.load(tmp_path / "species" / v / "spec.json") == spec for v in ("1", "2"))


def test_a_class_change_never_rewrites_the_older_versions(tmp_path, tiny_onnx_path, spec):
    """A version whose classes differ from its model's is never written under it: by default it goes under
    NAME-2; with --name, the export is refused in one line that says how."""
    write_triton_model(tiny_onnx_path, spec, TritonSettings(repo=tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "tiny-test-model").iterdir() if p.is_file()}
    grown = spec.replace(labels=spec.labels[:-1] + ("fox",))
    with pytest.raises(TrapkitError, match=r"serves another model \(its class list adds fox; drops ocelot\); "
                                           r"its older versions must keep theirs: give this model another name with "
                                           r"--name, e.g. --name tiny-test-model-2"):
        write_triton_model(tiny_onnx_path, grown, TritonSettings(repo=tmp_path, name="tiny-test-model"))
    result = write_triton_model(tiny_onnx_path, grown, TritonSettings(repo=tmp_path))
    assert result == TritonResult(tmp_path / "tiny-test-model-2" / "1", True)
    assert (tmp_path / "tiny-test-model-2" / "labels.txt").read_text().splitlines()[-1] == "fox"
    after = {p.name: p.read_bytes() for p in (tmp_path / "tiny-test-model").iterdir() if p.is_file()}
    assert after == before  # labels.txt and config.pbtxt of the old versions untouched
    # The same classes again find their own model name, and the other class list stays where it was.
    assert write_triton_model(_another_graph(tiny_onnx_path, tmp_path), grown,
                              TritonSettings(repo=tmp_path)).version_dir == tmp_path / "tiny-test-model-2" / "2"


def test_python_model_imports_only_what_the_stub_has():
    from trapkit.export.triton import PYTHON_MODEL_TEMPLATE

    tree = ast.parse(PYTHON_MODEL_TEMPLATE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"json", "os", "numpy", "onnxruntime", "triton_python_backend_utils"}
    assert {"initialize", "execute", "finalize"} <= {
        f.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for f in node.body
        if isinstance(f, ast.FunctionDef)
    }


@pytest.mark.parametrize("options, message", [
    (dict(tensorrt=True), "add --triton-gpu"),
    (dict(openvino=True, gpu=True), "CPU instances only"),
    (dict(backend="python", tensorrt=True, gpu=True), "need --triton-backend onnxruntime"),
    (dict(backend="tensorflow"), "unknown Triton backend"),
    (dict(name="bad/name"), "not valid"),
    (dict(max_batch_size=0), "at least 1"),
])
def test_bad_settings(tmp_path, options, message):
    with pytest.raises(TrapkitError, match=message):
        TritonSettings(repo=tmp_path, **options)


def test_the_backend_and_the_study_are_part_of_a_models_contract(tmp_path, tiny_onnx_path, spec):
    """Versions share their model's config.pbtxt, so a version for another backend (or from another study of
    the same name) never goes under it; an unchanged graph exported with new settings rewrites only the config."""
    write_triton_model(tiny_onnx_path, spec, TritonSettings(repo=tmp_path), origin="run-a")
    config = (tmp_path / "tiny-test-model" / "config.pbtxt").read_text()
    assert write_triton_model(tiny_onnx_path, spec, TritonSettings(repo=tmp_path, backend="python"),
                              origin="run-a").version_dir == tmp_path / "tiny-test-model-2" / "1"
    assert write_triton_model(_another_graph(tiny_onnx_path, tmp_path), spec, TritonSettings(repo=tmp_path),
                              origin="run-b").version_dir == tmp_path / "tiny-test-model-3" / "1"
    assert (tmp_path / "tiny-test-model" / "config.pbtxt").read_text() == config  # untouched by both
    with pytest.raises(TrapkitError, match="it comes from another run"):
        write_triton_model(tiny_onnx_path, spec, TritonSettings(repo=tmp_path, name="tiny-test-model"), origin="run-b")
    result = write_triton_model(tiny_onnx_path, spec, TritonSettings(repo=tmp_path, max_batch_size=8), origin="run-a")
    assert result == TritonResult(tmp_path / "tiny-test-model" / "1", False)
    assert "max_batch_size: 8" in (tmp_path / "tiny-test-model" / "config.pbtxt").read_text()
