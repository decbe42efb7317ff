"""Runtimes: something that turns a uint8 image batch into class probabilities.

A runtime has `.spec` (the `ModelSpec` that travelled with the model), `.name`
(recorded as `info.classifier`), `.predict(batch)` mapping (N, S, S, 3) uint8
to (N, C) float32 probabilities, and `close()`; optionally `.identity`, a
digest of the weights that checkpoints compare on resume. A runtime whose
graph has the `embedding` output says its width in `.embedding_size` (None
when it has none) and answers `.predict(batch, embedding=True)` with
`(probs (N, C), embedding (N, D))` from the same run of the graph.
`open_runtime` picks onnxruntime for a local model or Triton for a server.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.graph import (
    EMBEDDING, GRAPH_FILENAMES, INPUT_NAME, PRECISION_PROP, PROBS, check_probs_width, read_spec, spec_from_metadata,
)
from trapkit.machine import available_cpus

log = logging.getLogger(__name__)

# GPU providers first; each is tried and dropped when it cannot start here.
_PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def resolve_model_path(model: str | Path, precision: str | None = None) -> Path:
    """A graph file from a path to the file, an export folder, or `hf://owner/name[@rev]`.

    In a folder, `precision` picks the graph (`GRAPH_FILENAMES`: model.onnx is fp32, model.int8.onnx int8).
    """
    text = str(model)
    if text.startswith("hf://"):
        from trapkit.serve.hub import resolve_model

        path = Path(resolve_model(text))
    else:
        path = Path(text).expanduser()
    if precision is not None and precision not in GRAPH_FILENAMES:
        raise TrapkitError(f"unknown precision {precision!r}; use one of {', '.join(GRAPH_FILENAMES)}")
    if path.is_dir():
        folder, path = path, path / GRAPH_FILENAMES[precision or "fp32"]
        if precision and not path.is_file() and (folder / GRAPH_FILENAMES["fp32"]).is_file():
            flag = "--quantize int8" if precision == "int8" else f"--precision {precision}"
            raise TrapkitError(f"{folder} holds no {precision} graph ({path.name}); export one with "
                               f"'trapkit export ... {flag}', or leave out --precision")
    if not path.is_file():
        raise TrapkitError(f"no ONNX model at {path}; pass a model.onnx, an export folder or hf://owner/name")
    return path


def open_runtime(model: str | Path | None, *, triton_url: str | None = None, triton_model: str | None = None,
                 providers=None, threads: int | None = None, concurrency: int = 4, precision: str | None = None):
    """onnxruntime for `model`, or a Triton client when `triton_url` is given (spec from `model` if given).

    `threads`: onnxruntime intra-op threads (default: every CPU). `concurrency`:
    Triton requests in flight when a batch is split to the server's max batch.
    `precision`: which graph of an export folder (default fp32); a graph file must be of that precision.
    """
    if triton_url:
        from trapkit.serve.triton_runtime import TritonRuntime

        if precision is not None:
            raise TrapkitError("--precision picks a local graph; with --triton-url the server's model runs as "
                               "exported. Leave out --precision")
        path = resolve_model_path(model) if model else None
        spec = read_spec(path) if path else None
        name = triton_model or (spec.name if spec else None)
        if not name:
            raise TrapkitError("give --triton-model (the model's name on the server) with --triton-url")
        # The local file named the model: its digest identifies the weights (checkpoints, feature tables).
        identity = _file_digest(path) if path else None
        return TritonRuntime(triton_url, name, spec=spec, concurrency=concurrency, identity=identity)
    if not model:
        raise TrapkitError("give --model (a model.onnx, an export folder or hf://owner/name)")
    return OnnxRuntime(resolve_model_path(model, precision), providers=providers, threads=threads,
                       precision=precision)


class OnnxRuntime:
    """A trapkit `model.onnx` in onnxruntime: input `images` (N, S, S, 3) uint8, outputs `probs` (N, C) and,
    when the graph has it, `embedding` (N, D)."""

    def __init__(self, path: str | Path, providers=None, threads: int | None = None, precision: str | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        # intra-op threads do the convolutions; decoding threads run beside them.
        options.intra_op_num_threads = threads or available_cpus()
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning, leaving the cores to decoding threads
        # between batches (measured faster end to end in bench/bench_classify.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # a GPU provider that cannot start is our debug log, not ORT's error
        self.session = self._session(ort, options, providers)
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec = spec_from_metadata(meta, self.path)
        self.precision = meta.get(PRECISION_PROP, "fp32")
        if precision is not None and self.precision != precision:
            raise TrapkitError(f"{self.path} is a {self.precision} graph, not {precision}; pass the export folder "
                               "or the graph of that precision, or leave out --precision")
        self.name = f"{self.spec.name} ({self.path.name}, trapkit {self.spec.trapkit_version})"
        self.identity = _file_digest(self.path)  # which weights: a resumed run must use the same ones
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or PROBS not in outputs:
            raise TrapkitError(
                f"{self.path} has inputs {list(inputs)} and outputs {list(outputs)}, not a trapkit model; re-export it"
            )
        size = self.spec.input_size
        shape = inputs[INPUT_NAME]  # ['batch', S, S, 3]: names for dynamic axes, numbers for fixed ones
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (size, size, 3))):
            raise TrapkitError(f"{self.path} takes images of shape {shape[1:]} but its spec says {size} x {size} x 3; "
                               "the graph and its metadata disagree: re-export the model")
        width = outputs.get(EMBEDDING, [None])[-1]
        self.embedding_size = width if isinstance(width, int) else None  # D, or None: no embedding output
        classes = outputs[PROBS][-1] if outputs[PROBS] else None  # C, or a name when the graph leaves it open
        if not isinstance(classes, int):
            classes = self.predict(np.zeros((1, size, size, 3), np.uint8)).shape[-1]
        check_probs_width(classes, self.spec, str(self.path),
                          "the graph and its metadata disagree: re-export the model")

    def _session(self, ort, options, providers):
        available = ort.get_available_providers()
        wanted = list(providers) if providers else [p for p in _PREFERRED_PROVIDERS if p in available]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")  # the fallback that always works
        for i, provider in enumerate(wanted):
            if provider != "CPUExecutionProvider" and not _provider_library_loads(ort, provider):
                continue
            chain = wanted[i:]
            try:
                with _quiet_onnxruntime():
                    session = ort.InferenceSession(str(self.path), sess_options=options, providers=chain)
            except Exception as e:  # noqa: BLE001 - a provider that cannot start on this machine
                if provider == "CPUExecutionProvider":
                    reason = " ".join(str(e).split())  # onnxruntime messages span lines
                    raise TrapkitError(f"onnxruntime cannot load {self.path} ({reason}); re-export the model") from None
                log.debug("onnxruntime provider %s unavailable: %s", provider, e)
                continue
            if provider == "CPUExecutionProvider" or provider in session.get_providers():
                log.debug("onnxruntime providers: %s", session.get_providers())
                return session
            log.debug("onnxruntime provider %s did not start here; trying the next", provider)
        raise TrapkitError(f"no onnxruntime provider could load {self.path}; reinstall onnxruntime")

    def predict(self, batch: np.ndarray, embedding: bool = False):
        """(N, S, S, 3) uint8 -> (N, C) float32 probabilities; with `embedding`, (probs, (N, D) float32 embedding)
        from the same run of the graph (the embedding is computed anyway: fetching it costs a copy)."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if embedding and self.embedding_size is None:
            raise TrapkitError(f"{self.path} has no '{EMBEDDING}' output; re-export it with 'trapkit export'")
        names = [PROBS, EMBEDDING] if embedding else [PROBS]
        try:
            outputs = self.session.run(names, {INPUT_NAME: batch})
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types (Fail, RuntimeException, ...)
            reason = " ".join(str(e).split())[:200]
            raise TrapkitError(f"the model failed on a batch of {len(batch)} images ({reason}); if it ran out of "
                               "memory, lower --batch-size or --concurrency, else re-export the model") from None
        probs, *rest = (o.astype(np.float32, copy=False) for o in outputs)  # (N, C) [, (N, D)]
        return (probs, rest[0]) if embedding else probs

    def predict_device(self, batch, embedding: bool = False):
        """`predict` for a (N, S, S, 3) uint8 torch tensor where it lies (GPU or host memory): onnxruntime reads
        it through I/O binding, no copy through the host; the outputs come back to host memory, as `predict`'s.
        The work that made `batch` must be finished (synchronise its CUDA stream first)."""
        batch = batch.contiguous()
        if embedding and self.embedding_size is None:
            raise TrapkitError(f"{self.path} has no '{EMBEDDING}' output; re-export it with 'trapkit export'")
        binding = self.session.io_binding()
        device = batch.device
        binding.bind_input(INPUT_NAME, device.type, device.index or 0, np.uint8, tuple(batch.shape), batch.data_ptr())
        for name in [PROBS, EMBEDDING] if embedding else [PROBS]:
            binding.bind_output(name)  # host memory: C (and D) floats per crop
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types, as in predict
            reason = " ".join(str(e).split())[:200]
            raise TrapkitError(f"the model failed on a batch of {len(batch)} images ({reason}); if it ran out of "
                               "memory, lower --batch-size, else re-export the model") from None
        probs, *rest = (o.astype(np.float32, copy=False) for o in binding.copy_outputs_to_cpu())
        return (probs, rest[0]) if embedding else probs

    def close(self) -> None:
        self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_PROVIDER_LIBRARIES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}


def _provider_library_loads(ort, provider: str) -> bool:
    """Whether a GPU provider's shared library and its CUDA libraries load (onnxruntime-gpu on a CPU box: no)."""
    import ctypes

    short = _PROVIDER_LIBRARIES.get(provider)
    if short is None:
        return True  # other providers (OpenVINO, CoreML, ...) are left to onnxruntime
    capi = Path(ort.__file__).parent / "capi"
    candidates = [*capi.glob(f"libonnxruntime_providers_{short}.*"), *capi.glob(f"onnxruntime_providers_{short}.dll")]
    for lib in candidates:
        try:
            ctypes.CDLL(str(lib))
            return True
        except OSError as e:
            log.debug("onnxruntime provider %s unavailable: %s", provider, e)
    return False


@contextlib.contextmanager
def _quiet_onnxruntime():
    """Keep onnxruntime's own "EP Error ... Falling back" print off stdout while a provider is tried (we log it
    at debug instead). Its process-wide logger is left alone: it has no getter, so it could not be restored."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
