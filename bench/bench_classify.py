"""`trapkit classify` throughput: crops per second end to end, against two baselines in the same run.

Folder: camera-trap-sized JPEGs built from the bundled photos (2048x1536, every
third one upscaled to 12 MP 4000x3000), 1-5 detections each (MegaDetector's
boxes where the photo has them, seeded random boxes otherwise). Model: the real
offline ImageNet EfficientNet-Lite0 (224 px) exported to ONNX.

- pipeline: `trapkit.serve.classify.classify_images` (decode once per image, only
  the rectangle the crops read, at reduced DCT scale; threads, cross-image
  batches of 32, onnxruntime), JSON written. `--fallbacks` times it again
  with Pillow's crop resize, then with Pillow's whole-image decode too, as when
  trapkit is built without its compiled resampler or decoder.
- (a) naive: for every crop, open and fully decode the image, crop, classify it
  alone in PyTorch eager (batch 1), the classic EcoAssist path.
- (b) inference alone: onnxruntime on the same crops, pre-made, batches of 32
  run the way the pipeline runs them (same batches in flight, same threads).

Both are measured with trapkit's default parallelism and with one batch at a
time on every core; (b) and the pipeline alternate, best of `--repeats` each,
and CPU time per crop is printed too (wall clock on a shared machine varies).
`--features` times the pipeline with and without `--features FILE.parquet`
(the embedding of every crop written as a table), alternating, after one
untimed run of each, and prints the throughput ratio (best and median run)
and the ratio of CPU time summed over all runs.

Targets: pipeline >= 4x (a) and >= 70% of (b); --features costs < 5% of throughput.

`--int8 RUN`: the pipeline end to end and inference alone with the fp32 graph and
the int8 graph of one export folder (`trapkit export RUN --quantize int8`: what
`trapkit classify --precision int8` runs), alternating, best of `--repeats`, and
the int8/fp32 ratios; `--int8 auto` trains the camera-trap-like crops run of
bench/trained_runs.py in the workdir first. CPU flags are printed beside them.

`--video`: camera-trap video instead (`trapkit[video]`). H.264 MP4s at 1280x720,
10 fps, encoded from the bundled photos, with MegaDetector frame-level results
for every 5th frame (each frame carries its photo's boxes). Timed in the same
run, best of `--repeats`: decoding alone (`trapkit.video.read_frames`, the
wanted frames converted to RGB), inference alone on the same crops pre-made,
and `classify_images` end to end; frames per second decoded and classified.

    .venv/bin/python bench/bench_classify.py [--images 96] [--naive-crops 40] [--repeats 3] [--workdir DIR]
        [--fallbacks] [--features] [--features-only] [--int8 RUN|auto]
    .venv/bin/python bench/bench_classify.py --video [--videos 8] [--frames 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "trapkit" / "data" / "camera-traps"


def build_folder(dst: Path, n_images: int, seed: int = 0) -> Path:
    """`n_images` JPEGs under dst/images and dst/md.json; reused when already built."""
    md_path = dst / "md.json"
    if md_path.exists() and len(json.loads(md_path.read_text())["images"]) == n_images:
        return md_path
    rng = np.random.default_rng(seed)
    source = json.loads((SAMPLES / "md_v5a_detections.json").read_text())["images"]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(n_images):
        im = source[k % len(source)]
        size = (4000, 3000) if k % 3 == 0 else (2048, 1536)
        name = f"cam{k % 4}/{k:04d}_{Path(im['file']).stem}.jpg"
        (dst / "images" / name).parent.mkdir(exist_ok=True)
        with Image.open(SAMPLES / im["file"]) as photo:
            photo.convert("RGB").resize(size, Image.BILINEAR).save(dst / "images" / name, quality=90)
        dets = [{"category": "1", "conf": d["conf"], "bbox": d["bbox"]}
                for d in im["detections"] if d["conf"] >= 0.1][:5]
        if not dets:
            for _ in range(int(rng.integers(1, 6))):
                w, h = rng.uniform(0.06, 0.35, size=2)
                x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
                dets.append({"category": "1", "conf": 0.9, "bbox": [round(v, 4) for v in (x, y, w, h)]})
        entries.append({"file": name, "detections": dets})
    doc = {"info": {"format_version": "1.6", "detector": "md_v5a.0.0.pt"},
           "detection_categories": {"1": "animal"}, "images": entries}
    md_path.write_text(json.dumps(doc))
    return md_path


def lite0_onnx(workdir: Path) -> Path:
    path = workdir / "lite0.onnx"
    if not path.exists():
        from trapkit.export.onnx_export import export_onnx
        from trapkit.train.model import imagenet_lite0

        export_onnx(imagenet_lite0(), path)
    return path


def bench_pipeline(workdir: Path, md_path: Path, model: Path, par, batch: int,
                   repeats: int = 1, features: bool = False) -> tuple[float, float, int]:
    """(best wall seconds, CPU seconds of that run, crops classified) over `repeats` runs; `features`: with
    `--features workdir/features.parquet`."""
    from trapkit.serve.classify import ClassifyPaths, ClassifySettings, classify_images
    from trapkit.serve.runtime import open_runtime

    out = workdir / "out.json"
    with open_runtime(model, threads=par.threads) as runtime:
        runtime.predict(np.zeros((batch, 224, 224, 3), np.uint8))  # warm-up: first call allocates
        settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency, batch_size=batch,
                                    checkpoint_every=10_000)
        best, cpu = float("inf"), 0.0
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            paths = ClassifyPaths(workdir / "images", out, md_path,
                                  features=workdir / "features.parquet" if features else None)
            summary = classify_images(paths, runtime, settings)
            if time.perf_counter() - start < best:
                best, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return best, cpu, summary.classified_detections


def premade_crops(workdir: Path, md_path: Path) -> np.ndarray:
    """(N, 224, 224, 3) uint8, every crop of the folder, cut by the pipeline's own stage 1."""
    from trapkit.prepare import Preprocessing, prepare_image

    prep = Preprocessing(224)
    doc = json.loads(md_path.read_text())
    crops = [prepare_image(workdir / "images" / im["file"], [d["bbox"] for d in im["detections"]], prep).crops
             for im in doc["images"]]
    return np.concatenate(crops)


def bench_inference(model: Path, crops: np.ndarray, par, batch: int, repeats: int = 3) -> tuple[float, float]:
    """(crops/s of the best of `repeats` passes, CPU seconds per crop of that pass), batches as the pipeline runs them."""
    from concurrent.futures import ThreadPoolExecutor

    from trapkit.serve.runtime import open_runtime

    best, cpu = float("inf"), 0.0
    with open_runtime(model, threads=par.threads) as runtime, ThreadPoolExecutor(par.concurrency) as pool:
        runtime.predict(crops[:batch])
        batches = [crops[i:i + batch] for i in range(0, len(crops), batch)]
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            list(pool.map(runtime.predict, batches))
            if time.perf_counter() - start < best:
                best, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return len(crops) / best, cpu / len(crops)


def bench_naive(workdir: Path, md_path: Path, n_crops: int) -> float:
    import torch

    from trapkit.images import open_image
    from trapkit.crops import crop_square
    from trapkit.train.model import imagenet_lite0

    model = imagenet_lite0()
    jobs = [(im["file"], d["bbox"]) for im in json.loads(md_path.read_text())["images"] for d in im["detections"]]
    jobs = jobs[:: max(1, len(jobs) // n_crops)][:n_crops]  # spread over the folder: same mix of sizes
    seconds = []
    with torch.inference_mode():
        model(torch.zeros((1, 224, 224, 3), dtype=torch.uint8))
        for file, bbox in jobs:
            start = time.perf_counter()
            img, _ = open_image(workdir / "images" / file)  # full decode for every crop
            crop = crop_square(img, bbox, 224, 0.1)
            model(torch.from_numpy(np.array(crop))[None])
            seconds.append(time.perf_counter() - start)
    # Per-crop times vary with image size; the mean over the same crops is the fair rate,
    # and the median is reported too because other work on a shared machine adds spikes.
    return len(jobs) / sum(seconds), 1.0 / float(np.median(seconds))


def build_videos(dst: Path, n_videos: int, frames: int, every: int = 5, size=(1280, 720)) -> Path:
    """`n_videos` H.264 MP4s under dst/videos and MegaDetector frame-level results for every `every`-th
    frame (the photo a frame shows gives its boxes; blanks get one made-up box); reused when built."""
    import av

    md_path = dst / "frames.json"
    if md_path.exists() and json.loads(md_path.read_text())["info"].get("bench") == [n_videos, frames, every]:
        return md_path
    source = json.loads((SAMPLES / "md_v5a_detections.json").read_text())["images"]
    photos = [np.asarray(Image.open(SAMPLES / im["file"]).convert("RGB").resize(size, Image.BILINEAR))
              for im in source]
    boxes = [[d for d in im["detections"] if d["category"] == "1" and d["conf"] >= 0.1][:5]
             or [{"category": "1", "conf": 0.9, "bbox": [0.3, 0.3, 0.25, 0.3]}] for im in source]
    (dst / "videos").mkdir(parents=True, exist_ok=True)
    entries = []
    for v in range(n_videos):
        name = f"cam{v % 2}/clip{v:02d}.mp4"
        (dst / "videos" / name).parent.mkdir(exist_ok=True)
        with av.open(str(dst / "videos" / name), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            for n in range(frames):
                photo = (n // 7 + v) % len(photos)  # a scene holds for 7 frames, as a trap's burst would
                for packet in stream.encode(av.VideoFrame.from_ndarray(photos[photo], format="rgb24")):
                    container.mux(packet)
                if n % every == 0:
                    entries.append({"file": f"{name}/frame{n:06d}.jpg", "detections": boxes[photo]})
            for packet in stream.encode():
                container.mux(packet)
    doc = {"info": {"format_version": "1.6", "detector": "md_v5a.0.0.pt", "bench": [n_videos, frames, every]},
           "detection_categories": {"1": "animal"}, "images": entries}
    md_path.write_text(json.dumps(doc))
    return md_path


def bench_video(args) -> None:
    """--video: frames/s decoded alone, inference alone, and `classify_images` end to end, in one run."""
    from concurrent.futures import ThreadPoolExecutor

    from trapkit.prepare import crops_from_image
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.serve.runtime import available_cpus, open_runtime
    from trapkit.serve.settings import ClassifySettings, Parallelism
    from trapkit.video import read_frames, split_frame

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-bench-video-"))
    md_path = build_videos(workdir, args.videos, args.frames)
    model = lite0_onnx(workdir)
    doc = json.loads(md_path.read_text())
    wanted: dict[str, list] = {}
    for im in doc["images"]:
        video, n = split_frame(im["file"])
        wanted.setdefault(video, []).append((n, [d["bbox"] for d in im["detections"]]))
    n_frames, n_crops = len(doc["images"]), sum(len(im["detections"]) for im in doc["images"])
    decoded = sum(max(n for n, _ in frames) + 1 for frames in wanted.values())  # a decoder cannot skip frames
    cpus = available_cpus()
    par = Parallelism.for_cpus(cpus)
    print(f"{args.videos} H.264 videos, 1280x720, {args.frames} frames each; {n_frames} frames wanted (every 5th), "
          f"{n_crops} crops; EfficientNet-Lite0 224 px ONNX; {cpus} CPUs; {par.workers} decoders, "
          f"{par.concurrency} batches in flight x {par.threads} threads; workdir {workdir}")

    def decode_video(item):
        video, frames = item
        return [np.asarray(img) for _, img, _ in read_frames(workdir / "videos" / video, [n for n, _ in frames])]

    with open_runtime(model, threads=par.threads) as runtime:
        settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency, batch_size=args.batch_size,
                                    checkpoint_every=10_000)
        prep = settings.preprocessing(runtime.spec)
        crops = []
        for video, frames in wanted.items():
            for (n, bboxes), (_, img, _) in zip(frames, read_frames(workdir / "videos" / video, [n for n, _ in frames])):
                crops.append(crops_from_image(img, bboxes, prep))
        crops = np.concatenate(crops)
        runtime.predict(crops[:args.batch_size])  # warm-up
        batches = [crops[i:i + args.batch_size] for i in range(0, len(crops), args.batch_size)]
        best = {"decode": float("inf"), "inference": float("inf"), "pipeline": float("inf")}
        with ThreadPoolExecutor(par.workers) as decoders, ThreadPoolExecutor(par.concurrency) as infer:
            for _ in range(args.repeats):  # alternated: on a shared machine all three see the same quiet spells
                start = time.perf_counter()
                list(decoders.map(decode_video, wanted.items()))
                best["decode"] = min(best["decode"], time.perf_counter() - start)
                start = time.perf_counter()
                list(infer.map(runtime.predict, batches))
                best["inference"] = min(best["inference"], time.perf_counter() - start)
                start = time.perf_counter()
                summary = classify_images(ClassifyPaths(workdir / "videos", workdir / "out.json", md_path), runtime,
                                          settings)
                best["pipeline"] = min(best["pipeline"], time.perf_counter() - start)
    assert summary.classified_detections == n_crops, summary.table()
    print(f"best of {args.repeats}:")
    print(f"  decoding alone ({par.workers} videos at a time): {decoded / best['decode']:7.1f} frames/s decoded "
          f"({n_frames / best['decode']:.1f} wanted frames/s)")
    print(f"  inference alone on pre-made crops: {n_crops / best['inference']:7.1f} crops/s")
    rate = n_frames / best["pipeline"]
    print(f"  trapkit classify end to end: {decoded / best['pipeline']:7.1f} frames/s decoded, {rate:.1f} frames/s "
          f"classified, {n_crops / best['pipeline']:.1f} crops/s; {100 * best['decode'] / best['pipeline']:.0f}% of "
          f"decoding alone, {100 * best['inference'] / best['pipeline']:.0f}% of inference alone")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive-crops", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs for the pipeline and (b)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the folder and ONNX model here between runs")
    ap.add_argument("--features", action="store_true",
                    help="also time the pipeline with --features (embeddings written as a Parquet table)")
    ap.add_argument("--features-only", action="store_true",
                    help="time only the pipeline with and without --features (skip the baselines)")
    ap.add_argument("--int8", metavar="RUN", default=None,
                    help="time the fp32 and int8 graphs of RUN's export end to end ('auto': a run trained here)")
    ap.add_argument("--video", action="store_true", help="time camera-trap video instead (frames/s)")
    ap.add_argument("--videos", type=int, default=8, help="with --video: how many videos")
    ap.add_argument("--frames", type=int, default=60, help="with --video: frames per video")
    ap.add_argument("--fallbacks", action="store_true",
                    help="also time the pipeline with Pillow's crop resize, then Pillow's whole-image decode "
                         "(trapkit built without its compiled parts)")
    args = ap.parse_args()
    import logging

    if args.video:
        logging.basicConfig(level=logging.WARNING)
        bench_video(args)
        return

    from trapkit.serve.settings import Parallelism
    from trapkit.serve.runtime import available_cpus

    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-bench-classify-"))
    md_path = build_folder(workdir, args.images)
    model = lite0_onnx(workdir)
    doc = json.loads(md_path.read_text())
    n_crops = sum(len(im["detections"]) for im in doc["images"])
    big = sum(1 for k in range(args.images) if k % 3 == 0)
    cpus = available_cpus()
    print(f"{args.images} images ({big} at 4000x3000, {args.images - big} at 2048x1536), {n_crops} crops; "
          f"EfficientNet-Lite0 224 px ONNX; {cpus} CPUs; batch {args.batch_size}; workdir {workdir}")
    configs = {
        "trapkit defaults": Parallelism.for_cpus(cpus),
        "one batch at a time on all cores": Parallelism(workers=cpus, concurrency=1, threads=cpus),
    }
    if args.int8:
        compare_precisions(workdir, md_path, args.int8, configs["trapkit defaults"], args.batch_size, args.repeats)
        return
    if args.features or args.features_only:
        compare_features(workdir, md_path, model, configs["trapkit defaults"], args.batch_size, args.repeats)
        if args.features_only:
            return
    crops = premade_crops(workdir, md_path)
    naive, naive_median = bench_naive(workdir, md_path, args.naive_crops)
    print(f"(a) naive, full decode per crop, PyTorch batch 1, {args.naive_crops} crops spread over the folder: "
          f"{naive:7.1f} crops/s (from the median crop: {naive_median:.1f})")
    # (b) and the pipeline alternate, best of each kept: on a shared machine both see the same quiet spells.
    inference, pipeline = {}, {}
    for _ in range(args.repeats):
        for name, par in configs.items():
            b = bench_inference(model, crops, par, args.batch_size, 1)
            p = bench_pipeline(workdir, md_path, model, par, args.batch_size, 1)
            inference[name] = max(inference.get(name, b), b)
            pipeline[name] = min(pipeline.get(name, p), p)
    best_b = max(rate for rate, _ in inference.values())
    for name, par in configs.items():
        rate_b, cpu_b = inference[name]
        print(f"{name} ({par.workers} decoders, {par.concurrency} batches in flight x {par.threads} threads), "
              f"best of {args.repeats}:")
        print(f"  (b) inference alone on pre-made crops: {rate_b:7.1f} crops/s, {1000 * cpu_b:.1f} CPU ms per crop")
        report("pipeline end to end", pipeline[name], naive, rate_b, best_b)
    if args.fallbacks:
        from trapkit import crops as crop_module
        from trapkit import images

        # Each compiled part switched off in turn, as in a trapkit built without it.
        for what, module, name in (("Pillow crop resize", crop_module, "_resample"),
                                   ("Pillow whole-image decode and resize", images, "_jpeg_region")):
            compiled = getattr(module, name)
            setattr(module, name, None)
            try:
                par = configs["trapkit defaults"]
                fallback = bench_pipeline(workdir, md_path, model, par, args.batch_size, args.repeats)
            finally:
                setattr(module, name, compiled)
            report(f"trapkit defaults, {what}", fallback, naive, inference["trapkit defaults"][0], best_b)


def compare_precisions(workdir: Path, md_path: Path, source: str, par, batch: int, repeats: int) -> None:
    """fp32 against int8 of one export folder: pipeline end to end and inference alone, alternating."""
    from trapkit.export.pipeline import export_model
    from trapkit.export.quantize import VariantSettings, cpu_flags
    from trapkit.graph import GRAPH_FILENAMES

    if source == "auto":
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trained_runs import train_run

        source = str(train_run("crops", workdir / "runs"))
    export = workdir / "export-int8"
    if not (export / GRAPH_FILENAMES["int8"]).is_file():
        result = export_model(source, export, variant=VariantSettings(quantize="int8", min_agreement=0.0))
        print(f"exported {source}: {result.agreement.summary()}")
    graphs = {p: export / GRAPH_FILENAMES[p] for p in ("fp32", "int8")}
    crops = premade_crops(workdir, md_path)
    for graph in graphs.values():
        bench_pipeline(workdir, md_path, graph, par, batch, 1)  # warm-up, not timed
    pipeline, inference = {}, {}
    for _ in range(repeats):  # alternated: on a shared machine both see the same quiet spells
        for name, graph in graphs.items():
            b = bench_inference(graph, crops, par, batch, 1)
            p = bench_pipeline(workdir, md_path, graph, par, batch, 1)
            inference[name] = max(inference.get(name, b), b)
            pipeline[name] = min(pipeline.get(name, p), p)
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none'}; {par.workers} decoders, {par.concurrency} batches in "
          f"flight x {par.threads} threads; best of {repeats}")
    for name in graphs:
        seconds, cpu, n = pipeline[name]
        print(f"  {name}: classify end to end {n / seconds:7.1f} crops/s ({1000 * cpu / n:.1f} CPU ms per crop); "
              f"inference alone {inference[name][0]:7.1f} crops/s")
    ratio = (pipeline["fp32"][0] / pipeline["int8"][0], inference["int8"][0] / inference["fp32"][0])
    print(f"  int8 / fp32: end to end {ratio[0]:.2f}x, inference alone {ratio[1]:.2f}x")


def compare_features(workdir: Path, md_path: Path, model: Path, par, batch: int, repeats: int) -> None:
    """The pipeline with and without --features, alternating (both see the same quiet spells), after one untimed
    run of each (imports, first allocations). Wall clock: best and median of each; CPU time (all threads): summed
    over every run, the steadier figure on a shared machine."""
    import statistics

    for features in (False, True):
        bench_pipeline(workdir, md_path, model, par, batch, 1, features=features)  # warm-up, not timed
    runs = {False: [], True: []}
    for _ in range(repeats):
        for features in (False, True):
            runs[features].append(bench_pipeline(workdir, md_path, model, par, batch, 1, features=features))
    n = runs[False][0][2]
    print(f"--features (trapkit defaults, {par.workers} decoders, {par.concurrency} x {par.threads} threads), "
          f"{repeats} alternating runs each:")
    ratios = {}
    for features, name in ((False, "without"), (True, "with")):
        best, cpu, _ = min(runs[features])
        median = statistics.median(s for s, _, _ in runs[features])
        total_cpu = sum(c for _, c, _ in runs[features])
        ratios[features] = (n / best, n / median, total_cpu)
        print(f"  {name + ':':8} best {best:.2f} s = {n / best:6.1f} crops/s, median {median:.2f} s = "
              f"{n / median:6.1f} crops/s; {1000 * total_cpu / (n * repeats):.1f} CPU ms/crop over all runs; "
              f"runs {' '.join(f'{s:.2f}' for s, _, _ in runs[features])} s")
    (best0, med0, cpu0), (best1, med1, cpu1) = ratios[False], ratios[True]
    print(f"  throughput with / without --features: best {best1 / best0:.3f} ({100 * (1 - best1 / best0):+.1f}% cost), "
          f"median {med1 / med0:.3f} ({100 * (1 - med1 / med0):+.1f}%); CPU time with / without {cpu1 / cpu0:.3f} "
          f"({100 * (cpu1 / cpu0 - 1):+.1f}%); target < 5%")


def report(what: str, run: tuple[float, float, int], naive: float, rate_b: float, best_b: float) -> None:
    seconds, cpu, n = run
    rate = n / seconds
    print(f"  {what}: {n} crops in {seconds:.2f} s = {rate:7.1f} crops/s, "
          f"{1000 * cpu / n:.1f} CPU ms per crop; {rate / naive:.1f}x (a), {100 * rate / rate_b:.0f}% of this (b), "
          f"{100 * rate / best_b:.0f}% of the best (b)")


if __name__ == "__main__":
    main()
