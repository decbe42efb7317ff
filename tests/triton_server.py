"""Start the real `tritonserver` binary from the nvidia-pytriton wheel on 127.0.0.1.

The wheel ships the server with the Python backend only. Its backend stub
embeds CPython: it links the shared libpython3.11 and needs NumPy < 2, so it
runs in `.venv-triton` (built by `tests/triton_env.sh`), found through `PATH`
(the embedded interpreter locates its prefix from the first `python3` on
PATH, and the venv's `pyvenv.cfg` brings its site-packages). Used by the
tests' fixture and by `bench/bench_triton.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB_ENV = Path(os.environ.get("TRITON_STUB_ENV", REPO / ".venv-triton"))


class TritonStartError(RuntimeError):
    """The server did not become ready; the message carries its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pytriton_dist() -> tuple[Path, Path]:
    """(tritonserver dist folder, bundled shared libraries folder) inside the installed wheel."""
    import pytriton

    root = Path(pytriton.__file__).resolve().parent
    return root / "tritonserver", root.parent / "nvidia_pytriton.libs"


def ensure_stub_env() -> Path:
    """Build `.venv-triton` if missing (idempotent; the script keeps a stamp)."""
    env = {**os.environ, "MAIN_PY": sys.executable, "TRITON_STUB_ENV": str(STUB_ENV)}
    subprocess.run(["bash", str(REPO / "tests" / "triton_env.sh")], check=True, cwd=REPO, env=env)
    return STUB_ENV


@dataclass
class TritonServer:
    """One `tritonserver` process serving `model_repository`; `stop()` ends it."""

    model_repository: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="trapkit-triton-")))
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    shm_prefix: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log written)"

    def _backends(self) -> Path:
        """A private backend folder: the wheel's Python backend plus the stub for this CPython."""
        dist, _ = _pytriton_dist()
        backends = self.workdir / "backends"
        if not backends.exists():
            shutil.copytree(dist / "backends", backends)
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                        backends / "python" / "triton_python_backend_stub")
        return backends

    def _env(self) -> dict[str, str]:
        _, libs = _pytriton_dist()
        env = dict(os.environ)
        # libpython of the CPython both venvs were made from, then the wheel's own libraries.
        libdirs = [sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(d for d in libdirs if d)
        env["PATH"] = f"{STUB_ENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
        return env

    def start(self, timeout: float = 120.0) -> TritonServer:
        ensure_stub_env()
        dist, _ = _pytriton_dist()
        self.shm_prefix = f"trapkit_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        cmd = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backends()}",
            f"--cache-directory={dist / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=3",
            # Unique shared-memory names: several servers may run on one machine.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--log-verbose=0",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with code {self.process.returncode}; log:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise TritonStartError(f"tritonserver not ready after {timeout:.0f} s; log:\n{self.log()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, kill: bool = False) -> None:
        """SIGINT for a clean exit (SIGKILL with `kill=True`, to simulate a crash)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGINT)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        # A killed server leaves its Python-backend shared memory behind.
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*") if self.shm_prefix else ():
            leftover.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

