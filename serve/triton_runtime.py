"""A runtime that classifies through a Triton Inference Server over HTTP.

Same interface as the local onnxruntime runtime (`.spec`, `.name`,
`.predict(batch) -> probs`, `.predict(batch, embedding=True) -> (probs,
embedding)` when the model has the `embedding` output, `.embedding_size`,
`close()`), so the batch classifier does not care where the model runs.
The model spec comes from the server: `trapkit export --triton` writes the
spec JSON into `config.pbtxt` as the model parameter
`trapkit.spec`, which Triton returns with the model config. Models that lack
it fall back to the labels Triton serves through its classification extension
(`labels.txt`), with the input size read from the config and default
(squash) resizing.

Big batches are cut into `max_batch_size` chunks sent `concurrency` at a time
(one HTTP client per worker thread: the clients are not thread-safe), and a
chunk whose connection fails is retried with exponential backoff before the
run stops with a one-line `TrapkitError`; the batch classifier checkpoints,
so a rerun with `--resume` loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.graph import EMBEDDING, TRITON_SPEC_PARAMETER, check_probs_width
from trapkit.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonModelIO:
    """What the runtime needs from the model config: tensor names and batch limit."""

    input_name: str
    output_name: str
    max_batch_size: int  # 0: the model takes no batch dimension from Triton
    input_size: int
    num_classes: int  # -1 when the config leaves it variable
    embedding_size: int | None = None  # D of the `embedding` output; None: the model has none


def _host_port(url: str) -> str:
    """'http://host:8000/' or 'host:8000' -> 'host:8000' (what tritonclient wants)."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", ""):
        raise TrapkitError(f"Triton URL {url!r} must be plain http://HOST:PORT (HTTP endpoint, usually port 8000)")
    if not parts.hostname:
        raise TrapkitError(f"Triton URL {url!r} has no host; use http://HOST:PORT")
    try:
        port = parts.port or 8000
    except ValueError:  # not a number, or past 65535
        raise TrapkitError(f"Triton URL {url!r} has a bad port; use http://HOST:PORT, e.g. port 8000") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6 keeps its brackets
    return f"{host}:{port}"


def _is_connection_error(exc: Exception) -> bool:
    """Errors worth a retry: the server went away or is restarting, not a bad request."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, InferenceServerException):
        # tritonclient wraps socket failures; HTTP errors from a live server carry a status code.
        status = str(exc.status() or "")
        return not status.isdigit() or status in ("502", "503", "504")
    # geventhttpclient raises its own types for a dropped connection (HTTPConnectionClosed, ...).
    return type(exc).__module__.startswith(("geventhttpclient", "gevent", "http.client"))


class TritonRuntime:
    """Classify (N, S, S, 3) uint8 batches on a Triton model; see the module docstring."""

    def __init__(self, url: str, model_name: str, *, spec: ModelSpec | None = None, concurrency: int = 4,
                 retries: int = 5, backoff: float = 0.5, timeout: float = 300.0, identity: str | None = None):
        if concurrency < 1:
            raise TrapkitError("Triton concurrency must be at least 1")
        if retries < 0 or backoff < 0:
            raise TrapkitError("Triton retries and backoff must not be negative")
        self.url = url
        self.model_name = model_name
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        if identity is not None:
            self.identity = identity  # digest of the local model file the spec came from (see open_runtime)
        self._host = _host_port(url)
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="triton")

        config = self._model_config()
        self.io = self._io_from_config(config)
        self.embedding_size = self.io.embedding_size
        self.spec = spec or self._spec_from_config(config)
        advice = ("pass the --model that was exported to this server, or leave --model out" if spec is not None else
                  "its config's trapkit.spec and its outputs disagree: re-export it with trapkit export --triton")
        if self.spec.input_size != self.io.input_size or self.io.num_classes not in (-1, self.spec.num_classes):
            raise TrapkitError(
                f"Triton model {model_name!r} takes {self.io.input_size} px images into {self.io.num_classes} classes "
                f"but the model spec says {self.spec.input_size} px, {self.spec.num_classes} classes; {advice}"
            )
        if self.io.num_classes == -1:  # the config leaves the width open: ask the model
            probe = np.zeros((1, self.io.input_size, self.io.input_size, 3), np.uint8)
            check_probs_width(self._infer_chunk(probe).shape[1], self.spec, f"Triton model {model_name!r}", advice)
        self.name = f"{self.spec.name} (Triton {model_name} at {url})"
        log.info("Triton model %s at %s: %d classes, %d px, max batch %d", model_name, url,
                 self.spec.num_classes, self.io.input_size, self.io.max_batch_size)

    # -- connections ---------------------------------------------------------------------------

    def _client(self):
        """This thread's HTTP client (tritonclient.http clients are not thread-safe)."""
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(self._host, connection_timeout=10.0,
                                                      network_timeout=self.timeout)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """Forget this thread's client after a connection error; the next try reconnects."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._clients_lock:
                self._clients.remove(client)
            try:
                client.close()
            except Exception:  # closing a dead connection may fail; it is being replaced anyway
                pass

    def _unreachable(self) -> TrapkitError:
        return TrapkitError(f"Triton server at {self.url} is not reachable; start it or check --triton-url")

    def _call(self, what: str, fn, retries: int):
        """fn(client) with exponential backoff on connection errors; other errors pass through."""
        for attempt in range(retries + 1):
            try:
                return fn(self._client())
            except Exception as e:  # narrowed below: only connection failures are retried
                if not _is_connection_error(e):
                    from tritonclient.utils import InferenceServerException

                    if isinstance(e, InferenceServerException):
                        raise TrapkitError(f"Triton {what} on model {self.model_name!r} at {self.url} failed: "
                                           f"{e.message()}; check the server log") from None
                    raise
                self._drop_client()
                if attempt == retries:
                    log.debug("%s failed after %d attempts: %s", what, attempt + 1, e)
                    raise self._unreachable() from None
                delay = self.backoff * 2**attempt
                log.warning("Triton %s failed (%s); retry %d/%d in %.1f s", what, e.__class__.__name__,
                            attempt + 1, retries, delay)
                time.sleep(delay)

    # -- model config --------------------------------------------------------------------------

    def _model_config(self) -> dict:
        from tritonclient.utils import InferenceServerException

        # A wrong URL is the likely cause at start-up: fail after one quick retry, not the full backoff.
        live = self._call("health check", lambda c: c.is_server_live(), retries=min(self.retries, 1))
        if not live:
            raise self._unreachable()
        if not self._call("model check", lambda c: c.is_model_ready(self.model_name), retries=self.retries):
            try:
                index = self._call("repository index", lambda c: c.get_model_repository_index(), retries=0)
            except (TrapkitError, InferenceServerException):
                index = []
            for m in index:
                if m.get("name") == self.model_name:  # there, but failed to load or still loading
                    raise TrapkitError(
                        f"Triton model {self.model_name!r} at {self.url} is not ready ({m.get('state', 'unknown')}: "
                        f"{m.get('reason') or 'no reason given'}); check the server log"
                    )
            names = ", ".join(sorted(m.get("name", "?") for m in index)) or "none or unknown"
            raise TrapkitError(
                f"Triton server at {self.url} has no ready model {self.model_name!r} (models there: {names}); "
                "check --triton-model and the server log"
            )
        return self._call("model config", lambda c: c.get_model_config(self.model_name), retries=self.retries)

    def _io_from_config(self, config: dict) -> TritonModelIO:
        inputs, outputs = config.get("input", []), config.get("output", [])
        if len(inputs) != 1 or not outputs:
            raise TrapkitError(f"Triton model {self.model_name!r} is not a trapkit classifier (expects one image "
                               "input and a probs output); re-export it with trapkit export --triton")
        inp = inputs[0]
        names = [o["name"] for o in outputs]
        output = "probs" if "probs" in names else names[0]
        dims = [int(d) for d in inp.get("dims", [])]
        max_batch = int(config.get("max_batch_size", 0))
        image_dims = dims if max_batch > 0 else dims[1:]  # with max_batch_size 0 the batch dim is explicit
        if len(image_dims) != 3 or image_dims[2] != 3 or image_dims[0] != image_dims[1] or image_dims[0] <= 0:
            raise TrapkitError(f"Triton model {self.model_name!r} input dims {dims} are not (S, S, 3); "
                               "re-export it with trapkit export --triton")
        if inp.get("data_type") != "TYPE_UINT8":
            raise TrapkitError(f"Triton model {self.model_name!r} input is {inp.get('data_type')}, not TYPE_UINT8; "
                               "re-export it with trapkit export --triton")
        out_dims = [int(d) for d in next(o for o in outputs if o["name"] == output).get("dims", [])]
        emb_dims = [int(d) for o in outputs if o["name"] == EMBEDDING for d in o.get("dims", [])]
        embedding_size = emb_dims[-1] if emb_dims and emb_dims[-1] > 0 else None
        return TritonModelIO(inp["name"], output, max_batch, image_dims[0], out_dims[-1] if out_dims else -1,
                             embedding_size)

    def _spec_from_config(self, config: dict) -> ModelSpec:
        param = config.get("parameters", {}).get(TRITON_SPEC_PARAMETER, {})
        text = param.get("string_value") if isinstance(param, dict) else None
        if text:
            return ModelSpec.from_json(text)
        log.warning("Triton model %s has no %s parameter; using the labels it serves and squash resizing",
                    self.model_name, TRITON_SPEC_PARAMETER)
        probe = np.zeros((1, self.io.input_size, self.io.input_size, 3), np.uint8)
        n_classes = self._infer_chunk(probe).shape[1]
        labels = [None] * n_classes
        for entry in self._classify_chunk(probe, n_classes)[0]:
            _, index, *label = entry.split(":", 2)
            labels[int(index)] = label[0] if label else index
        if any(x is None for x in labels):
            raise TrapkitError(f"Triton model {self.model_name!r} serves no label file; "
                               "re-export it with trapkit export --triton")
        return ModelSpec(arch="unknown", labels=tuple(labels), input_size=self.io.input_size, name=self.model_name)

    # -- inference -----------------------------------------------------------------------------

    def _inputs(self, chunk: np.ndarray):
        import tritonclient.http as httpclient

        inp = httpclient.InferInput(self.io.input_name, list(chunk.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(chunk), binary_data=True)
        return [inp]

    def _infer_chunk(self, chunk: np.ndarray, embedding: bool = False):
        """(n, S, S, 3) uint8 -> (n, C) float32, or with `embedding` ((n, C), (n, D)) float32; n <= max_batch_size."""
        import tritonclient.http as httpclient

        names = [self.io.output_name, EMBEDDING] if embedding else [self.io.output_name]
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in names]
        result = self._call("inference", lambda c: c.infer(self.model_name, self._inputs(chunk), outputs=outputs),
                            retries=self.retries)
        arrays = tuple(result.as_numpy(name).astype(np.float32, copy=False) for name in names)
        return arrays if embedding else arrays[0]

    def _classify_chunk(self, chunk: np.ndarray, k: int) -> np.ndarray:
        """Triton's classification extension: (n, k) strings 'score:index:label', best first."""
        import tritonclient.http as httpclient

        outputs = [httpclient.InferRequestedOutput(self.io.output_name, binary_data=True, class_count=k)]
        result = self._call("inference", lambda c: c.infer(self.model_name, self._inputs(chunk), outputs=outputs),
                            retries=self.retries)
        entries = result.as_numpy(self.io.output_name)
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b))(entries)

    def _chunks(self, batch: np.ndarray) -> list[np.ndarray]:
        step = self.io.max_batch_size or len(batch)
        return [batch[i:i + step] for i in range(0, len(batch), step)]

    def _check(self, batch: np.ndarray) -> None:
        s = self.io.input_size
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (s, s, 3):
            raise TrapkitError(f"Triton model {self.model_name!r} takes (N, {s}, {s}, 3) uint8 images, "
                               f"got {batch.dtype} {batch.shape}")

    def predict(self, batch: np.ndarray, embedding: bool = False):
        """(N, S, S, 3) uint8 -> (N, C) float32 class probabilities, in input order; with `embedding`,
        (probs, (N, D) float32 embedding), both from the same request."""
        self._check(batch)
        if embedding and self.embedding_size is None:
            raise TrapkitError(f"Triton model {self.model_name!r} has no '{EMBEDDING}' output; "
                               "re-export it with trapkit export --triton")
        if len(batch) == 0:
            probs = np.zeros((0, self.spec.num_classes), np.float32)
            return (probs, np.zeros((0, self.embedding_size), np.float32)) if embedding else probs
        chunks = self._chunks(batch)
        if len(chunks) == 1:
            return self._infer_chunk(chunks[0], embedding)
        # pool.map keeps order; the first failing chunk's error is raised here.
        parts = list(self._pool.map(lambda c: self._infer_chunk(c, embedding), chunks))
        if embedding:
            return tuple(np.concatenate(arrays, axis=0) for arrays in zip(*parts))
        return np.concatenate(parts, axis=0)

    def top_classes(self, batch: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (label, score) per image, ranked by the server (classification extension, labels.txt)."""
        self._check(batch)
        k = max(1, min(k, self.spec.num_classes))
        rows = []
        for part in self._pool.map(lambda c: self._classify_chunk(c, k), self._chunks(batch)):
            for entry in part:
                rows.append([(e.split(":", 2)[2], float(e.split(":", 2)[0])) for e in entry])
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._clients_lock:
            for client in self._clients:
                try:
                    client.close()
                except Exception:  # a connection to a dead server may fail to close cleanly
                    pass
            self._clients.clear()

    def __enter__(self) -> TritonRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TritonRuntime({self.url!r}, {self.model_name!r})"
