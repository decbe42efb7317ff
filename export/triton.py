"""Write an exported graph into a Triton Inference Server model repository.

Layout (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/model_repository.html):

    REPO/NAME/config.pbtxt
    REPO/NAME/labels.txt          class names in index order (common names with a taxonomy), for the
                                  classification extension
    REPO/NAME/<version>/model.onnx
    REPO/NAME/<version>/model.py  (Python backend only)

Each export into an existing model folder becomes the next version; the
version policy serves the latest one. Shapes in `config.pbtxt` are read off
the graph itself (batch axis left out, as Triton wants with
`max_batch_size > 0`), so the config cannot disagree with the model. The
model spec rides in the config as parameter `trapkit.spec` (JSON), which
Triton returns with `GET /v2/models/NAME/config`.

Two backends:
- `onnxruntime`: what users deploy in NVIDIA's Triton container; optional
  TensorRT (GPU) and OpenVINO (CPU) execution accelerators.
- `python`: a `TritonPythonModel` that runs the same `model.onnx` through
  onnxruntime, for Triton builds without the onnxruntime backend (such as the
  one in the `nvidia-pytriton` wheel).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trapkit.atomic import atomic_write_text
from trapkit.errors import TrapkitError
from trapkit.graph import TRITON_SPEC_PARAMETER
from trapkit.spec import ModelSpec
from trapkit.taxonomy import display_names

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "python")
LABELS_FILENAME = "labels.txt"
TRITON_MODEL_FILE = "model.onnx"  # in each version folder; the python backend's model.py loads it too
# Shipped as package data, not as a module: it imports Triton's stub utilities, which only exist inside Triton.
PYTHON_MODEL_TEMPLATE = Path(__file__).resolve().parent / "templates" / "triton_python_model.py.tmpl"
MAX_QUEUE_DELAY_US = 1000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64"}


@dataclass(frozen=True)
class TritonSettings:
    """Where and how to write the Triton model. `name=None`: the spec's name."""

    repo: Path
    name: str | None = None
    backend: str = "onnxruntime"
    gpu: bool = False
    tensorrt: bool = False
    openvino: bool = False
    max_batch_size: int = 32

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise TrapkitError(f"unknown Triton backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.name is not None and not _NAME_RE.match(self.name):
            raise TrapkitError(f"Triton model name {self.name!r} is not valid; use letters, digits, '_', '-' and '.'")
        if self.max_batch_size < 1:
            raise TrapkitError(f"--max-batch-size {self.max_batch_size} must be at least 1")
        if (self.tensorrt or self.openvino) and self.backend != "onnxruntime":
            raise TrapkitError("--tensorrt and --openvino need --triton-backend onnxruntime")
        if self.tensorrt and not self.gpu:
            raise TrapkitError("--tensorrt runs on GPU instances only; add --triton-gpu")
        if self.openvino and self.gpu:
            raise TrapkitError("--openvino accelerates CPU instances only; drop --triton-gpu or --openvino")

    def model_name(self, spec: ModelSpec) -> str:
        name = self.name or spec.name
        if not _NAME_RE.match(name):
            raise TrapkitError(f"model name {name!r} is not a valid Triton model name; pass --name")
        return name


@dataclass(frozen=True)
class TensorInfo:
    name: str
    data_type: str  # Triton TYPE_*
    dims: tuple[int, ...]  # without the batch axis


def graph_io(onnx_path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs) of an ONNX graph with a leading dynamic batch axis, as Triton sees them."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)

    def info(value) -> TensorInfo:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.elem_type not in _ONNX_TO_TRITON:
            raise TrapkitError(f"{onnx_path}: tensor {value.name} has ONNX type {t.elem_type} that Triton configs here do not map")
        return TensorInfo(value.name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:]))

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [info(v) for v in proto.graph.input if v.name not in initializers]
    return inputs, [info(v) for v in proto.graph.output]


def config_text(name: str, onnx_path: str | Path, settings: TritonSettings, probs_output: str = "probs", *,
                spec: ModelSpec) -> str:
    """config.pbtxt for the graph at `onnx_path`; `spec` rides along as the parameter `trapkit.spec`.

    Triton returns parameters with the model config, so `trapkit classify --triton-url`
    learns labels, input size and resize policy from the server alone.
    """
    inputs, outputs = graph_io(onnx_path)
    m = settings.max_batch_size
    preferred = sorted({max(1, m // 4), max(1, m // 2), m})
    lines = [
        f'name: "{name}"',
        f'backend: "{settings.backend}"',
        f"max_batch_size: {m}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [",
        ",\n".join(_tensor_block(t) for t in inputs),
        "]",
        "output [",
        ",\n".join(_tensor_block(t, LABELS_FILENAME if t.name == probs_output else None) for t in outputs),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        "instance_group [",
        "  {",
        "    count: 1",
        f"    kind: {'KIND_GPU' if settings.gpu else 'KIND_CPU'}",
        "  }",
        "]",
        # Triton returns parameters with the model config, so a client learns labels and input policy from the server.
        f'parameters {{ key: "{TRITON_SPEC_PARAMETER}" value {{ string_value: "{pbtxt_escape(spec_json(spec))}" }} }}',
    ]
    if settings.tensorrt:
        lines += [
            "optimization { execution_accelerators {",
            "  gpu_execution_accelerator: [ {",
            '    name: "tensorrt"',
            '    parameters { key: "precision_mode" value: "FP16" }',
            '    parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
            "  } ]",
            "} }",
        ]
    if settings.openvino:
        lines += ['optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }']
    return "\n".join(lines) + "\n"


def spec_json(spec: ModelSpec) -> str:
    """The spec as one line of ASCII JSON (non-ASCII labels as \\u escapes)."""
    return json.dumps(spec.to_dict(), sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def pbtxt_escape(text: str) -> str:
    """`text` (ASCII) as the inside of a protobuf text-format string literal."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _tensor_block(t: TensorInfo, label_filename: str | None = None) -> str:
    fields = [f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: [ {', '.join(map(str, t.dims))} ]"]
    if label_filename:
        fields.append(f'    label_filename: "{label_filename}"')
    return "  {\n" + "\n".join(fields) + "\n  }"


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def write_triton_model(onnx_path: str | Path, spec: ModelSpec, settings: TritonSettings) -> Path:
    """Add `onnx_path` to the repository as the next version of the model; returns the version folder.

    The version folder is assembled under a temporary name and renamed into
    place, then labels.txt and config.pbtxt are replaced atomically: a kill at
    any point leaves the previous versions servable.
    """
    name = settings.model_name(spec)
    model_dir = Path(settings.repo) / name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        version = next_version(model_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
        try:
            shutil.copyfile(onnx_path, staging / TRITON_MODEL_FILE)
            if settings.backend == "python":
                shutil.copyfile(PYTHON_MODEL_TEMPLATE, staging / "model.py")
            os.chmod(staging, 0o755)
            os.rename(staging, model_dir / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # What Triton's classification extension returns: common names where the taxonomy gives them.
        names = display_names(spec.labels, spec.taxonomy)
        atomic_write_text(model_dir / LABELS_FILENAME, "".join(f"{name}\n" for name in names))
        atomic_write_text(model_dir / "config.pbtxt", config_text(name, onnx_path, settings, spec=spec))
    except OSError as e:
        raise TrapkitError(f"cannot write Triton model into {model_dir} ({e.strerror or e}); check --triton") from None
    log.info("Triton model %s version %d (%s backend) in %s", name, version, settings.backend, settings.repo)
    return model_dir / str(version)
