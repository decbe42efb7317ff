"""Batch jobs on a Ray cluster: the address, the connection, and the one pipeline both stages run on it.

`trapkit classify --ray` and `trapkit al init|next --ray` (embedding the pool)
hand the same pipeline a work list and a model; it is Ray Data's streaming
execution, not a scheduler of our own:

    work list: (key, file, boxes)            this process (the driver): reads no image
      -> CPU tasks: `trapkit.prepare.prepare_entry`, the core's one preparation path
         (decode once, reduced and cut to the crops' rectangle, crop), rows of (S, S, 3) uint8 crops
      -> actor pool: one model per actor, built once (a GPU each when the cluster has GPUs), batches of crops
      -> this process: one `ItemResult` per work item as its last crop comes back, in any order

Every preparing task and every inference actor counts as half a CPU, so a node
runs decoding and inference side by side on each core, as the local executor's
threads do (a decode waits on disk, inference on memory; together they fill a
core). Ray retries a task and restarts an actor whose worker process or node
dies, and rebuilds lost blocks from their lineage; results are keyed by (work
item, crop), so a block computed twice is counted once and none is lost.

Images must be on a path every node sees at the same place (NFS, a mounted
bucket): `Cluster.check_visible` checks it on every node before any work.
Through Ray Client (`ray://`), which Ray Data cannot drive, an actor on the
cluster runs the pipeline and this process pulls the results from it.
Ray is an optional dependency (`trapkit[ray]`), imported inside functions only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.prepare import Preprocessing, prepare_entry

log = logging.getLogger(__name__)

LOCAL, AUTO = "local", "auto"
INSTALL_HINT = "pip install 'trapkit[ray]'"
HALF_CPU = 0.5  # what each preparing task and each inference actor asks of Ray (see the module docstring)
# Memory each preparing task reserves: a 12 MP photo decoded (36 MB) with Pillow's working copies. It also keeps
# Ray Data from fusing the tasks into the actors (it fuses stages whose resource requests are equal).
PREPARE_MEMORY = 256 * 2**20
# Ray Data's own defaults retry a task lost with its worker or node, and restart such an actor, without limit.
TASK_RETRIES = 5  # the visibility probe, outside Ray Data
CONNECT_TIMEOUT_S = 5.0
# Test-only hook (tests/test_ray.py): a node whose processes have this variable pauses every preparing task
# once the file `<dir>/arm` exists (after writing `<dir>/paused.<pid>`), so the test kills that node at a
# known point, mid-run, instead of guessing when it is busy.
PAUSE_ENV = "TRAPKIT_TEST_RAY_PAUSE_DIR"
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


@dataclass(frozen=True)
class ClusterSettings:
    """Where a job runs and how wide. `address`: `host:port` (the head's GCS port, 6379 by default),
    `ray://host:port` (Ray Client), `auto` (the cluster this machine belongs to) or `local` (a cluster
    started inside this process, on loopback, gone when the job ends).

    `actors`: most inference actors (default: one per GPU, or one per CPU on a cluster without GPUs).
    `cpus`: with `local`, the CPUs that cluster may use (default: every CPU this process may run on).
    `images_per_task`: images one preparing task decodes before handing its crops on.
    """

    address: str
    actors: int | None = None
    cpus: int | None = None
    images_per_task: int = 8

    def __post_init__(self):
        object.__setattr__(self, "address", check_address(self.address))
        for name in ("actors", "cpus", "images_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrapkitError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.cpus is not None and self.address != LOCAL:
            raise TrapkitError("the CPUs of a cluster are set where it starts ('ray start --num-cpus'); "
                               "give cpus only with the address local")


def check_address(text: str) -> str:
    """`text` if it is a Ray address trapkit can use (see `ClusterSettings`); a one-line error otherwise."""
    address = str(text).strip()
    if address in (LOCAL, AUTO):
        return address
    match = _HOST_PORT.fullmatch(address.removeprefix("ray://"))
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise TrapkitError(
            f"--ray {ascii(text)} is not a Ray address; give host:port (the head node's port, 6379 unless "
            "'ray start --head --port' chose another), ray://host:port, auto, or local")
    return address


def require_ray(address: str | None = None):
    """The `ray` module (with Ray Data), or a one-line error saying how to install it.

    For the address `local`, first (Ray reads these at import): a cluster this process starts listens
    on loopback only (Ray's own switch; by default it binds every interface) and reports no usage to
    Ray's servers. Variables already set are left as they are.
    """
    if address == LOCAL:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the pipeline needs Ray Data, not only Ray Core
    except ImportError:
        raise TrapkitError(f"--ray needs Ray, which is not installed here; install it with {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def connect(settings: ClusterSettings) -> Iterator[Cluster]:
    """Join the cluster at `settings.address` (or start a local one) for the length of the block.

    A process already connected (`ray.init` called by a library user) stays connected afterwards.
    """
    ray = require_ray(settings.address)
    owned = not ray.is_initialized()
    if owned:
        _init(ray, settings)
    try:
        yield Cluster(ray, settings)
    finally:
        if owned:
            ray.shutdown()


def _init(ray, settings: ClusterSettings) -> None:
    address = settings.address
    quiet = dict(log_to_driver=_verbose(), configure_logging=False)
    if address == LOCAL:
        ray.init(address=LOCAL, num_cpus=settings.cpus or _available_cpus(), include_dashboard=False, **quiet)
        return
    if address != AUTO:
        _check_reachable(address)
    try:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as e:
            # The head starts one Ray Client server per client, and its start-up check can lose a race with the
            # process it starts on a busy head ("Starting Ray client server failed"); a second client gets a
            # new server. Anything else is not retried.
            if not (address.startswith("ray://") and "Starting Ray client server failed" in str(e)):
                raise
            log.debug("Ray Client server did not start; trying once more: %s", _one_line(e))
            ray.shutdown()
            ray.init(address=address, **quiet)
    except ConnectionError as e:
        if address == AUTO:
            raise TrapkitError("--ray auto found no running Ray cluster on this machine; start one with "
                               "'ray start --head', or give the head's address") from None
        raise TrapkitError(f"cannot connect to the Ray cluster at {address} ({_one_line(e)}); check the address "
                           "and that 'ray status' works there") from None
    except Exception as e:  # noqa: BLE001 - version mismatch, authentication: Ray's reason, on one line
        raise TrapkitError(f"cannot connect to the Ray cluster at {address} ({_one_line(e)}); the cluster "
                           "and this machine need the same Ray and Python versions") from None


def _check_reachable(address: str) -> None:
    """A plain TCP connection to the head first: Ray itself retries an unreachable address for minutes."""
    host, port = _HOST_PORT.fullmatch(address.removeprefix("ray://")).groups()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        reason = e.strerror or e.__class__.__name__
        raise TrapkitError(f"cannot reach the Ray cluster at {address} ({reason}); start it with "
                           "'ray start --head' or check the host and port") from None


def _verbose() -> bool:
    """`-v`: the terminal gets DEBUG records (the root logger's level; trapkit's own may be DEBUG for a log file)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class ItemResult:
    """One work item back from the cluster: the model's outputs for its crops (in box order), or its failure."""

    key: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (k, ...); {} when it failed
    failure: str | None = None  # a trapkit.images.FAILURE_* code
    message: str | None = None
    time: str | None = None
    warnings: list[str] = field(default_factory=list)


class Cluster:
    """A connected cluster: what it has, the visibility check, and the pipeline (see the module docstring)."""

    def __init__(self, ray, settings: ClusterSettings):
        self.ray, self.settings = ray, settings
        resources = ray.cluster_resources()
        self.cpus, self.gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))

    def workers(self) -> list[dict]:
        """The alive nodes that can run a preparing task (a head started with --num-cpus=0 cannot)."""
        return [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= HALF_CPU]

    def check_visible(self, root: Path | None, files: list[str]) -> None:
        """Stop before any work unless every node that prepares images sees `root` and a sample of `files`."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        sample = sorted({files[0], files[len(files) // 2], files[-1]}) if files else []
        root = None if root is None else str(root)
        probe = self.ray.remote(num_cpus=0, max_retries=TASK_RETRIES)(_missing)
        nodes = self.workers()
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(root, sample) for n in nodes]
        for node, missing in zip(nodes, self.ray.get(refs)):
            if missing:
                raise TrapkitError(_not_visible(node["NodeManagerAddress"], node["NodeID"], missing))
        log.info("Ray cluster: %d node(s) with %g CPUs and %g GPUs see the images", len(nodes), self.cpus, self.gpus)

    def map_prepared(self, work: Iterable[tuple[int, str, list | None]], prep: Preprocessing, model, model_args=(),
                     *, root: Path | None, batch_size: int) -> Iterator[ItemResult]:
        """Prepare every (key, file, boxes) of `work` on CPU tasks and run `model` over the crops on actors.

        `model(*model_args)` is built once in each actor (so both must pickle: a class of an installed
        module, plain arguments); called with (N, S, S, 3) uint8 crops it returns {name: (N, ...) array}.
        `file` is relative to `root` (joined with `safe_join` on the worker), or a full path when `root` is
        None. `boxes`: normalised [x, y, w, h] boxes to crop, or None for the whole image.
        """
        work = [(int(k), str(f), json.dumps(b)) for k, f, b in work]
        if not work:
            return
        actors = self.settings.actors or int(self.gpus or max(1, self.cpus))
        log.info("Ray cluster: %d images, up to %d model actor(s)%s", len(work), actors,
                 " on GPUs" if self.gpus else "")
        job = (work, prep, model, tuple(model_args), None if root is None else str(root), batch_size,
               self.settings.images_per_task, actors, bool(self.gpus), _verbose())
        if not _client_mode(self.ray):
            yield from _pipeline(*job)
            return
        # Ray Data runs its executor in the driver, which a Ray Client is not: an actor on the cluster
        # drives the pipeline and this process pulls the results from it.
        relay = self.ray.remote(num_cpus=0, max_restarts=0)(_Relay).remote(*job)
        try:
            while True:
                results, done = self.ray.get(relay.take.remote())
                yield from results
                if done:
                    return
        except Exception as e:
            raise _as_user_error(self.ray, e) from e
        finally:
            self.ray.kill(relay)


def _client_mode(ray) -> bool:
    from ray.util.client import ray as client

    return client.is_connected()


def _pipeline(work: list[tuple[int, str, str]], prep: Preprocessing, model, model_args: tuple, root: str | None,
              batch_size: int, per_task: int, actors: int, gpus: bool, verbose: bool) -> Iterator[ItemResult]:
    """The Ray Data pipeline (see the module docstring), run where a Ray driver is: `work` rows hold JSON boxes."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows one bar, in images
    if not verbose:  # Ray Data's plan and timings at INFO; its warnings stay
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ds = ray.data.from_items([{"key": k, "file": f, "boxes": b} for k, f, b in work],
                             override_num_blocks=min(math.ceil(len(work) / per_task), 10_000))
    ds = ds.map_batches(_prepare_batch, batch_size=per_task, batch_format="numpy",
                        fn_kwargs={"root": root, "prep": prep}, num_cpus=HALF_CPU, memory=PREPARE_MEMORY)
    ds = ds.map_batches(_Infer, batch_size=batch_size, batch_format="numpy", fn_constructor_args=(model, model_args),
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors), num_cpus=HALF_CPU,
                        **({"num_gpus": 1} if gpus else {}))
    yield from _gather(ray, ds, {k for k, _, _ in work})


class _Relay:
    """The pipeline's driver on the cluster, for a Ray Client: results buffered until the client takes them."""

    def __init__(self, *job):
        import threading

        self.results: list[ItemResult] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._run, args=job, daemon=True).start()

    def _run(self, *job) -> None:
        try:
            for result in _pipeline(*job):
                with self.lock:
                    self.results.append(result)
        except BaseException as e:  # noqa: BLE001 - handed to the client by `take`
            self.error = e
        finally:
            self.done.set()

    def take(self, wait_s: float = 1.0) -> tuple[list[ItemResult], bool]:
        """(results since the last call, whether that was the last of them); waits up to `wait_s` for news."""
        finished = self.done.wait(wait_s)  # once set, every result is in the buffer
        with self.lock:
            results, self.results = self.results, []
        if finished and self.error is not None:
            if results:
                return results, False  # what came before the error first
            raise self.error
        return results, finished


def _gather(ray, ds, keys: set[int]) -> Iterator[ItemResult]:
    """Rows back from the actors, reassembled into one `ItemResult` per work item; duplicates dropped."""
    partial: dict[int, dict[int, dict]] = {}
    finished: set[int] = set()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            names = [c for c in batch if c not in _ROW_FIELDS]
            for r, key in enumerate(batch["key"].tolist()):
                if key in finished or key not in keys:
                    continue  # a block that was computed twice (a retried task): counted once
                det, n = int(batch["det"][r]), int(batch["n"][r])
                rows = partial.setdefault(key, {})
                rows[det] = {name: batch[name][r] for name in names} if det >= 0 else {}
                if det < 0 or len(rows) == n:
                    first = batch["failure"][r]
                    outputs = {} if det < 0 else {name: np.stack([rows[j][name] for j in range(n)]) for name in names}
                    del partial[key]
                    finished.add(key)
                    yield ItemResult(key, outputs, str(first) or None, str(batch["message"][r]) or None,
                                     str(batch["time"][r]) or None, json.loads(str(batch["warnings"][r])))
    except Exception as e:
        raise _as_user_error(ray, e) from e
    lost = len(keys) - len(finished)
    if lost:
        raise TrapkitError(f"{lost} image(s) came back from the Ray cluster incomplete; rerun with --resume")


def _as_user_error(ray, e: Exception) -> Exception:
    """A TrapkitError raised on a worker, or a one-line error for a cluster failure; other errors as they are."""
    seen = e
    while seen is not None:
        if isinstance(seen, TrapkitError):
            return TrapkitError(str(seen).splitlines()[0])
        seen = getattr(seen, "cause", None) or seen.__cause__
    if isinstance(e, ray.exceptions.RayError) or type(e).__module__.startswith("ray."):
        return TrapkitError(f"the Ray job failed ({e.__class__.__name__}: {_one_line(e)[:200]}); the work "
                            "checkpointed so far is kept: rerun with --resume (-v shows worker logs)")
    return e


# -- on the workers -------------------------------------------------------------------------

# Columns of every row between the stages besides the crops and the model's outputs.
_ROW_FIELDS = ("key", "det", "n", "failure", "message", "time", "warnings", "crop")


def _missing(root: str | None, files: list[str]) -> str | None:
    """On one node: what of the image folder and sample files is not there, or None."""
    from trapkit.images import ImageReadError, safe_join

    if root is not None and not os.path.isdir(root):
        return f"the image folder {root}"
    for f in files:
        try:
            path = Path(f) if root is None else safe_join(root, f)
        except ImageReadError:
            continue  # refused wherever it runs, and recorded as that image's failure
        if not path.is_file():
            return str(path)
    return None


def _not_visible(ip: str, node_id: str, what: str) -> str:
    return (f"Ray node {ip} ({node_id[:8]}) cannot see {what}; put the images on storage every node mounts at "
            "the same path (NFS, a mounted bucket)")


def _prepare_batch(batch: dict, root: str | None, prep: Preprocessing) -> dict:
    """A task: work rows (key, file, boxes JSON) -> one row per crop (det = its box's position, n = crops of
    the image), or one row with det -1 for an image without crops (its failure, if any, says why)."""
    _pause_if_armed()
    if root is not None and not os.path.isdir(root):  # a node that joined after `check_visible`
        import ray

        raise TrapkitError(_not_visible(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id(),
                                        f"the image folder {root}"))
    size = prep.input_size
    cols = {name: [] for name in _ROW_FIELDS}
    for key, file, boxes in zip(batch["key"].tolist(), batch["file"].tolist(), batch["boxes"].tolist()):
        attempt = prepare_entry(root, file, json.loads(boxes), prep)
        crops = attempt.crops if attempt.crops is not None else np.zeros((0, size, size, 3), np.uint8)
        n = len(crops)
        for det in range(n) if n else (-1,):
            cols["key"].append(key)
            cols["det"].append(det)
            cols["n"].append(n)
            cols["failure"].append(attempt.failure or "")
            cols["message"].append(attempt.message or "")
            cols["time"].append(attempt.time or "")
            cols["warnings"].append(json.dumps(attempt.warnings))
            cols["crop"].append(crops[det] if det >= 0 else np.zeros((size, size, 3), np.uint8))
    out = {name: np.array(values, dtype=object) for name, values in cols.items() if name != "crop"}
    out["key"], out["det"], out["n"] = (np.asarray(cols[c], np.int64) for c in ("key", "det", "n"))
    out["crop"] = np.stack(cols["crop"])  # (rows, S, S, 3) uint8
    return out


class _Infer:
    """An inference actor: the stage's model built once; crops in, the model's outputs out (crops dropped)."""

    def __init__(self, model, model_args: tuple):
        self.model = model(*model_args)

    def __call__(self, batch: dict) -> dict:
        # Rows without a crop (det -1) carry a blank one, so every batch has the same columns.
        outputs = self.model(batch["crop"])  # {name: (rows, ...)}
        return {**{k: v for k, v in batch.items() if k != "crop"}, **outputs}


def _pause_if_armed() -> None:
    folder = os.environ.get(PAUSE_ENV)
    if folder and os.path.exists(os.path.join(folder, "arm")):
        Path(folder, f"paused.{os.getpid()}").touch()
        time.sleep(600)  # until the test kills this node
