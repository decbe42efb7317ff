"""One fused ONNX graph per model, parity-checked against PyTorch before it is written.

The graph is `trapkit.train.model.Classifier` as is: input `images`
(N, S, S, 3) uint8 with a dynamic batch axis; inside: cast, mean/std
normalisation, NHWC -> NCHW, backbone, projection, L2, MLP head, softmax;
outputs `probs` (N, C) float32 and `embedding` (N, D) float32. The model spec
rides in the graph's metadata (`trapkit.spec` = spec JSON, plus readable
`labels`, `input_size`, `mean`, `std`, `resize_mode`, `trapkit_version`), so a
`model.onnx` alone is enough to serve.

Nothing is written unless `onnx.checker` (full check) passes and onnxruntime
agrees with PyTorch on real photos within the tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trapkit import __version__
from trapkit.atomic import atomic_write_bytes
from trapkit.errors import TrapkitError
from trapkit.graph import INPUT_NAME, OUTPUT_NAMES, PRECISION_PROP, SPEC_PROP
from trapkit.samples import SAMPLES_DIR
from trapkit.spec import SPEC_FILENAME, ModelSpec

log = logging.getLogger(__name__)

IMAGENET_LITE0 = "imagenet-lite0"
# Opset 18: onnxruntime >= 1.14, Triton's onnxruntime backend from 23.02 on.
OPSET = 18


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely it matches PyTorch."""

    path: Path
    max_prob_diff: float
    max_embedding_diff: float
    parity_images: int
    tolerance: float
    size_bytes: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.path}: max |probs diff| {self.max_prob_diff:.2e} on {self.parity_images} images "
            f"(tolerance {self.tolerance:.0e}), embedding diff {self.max_embedding_diff:.2e}, "
            f"{self.size_bytes / 1e6:.1f} MB, {self.seconds:.1f} s"
        )


def resolve_source_dir(ref: str | Path) -> Path | None:
    """The model folder behind `ref` (a model folder or a run folder); None for `imagenet-lite0`."""
    if str(ref) == IMAGENET_LITE0:
        return None
    path = Path(ref)
    if not path.exists():
        raise TrapkitError(f"model source {path} does not exist; give a run folder, a model folder or {IMAGENET_LITE0}")
    if not path.is_dir():
        raise TrapkitError(f"model source {path} is a file; give the folder holding spec.json and model.safetensors")
    if (path / SPEC_FILENAME).is_file():
        return path
    if (path / "model" / SPEC_FILENAME).is_file():
        return path / "model"
    from trapkit.train.runinfo import is_run

    if is_run(path):  # a run started without labelled images, before its first answers
        raise TrapkitError(f"{path} has no model yet: label the items its current request asks about, then "
                           f"'trapkit al next {path}' trains the first one")
    raise TrapkitError(
        f"{path} has no {SPEC_FILENAME} (nor model/{SPEC_FILENAME}); give a run folder, a saved model folder "
        f"or {IMAGENET_LITE0}"
    )


def load_source(ref: str | Path):
    """A `Classifier` in eval mode from a model folder, a run folder (RUN/model) or `imagenet-lite0`."""
    from trapkit.train.model import imagenet_lite0, load_model

    directory = resolve_source_dir(ref)
    if directory is None:
        return imagenet_lite0()
    return load_model(directory).eval()


def bundled_parity_images(spec: ModelSpec) -> np.ndarray:
    """(N, S, S, 3) uint8: the bundled camera-trap photos prepared whole by the spec's preprocessing."""
    from trapkit.images import iter_images
    from trapkit.prepare import Preprocessing, prepare_image

    prep = Preprocessing.from_spec(spec)
    return np.concatenate([prepare_image(p, None, prep).crops for p in iter_images(SAMPLES_DIR)])


def export_onnx(model, path: str | Path, *, parity_images: list[np.ndarray] | np.ndarray | None = None,
                tolerance: float = 1e-4) -> ExportReport:
    """Export `model` (a `Classifier`) to `path` as one ONNX graph, refusing if parity fails.

    `parity_images`: (N, S, S, 3) uint8 (default: the bundled photos). The
    file appears (atomically) only after the checker and the parity check pass.
    """
    start = time.perf_counter()
    spec: ModelSpec = model.spec
    path = Path(path)
    ensure_writable_dir(path.parent)
    images = _as_batch(parity_images if parity_images is not None else bundled_parity_images(spec), spec)
    proto = to_onnx_proto(model)
    data = proto.SerializeToString()
    prob_diff, emb_diff = parity(model, data, images)
    if not prob_diff <= tolerance:  # also catches NaN
        raise TrapkitError(
            f"exported graph differs from PyTorch by {prob_diff:.2e} in probabilities (tolerance {tolerance:.0e}); "
            "nothing written. Re-run with -v and report it, or raise --tolerance if you accept the difference"
        )
    _write(path, data)
    report = ExportReport(path, prob_diff, emb_diff, len(images), tolerance, len(data), time.perf_counter() - start)
    log.debug("exported %s", report.summary())
    return report


def to_onnx_proto(model):
    """The checked `onnx.ModelProto` of `model`, metadata included (no file written)."""
    import torch

    spec: ModelSpec = model.spec
    model = model.eval()
    sample = torch.zeros((2, spec.input_size, spec.input_size, 3), dtype=torch.uint8)  # (N, S, S, 3)
    # The torch.export-based exporter resolves timm's "same" padding to static
    # pads at a fixed input size (the TorchScript exporter leaves Shape/Pad
    # chains that slow onnxruntime and break int8 calibration).
    try:
        with quiet_third_party(), torch.no_grad():
            program = torch.onnx.export(
                model, (sample,), dynamo=True, opset_version=OPSET, external_data=False, verbose=False,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
            )
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TrapkitError(
            f"PyTorch could not export backbone {spec.arch!r} to ONNX ({e.__class__.__name__}: {first}); "
            "run with -v for the trace, or train with a timm backbone that exports"
        ) from e
    proto = program.model_proto
    set_metadata(proto, spec, precision="fp32")
    proto.producer_name, proto.producer_version = "trapkit", __version__
    proto.doc_string = f"trapkit {spec.name}: uint8 (N, {spec.input_size}, {spec.input_size}, 3) -> probs, embedding"
    check_model(proto)
    return proto


@contextlib.contextmanager
def quiet_third_party():
    """Silence exporter/quantiser chatter (stdout, warnings, INFO logs on the root logger) for one call."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def set_metadata(proto, spec: ModelSpec, precision: str) -> None:
    """Write the spec (and readable copies of its serving fields) into `metadata_props`."""
    props = {
        SPEC_PROP: spec.to_json(),
        PRECISION_PROP: precision,
        "labels": json.dumps(list(spec.labels)),
        "input_size": str(spec.input_size),
        "resize_mode": spec.resize_mode,
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "trapkit_version": __version__,
    }
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)


def check_model(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise TrapkitError(f"exported graph fails the ONNX checker ({first}); nothing written") from None


def ort_session(model: str | Path | bytes, threads: int = 0):
    """A CPU onnxruntime session (`threads=0`: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # onnxruntime warns about unused initialisers on every load
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, C), embedding (N, D)) float32 for (N, S, S, 3) uint8, in chunks of `batch_size`."""
    probs, embeddings = [], []
    for i in range(0, len(images), batch_size):
        p, e = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[i:i + batch_size]})
        probs.append(np.asarray(p, dtype=np.float32))
        embeddings.append(np.asarray(e, dtype=np.float32))
    return np.concatenate(probs), np.concatenate(embeddings)


def torch_outputs(model, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch reference (probs, embedding) for (N, S, S, 3) uint8."""
    import torch

    probs, embeddings = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            p, e = model.eval()(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])))
            probs.append(p.numpy())
            embeddings.append(e.numpy())
    return np.concatenate(probs), np.concatenate(embeddings)


def parity(model, onnx_model: str | Path | bytes, images: np.ndarray) -> tuple[float, float]:
    """Max absolute (probs, embedding) differences between onnxruntime and PyTorch."""
    ref_probs, ref_emb = torch_outputs(model, images)
    probs, emb = run_session(ort_session(onnx_model), images)
    return float(np.max(np.abs(probs - ref_probs))), float(np.max(np.abs(emb - ref_emb)))


def _as_batch(images, spec: ModelSpec) -> np.ndarray:
    batch = np.stack(images) if isinstance(images, (list, tuple)) and len(images) else np.asarray(images)
    size = spec.input_size
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3) or batch.dtype != np.uint8 or not len(batch):
        raise TrapkitError(
            f"parity images must be uint8 (N, {size}, {size}, 3) with N >= 1, got {batch.dtype} {batch.shape}; "
            "prepare them with trapkit.prepare.prepare_image"
        )
    return batch


def ensure_writable_dir(directory: Path) -> None:
    """Create `directory` if needed; a one-line error before any slow work if it cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise TrapkitError(f"cannot write to {directory} ({e.strerror or e}); choose a writable output folder") from None


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise TrapkitError(f"cannot write {path} ({e.strerror or e}); choose a writable --out folder") from None
