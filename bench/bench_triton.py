"""Triton throughput: 1 and 8 concurrent clients, dynamic batching on and off, against the real server.

Starts the `tritonserver` binary from nvidia-pytriton on 127.0.0.1 with the
Python-backend model (model.onnx through onnxruntime), once with
`dynamic_batching` and once without, and drives it with N client threads,
each with its own `tritonclient.http` client sending `--request-batch` images
per request (1 by default: the case dynamic batching exists for). The
baseline is the same model in local onnxruntime, in this process, at the
server's max batch size and at the request batch.

    .venv/bin/python bench/bench_triton.py                   # EfficientNet-Lite0, 224 px
    .venv/bin/python bench/bench_triton.py --model tiny      # a 32 px toy model: per-request overhead
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from triton_repo import python_repo  # noqa: E402
from triton_server import TritonServer  # noqa: E402

CACHE = REPO / "bench" / "results" / "cache"


def model_onnx(name: str) -> Path:
    """model.onnx for `imagenet-lite0`, `tiny`, or a path; exports are cached under bench/results/cache."""
    if name not in ("imagenet-lite0", "tiny"):
        return Path(name)
    path = CACHE / name / "model.onnx"
    if path.is_file():
        return path
    import torch

    from trapkit.export.onnx_export import export_onnx, load_source
    from trapkit.spec import ModelSpec
    from trapkit.train.model import build_model

    if name == "tiny":
        torch.manual_seed(0)
        spec = ModelSpec(arch="test_efficientnet", labels=("a", "b", "c", "d", "e"), feat_dim=16, head_hidden=(12,),
                         input_size=32, name="tiny")
        model = build_model(spec, "none").eval()
    else:
        model = load_source("imagenet-lite0")
    export_onnx(model, path)
    return path


def drive(url: str, model: str, images: np.ndarray, clients: int, requests_per_client: int, batch: int) -> float:
    """Images per second with `clients` threads each sending `requests_per_client` requests of `batch` images."""
    import tritonclient.http as httpclient

    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client_loop(k: int) -> None:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=600)
        out = [httpclient.InferRequestedOutput("probs")]
        try:
            barrier.wait()
            for r in range(requests_per_client):
                start = (k * requests_per_client + r) * batch % (len(images) - batch + 1)
                chunk = images[start:start + batch]
                inp = httpclient.InferInput("images", list(chunk.shape), "UINT8")
                inp.set_data_from_numpy(chunk)
                client.infer(model, [inp], outputs=out)
        except BaseException as e:  # reported after the run
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return clients * requests_per_client * batch / elapsed


def local_rate(onnx: Path, images: np.ndarray, batch: int, repeats: int) -> float:
    from trapkit.serve.runtime import OnnxRuntime

    rt = OnnxRuntime(onnx)
    rt.predict(images[:batch])
    t0 = time.perf_counter()
    n = 0
    for r in range(repeats):
        start = r * batch % (len(images) - batch + 1)
        rt.predict(images[start:start + batch])
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imagenet-lite0", help="imagenet-lite0, tiny, or a model.onnx path")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--images", type=int, default=256, help="images per configuration and client count")
    ap.add_argument("--request-batch", type=int, default=1, help="images per request")
    ap.add_argument("--max-batch", type=int, default=16, help="server max_batch_size")
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported, with the range")
    args = ap.parse_args()

    from trapkit.export.onnx_export import bundled_parity_images
    from trapkit.graph import read_spec

    onnx = model_onnx(args.model)
    spec = read_spec(onnx)
    photos = bundled_parity_images(spec)  # (10, S, S, 3) uint8
    images = np.concatenate([photos] * max(1, (args.max_batch * 2) // len(photos) + 1))
    print(f"model {spec.name}: {spec.input_size} px, {spec.num_classes} classes; request batch {args.request_batch}, "
          f"server max batch {args.max_batch}; {args.images} images per row")

    base_req = median(local_rate(onnx, images, args.request_batch, max(8, args.images // args.request_batch))
                      for _ in range(args.repeats))
    base_max = median(local_rate(onnx, images, args.max_batch, max(4, args.images // args.max_batch))
                      for _ in range(args.repeats))
    print(f"baseline local onnxruntime: {base_req:.1f} images/s at batch {args.request_batch}, "
          f"{base_max:.1f} images/s at batch {args.max_batch}")
    vs = f"vs local b{args.request_batch}"
    print(f"{'dynamic batching':>16} {'clients':>8} {'images/s':>9} {'range':>15} {vs:>12}")
    with tempfile.TemporaryDirectory(prefix="trapkit-bench-triton-") as tmp:
        for dynamic in (False, True):
            repo = Path(tmp) / ("dyn" if dynamic else "plain")
            python_repo(onnx, repo, "m", max_batch_size=args.max_batch, dynamic_batching=dynamic)
            with TritonServer(repo, workdir=Path(tmp) / f"server-{repo.name}") as server:
                drive(server.url, "m", images, 2, 4, args.request_batch)  # warm-up
                for clients in args.clients:
                    per_client = max(1, args.images // clients // args.request_batch)
                    rates = [drive(server.url, "m", images, clients, per_client, args.request_batch)
                             for _ in range(args.repeats)]
                    rate = median(rates)
                    spread = f"{min(rates):.1f}-{max(rates):.1f}"
                    print(f"{'on' if dynamic else 'off':>16} {clients:>8} {rate:>9.1f} {spread:>15} "
                          f"{rate / base_req:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
