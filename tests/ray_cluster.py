"""A real two-node Ray cluster on 127.0.0.1 for the tests, started with `ray start` and always stopped.

Head and worker node are separate `ray start` process trees, with the CPUs split between them; each
tree is marked by an environment variable, so the worker node's processes are found (and killed) by
their process ids, never by a name. Everything stays on loopback: Ray rewrites `--node-ip-address
127.0.0.1` to the machine's network address unless told not to (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
Ray's own switch, for the head and the drivers; a worker node may not use that switch, so its `ray start`
runs with Ray's localhost rewriting turned off). Usage reporting is off, authentication uses a token in
the cluster's private temp folder, and node deaths are noticed within about two seconds.

Where the OS allows a private mount namespace (root, or unprivileged user namespaces), the worker node
starts in one with an empty tmpfs over `hidden/`: a folder the head and the drivers see and the worker
node does not, as when a node lacks the NFS mount.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trapkit.cluster import HOLD_ENV, PAUSE_ENV

MARK = "TRAPKIT_TEST_RAY_NODE"
# `ray start` with Ray's localhost rewriting off (see the module docstring).
RAY_START = ("import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
             "from ray.scripts.scripts import main; main()")
OBJECT_STORE = 80 * 2**20  # bytes per node: the tests move a few MB of crops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_marked(value: str) -> list[int]:
    pids = []
    needle = f"{MARK}={value}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue  # gone, or not ours to read
    return pids


class RayCluster:
    """`start()` a head and a worker node (`cpus` each); `driver_env` for processes that connect to it."""

    def __init__(self, cpus: int = 1, head_cores: set[int] | None = None, worker_cores: set[int] | None = None,
                 object_store: int = OBJECT_STORE):
        self.tmp = Path(tempfile.mkdtemp(prefix="tkray-", dir="/tmp"))  # short: Ray's socket paths are limited
        self.cpus, self.port, self.object_store = cpus, free_port(), object_store
        self.address = f"127.0.0.1:{self.port}"
        self.client_port = free_port()
        self.hidden = self.tmp / "hidden"
        self.pause = self.tmp / "pause"
        self.hidden.mkdir()
        self.pause.mkdir()
        token = self.tmp / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.id = self.tmp.name
        self.driver_env = {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_TMPDIR": str(self.tmp),
        }
        self.hides = False
        self.cores = {"head": head_cores, "worker": worker_cores}  # CPU affinity of each node's processes

    def _env(self, node: str, **extra) -> dict:
        return {**os.environ, **self.driver_env, MARK: f"{node}-{self.id}",
                # The GCS declares a silent node dead after 3 missed checks 0.5 s apart (default 5 x 3 s).
                "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3", **extra}

    def _ray_start(self, node: str, args: list[str], env: dict, prefix: tuple = ()) -> None:
        cmd = [*prefix, sys.executable, "-c", RAY_START, "start", "--node-ip-address=127.0.0.1",
               f"--num-cpus={self.cpus}", f"--object-store-memory={self.object_store}", "--disable-usage-stats",
               f"--temp-dir={self.tmp}", *args]
        cores = self.cores[node]
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None  # inherited by the node's processes
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, preexec_fn=pin)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")

    def start(self) -> RayCluster:
        self._ray_start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                         f"--ray-client-server-port={self.client_port}"],
                        self._env("head", **{HOLD_ENV: str(self.pause)}))
        self.start_worker()
        return self

    def start_worker(self) -> None:
        """The second node (again, after a test killed it), hiding `hidden/` where the OS allows."""
        env = self._env("worker", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", **{PAUSE_ENV: str(self.pause)})
        prefix = self._mount_namespace()
        self.hides = bool(prefix)
        self._ray_start("worker", [f"--address={self.address}"], env, prefix)
        self.wait_for_nodes(2)

    def _mount_namespace(self) -> tuple:
        """A command prefix that runs the rest with an empty tmpfs over `hidden/`, or () where not allowed."""
        script = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
        for unshare in (["unshare", "--mount", "--propagation", "private"],
                        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
            if shutil.which("unshare") is None:
                return ()
            probe = subprocess.run([*unshare, "sh", "-c", script, str(self.hidden), "true"], capture_output=True)
            if probe.returncode == 0:
                return (*unshare, "sh", "-c", script, str(self.hidden))
        return ()

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        """Block until the cluster has `count` alive nodes (this process must have `driver_env`)."""
        import ray

        deadline = time.monotonic() + timeout
        ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        try:
            while (alive := sum(1 for n in ray.nodes() if n["Alive"])) != count and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            ray.shutdown()
        if alive != count:
            raise RuntimeError(f"the test cluster has {alive} alive nodes, wanted {count}")

    def worker_pids(self) -> list[int]:
        return _pids_marked(f"worker-{self.id}")

    def kill_worker(self) -> list[int]:
        """SIGKILL every process of the worker node, by pid; returns them."""
        pids = self.worker_pids()
        for pid in pids:
            with _gone():
                os.kill(pid, signal.SIGKILL)
        return pids

    def stop(self) -> None:
        """Every process of both nodes gone (SIGTERM, then SIGKILL), the temp folder deleted."""
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            pids = _pids_marked(f"head-{self.id}") + self.worker_pids()
            for pid in pids:
                with _gone():
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _running(p)]
                time.sleep(0.2)
        shutil.rmtree(self.tmp, ignore_errors=True)


class _gone:
    """Ignore a process that already exited."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its parent (init, for Ray's daemons) reaps it
