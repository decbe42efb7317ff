"""`trapkit classify` throughput locally and on Ray: crops per second, and Ray's overhead on one node.

Folder and model as in bench_classify.py: camera-trap-sized JPEGs (2048x1536, every third
one 12 MP), 1-5 detections each; `--images-per-core` x cores entries in the detections
file cycle over `--distinct` photos (a big run needs no big folder; the photos are then in
the page cache, as on a warm NFS client). Model: EfficientNet-Lite0 224 px in ONNX (the
real offline ImageNet weights, or `--random-weights`: the same graph, the same speed).
For each core count in `--cpus`, each configuration runs in its own process, pinned to its
cores (Ray's processes inherit the pinning, so "1 core" really is one core):

- local: `classify_images` with trapkit's default threads for that many cores;
- `--ray local`: a Ray cluster inside the process with that many CPUs: one model actor
  per CPU, each pulling chunks of image paths and boxes, decoding, cropping and classifying
  them (onnxruntime, one thread);
- with `--ray-data`, the same actors as one fused Ray Data actor stage instead of trapkit's
  queue (the design measured against; not the product's path);
- once, a head plus a worker node (`ray start`, half the largest count each, pinned to
  separate cores) on 127.0.0.1, the driver on all of them. On 2 cores that is the widest
  cluster of whole cores this machine can hold: more nodes would share cores.

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
"driver": the CPU of the driver process alone (its Ray threads included), per crop.

Targets: Ray on one node >= 0.9x local's crops/s with <= 1.1x its CPU per crop (at the largest
core count); a head plus a worker node, 1 CPU each, >= 1.8x local on 1 core. The load average
is printed beside every configuration (the machine may be shared).

    .venv/bin/python bench/bench_scale.py [--cpus 1 2] [--images-per-core 300] [--repeats 3] [--workdir DIR]
        [--ray-data] [--images-per-task N]
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

import numpy as np

from trapkit.cluster import Worker

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


def configs(counts: list[int], ray_data: bool) -> dict:
    """name: (cores, Ray address: None for local, "local", or "cluster" for the two-node cluster, Ray Data?)."""
    out = {}
    for n in counts:
        cores = set(range(n))
        out[f"local, {n} core(s)"] = (cores, None, False)
        out[f"--ray local, {n} CPU(s)"] = (cores, "local", False)
        if ray_data:
            out[f"Ray Data fused, {n} CPU(s)"] = (cores, "local", True)
    top = max(counts)
    if top >= 2:
        out[f"head + worker node, {top // 2} CPU(s) each"] = (set(range(top)), "cluster", False)
    return out


def child(args) -> None:
    """One configuration, in this (pinned) process: prints {"small": [s, CPU s, crops, driver CPU s], "full": ...}."""
    os.sched_setaffinity(0, set(args.cores))
    import logging

    from trapkit.cluster import ClusterSettings, connect
    from trapkit.serve import classify
    from trapkit.serve.ray_classify import RayExecutor
    from trapkit.serve.runtime import open_runtime
    from trapkit.serve.settings import ClassifySettings, Parallelism

    logging.basicConfig(level=logging.WARNING)
    if args.ray_data:
        from trapkit.cluster import Cluster

        Cluster.map_prepared = ray_data_map_prepared  # the design measured against, in this process only
    cpus = len(args.cores)
    work = Path(args.workdir)
    par = Parallelism.for_cpus(cpus)
    settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency, batch_size=32)
    cluster = None
    if args.address:
        cluster = ClusterSettings(args.address, cpus=cpus if args.address == "local" else None,
                                  **({"images_per_task": args.images_per_task} if args.images_per_task else {}))

    tree, results = TreeCPU([m.encode() for m in args.marks]), {}
    with open_runtime(work / "lite0.onnx", threads=1 if cluster else par.threads) as runtime, \
            (connect(cluster) if cluster else _Nothing()):
        runtime.predict(np.zeros((32, 224, 224, 3), np.uint8))  # warm-up: first call allocates
        for size in ("warm-up", "small", "full"):  # the warm-up: worker processes start and import once
            out = work / f"out-{os.getpid()}.json"
            md = work / f"md-{'small' if size == 'warm-up' else size}-{cpus}.json"
            start, cpu, driver = time.perf_counter(), tree.total(), time.process_time()
            summary = classify.classify_images(classify.ClassifyPaths(work / "images", out, md), runtime, settings,
                                               executor=RayExecutor(cluster) if cluster else None)
            results[size] = [time.perf_counter() - start, tree.total() - cpu, summary.classified_detections,
                             time.process_time() - driver]
            out.unlink()
    tree.stop()
    print(json.dumps(results))


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ray_data_map_prepared(self, work, prep, model, model_args=(), *, root, batch_size):
    """`trapkit.cluster.Cluster.map_prepared` as one fused Ray Data actor stage: the same `Worker` per CPU, fed
    by Ray Data's streaming executor (blocks of `images_per_task` rows) instead of trapkit's queue."""
    import ray.data

    from trapkit.cluster import unpack

    work = [(int(k), str(f), json.dumps(b)) for k, f, b in work]
    per = self.settings.images_per_task
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    ds = ray.data.from_items([{"key": k, "file": f, "boxes": b} for k, f, b in work],
                             override_num_blocks=-(-len(work) // per))
    ds = ds.map_batches(FusedStage, batch_size=per, batch_format="numpy",
                        fn_constructor_args=(model, tuple(model_args), None if root is None else str(root), prep,
                                             batch_size),
                        compute=ray.data.ActorPoolStrategy(size=self.settings.actors or int(max(1, self.cpus))),
                        num_cpus=1)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for chunk in batch["chunk"]:
            yield from unpack(chunk)


class FusedStage(Worker):
    """Ray Data's callable: a block of work rows -> one row holding the `Worker.run` result of the block."""

    def __call__(self, batch: dict) -> dict:
        chunk = [(int(k), str(f), json.loads(str(b))) for k, f, b in zip(batch["key"], batch["file"], batch["boxes"])]
        return {"chunk": np.array([self.run(chunk)], dtype=object)}


def run_config(workdir: Path, cores: set[int], address: str | None, env: dict, marks: list[str],
               ray_data: bool = False, images_per_task: int | None = None) -> dict:
    """One configuration in a child process; `marks` (VAR=value) find the processes whose CPU time it counts."""
    run = f"{MARK}={os.getpid()}-{time.monotonic_ns()}"
    cmd = [sys.executable, __file__, "--child", "--workdir", str(workdir), "--cores", *map(str, sorted(cores)),
           "--marks", run, *marks]
    if address:
        cmd += ["--address", address]
    if ray_data:
        cmd += ["--ray-data"]
    if images_per_task:
        cmd += ["--images-per-task", str(images_per_task)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **env, MARK: run.split("=", 1)[1]})
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    (t0, c0, n0, d0), (t1, c1, n1, d1) = r["small"], r["full"]
    return {"marginal": (n1 - n0) / (t1 - t0), "marginal_cpu_ms": 1000 * (c1 - c0) / (n1 - n0),
            "end_to_end": n1 / t1, "cpu_ms": 1000 * c1 / n1, "crops": n1, "small_s": t0,
            "driver_ms": 1000 * d1 / n1, "marginal_driver_ms": 1000 * (d1 - d0) / (n1 - n0), "load": load}


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
    ap.add_argument("--ray-data", action="store_true",
                    help="also measure the actors as one fused Ray Data stage (the design trapkit's queue replaced)")
    ap.add_argument("--images-per-task", type=int, default=None,
                    help="images per chunk handed to an actor (default: trapkit's ClusterSettings default)")
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
    plan = configs(args.cpus, args.ray_data)
    print(f"{args.images_per_core} entries per core over {args.distinct} photos (a third 4000x3000, the rest "
          f"2048x1536, 1-5 crops each); EfficientNet-Lite0 224 px ONNX, batch 32; {os.cpu_count()} CPUs here; "
          f"load average {os.getloadavg()[0]:.2f} at start; workdir {workdir}")
    print(f"CPU: {cpu_description()}")
    cluster = None
    best: dict[str, dict] = {}
    try:
        if any(address == "cluster" for _, address, _ in plan.values()):
            top = max(args.cpus)
            cluster = RayCluster(cpus=top // 2, head_cores=set(range(top // 2)),
                                 worker_cores=set(range(top // 2, top)), object_store=2**30)
            os.environ.update(cluster.driver_env)
            cluster.start()
        # `--ray local` clusters keep their session files in the work folder, not /tmp/ray.
        local_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(workdir / "ray")}
        for _ in range(args.repeats):
            for name, (cores, address, ray_data) in plan.items():
                if address == "cluster":
                    nodes = [f"{cluster_mark}={node}-{cluster.id}" for node in ("head", "worker")]
                    r = run_config(workdir, cores, cluster.address, cluster.driver_env, nodes,
                                   images_per_task=args.images_per_task)
                else:
                    r = run_config(workdir, cores, address, local_env, [], ray_data, args.images_per_task)
                if name not in best or r["marginal"] > best[name]["marginal"]:
                    best[name] = r
    finally:
        if cluster:
            cluster.stop()
    print(f"best of {args.repeats}, load average {os.getloadavg()[0]:.2f} at the end:")
    for name, b in best.items():
        print(f"  {name:<34} marginal {b['marginal']:6.1f} crops/s, {b['marginal_cpu_ms']:5.1f} CPU ms/crop "
              f"(driver {b['marginal_driver_ms']:4.2f}); end to end {b['end_to_end']:6.1f} crops/s, "
              f"{b['cpu_ms']:5.1f} CPU ms/crop (driver {b['driver_ms']:4.2f}); {b['crops']} crops, the small job "
              f"{b['small_s']:.1f} s; load {b['load']:.2f} before it")

    def ratio(a: str, b: str, what: str) -> None:
        if a in best and b in best:
            print(f"  {what}: crops/s marginal {best[a]['marginal'] / best[b]['marginal']:.2f}, end to end "
                  f"{best[a]['end_to_end'] / best[b]['end_to_end']:.2f}; CPU per crop marginal "
                  f"{best[a]['marginal_cpu_ms'] / best[b]['marginal_cpu_ms']:.2f}, end to end "
                  f"{best[a]['cpu_ms'] / best[b]['cpu_ms']:.2f}")

    for n in args.cpus:
        target = " (target: crops/s >= 0.90, CPU per crop <= 1.10)" if n == max(args.cpus) else ""
        ratio(f"--ray local, {n} CPU(s)", f"local, {n} core(s)", f"Ray on one node / local, {n} core(s){target}")
        ratio(f"Ray Data fused, {n} CPU(s)", f"local, {n} core(s)", f"Ray Data fused / local, {n} core(s)")
    lo, hi = min(args.cpus), max(args.cpus)
    if lo != hi:
        ratio(f"--ray local, {hi} CPU(s)", f"--ray local, {lo} CPU(s)", f"Ray, {hi} CPUs / {lo}")
        ratio(f"local, {hi} core(s)", f"local, {lo} core(s)", f"local, {hi} cores / {lo}")
    if hi >= 2:
        ratio(f"head + worker node, {hi // 2} CPU(s) each", f"--ray local, {hi} CPU(s)",
              f"head + worker node / one node of {hi} CPUs")
        ratio(f"head + worker node, {hi // 2} CPU(s) each", f"local, {hi // 2} core(s)",
              f"head + worker node / local on {hi // 2} core(s)" + (" (target: crops/s >= 1.80)" if hi == 2 else ""))


def cpu_description() -> str:
    """The CPU's model name and its vector flags (AVX2, AVX-512, VNNI): what CPU figures depend on."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name}; {', '.join(shown) or 'no AVX2'}{'' if 'avx512_vnni' in flags else ' (no AVX-512 VNNI)'}"


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
