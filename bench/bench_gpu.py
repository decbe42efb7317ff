"""GPU serving check: which onnxruntime providers trapkit's runtime starts, and what they give.

On a machine with an NVIDIA GPU and `onnxruntime-gpu` (CUDA 12 or 13 builds, as
the GPU's driver allows), for the offline ImageNet EfficientNet-Lite0 exported
by `trapkit export` (fp32, fp16 and int8 graphs):

- the providers `trapkit.serve.runtime.open_runtime` starts by default
  (TensorRT, then CUDA, then CPU: each tried, dropped when it cannot start), and
  what asking for TensorRT alone gives;
- top-1 agreement and the largest probability difference against the same
  graph on the CPU provider, on the bundled photos' crops;
- crops per second at batch 32 and 256 on the GPU provider against the CPU one
  (inference alone, decoded crops in memory);
- `trapkit classify` end to end over the bundled photos repeated, GPU runtime
  against CPU runtime, in the same run.

Without a GPU it says so and measures the CPU side only.

    .venv/bin/python bench/bench_gpu.py [--repeat-photos 40] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


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


def rate(runtime, crops: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    """Crops per second of `runtime.predict` at `batch`, after a warm-up call."""
    runtime.predict(crops[:batch])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(crops) - batch + 1, batch):
            runtime.predict(crops[i:i + batch])
            done += batch
    return done / (time.perf_counter() - start)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat-photos", type=int, default=40, help="copies of the ten bundled photos for classify")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    import onnxruntime as ort

    from trapkit.serve.runtime import OnnxRuntime

    print(f"onnxruntime {ort.__version__}, available providers: {ort.get_available_providers()}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trapkit-gpu-"))
    models = export_variants(workdir)
    gpu = None
    for name, path in models.items():
        cpu_rt = OnnxRuntime(path, providers=["CPUExecutionProvider"])
        auto = OnnxRuntime(path)
        trt = OnnxRuntime(path, providers=["TensorrtExecutionProvider"])
        crops = crops_of_bundled_photos(cpu_rt.spec, 1)
        ref, got = cpu_rt.predict(crops), auto.predict(crops)
        agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
        print(f"{name}: default providers {auto.providers}; TensorRT asked -> {trt.providers}")
        print(f"  vs CPU on {len(crops)} crops: top-1 agreement {agree:.1%}, max |dp| {np.abs(ref - got).max():.2e}")
        if auto.providers[0] != "CPUExecutionProvider":
            gpu = gpu or auto.providers[0]
            many = crops_of_bundled_photos(cpu_rt.spec, 32)
            for batch in (32, 256):
                g, c = rate(auto, many, batch), rate(cpu_rt, many, batch)
                print(f"  batch {batch}: {g:8.1f} crops/s on {auto.providers[0]}, {c:7.1f} on CPU: {g / c:.1f}x")
        for rt in (cpu_rt, auto, trt):
            rt.close()
    if "fp32" in models:
        classify_end_to_end(models["fp32"], workdir, args.repeat_photos, gpu)
    if gpu is None:
        print("no GPU provider started here: CPU figures only")


def classify_end_to_end(model: Path, workdir: Path, copies: int, gpu: str | None) -> None:
    """`trapkit classify` over the bundled photos `copies` times: the default runtime against CPU only."""
    from trapkit.samples import SAMPLE_DETECTIONS, SAMPLES_DIR
    from trapkit.serve.classify import ClassifyPaths, classify_images
    from trapkit.machine import available_cpus
    from trapkit.serve.runtime import OnnxRuntime
    from trapkit.serve.settings import ClassifySettings, Parallelism

    images = workdir / "photos"
    source = json.loads(SAMPLE_DETECTIONS.read_text())
    entries = []
    for k in range(copies):
        (images / f"{k:03d}").mkdir(parents=True, exist_ok=True)
        for im in source["images"]:
            shutil.copy(SAMPLES_DIR / im["file"], images / f"{k:03d}" / im["file"])
            entries.append({**im, "file": f"{k:03d}/{im['file']}"})
    md = workdir / "md.json"
    md.write_text(json.dumps({**source, "images": entries}))
    par = Parallelism.for_cpus(available_cpus())
    settings = ClassifySettings(workers=par.workers, concurrency=par.concurrency)
    for name, providers in (("CPU", ["CPUExecutionProvider"]), (gpu or "default", None)):
        with OnnxRuntime(model, providers=providers, threads=par.threads) as rt:
            start = time.perf_counter()
            summary = classify_images(ClassifyPaths(images, workdir / f"out-{name}.json", md), rt, settings)
            took = time.perf_counter() - start
        print(f"classify end to end, {name} runtime ({rt.providers[0]}): {summary.classified_detections} crops "
              f"in {took:.1f} s = {summary.classified_detections / took:.1f} crops/s, {par.workers} decoders")


if __name__ == "__main__":
    main()
