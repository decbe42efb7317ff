"""`trapkit classify` on one NVIDIA GPU: end to end against inference alone, and the CPU path beside it.

One command on a GPU machine (an H100 or H200, onnxruntime-gpu, PyTorch with CUDA,
and nvImageCodec or torchvision; `pip install 'trapkit[serve,gpu]'`):

    .venv/bin/python bench/bench_gpu.py [--entries 6000] [--distinct 48] [--batch-size 128] [--workdir DIR]

Folder: 12 MP (4000x3000) camera-trap JPEGs made from the bundled photos, 1-5
detections each (bench_classify.build_folder with every photo 12 MP); the
detections file cycles `--entries` entries over `--distinct` files (in the page
cache after the first pass, as on a warm NFS client). Model: the real offline
ImageNet EfficientNet-Lite0 (224 px) exported by trapkit, fp32.

Printed, in one run:
- GPU path end to end: `classify_images` with `GpuExecutor` (JPEGs decoded,
  cropped and resized on the GPU, onnxruntime fed from device memory), crops/s;
- inference alone: the same graph on the same provider, crops made beforehand
  and already in GPU memory, batches of `--batch-size` (what the pipeline runs);
- the CPU path end to end: `classify_images` with trapkit's default threads for
  every core (Pillow/libjpeg-turbo decoding), the same runtime on CPU cores;
- top-1 agreement of the GPU path with the CPU path, on this folder and on the
  bundled photos.
Targets: GPU end to end >= 2,000 crops/s and >= 80% of inference alone; top-1
agreement >= 99.5%.

Without a GPU it says why, measures the CPU path, and checks agreement by
running the GPU path's code on CPU tensors over the bundled photos (slow: no
throughput figure for the GPU path comes from that).
`--providers` also prints what bench_gpu printed before: the providers trapkit's
runtime starts for the fp32, fp16 and int8 graphs, and inference alone on each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def crops_of_bundled_photos(spec, copies: int) -> np.ndarray:
    """(N, S, S, 3) uint8: every animal crop of the bundled photos by the spec's crop policy, `copies` times."""
    from trapkit.detections import load_detections, qualifying
    from trapkit.prepare import Preprocessing, prepare_image
    from trapkit.samples import SAMPLE_DETECTIONS, SAMPLES_DIR

    prep = Preprocessing.from_spec(spec)
    doc = load_detections(SAMPLE_DETECTIONS)
    crops = [prepare_image(SAMPLES_DIR / doc["images"][i]["file"], [doc["images"][i]["detections"][j]["bbox"]
                                                                      for j in dets], prep).crops
             for i, dets in qualifying(doc, prep.threshold, prep.categories).items()]
    return np.concatenate(crops * copies)


def rate(predict, crops, batch: int, seconds: float = 5.0) -> float:
    """Crops per second of `predict` over `crops` (an array, or a tensor on the GPU) at `batch`, after a warm-up."""
    predict(crops[:batch])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(crops) - batch + 1, batch):
            predict(crops[i:i + batch])
            done += batch
    return done / (time.perf_counter() - start)


def classify_run(images: Path, md: Path, out: Path, runtime, batch: int, executor=None) -> tuple[float, int]:
    """(seconds, crops) of one `classify_images` run with trapkit's default threads for every core."""
    from trapkit.machine import available_cpus
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.serve.settings import ClassifySettings, Parallelism

    par = Parallelism.for_cpus(available_cpus())
    settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency, batch_size=batch)
    out.with_name(out.name + ".checkpoint.json").unlink(missing_ok=True)
    start = time.perf_counter()
    summary = classify_images(ClassifyPaths(images, out, md), runtime, settings, executor=executor)
    return time.perf_counter() - start, summary.classified_detections


def top1_agreement(a: Path, b: Path) -> tuple[int, int]:
    """(detections whose top-1 class agrees, detections classified) between two classify outputs."""
    same = total = 0
    for im_a, im_b in zip(json.loads(a.read_text())["images"], json.loads(b.read_text())["images"]):
        for d_a, d_b in zip(im_a.get("detections") or (), im_b.get("detections") or ()):
            if d_a.get("classifications") and d_b.get("classifications"):
                total += 1
                same += d_a["classifications"][0][0] == d_b["classifications"][0][0]
    return same, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=6000, help="detection-file entries (12 MP photos) per run")
    p.add_argument("--distinct", type=int, default=48, help="distinct 12 MP files the entries cycle over")
    p.add_argument("--batch-size", type=int, default=128, help="crops per model call, end to end and alone")
    p.add_argument("--workdir", type=Path, default=None, help="keep the folder and the model here between runs")
    p.add_argument("--providers", action="store_true", help="also the fp32/fp16/int8 provider table")
    args = p.parse_args()
    import onnxruntime as ort

    from bench_classify import build_folder, lite0_onnx
    from trapkit.gpu import choose_decoder
    from trapkit.machine import available_cpus
    from trapkit.samples import SAMPLE_DETECTIONS, SAMPLES_DIR
    from trapkit.serve.gpu_classify import GpuExecutor
    from trapkit.serve.runtime import OnnxRuntime

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-gpu-"))
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}; {available_cpus()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}; workdir {workdir}")
    model = lite0_onnx(workdir)
    folder = workdir / "twelve-mp"
    doc = json.loads(build_folder(folder, args.distinct, large_every=1).read_text())
    md = folder / f"md-{args.entries}.json"
    md.write_text(json.dumps({**doc, "images": [doc["images"][k % len(doc["images"])] for k in range(args.entries)]}))
    choice = choose_decoder("auto")
    print(f"decoding: {choice.reason}")

    with OnnxRuntime(model, providers=["CPUExecutionProvider"]) as cpu_runtime:
        took, crops = classify_run(folder / "images", md, workdir / "cpu.json", cpu_runtime, args.batch_size)
        cpu_rate = crops / took
        print(f"CPU path end to end: {crops} crops in {took:.1f} s = {cpu_rate:.1f} crops/s "
              f"({available_cpus()} cores, onnxruntime on the CPU; load average {os.getloadavg()[0]:.2f})")
        _, bundled_cpu = classify_run(SAMPLES_DIR, SAMPLE_DETECTIONS, workdir / "bundled-cpu.json", cpu_runtime,
                                      args.batch_size)

    if choice.decoder is None:
        print(f"no GPU path here ({choice.reason}): the GPU figures wait for a GPU. Agreement of the GPU path's "
              "code, run on CPU tensors, with the CPU path on the bundled photos:")
        with OnnxRuntime(model, providers=["CPUExecutionProvider"]) as runtime:
            classify_run(SAMPLES_DIR, SAMPLE_DETECTIONS, workdir / "bundled-gpu.json", runtime, args.batch_size,
                         GpuExecutor("torchvision", device="cpu"))
        same, total = top1_agreement(workdir / "bundled-gpu.json", workdir / "bundled-cpu.json")
        print(f"  top-1 agreement {same}/{total} = {same / max(total, 1):.1%} (target >= 99.5%)")
        if args.providers:
            providers_table(workdir)
        return

    with OnnxRuntime(model) as runtime:
        print(f"GPU runtime providers: {runtime.providers}")
        gpu_crops = gpu_resident_crops(runtime.spec, args.batch_size)
        alone = rate(runtime.predict_device, gpu_crops, args.batch_size)
        classify_run(folder / "images", md, workdir / "warm.json", runtime, args.batch_size,
                     GpuExecutor(choice.decoder))  # warm-up: CUDA contexts, decoder, allocator
        took, crops = classify_run(folder / "images", md, workdir / "gpu.json", runtime, args.batch_size,
                                   GpuExecutor(choice.decoder))
        end_to_end = crops / took
        classify_run(SAMPLES_DIR, SAMPLE_DETECTIONS, workdir / "bundled-gpu.json", runtime, args.batch_size,
                     GpuExecutor(choice.decoder))
    same, total = top1_agreement(workdir / "gpu.json", workdir / "cpu.json")
    b_same, b_total = top1_agreement(workdir / "bundled-gpu.json", workdir / "bundled-cpu.json")
    print(f"inference alone ({runtime.providers[0]}, crops in GPU memory, batch {args.batch_size}): "
          f"{alone:,.0f} crops/s")
    print(f"GPU path end to end ({choice.decoder}): {crops} crops in {took:.1f} s = {end_to_end:,.0f} crops/s "
          f"(target >= 2,000); {end_to_end / alone:.0%} of inference alone (target >= 80%); "
          f"{end_to_end / cpu_rate:.1f}x the CPU path; load average {os.getloadavg()[0]:.2f}")
    print(f"top-1 agreement with the CPU path: {same}/{total} = {same / max(total, 1):.2%} on this folder, "
          f"{b_same}/{b_total} on the bundled photos (target >= 99.5%)")
    if args.providers:
        providers_table(workdir)


def gpu_resident_crops(spec, batch: int):
    """The bundled photos' crops, repeated to a few batches, as one (N, S, S, 3) uint8 tensor in GPU memory."""
    import torch

    crops = crops_of_bundled_photos(spec, 1)
    crops = np.concatenate([crops] * max(1, -(-8 * batch // len(crops))))
    return torch.from_numpy(crops).to("cuda")


def providers_table(workdir: Path) -> None:
    """The providers trapkit's runtime starts for each precision, agreement with the CPU provider, and rates."""
    from trapkit.serve.runtime import OnnxRuntime

    for name, path in export_variants(workdir).items():
        cpu_rt = OnnxRuntime(path, providers=["CPUExecutionProvider"])
        auto = OnnxRuntime(path)
        crops = crops_of_bundled_photos(cpu_rt.spec, 1)
        ref, got = cpu_rt.predict(crops), auto.predict(crops)
        agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
        print(f"{name}: default providers {auto.providers}")
        print(f"  vs CPU on {len(crops)} crops: top-1 agreement {agree:.1%}, max |dp| {np.abs(ref - got).max():.2e}")
        if auto.providers[0] != "CPUExecutionProvider":
            many = crops_of_bundled_photos(cpu_rt.spec, 32)
            for batch in (32, 256):
                g, c = rate(auto.predict, many, batch), rate(cpu_rt.predict, many, batch)
                print(f"  batch {batch}: {g:8.1f} crops/s on {auto.providers[0]}, {c:7.1f} on CPU: {g / c:.1f}x")
        cpu_rt.close()
        auto.close()


def export_variants(workdir: Path) -> dict[str, Path]:
    """{precision: model.onnx} for imagenet-lite0: fp32, fp16 and int8 (as `trapkit export` writes them)."""
    import dataclasses

    from trapkit.export.pipeline import export_model
    from trapkit.export.quantize import VariantSettings

    paths = {}
    for name, settings in (("fp32", VariantSettings()), ("fp16", VariantSettings(precision="fp16")),
                           ("int8", VariantSettings(quantize="int8", min_agreement=0.0))):
        fields = {f.name for f in dataclasses.fields(VariantSettings)}
        if name == "int8" and "int8_target" in fields:
            settings = dataclasses.replace(settings, int8_target="gpu")  # 8-bit weights for GPUs
        try:
            paths[name] = export_model("imagenet-lite0", workdir / name, variant=settings).onnx_path
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"{name}: export failed ({e.__class__.__name__}: {e})")
    return paths


if __name__ == "__main__":
    main()
