"""`trapkit classify` throughput locally and on Ray: crops per second, and Ray's overhead on one node.

Folder and model as in bench_classify.py: camera-trap-sized JPEGs (2048x1536, every third
one 12 MP), 1-5 detections each; `--images-per-core` x cores entries in the detections
file cycle over `--distinct` photos (a big run needs no big folder; the photos are then in
the page cache, as on a warm NFS client). Model: EfficientNet-Lite0 224 px in ONNX (the
real offline ImageNet weights, or `--random-weights`: the same graph, the same speed).
For each core count in `--cpus`, each configuration runs in its own process, pinned to its
cores (Ray's processes inherit the pinning, so "1 core" really is one core):

- local: `classify_images` with trapkit's default threads for that many cores;
- `--ray local`: a Ray cluster inside the process with that many CPUs: Ray Data tasks
  decoding, onnxruntime actors (one thread each) classifying;
- once, a head plus a worker node (`ray start`, half the largest count each, pinned to
  separate cores) on 127.0.0.1, the driver on all of them.

Each configuration runs a small job (a fifth of the entries) to warm up (Ray's worker
processes start and import once per cluster), the small job again, and then the full one,
on the same connection. "end to end": the full job's `classify_images` call, its start included
(Ray starting actors that load the model). "marginal": what the full job cost beyond the
small one, (crops_full - crops_small) / (t_full - t_small): the start cancels out, and so
does Ray's head start of decoding while the actors load (it changes when results come back,
not what they cost). Starting the cluster itself (`ray.init`, `ray start`) is not counted:
a cluster starts once for a season, not per job.
Configurations alternate, best of `--repeats` each (the machine may be shared).

CPU ms per crop: the CPU time of every process of the configuration (the driver, and for
Ray the GCS, raylets, workers and actors: found by an environment variable they all
inherit; read four times a second, so processes that exit count too), end to end and marginal as
above. It moves far less than wall-clock time when other work shares the machine (where
wall clock favours whichever configuration runs more processes), and on a node of its own,
CPU-bound, throughput is cores / CPU per crop: the ratio of CPU per crop is Ray's overhead.

Target: Ray on one node within 10% of local (at the largest core count).

    .venv/bin/python bench/bench_scale.py [--cpus 1 2] [--images-per-core 300] [--repeats 3] [--workdir DIR]
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
MARK = "TRAPKIT_BENCH_RUN"  # in the environment of every process a configuration starts (Ray's included)


class TreeCPU:
    """CPU seconds used by every process whose environment holds one of `marks` (Ray's processes inherit it).

    A thread reads each such process's CPU time four times a second and keeps the last value seen, so a
    process that exits (Ray ends a job's actors, and the raylet reaps them without adding them to its own
    children's time) still counts, up to its last quarter second.
    """

    def __init__(self, marks: list[bytes]):
        import threading

        self.marks, self.tick = set(marks), os.sysconf("SC_CLK_TCK")
        self.seen: dict[int, float] = {}
        self.ours: set[str] = set()
        self.others: set[str] = set()  # pids are not reused within a benchmark run's minutes
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self._poll()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or proc.name in self.others:
                continue
            try:
                if proc.name not in self.ours:
                    if not self.marks & set((proc / "environ").read_bytes().split(b"\0")):
                        self.others.add(proc.name)  # read once: an environment does not change
                        continue
                    self.ours.add(proc.name)
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            with self.lock:
                self.seen[int(proc.name)] = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def _run(self) -> None:
        while not self.stopped.wait(0.25):
            self._poll()

    def total(self) -> float:
        """CPU seconds of every process seen so far (up to its last reading)."""
        self._poll()
        with self.lock:
            return sum(self.seen.values())

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def configs(counts: list[int]) -> dict:
    """name: (cores, Ray address: None for local, "local", or "cluster" for the two-node cluster)."""
    out = {}
    for n in counts:
        cores = set(range(n))
        out[f"local, {n} core(s)"] = (cores, None)
        out[f"--ray local, {n} CPU(s)"] = (cores, "local")
    top = max(counts)
    if top >= 2:
        out[f"head + worker node, {top // 2} CPU(s) each"] = (set(range(top)), "cluster")
    return out


def child(args) -> None:
    """One configuration, in this (pinned) process: prints {"small": [s, cpu s, crops], "full": [...]}."""
    os.sched_setaffinity(0, set(args.cores))
    import logging

    import numpy as np

    from trapkit.cluster import ClusterSettings, connect
    from trapkit.serve import classify
    from trapkit.serve.ray_classify import RayExecutor
    from trapkit.serve.runtime import open_runtime
    from trapkit.serve.settings import ClassifySettings, Parallelism

    logging.basicConfig(level=logging.WARNING)
    cpus = len(args.cores)
    work = Path(args.workdir)
    par = Parallelism.for_cpus(cpus)
    settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency, batch_size=32)
    cluster = None
    if args.address:
        cluster = ClusterSettings(args.address, cpus=cpus if args.address == "local" else None)

    tree, results = TreeCPU([m.encode() for m in args.marks]), {}
    with open_runtime(work / "lite0.onnx", threads=1 if cluster else par.threads) as runtime, \
            (connect(cluster) if cluster else _Nothing()):
        runtime.predict(np.zeros((32, 224, 224, 3), np.uint8))  # warm-up: first call allocates
        for size in ("warm-up", "small", "full"):  # the warm-up: worker processes start and import once
            out = work / f"out-{os.getpid()}.json"
            md = work / f"md-{'small' if size == 'warm-up' else size}-{cpus}.json"
            start, cpu = time.perf_counter(), tree.total()
            summary = classify.classify_images(classify.ClassifyPaths(work / "images", out, md), runtime, settings,
                                               executor=RayExecutor(cluster) if cluster else None)
            results[size] = [time.perf_counter() - start, tree.total() - cpu, summary.classified_detections]
            out.unlink()
    tree.stop()
    print(json.dumps(results))


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_config(workdir: Path, cores: set[int], address: str | None, env: dict, marks: list[str]) -> dict:
    """One configuration in a child process; `marks` (VAR=value) find the processes whose CPU time it counts."""
    run = f"{MARK}={os.getpid()}-{time.monotonic_ns()}"
    cmd = [sys.executable, __file__, "--child", "--workdir", str(workdir), "--cores", *map(str, sorted(cores)),
           "--marks", run, *marks]
    if address:
        cmd += ["--address", address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **env, MARK: run.split("=", 1)[1]})
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    (t0, c0, n0), (t1, c1, n1) = r["small"], r["full"]
    return {"marginal": (n1 - n0) / (t1 - t0), "marginal_cpu_ms": 1000 * (c1 - c0) / (n1 - n0),
            "end_to_end": n1 / t1, "cpu_ms": 1000 * c1 / n1, "crops": n1, "small_s": t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="core counts to measure")
    ap.add_argument("--images-per-core", type=int, default=300,
                    help="entries in a configuration's run per core it has (each run takes about as long)")
    ap.add_argument("--distinct", type=int, default=48, help="photos built; entries cycle over them")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the folder and ONNX model here between runs")
    ap.add_argument("--random-weights", action="store_true",
                    help="Lite0 with random weights (same graph and speed; no offline weights package needed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cores", type=int, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--address", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--marks", nargs="+", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from bench_classify import build_folder
    from ray_cluster import MARK as cluster_mark
    from ray_cluster import RayCluster

    if len(os.sched_getaffinity(0)) < max(args.cpus):
        sys.exit(f"bench_scale needs {max(args.cpus)} cores")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-bench-scale-"))
    doc = json.loads(build_folder(workdir, args.distinct).read_text())
    model(workdir, args.random_weights)
    for n in args.cpus:
        for size, count in (("small", args.images_per_core * n // 5), ("full", args.images_per_core * n)):
            entries = [doc["images"][k % len(doc["images"])] for k in range(count)]
            (workdir / f"md-{size}-{n}.json").write_text(json.dumps({**doc, "images": entries}))
    plan = configs(args.cpus)
    print(f"{args.images_per_core} entries per core over {args.distinct} photos (a third 4000x3000, the rest "
          f"2048x1536, 1-5 crops each); EfficientNet-Lite0 224 px ONNX, batch 32; {os.cpu_count()} CPUs here; "
          f"load average {os.getloadavg()[0]:.2f} at start; workdir {workdir}")
    cluster = None
    best: dict[str, dict] = {}
    try:
        if any(address == "cluster" for _, address in plan.values()):
            top = max(args.cpus)
            cluster = RayCluster(cpus=top // 2, head_cores=set(range(top // 2)),
                                 worker_cores=set(range(top // 2, top)), object_store=2**30)
            os.environ.update(cluster.driver_env)
            cluster.start()
        # `--ray local` clusters keep their session files in the work folder, not /tmp/ray.
        local_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(workdir / "ray")}
        for _ in range(args.repeats):
            for name, (cores, address) in plan.items():
                if address == "cluster":
                    nodes = [f"{cluster_mark}={node}-{cluster.id}" for node in ("head", "worker")]
                    r = run_config(workdir, cores, cluster.address, cluster.driver_env, nodes)
                else:
                    r = run_config(workdir, cores, address, local_env, [])
                if name not in best or r["marginal"] > best[name]["marginal"]:
                    best[name] = r
    finally:
        if cluster:
            cluster.stop()
    print(f"best of {args.repeats}, load average {os.getloadavg()[0]:.2f} at the end:")
    for name, b in best.items():
        print(f"  {name:<34} marginal {b['marginal']:6.1f} crops/s, {b['marginal_cpu_ms']:5.1f} CPU ms/crop; end to "
              f"end {b['end_to_end']:6.1f} crops/s, {b['cpu_ms']:5.1f} CPU ms/crop ({b['crops']} crops; the small "
              f"job took {b['small_s']:.1f} s)")

    def ratio(a: str, b: str, what: str) -> None:
        if a in best and b in best:
            print(f"  {what}: crops/s marginal {best[a]['marginal'] / best[b]['marginal']:.2f}, end to end "
                  f"{best[a]['end_to_end'] / best[b]['end_to_end']:.2f}; CPU per crop marginal "
                  f"{best[a]['marginal_cpu_ms'] / best[b]['marginal_cpu_ms']:.2f}, end to end "
                  f"{best[a]['cpu_ms'] / best[b]['cpu_ms']:.2f}")

    for n in args.cpus:
        target = " (target: crops/s >= 0.90)" if n == max(args.cpus) else ""
        ratio(f"--ray local, {n} CPU(s)", f"local, {n} core(s)", f"Ray on one node / local, {n} core(s){target}")
    lo, hi = min(args.cpus), max(args.cpus)
    if lo != hi:
        ratio(f"--ray local, {hi} CPU(s)", f"--ray local, {lo} CPU(s)", f"Ray, {hi} CPUs / {lo}")
        ratio(f"local, {hi} core(s)", f"local, {lo} core(s)", f"local, {hi} cores / {lo}")
    if hi >= 2:
        ratio(f"head + worker node, {hi // 2} CPU(s) each", f"--ray local, {hi} CPU(s)",
              f"head + worker node / one node of {hi} CPUs")


def model(workdir: Path, random_weights: bool) -> Path:
    """lite0.onnx in `workdir`: the offline ImageNet weights (bench_classify), or random ones (same graph)."""
    path = workdir / "lite0.onnx"
    if path.exists():
        return path
    if not random_weights:
        from bench_classify import lite0_onnx

        return lite0_onnx(workdir)
    from trapkit.export.onnx_export import export_onnx
    from trapkit.spec import ModelSpec
    from trapkit.train.model import build_model

    spec = ModelSpec(arch="tf_efficientnet_lite0", labels=tuple(f"class{i}" for i in range(1000)), input_size=224,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name="lite0-random")
    return export_onnx(build_model(spec, "none").eval(), path).path


if __name__ == "__main__":
    main()
