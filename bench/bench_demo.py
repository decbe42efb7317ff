"""The Gradio demo under concurrent users: requests per second with Gradio batching on and off.

`trapkit demo` serves the real offline ImageNet EfficientNet-Lite0 (224 px,
ONNX) on 127.0.0.1 with the bundled MegaDetector detections, in its own
process; each of `--clients` gradio_client users (threads here) sends
`--requests` one-photo requests (the bundled animal photos in turn, 1-6 crops
each) as fast as answers come back. Baseline in the same run: the same server
with `--max-batch 1` (every request its own model call). Figures: requests/s,
median latency, and the ratio.

    .venv/bin/python bench/bench_demo.py [--clients 8] [--requests 6] [--batch 8]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PHOTOS = ("ocelot.jpg", "american_black_bear.jpg", "african_elephants.jpg", "domestic_cattle.jpg", "domestic_dog.jpg")


def export_lite0(workdir: Path) -> Path:
    from trapkit.export.onnx_export import export_onnx
    from trapkit.train.model import imagenet_lite0

    path = workdir / "lite0" / "model.onnx"
    if not path.is_file():
        export_onnx(imagenet_lite0(), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, max_batch: int, port: int) -> subprocess.Popen:
    from trapkit.samples import SAMPLE_DETECTIONS

    cmd = [sys.executable, "-m", "trapkit.app.cli", "demo", "--model", str(model), "--detections",
           str(SAMPLE_DETECTIONS), "--max-batch", str(max_batch), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"trapkit demo did not start: {' '.join(cmd)}")


def run(url: str, clients: int, requests: int) -> tuple[float, float]:
    """(requests per second, median seconds per request) for `clients` concurrent users."""
    from gradio_client import Client, handle_file

    from trapkit.samples import SAMPLES_DIR

    users = [Client(url, verbose=False, download_files=False, analytics_enabled=False) for _ in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()

    def user(i: int) -> None:
        for j in range(requests):
            photo = handle_file(str(SAMPLES_DIR / PHOTOS[(i + j) % len(PHOTOS)]))
            t = time.perf_counter()
            users[i].predict([photo], None, api_name="/classify")
            with lock:
                latencies.append(time.perf_counter() - t)

    users[0].predict([handle_file(str(SAMPLES_DIR / PHOTOS[0]))], None, api_name="/classify")  # warm-up
    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * requests / (time.perf_counter() - start), statistics.median(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--batch", type=int, default=8, help="max_batch_size of the batched run")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-bench-demo-"))
    model = export_lite0(workdir)
    print(f"EfficientNet-Lite0 ONNX, {args.clients} clients x {args.requests} one-photo requests, bundled detections")
    results = {}
    for label, max_batch in (("batch 1 (baseline)", 1), (f"batch <= {args.batch}", args.batch)):
        port = free_port()
        server = serve(model, max_batch, port)
        try:
            rate, median = run(f"http://127.0.0.1:{port}/", args.clients, args.requests)
        finally:
            server.terminate()
            server.wait(timeout=30)
        results[label] = rate
        print(f"{label:<20} {rate:6.2f} requests/s   median latency {median * 1000:7.0f} ms")
    base, batched = results.values()
    print(f"batched / baseline: {batched / base:.2f}x")


if __name__ == "__main__":
    main()
