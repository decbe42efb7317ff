"""Export benchmark: the fused ONNX graph against the reference-style two-stage pipeline, and fp16 / int8.

Model: the offline ImageNet EfficientNet-Lite0 (`imagenet-lite0`), 224 px.
Inputs: the bundled camera-trap photos and their MegaDetector crops, repeated
to fill a batch. Images per second (median of `--repeats` rounds) at batch 1
and 32 for:

  (a) fused fp32 graph in onnxruntime (uint8 in, normalisation inside)
  (b) two-stage, as the reference package ships it: NumPy mean/std
      normalisation, PyTorch embedding model in eval mode, separate ONNX head
  (c) fp16 and int8 variants of (a)

and the top-1 agreement of int8 (and fp16) with fp32 on the bundled crops (and,
a steadier figure, on 300 seeded random square crops of the bundled photos).
Preprocessing (decode, resize) is outside every timing: all paths get the same
(N, 224, 224, 3) uint8 arrays.

`--runs DIR`: int8 on TRAINED models, the way `trapkit export RUN --quantize int8`
makes it (calibrated on the run's own images, measured on its validation images):
top-1 agreement with fp32, both accuracies, images/s at batch 1 and 32, for the
two runs of bench/trained_runs.py (digits; camera-trap-like crops), trained
through `trapkit al simulate` if DIR does not hold them yet. `--study` adds the
measures one at a time, each with its figures: from the int8 of before issue 15
(7-bit weights, calibrated on the bundled photos) to the default.

    .venv/bin/python bench/bench_export.py [--repeats 5] [--threads 0]
    .venv/bin/python bench/bench_export.py --runs /tmp/trapkit-runs [--study]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(pipelines: dict, batches: dict[int, np.ndarray], rounds: int, per_round: dict[int, int]) -> dict:
    """{name: {batch size: median images/s}}. Rounds go round-robin over the pipelines, so load
    from other jobs on a shared machine falls on all of them alike instead of on whichever ran last."""
    for fn in pipelines.values():
        for batch in batches.values():
            fn(batch)  # warm-up: allocations, kernel selection
    samples = {name: {bs: [] for bs in batches} for name in pipelines}
    for _ in range(rounds):
        for name, fn in pipelines.items():
            for bs, batch in batches.items():
                calls = max(1, -(-per_round[bs] // len(batch)))
                start = time.perf_counter()
                for _ in range(calls):
                    fn(batch)
                samples[name][bs].append(calls * len(batch) / (time.perf_counter() - start))
    return {name: {bs: statistics.median(v) for bs, v in by_bs.items()} for name, by_bs in samples.items()}


def two_stage(model, head_onnx: Path, threads: int):
    """Reference-style pipeline: NumPy normalisation -> PyTorch embedder (eval) -> ONNX head."""
    import torch

    from trapkit.export.onnx_export import ort_session

    mean = np.asarray(model.spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.spec.std, np.float32).reshape(1, 3, 1, 1)
    embedder = model.embedder.eval()
    head = ort_session(head_onnx, threads)

    def run(batch: np.ndarray) -> np.ndarray:
        x = (batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std  # (N, 3, S, S)
        with torch.inference_mode():
            emb = embedder(torch.from_numpy(x)).numpy()  # (N, D)
        return head.run(None, {"embedding": emb})[0]

    return run


def random_crops(spec, n: int, seed: int = 0) -> np.ndarray:
    """(n, S, S, 3) uint8 square crops at seeded random boxes on the bundled photos: a larger sample
    for top-1 agreement than their 15 MegaDetector crops (near-ties among 1,000 ImageNet classes flip
    one way or the other, so a handful of inputs moves the figure by 7 points each)."""
    from trapkit.samples import SAMPLES_DIR
    from trapkit.images import iter_images, open_image
    from trapkit.crops import crop_square

    rng = np.random.default_rng(seed)
    photos = [open_image(p)[0] for p in iter_images(SAMPLES_DIR)]
    out = []
    for k in range(n):
        w, h = rng.uniform(0.08, 0.5, size=2)
        out.append(crop_square(photos[k % len(photos)], [rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h],
                               spec.input_size, 0.1))
    return np.stack(out)


def export_head(model, path: Path) -> None:
    """The head alone (embedding -> softmax probabilities) as its own ONNX file, like the reference's classifier."""
    import torch

    from trapkit.export.onnx_export import quiet_third_party

    class Head(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, z):
            return torch.softmax(self.head(z), dim=1)

    dim = model.embedder.out_dim
    with quiet_third_party(), torch.no_grad():
        torch.onnx.export(Head(model.head).eval(), (torch.zeros(2, dim),), str(path), dynamo=False,
                          input_names=["embedding"], output_names=["probs"],
                          dynamic_axes={"embedding": {0: "n"}, "probs": {0: "n"}})


STUDY = (  # (name, to_int8 keywords, calibrate on the bundled photos): each row adds one measure
    ("before: 7-bit weights, bundled photos", dict(target="avx2", exclude=(), bias_correction=False, method="minmax"),
     True),
    ("+ the run's own images calibrate", dict(target="avx2", exclude=(), bias_correction=False, method="minmax"),
     False),
    ("+ 8-bit weights (vnni)", dict(target="vnni", exclude=(), bias_correction=False, method="minmax"), False),
    ("+ bias correction", dict(target="vnni", exclude=(), method="minmax"), False),
    ("+ first 3 convs float", dict(target="vnni", method="minmax"), False),
    ("+ entropy calibration (default)", dict(target="vnni", method="entropy"), False),
    ("default, percentile calibration instead", dict(target="vnni", method="percentile"), False),
    ("default for --int8-target avx2", dict(target="avx2"), False),
    ("default for --int8-target gpu (run on CPU)", dict(target="gpu"), False),
)


def trained_runs(workdir: Path, args) -> None:
    """int8 of models trained through `al`: agreement and accuracy on their validation images, speed."""
    import sys

    from trapkit.export.calibration import calibration_images
    from trapkit.export.onnx_export import load_source, ort_session, to_onnx_proto
    from trapkit.export.quantize import (
        VariantSettings, compare, cpu_flags, make_variant, run_calibration_images, run_validation_images, to_int8,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trained_runs import KINDS, train_run

    print(f"CPU flags: {' '.join(cpu_flags()) or 'none'}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    for kind in KINDS:
        run = train_run(kind, workdir)
        model = load_source(run)
        spec = model.spec
        fp32 = to_onnx_proto(model).SerializeToString()
        t0 = time.perf_counter()
        int8, report = make_variant(fp32, spec, VariantSettings(quantize="int8", min_agreement=0.0), run_dir=run)
        print(f"\n{kind} ({run}): trapkit export --quantize int8 in {time.perf_counter() - t0:.0f} s\n  {report.summary()}")
        print(f"  accuracy loss {100 * (report.accuracy_fp32 - report.accuracy):+.2f} points")
        held = run_validation_images(run, spec)
        batch32 = np.concatenate([held.images] * 2)[:32]
        graphs = {"fp32": fp32, "int8": int8}
        if args.study:
            own, bundled = run_calibration_images(run, spec), calibration_images(spec)
            print(f"  {'measure':44} {'agreement':>9} {'accuracy':>8} {'max|dp|':>7}")
            for name, options, on_bundled in STUDY:
                data = to_int8(fp32, spec, bundled if on_bundled else own, **options)
                r = compare(fp32, data, held, name)
                graphs[name] = data
                print(f"  {name:44} {r.agreement:9.4f} {r.accuracy:8.4f} {r.max_prob_diff:7.3f}", flush=True)
            print(f"  {'fp32':44} {1:9.4f} {report.accuracy_fp32:8.4f}")
        runners = {name: _ort_runner(ort_session(data, args.threads)) for name, data in graphs.items()
                   if "gpu" not in name}
        rates = measure(runners, {1: batch32[:1], 32: batch32}, args.repeats, {1: 16, 32: args.min_images})
        print(f"  {'graph':44} {'batch 1':>8} {'batch 32':>8}  images/s (median of {args.repeats}), x fp32")
        for name, r in rates.items():
            print(f"  {name:44} {r[1]:8.1f} {r[32]:8.1f}  {r[1] / rates['fp32'][1]:.2f}x / "
                  f"{r[32] / rates['fp32'][32]:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per figure (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime/torch threads (0: all cores)")
    parser.add_argument("--min-images", type=int, default=32, help="images per timed round at batch 32 (batch 1: 16)")
    parser.add_argument("--runs", type=Path, default=None, metavar="DIR",
                        help="int8 on the models of bench/trained_runs.py in DIR (trained there if missing)")
    parser.add_argument("--study", action="store_true", help="with --runs: each int8 measure's figures")
    args = parser.parse_args()
    if args.runs:
        trained_runs(args.runs, args)
        return

    import torch

    from trapkit.export.calibration import calibration_images
    from trapkit.export.onnx_export import export_onnx, load_source, ort_session
    from trapkit.export.quantize import VariantSettings, make_variant, top1_agreement

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} at start (shared machine: figures move with other jobs)")
    model = load_source("imagenet-lite0")
    spec = model.spec
    crops = calibration_images(spec, whole_images=False)  # (15, 224, 224, 3) uint8
    photos_and_crops = calibration_images(spec)  # (25, ...)
    more_crops = random_crops(spec, 300)
    batch32 = np.concatenate([photos_and_crops, photos_and_crops])[:32]
    batch1 = photos_and_crops[:1]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        report = export_onnx(model, tmp / "fp32.onnx")
        print(f"export fp32: {time.perf_counter() - t0:.1f} s, parity max |probs diff| {report.max_prob_diff:.2e}")
        fp32 = report.path.read_bytes()
        paths = {"fp32": report.path}
        for kind, settings in (("fp16", VariantSettings(precision="fp16", min_agreement=0.0)),
                               ("int8", VariantSettings(quantize="int8", min_agreement=0.0))):
            t0 = time.perf_counter()
            data, agreement = make_variant(fp32, spec, settings)
            paths[kind] = tmp / f"{kind}.onnx"
            paths[kind].write_bytes(data)
            on_crops = top1_agreement(fp32, data, crops, kind)
            on_more = top1_agreement(fp32, data, more_crops, kind)
            print(f"make {kind}: {time.perf_counter() - t0:.1f} s; top-1 agreement with fp32: "
                  f"{on_crops.agreement:.1%} on the {on_crops.images} bundled crops, "
                  f"{agreement.agreement:.1%} on {agreement.images} {agreement.measured_on}, "
                  f"{on_more.agreement:.1%} on {on_more.images} random crops of the photos"
                  + (f"; target {agreement.int8_target}, CPU flags {' '.join(agreement.cpu_flags)}"
                     if agreement.int8_target else ""))
        export_head(model, tmp / "head.onnx")

        pipelines = {"(a) fused fp32 onnxruntime": _ort_runner(ort_session(paths["fp32"], args.threads)),
                     "(b) two-stage torch + onnx head": two_stage(model, tmp / "head.onnx", args.threads),
                     "(c) fp16 onnxruntime": _ort_runner(ort_session(paths["fp16"], args.threads)),
                     "(c) int8 onnxruntime": _ort_runner(ort_session(paths["int8"], args.threads))}
        rates = measure(pipelines, {1: batch1, 32: batch32}, args.repeats, {1: 16, 32: args.min_images})
        print(f"\n{'pipeline':34} {'batch 1':>10} {'batch 32':>10}   (images/s, median of {args.repeats} rounds)")
        for name, r in rates.items():
            print(f"{name:34} {r[1]:10.1f} {r[32]:10.1f}")

    a, b = rates["(a) fused fp32 onnxruntime"], rates["(b) two-stage torch + onnx head"]
    f16, i8 = rates["(c) fp16 onnxruntime"], rates["(c) int8 onnxruntime"]
    print("\nratios (same run)")
    for bs in (1, 32):
        print(f"  batch {bs:2}: fused/two-stage {a[bs] / b[bs]:.2f}x   int8/fused {i8[bs] / a[bs]:.2f}x   "
              f"fp16/fused {f16[bs] / a[bs]:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


def _ort_runner(session):
    return lambda batch: session.run(["probs"], {"images": batch})[0]


if __name__ == "__main__":
    main()
