"""`trapkit classify` throughput locally and on Ray: crops per second, and Ray's overhead on one node.

Folder and model as in bench_classify.py: camera-trap-sized JPEGs (2048x1536, every
third one 12 MP), 1-5 detections each, the real offline ImageNet EfficientNet-Lite0
(224 px) in ONNX. Configurations, each in its own process, pinned to its cores
(Ray's processes inherit the pinning, so "1 core" really is one core):

- local, 1 core and 2 cores: `classify_images` with trapkit's default threads;
- `--ray local` on 1 core (cluster of 1 CPU) and on 2 cores (2 CPUs): a Ray cluster inside
  the process, Ray Data tasks decoding, onnxruntime actors classifying;
- a head plus a worker node (`ray start`, 1 CPU each, pinned to core 0 and core 1), on 127.0.0.1.

Each configuration is timed on a small run (`--small` images) and the full run (`--images`):
"end to end" is the full run's crops/s, pipeline start included (actors loading the model);
"steady" removes that start: (crops_full - crops_small) / (t_full - t_small). Cluster start
(`ray.init`, `ray start`) is not counted: a cluster is started once per season, not per job.
Configurations alternate, best of `--repeats` each (the machine may be shared).

Target: Ray on one node within 10% of local (steady, 2 cores).

    .venv/bin/python bench/bench_scale.py [--images 144] [--small 12] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))  # tests/ray_cluster.py: a real two-node cluster on loopback

CONFIGS = {  # name: (cores, Ray address or None for local)
    "local, 1 core": ({0}, None),
    "local, 2 cores": ({0, 1}, None),
    "--ray local, 1 CPU": ({0}, "local"),
    "--ray local, 2 CPUs": ({0, 1}, "local"),
    "head + worker node, 1 CPU each": ({0, 1}, "cluster"),
}


def child(args) -> None:
    """One configuration, in this (pinned) process: prints {"small": [s, crops], "full": [s, crops]}."""
    os.sched_setaffinity(0, set(args.cores))
    import logging

    import numpy as np

    from trapkit.cluster import ClusterSettings, connect
    from trapkit.serve.classify import ClassifyPaths, ClassifySettings, classify_images
    from trapkit.serve.ray_classify import RayExecutor
    from trapkit.serve.runtime import open_runtime
    from trapkit.serve.settings import Parallelism

    logging.basicConfig(level=logging.WARNING)
    cpus = len(args.cores)
    work = Path(args.workdir)
    par = Parallelism.for_cpus(cpus)
    settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency, batch_size=32,
                                checkpoint_every=10_000)
    cluster = None if args.address is None else ClusterSettings(args.address, cpus=cpus if args.address == "local"
                                                                else None)
    results = {}
    with open_runtime(work / "lite0.onnx", threads=1 if cluster else par.threads) as runtime, \
            (connect(cluster) if cluster else _nothing()):
        runtime.predict(np.zeros((32, 224, 224, 3), np.uint8))  # warm-up: first call allocates
        for size in ("small", "full"):
            out = work / f"out-{os.getpid()}.json"
            start = time.perf_counter()
            summary = classify_images(ClassifyPaths(work / "images", out, work / f"md-{size}.json"), runtime,
                                      settings, executor=RayExecutor(cluster) if cluster else None)
            results[size] = [time.perf_counter() - start, summary.classified_detections]
            out.unlink()
    print(json.dumps(results))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_config(workdir: Path, cores: set[int], address: str | None, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", "--workdir", str(workdir), "--cores", *map(str, sorted(cores))]
    if address:
        cmd += ["--address", address]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=144)
    ap.add_argument("--small", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the folder and ONNX model here between runs")
    ap.add_argument("--only", nargs="+", default=None, help="configurations to run (names as printed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cores", type=int, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--address", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from bench_classify import build_folder, lite0_onnx
    from ray_cluster import RayCluster

    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench_scale needs 2 cores")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-bench-scale-"))
    md = build_folder(workdir, args.images)
    lite0_onnx(workdir)
    doc = json.loads(md.read_text())
    for size, n in (("small", args.small), ("full", args.images)):
        (workdir / f"md-{size}.json").write_text(json.dumps({**doc, "images": doc["images"][:n]}))
    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    load = os.getloadavg()
    print(f"{args.images} images ({sum(len(im['detections']) for im in doc['images'])} crops), small run "
          f"{args.small}; EfficientNet-Lite0 224 px ONNX, batch 32; load average {load[0]:.2f} at start; "
          f"workdir {workdir}")
    cluster = None
    if any(address == "cluster" for _, address in configs.values()):
        cluster = RayCluster(cpus=1, head_cores={0}, worker_cores={1})
    best: dict[str, dict] = {}
    try:
        if cluster:
            os.environ.update(cluster.driver_env)
            cluster.start()
        env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        for _ in range(args.repeats):
            for name, (cores, address) in configs.items():
                if address == "cluster":
                    r = run_config(workdir, cores, cluster.address, cluster.driver_env)
                else:
                    r = run_config(workdir, cores, address, env)
                steady = (r["full"][1] - r["small"][1]) / (r["full"][0] - r["small"][0])
                end_to_end = r["full"][1] / r["full"][0]
                old = best.get(name)
                if old is None or steady > old["steady"]:
                    best[name] = {"steady": steady, "end_to_end": end_to_end, "start": r["small"][0],
                                  "crops": r["full"][1]}
    finally:
        if cluster:
            cluster.stop()
    print(f"best of {args.repeats}, load average {os.getloadavg()[0]:.2f} at the end:")
    for name, b in best.items():
        print(f"  {name:<32} steady {b['steady']:6.1f} crops/s, end to end {b['end_to_end']:6.1f} crops/s "
              f"({b['crops']} crops; a {args.small}-image run takes {b['start']:.1f} s)")

    def ratio(a: str, b: str, what: str) -> None:
        if a in best and b in best:
            print(f"  {what}: {best[a]['steady'] / best[b]['steady']:.2f} "
                  f"(end to end {best[a]['end_to_end'] / best[b]['end_to_end']:.2f})")

    ratio("--ray local, 2 CPUs", "local, 2 cores", "Ray on one node / local, 2 cores (target >= 0.90)")
    ratio("--ray local, 1 CPU", "local, 1 core", "Ray on one node / local, 1 core")
    ratio("--ray local, 2 CPUs", "--ray local, 1 CPU", "Ray, 2 workers / 1 worker")
    ratio("local, 2 cores", "local, 1 core", "local, 2 cores / 1 core")
    ratio("head + worker node, 1 CPU each", "--ray local, 2 CPUs", "head + worker node / one node of 2 CPUs")


if __name__ == "__main__":
    main()
