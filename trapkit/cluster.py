"""Batch jobs on a Ray cluster: the address, the connection, and the one way both stages run work on it.

`trapkit classify --ray` and `trapkit al init|next --ray` (embedding the pool)
hand `Cluster.map_prepared` a work list and a model. Nothing large crosses
Ray's object store, and this process does a few Ray calls per chunk of
images, never per crop:

    work list: (key, file, boxes)          this process (the driver): reads no image; cuts the list into
      |                                    chunks of `images_per_task` images, a queue
      v  a chunk: paths and boxes only
    model actors (one per CPU, or per GPU) each pulls the next chunk as it hands one back (two in flight,
      |                                    so it never waits on the driver); per chunk: opens, decodes and
      |                                    crops every image through `trapkit.prepare.prepare_entry` (the
      |                                    core's one preparation path) and runs its own model over the crops
      v  per chunk: each image's outputs (C floats per crop for classify), failure, time and warnings
    this process: one `ItemResult` per work item, in any order

Decoding and inference share the actor's core, one after the other, as the
local executor's threads share a core. An actor whose process or node dies
has its chunks handed to the others (and is replaced when the cluster has
room again); a chunk is never counted twice. Plain Ray actors fed from a
queue were measured against Ray Data with one fused actor stage
(bench/bench_scale.py --ray-data): as fast, with less driver CPU, and they work
through Ray Client unchanged.

Images must be on a path every node sees at the same place (NFS, a mounted
bucket): `Cluster.check_visible` checks it on every node before any work.
Ray is an optional dependency (`trapkit[ray]`), imported inside functions only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.machine import available_cpus
from trapkit.prepare import Preprocessing, prepare_entry

log = logging.getLogger(__name__)

LOCAL, AUTO = "local", "auto"
INSTALL_HINT = "pip install 'trapkit[ray]'"
IN_FLIGHT = 2  # chunks queued on each actor: it starts the next as soon as it hands one back
TASK_RETRIES = 5  # a chunk whose actor died is handed on this many times; the visibility probe retries as often
CONNECT_TIMEOUT_S = 5.0
STALL_WARNING_S = 60.0  # no actor started for this long: say what the job waits for
# Test-only hooks (tests/test_ray.py): while the file `<dir>/arm` exists, a node whose processes have PAUSE_ENV
# pauses every chunk (after writing `<dir>/paused.<pid>`), and a node with HOLD_ENV holds its chunks until one
# has paused: so the paused node surely takes part, and the test kills it at a known point, mid-run, instead of
# guessing when it is busy.
PAUSE_ENV = "TRAPKIT_TEST_RAY_PAUSE_DIR"
HOLD_ENV = "TRAPKIT_TEST_RAY_HOLD_DIR"
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_TOKEN_ADVICE = ("put the cluster's token in ~/.ray/auth_token or in a file named by RAY_AUTH_TOKEN_PATH ('ray "
                 "get-auth-token' on the head prints it)")


@dataclass(frozen=True)
class ClusterSettings:
    """Where a job runs and how wide. `address`: `host:port` (the head's GCS port, 6379 by default),
    `ray://host:port` (Ray Client), `auto` (the cluster this machine belongs to) or `local` (a cluster
    started inside this process, on loopback, gone when the job ends).

    `actors`: most model actors (default: one per GPU, or one per CPU on a cluster without GPUs).
    `cpus`: with `local`, the CPUs that cluster may use (default: every CPU this process may run on).
    `images_per_task`: images in one chunk of work (one call to an actor).
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
    """The `ray` module, or a one-line error saying how to install it.

    For the address `local`, first (Ray reads these at import): a cluster this process starts listens
    on loopback only (Ray's own switch; by default it binds every interface) and reports no usage to
    Ray's servers. Variables already set are left as they are.
    """
    if address == LOCAL:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
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
        ray.init(address=LOCAL, num_cpus=settings.cpus or available_cpus(), include_dashboard=False, **quiet)
        return
    if address != AUTO:
        _check_reachable(address)
        _check_token(address, address)
    try:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as e:
            # The head starts one Ray Client server per client, and its start-up can lose a race with the
            # process it starts on a busy head ("Starting Ray client server failed", or an error inside
            # start_specific_server); a second client gets a new server. Anything else is not retried.
            if not (address.startswith("ray://") and ("Starting Ray client server failed" in str(e)
                                                      or "start_specific_server" in str(e))):
                raise
            log.debug("Ray Client server did not start; trying once more: %s", _one_line(e))
            ray.shutdown()
            ray.init(address=address, **quiet)
    except ConnectionError as e:
        if address == AUTO:
            found = _local_head(ray)
            if found is None:
                raise TrapkitError("--ray auto found no running Ray cluster on this machine; start one with "
                                   "'ray start --head', or give the head's address") from None
            _check_token(f"{found} (--ray auto)", found)
        raise TrapkitError(f"cannot connect to the Ray cluster at {address} ({_one_line(e)}); check the address "
                           "and that 'ray status' works there") from None
    except Exception as e:  # noqa: BLE001 - version mismatch, authentication: Ray's reason, on one line
        if type(e).__name__ == "AuthenticationError":  # token mode here, no token found (ray.exceptions)
            raise TrapkitError(f"cannot connect to the Ray cluster at {address}: RAY_AUTH_MODE=token is set here "
                               f"but no token was found; {_TOKEN_ADVICE}") from None
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


def _check_token(address: str, target: str) -> None:
    """Ask the head at `target` (host:port: its GCS, or with `ray://` its Ray Client server) a harmless question,
    with what Ray would send from here (this machine's token when RAY_AUTH_MODE=token): a refusal is Ray's token
    authentication, said in one line instead of Ray's retries (20-30 s) and "Failed to connect".

    `ray start --head` turns token authentication on when ~/.ray/auth_token exists (an earlier `ray.init()` or
    `--ray local` writes one), while a driver given an address keeps RAY_AUTH_MODE's default, disabled.
    Anything but a refusal is left to `ray.init` (this asks through Ray's own gRPC stubs, which may move).
    """
    try:
        import grpc
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            _get_authentication_metadata_tuple,
        )
        from ray._raylet import AuthenticationMode, get_authentication_mode
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc, ray_client_pb2, ray_client_pb2_grpc
    except ImportError as e:
        log.debug("cannot ask the cluster about token authentication: %s", e)
        return
    client = target.startswith("ray://")
    with grpc.insecure_channel(target.removeprefix("ray://")) as channel:
        ask = dict(timeout=CONNECT_TIMEOUT_S, metadata=_get_authentication_metadata_tuple())
        try:
            if client:
                ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                    ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), **ask)
            else:
                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(), **ask)
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                log.debug("asking %s: %s", target, e)
                return
    if get_authentication_mode() == AuthenticationMode.TOKEN:
        raise TrapkitError(f"the Ray cluster at {address} refused this machine's token; {_TOKEN_ADVICE}")
    raise TrapkitError(f"the Ray cluster at {address} uses token authentication; set RAY_AUTH_MODE=token here and "
                       f"{_TOKEN_ADVICE}")


def _local_head(ray) -> str | None:
    """host:port of the cluster `ray start` last started on this machine, or None."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(AUTO)
    except Exception as e:  # noqa: BLE001 - none recorded, or Ray moved it: no advice then
        log.debug("no local Ray head found: %s", e)
        return None


def _verbose() -> bool:
    """`-v`: the terminal gets DEBUG records (the root logger's level; trapkit's own may be DEBUG for a log file)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


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
    """A connected cluster: what it has, the visibility check, and the work (see the module docstring)."""

    def __init__(self, ray, settings: ClusterSettings):
        self.ray, self.settings = ray, settings
        resources = ray.cluster_resources()
        self.cpus, self.gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))

    def workers(self) -> list[dict]:
        """The alive nodes that can run a model actor (a head started with --num-cpus=0 cannot)."""
        return [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]

    def check_visible(self, root: Path | None, files: list[str]) -> None:
        """Stop before any work unless every node that runs actors sees `root` and a sample of `files`."""
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
        """Prepare every (key, file, boxes) of `work` and run `model` over the crops, on the cluster's actors.

        `model(*model_args)` is built once in each actor (so both must pickle: a class of an installed
        module, plain arguments and object refs); called with (N, S, S, 3) uint8 crops it returns
        {name: (N, ...) array}. `file` is relative to `root` (joined with `safe_join` on the worker), or a
        full path when `root` is None. `boxes`: normalised [x, y, w, h] boxes to crop, or None for the whole image.
        """
        work = [(int(k), str(f), None if b is None else [[float(v) for v in box] for box in b]) for k, f, b in work]
        if not work:
            return
        per = self.settings.images_per_task
        chunks = [work[i:i + per] for i in range(0, len(work), per)]
        actors = min(len(chunks), self.settings.actors or int(self.gpus or max(1, self.cpus)))
        log.info("Ray cluster: %d images in %d chunks, %d model actor(s)%s", len(work), len(chunks), actors,
                 " on GPUs" if self.gpus else "")
        options = {"num_cpus": 1, "max_restarts": 0, **({"num_gpus": 1} if self.gpus else {})}
        actor = self.ray.remote(**options)(Worker)
        args = (model, tuple(model_args), None if root is None else str(root), prep, batch_size)
        keys = {k for k, _, _ in work}
        finished: set[int] = set()
        try:
            for chunk in _dispatch(self.ray, lambda: actor.remote(*args), actors, chunks):
                for item in unpack(chunk):
                    if item.key in keys and item.key not in finished:  # a chunk done twice is counted once
                        finished.add(item.key)
                        yield item
        except Exception as e:
            raise _as_user_error(self.ray, e) from e
        lost = len(keys) - len(finished)
        if lost:
            raise TrapkitError(f"{lost} image(s) came back from the Ray cluster incomplete; rerun with --resume")


class _Slot:
    """One actor and the number of its calls in flight."""

    def __init__(self, handle):
        self.handle, self.busy, self.alive = handle, 0, True


def _dispatch(ray, start_actor, count: int, chunks: list) -> Iterator[dict]:
    """Hand `chunks` out to `count` actors (`start_actor()` makes one), `IN_FLIGHT` calls each; yield each call's
    result as it comes back. The chunks of an actor that dies go back on the queue, and a new actor takes its
    place (it starts when the cluster has room: a node restarted, or another job done)."""
    retryable = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
    queue = deque(range(len(chunks)))
    tries: Counter = Counter()
    starting: dict = {}  # ready() ref -> slot
    calls: dict = {}  # run() ref -> (slot, chunk index)
    live: list[_Slot] = []

    def start() -> None:
        slot = _Slot(start_actor())
        starting[slot.handle.ready.remote()] = slot

    def feed(slot: _Slot) -> None:
        while queue and slot.alive and slot.busy < IN_FLIGHT:
            i = queue.popleft()
            calls[slot.handle.run.remote(chunks[i])] = (slot, i)
            slot.busy += 1

    def lost(slot: _Slot, reason: BaseException) -> None:
        if slot.alive:  # its other calls fail too: replaced once
            slot.alive = False
            log.warning("a Ray model actor was lost (%s); its work goes to the others", _one_line(reason)[:200])
            with contextlib.suppress(Exception):
                ray.kill(slot.handle)
            live.remove(slot)
            start()

    for _ in range(count):
        start()
    waiting_since = time.monotonic()  # for the warning while no actor has started
    try:
        while queue or calls:
            done, _ = ray.wait([*starting, *calls], num_returns=1, timeout=STALL_WARNING_S)
            if not done:
                if not live:
                    log.warning("no Ray model actor has started for %.0f s: the job waits for the cluster to have "
                                "room for one (a CPU each, a GPU each where there are GPUs)",
                                time.monotonic() - waiting_since)
                continue
            ref = done[0]
            if ref in starting:
                slot = starting.pop(ref)
                try:
                    ray.get(ref)
                except retryable as e:  # died while starting (its node went)
                    slot.alive = False
                    log.debug("a Ray model actor died while starting: %s", _one_line(e))
                    start()
                    continue
                live.append(slot)
                feed(slot)
                continue
            slot, i = calls.pop(ref)
            slot.busy -= 1
            try:
                result = ray.get(ref)
            except retryable as e:
                tries[i] += 1
                if tries[i] > TASK_RETRIES:
                    raise TrapkitError(f"a chunk of {len(chunks[i])} images lost its Ray actor {tries[i]} times "
                                       f"({_one_line(e)[:200]}); check the workers' logs (-v), then rerun with "
                                       "--resume") from None
                queue.appendleft(i)
                lost(slot, e)
                for other in live:
                    feed(other)
                continue
            yield result
            feed(slot)
    finally:
        for slot in [*starting.values(), *live]:
            with contextlib.suppress(Exception):
                ray.kill(slot.handle)


def unpack(chunk: dict) -> Iterator[ItemResult]:
    """A `Worker.run` result -> one `ItemResult` per image of the chunk, its outputs' rows cut out."""
    ends = np.cumsum(chunk["counts"])
    for n, key in enumerate(chunk["keys"]):
        rows = slice(ends[n] - chunk["counts"][n], ends[n])
        failure = chunk["failures"][n]
        outputs = {} if failure else {name: values[rows] for name, values in chunk["outputs"].items()}
        yield ItemResult(key, outputs, failure, chunk["messages"][n], chunk["times"][n], chunk["warnings"][n])


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


class Worker:
    """A model actor: the model built once; each `run` prepares a chunk of work items through the core's one
    preparation path and runs the model over their crops, `batch_size` at a time."""

    def __init__(self, model, model_args: tuple, root: str | None, prep: Preprocessing, batch_size: int):
        import ray

        self.model = model(*model_args)
        self.root, self.prep, self.batch_size = root, prep, batch_size
        self.device = None  # on an actor Ray gave a GPU: JPEGs decoded and cropped there (trapkit.gpu)
        if ray.get_gpu_ids():
            from trapkit.gpu import DevicePreparer, choose_decoder

            choice = choose_decoder("auto")
            if choice.decoder is None:
                log.warning("model actor: decoding on the CPU: %s", choice.reason)
            else:
                self.device = DevicePreparer(prep, "cuda", choice.decoder)

    def ready(self) -> bool:
        return True

    def run(self, chunk: list[tuple[int, str, list | None]]) -> dict:
        """(key, file, boxes) rows -> {"keys", "counts" (crops per image), "failures", "messages", "times",
        "warnings": one per image; "outputs": {name: (sum of counts, ...)}, the images' crops in order}."""
        _pause_if_armed()
        if self.root is not None and not os.path.isdir(self.root):  # a node that joined after `check_visible`
            import ray

            raise TrapkitError(_not_visible(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id(),
                                            f"the image folder {self.root}"))
        rows = [(self.root, file, boxes) for _, file, boxes in chunk]
        if self.device is not None:
            attempts = self.device.prepare(rows)  # crops: tensors in GPU memory
        else:
            attempts = [prepare_entry(*row, self.prep) for row in rows]
        crops = [a.crops for a in attempts if a.crops is not None and len(a.crops)]
        return {"keys": [key for key, _, _ in chunk],
                "counts": [0 if a.crops is None else len(a.crops) for a in attempts],
                "failures": [a.failure for a in attempts], "messages": [a.message for a in attempts],
                "times": [a.time for a in attempts], "warnings": [a.warnings for a in attempts],
                "outputs": run_batched(self.model, _concatenate(crops), self.batch_size)}


def _concatenate(parts: list):
    """(k, S, S, 3) arrays, or tensors in GPU memory, as one (N, S, S, 3); None for none."""
    if not parts:
        return None
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


def run_batched(model, crops, batch_size: int) -> dict[str, np.ndarray]:
    """`model` over (N, S, S, 3) `crops` (an array, or a tensor in GPU memory), `batch_size` at a time:
    {name: (N, ...) array}; {} for no crops."""
    if crops is None or not len(crops):
        return {}
    parts = [model(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _pause_if_armed() -> None:
    folder = os.environ.get(PAUSE_ENV)
    if folder and os.path.exists(os.path.join(folder, "arm")):
        Path(folder, f"paused.{os.getpid()}").touch()
        time.sleep(600)  # until the test kills this node
    folder = os.environ.get(HOLD_ENV)
    while folder and os.path.exists(os.path.join(folder, "arm")) and not any(Path(folder).glob("paused.*")):
        time.sleep(0.05)
