"""Write an exported graph into a Triton Inference Server model repository.

Layout (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/model_repository.html):

    REPO/NAME/config.pbtxt
    REPO/NAME/labels.txt          class names in index order (common names with a taxonomy), for the
                                  classification extension
    REPO/NAME/<version>/model.onnx
    REPO/NAME/<version>/model.py  (Python backend only)

Each export into an existing model folder becomes the next version (an export
whose graph equals the newest version adds none); every version stays served
(`version_policy: all`), a request without a version gets the newest. Versions
of one model share its class list and input preparation (`CONTRACT_FIELDS`,
each version's `spec.json`): an export that changes them goes under a new model
name. README.md (how to use the model) and CHANGES.md (one entry per version)
sit beside config.pbtxt. Shapes in `config.pbtxt` are read off
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
from trapkit.spec import SPEC_FILENAME, ModelSpec
from trapkit.taxonomy import display_names

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "python")
LABELS_FILENAME = "labels.txt"
README_FILENAME = "README.md"
CHANGES_FILENAME = "CHANGES.md"
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
        "version_policy: { all: {} }",  # every version stays servable: roll back by asking for its number
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


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if model_dir.is_dir() else []


def next_version(model_dir: Path) -> int:
    return max(versions(model_dir), default=0) + 1


# What clients of one Triton model rely on across its versions: the class list and how inputs are prepared,
# the backend that runs every version, and the study the versions come from. A version that changes any of
# these is a different model (a new name), so older versions keep theirs.
CONTRACT_FIELDS = ("labels", "taxonomy", "input_size", "resize_mode", "interpolation", "crop_margin",
                   "detection_threshold", "detection_categories")
ORIGIN_FILENAME = "origin.txt"  # in each version folder: the run it was exported from (its id)
_BACKEND = re.compile(r'^backend: "([^"]*)"', re.M)


def _contract(spec: ModelSpec, backend: str, origin: str) -> dict:
    return {k: getattr(spec, k) for k in CONTRACT_FIELDS} | {
        "display": display_names(spec.labels, spec.taxonomy), "backend": backend, "origin": origin}


def served_contract(model_dir: Path) -> dict | None:
    """The contract the model folder's versions serve (its newest version's spec.json and origin, the config's
    backend; for a folder written by an earlier trapkit, labels.txt alone), None for a new model."""
    numbers = versions(model_dir)
    if not numbers:
        return None
    newest = model_dir / str(numbers[-1])
    config = model_dir / "config.pbtxt"
    found = _BACKEND.search(config.read_text(encoding="utf-8")) if config.is_file() else None
    served = {"backend": found.group(1)} if found else {}
    if (newest / ORIGIN_FILENAME).is_file():
        served["origin"] = (newest / ORIGIN_FILENAME).read_text(encoding="utf-8").strip()
    if (newest / SPEC_FILENAME).is_file():
        spec = ModelSpec.load(newest / SPEC_FILENAME)
        return {k: v for k, v in _contract(spec, "", "").items() if k not in ("backend", "origin")} | served
    labels = model_dir / LABELS_FILENAME
    return served | ({"display": labels.read_text(encoding="utf-8").splitlines()} if labels.is_file() else {})


def _fits(served: dict | None, mine: dict) -> bool:
    return served is None or all(mine[k] == v for k, v in served.items() if not (k == "origin" and not (v and mine[k])))


def _differences(served: dict, mine: dict) -> str:
    if "labels" in served and tuple(served["labels"]) != tuple(mine["labels"]):
        added = [c for c in mine["labels"] if c not in served["labels"]]
        gone = [c for c in served["labels"] if c not in mine["labels"]]
        parts = ([f"adds {', '.join(added)}"] if added else []) + ([f"drops {', '.join(gone)}"] if gone else [])
        return "its class list " + ("; ".join(parts) or "has another order")
    if served.get("origin") and mine["origin"] and served["origin"] != mine["origin"]:
        return "it comes from another run"
    return "its " + ", ".join(k for k in served if mine[k] != served[k]) + " differ"


def choose_model_name(settings: TritonSettings, spec: ModelSpec, origin: str = "") -> str:
    """The model name this export goes under. A name given with --name must serve the same classes, inputs,
    backend and run as its versions (else one line says so); the default (the run's name) moves on to NAME-2,
    NAME-3, ... when they change, so every older version keeps its own. `origin`: the run's id ('' unknown)."""
    base = settings.model_name(spec)
    repo = Path(settings.repo)
    mine = _contract(spec, settings.backend, origin)
    served = served_contract(repo / base)
    if _fits(served, mine):
        return base
    if settings.name is not None:
        raise TrapkitError(f"Triton model {base} in {repo} serves another model ({_differences(served, mine)}); its "
                           f"older versions must keep theirs: give this model another name with --name, e.g. --name "
                           f"{base}-2")
    k = 2
    while not _fits(served_contract(repo / f"{base}-{k}"), mine):
        k += 1
    log.info("Triton model %s serves another model (%s): this export goes under %s-%d", base,
             _differences(served, mine), base, k)
    return f"{base}-{k}"


@dataclass(frozen=True)
class TritonResult:
    version_dir: Path
    new: bool  # False: the newest version already served this very graph


def write_triton_model(onnx_path: str | Path, spec: ModelSpec, settings: TritonSettings, name: str | None = None,
                       origin: str = "", readme: str = "", changes: str = "") -> TritonResult:
    """Add `onnx_path` to the repository as the next version of its model (`name`: `choose_model_name`'s, else
    chosen here); returns where it is.

    A graph equal to the newest version's adds no version (a changed config, say --max-batch-size, is still
    written). The version folder (model.onnx, its spec.json and origin) is assembled under a temporary name
    and renamed into place, then labels.txt, config.pbtxt (every version served), README.md (`readme`) and
    CHANGES.md (`changes` added at the top) are replaced atomically: a kill at any point leaves every earlier
    version servable.
    """
    name = name or choose_model_name(settings, spec, origin)
    model_dir = Path(settings.repo) / name
    data = Path(onnx_path).read_bytes()
    config = config_text(name, onnx_path, settings, spec=spec)
    try:
        numbers = versions(model_dir)
        newest = model_dir / str(numbers[-1]) / TRITON_MODEL_FILE if numbers else None
        if newest is not None and newest.is_file() and newest.read_bytes() == data:
            log.info("Triton model %s version %d already serves this graph: no new version", name, numbers[-1])
            if (model_dir / "config.pbtxt").read_text(encoding="utf-8") != config:
                atomic_write_text(model_dir / "config.pbtxt", config)
                log.info("Triton model %s: config.pbtxt written with the new settings", name)
            return TritonResult(newest.parent, False)
        model_dir.mkdir(parents=True, exist_ok=True)
        version = next_version(model_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
        try:
            (staging / TRITON_MODEL_FILE).write_bytes(data)
            spec.save(staging / SPEC_FILENAME)
            if origin:
                (staging / ORIGIN_FILENAME).write_text(origin + "\n", encoding="utf-8")
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
        atomic_write_text(model_dir / "config.pbtxt", config)
        if readme:
            atomic_write_text(model_dir / README_FILENAME, readme)
        if changes:
            old = (model_dir / CHANGES_FILENAME).read_text(encoding="utf-8") if (model_dir / CHANGES_FILENAME).is_file() else ""
            entry = f"Version {version}: " + changes.removeprefix("## ")
            atomic_write_text(model_dir / CHANGES_FILENAME, "## " + entry.rstrip() + "\n\n" + old)
    except OSError as e:
        raise TrapkitError(f"cannot write Triton model into {model_dir} ({e.strerror or e}); check --triton") from None
    log.info("Triton model %s version %d (%s backend) in %s", name, version, settings.backend, settings.repo)
    return TritonResult(model_dir / str(version), True)
