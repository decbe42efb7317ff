"""AddaxAI export benchmark: how the folder runs the network, and how close AddaxAI's answers come to trapkit's.

1. How (`--how`). AddaxAI's `pytorch` environment has no onnxruntime, so the folder's inference.py must run
   the model in PyTorch. Two ways, measured per backbone (random weights; Lite0 with its real ImageNet ones):
   (a) the fused ONNX graph through onnx2torch (1.5.15 stops at ReduceMean at opset 18: the graph is
       converted to opset 17 and Reshape's `allowzero` dropped first);
   (b) what `trapkit export --addaxai` ships: the network rebuilt with timm / torchvision from the spec and
       the safetensors state dict.
   For each: whether it runs, max |probs diff| from trapkit's graph in onnxruntime on the bundled photos'
   crops, the seconds to load (convert or rebuild), and for Lite0 crops/s at batch 1 and 32 on this CPU.
   (a) needs `pip install onnx2torch` (not a trapkit dependency); without it (a) is skipped.

2. Agreement (always). AddaxAI's way (each photo `Image.open(path).convert("RGB")`, the folder's get_crop and
   classify_batch) against `trapkit classify` (onnxruntime, JPEGs decoded at the reduced DCT scale the image's
   smallest crop allows) on the same detections: top-1 agreement and |confidence difference| (max, 99th
   percentile, mean, share above AddaxAI's CONF_TOLERANCE 0.02), for
   - "shipped": get_crop as exported (trapkit's crop of the full decode, byte for byte);
   - "DCT emulated": the alternative measured and not shipped: the full decode box-averaged (`Image.reduce`)
     to the DCT scale trapkit would decode at for that box alone, then cut (get_crop cannot know the image's
     other boxes, which decide trapkit's scale).
   Detections: the bundled photos' MegaDetector animals, and `--photos` camera-trap-like photos (Fashion-MNIST
   items, animal-tinted, pasted at 80-700 px into the bundled blank photos, 1-4 per photo, JPEG quality 90),
   split into photos with one detection and with several (where trapkit decodes at the smallest crop's scale).
   Models: imagenet-lite0 (1000 classes: low margins, the hard case) and each `--run` (trained runs, e.g.
   bench/trained_runs.py's `crops` run, whose classes are the pasted items).

    .venv/bin/python bench/bench_addaxai.py --how --run /tmp/trapkit-runs/run-crops [--photos 60]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
HOW_ARCHS = ("resnet18", "convnext_atto", "vit_tiny_patch16_224", "tv:resnet18")
CONF_TOLERANCE = 0.02


def load() -> str:
    return "load " + " ".join(open("/proc/loadavg").read().split()[:3])


# -- 1. how -----------------------------------------------------------------------------------------

def opset17(proto):
    """The fused graph as (a) would ship it: opset 17, Reshape's `allowzero` dropped (no shape here has a 0)."""
    from onnx import version_converter

    proto = version_converter.convert_version(proto, 17)
    for node in proto.graph.node:
        for attribute in [a for a in node.attribute if a.name == "allowzero"]:
            node.attribute.remove(attribute)
    return proto.SerializeToString()


def via_onnx2torch(data: bytes):
    """(a) at load time: the shipped graph through onnx2torch; (None, why) when it cannot convert."""
    import onnx
    import onnx2torch

    from trapkit.export.onnx_export import quiet_third_party

    try:
        with quiet_third_party():
            return onnx2torch.convert(onnx.load_from_string(data)).eval(), None
    except Exception as e:  # noqa: BLE001 - what onnx2torch cannot convert is the measurement
        return None, f"{e.__class__.__name__}: {str(e).splitlines()[0][:90]}"


def rate(fn, batch: np.ndarray, rounds: int = 5) -> float:
    fn(batch)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def how(archs) -> None:
    import torch

    from trapkit.export.addaxai import AddaxaiSettings, export_addaxai, load_inference
    from trapkit.export.onnx_export import bundled_parity_images, ort_session, run_session, to_onnx_proto
    from trapkit.spec import ModelSpec
    from trapkit.train.model import build_model, imagenet_lite0, save_model

    try:
        import onnx2torch  # noqa: F401
    except ImportError:
        print("(a) onnx2torch is not installed: pip install onnx2torch to measure it")
        onnx2torch = None
    print(f"\n1. how the folder runs the network ({load()})")
    print(f"{'backbone':24} {'way':14} {'runs':>5} {'max|dp| vs ORT':>15} {'load s':>7} {'b1 /s':>7} {'b32 /s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("tf_efficientnet_lite0", *archs):
            torch.manual_seed(0)
            if arch == "tf_efficientnet_lite0":
                model, source = imagenet_lite0(), "imagenet-lite0"
            else:
                spec = ModelSpec(arch=arch, labels=tuple(f"c{i}" for i in range(10)), input_size=224)
                model = build_model(spec, "none").eval()
                source = save_model(Path(tmp) / arch.replace(":", "_"), model)
            images = bundled_parity_images(model.spec)
            proto = to_onnx_proto(model)
            session = ort_session(proto.SerializeToString())
            reference = run_session(session, images)[0]
            speed = arch == "tf_efficientnet_lite0"
            batches = {1: images[:1], 32: np.concatenate([images] * 4)[:32]} if speed else {}
            rows = []
            if onnx2torch is not None:
                shipped = opset17(proto)
                start = time.perf_counter()
                converted, why = via_onnx2torch(shipped)
                seconds = time.perf_counter() - start
                if converted is None:
                    rows.append(("(a) onnx2torch", False, why, seconds, {}))
                else:
                    def run_a(batch, m=converted):
                        with torch.no_grad():
                            return m(torch.from_numpy(batch))[0].numpy()
                    diff = float(np.abs(run_a(images) - reference).max())
                    rows.append(("(a) onnx2torch", True, diff, seconds, {b: rate(run_a, x) for b, x in batches.items()}))
            folder = Path(tmp) / f"ax-{arch.replace(':', '_')}"
            export_addaxai(source, AddaxaiSettings(folder))
            start = time.perf_counter()
            inference = load_inference(folder)
            seconds = time.perf_counter() - start

            def run_b(batch, inf=inference):
                return np.array([[p for _, p in r] for r in inf.classify_batch(batch)], np.float32)
            diff = float(np.abs(run_b(images) - reference).max())
            rows.append(("(b) timm", True, diff, seconds, {b: rate(run_b, x) for b, x in batches.items()}))
            if speed:
                rows.append(("onnxruntime", True, 0.0, 0.0,
                             {b: rate(lambda x: run_session(session, x), x) for b, x in batches.items()}))
            for way, runs, diff, seconds, speeds in rows:
                shown = f"{diff:15.1e}" if runs else f"  {diff}"
                print(f"{arch:24} {way:14} {'yes' if runs else 'no':>5} {shown} {seconds:7.2f} "
                      + " ".join(f"{speeds[b]:7.1f}" for b in speeds))


# -- 2. agreement ----------------------------------------------------------------------------------

def camera_trap_photos(root: Path, count: int, seed: int = 29) -> Path:
    """root/photos/*.jpg and root/md.json: Fashion-MNIST items pasted into the bundled blank photos."""
    from trained_runs import BLANKS, FASHION, read_idx

    if (root / "md.json").is_file():
        return root
    items = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    rng = np.random.default_rng(seed)
    blanks = [Image.open(p).convert("RGB") for p in BLANKS]
    entries = []
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        photo = blanks[k % len(blanks)].copy()
        width, height = photo.size
        detections = []
        for _ in range(1 if k % 2 else int(rng.integers(2, 5))):  # half the photos hold several animals
            side = int(rng.uniform(80, 700))
            x, y = int(rng.uniform(0, width - side)), int(rng.uniform(0, height - side))
            grey = Image.fromarray(items[int(rng.integers(len(items)))], "L").resize((side, side), Image.BILINEAR)
            v = np.asarray(grey, np.float32) / 255.0
            tint = rng.uniform(70, 210) * np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.45, 0.9)])
            colour = (tint * (0.35 + 0.65 * v[..., None]) * rng.uniform(0.5, 1.0)).clip(0, 255).astype(np.uint8)
            alpha = Image.fromarray((np.clip(v * 4.0, 0, 1) * 255).astype(np.uint8), "L")
            photo.paste(Image.fromarray(colour, "RGB"), (x, y), alpha.filter(ImageFilter.GaussianBlur(1)))
            ys, xs = np.nonzero(v > 0.05)
            if len(xs):
                box = [(x + xs.min()) / width, (y + ys.min()) / height,
                       (xs.max() - xs.min() + 1) / width, (ys.max() - ys.min() + 1) / height]
                detections.append({"category": "1", "conf": 0.9, "bbox": [round(b, 4) for b in box]})
        photo.save(root / "photos" / f"photo{k:03d}.jpg", quality=90)
        entries.append({"file": f"photo{k:03d}.jpg", "detections": detections})
    (root / "md.json").write_text(json.dumps({"info": {"format_version": "1.4"}, "images": entries,
                                              "detection_categories": {"1": "animal"}}))
    return root


def trapkit_answers(images: Path, detections: Path, model_dir: Path, out: Path) -> list[dict]:
    """`trapkit classify`'s top-1 (index, confidence) per classified detection, with the image's count."""
    import contextlib
    import io

    from trapkit.app.cli import main

    with contextlib.redirect_stdout(io.StringIO()):  # classify's species table
        assert main(["classify", str(images), "--model", str(model_dir), "--detections", str(detections),
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    index = {cid: int(cid) for cid in doc["classification_categories"]}
    found = []
    for im in doc["images"]:
        dets = [d for d in im.get("detections") or () if d.get("classifications")]
        for det in dets:
            cid, conf = det["classifications"][0]
            found.append({"path": images / im["file"], "bbox": det["bbox"], "top": index[cid], "conf": conf,
                          "several": len(dets) > 1})
    return found


def dct_emulated(inference, image: Image.Image, bbox) -> Image.Image:
    """The crop from the full decode box-averaged to the DCT scale trapkit would use for this box alone."""
    from trapkit.crops import min_decode_size
    from trapkit.images import _draft_scale

    module = types.SimpleNamespace(**type(inference).get_crop.__globals__)
    spec = inference.spec
    upright = ImageOps.exif_transpose(image)
    width, height = upright.size
    scale = _draft_scale((width, height), min_decode_size([bbox], width, height, spec["input_size"],
                                                          spec["crop_margin"]))
    if scale > 1:  # (the measured photos are stored upright; libjpeg reduces a turned one before it is turned)
        upright = upright.reduce(scale)
    return module.cut_square(upright, bbox, spec["input_size"], spec["crop_margin"],
                             module.RESAMPLING[spec["interpolation"]])


def addaxai_answers(inference, found: list[dict], emulate_dct: bool) -> list[tuple[int, float]]:
    """AddaxAI's way: each photo opened once as stored, each box through get_crop, one batch per photo."""
    names = {name: i for i, name in enumerate(inference.names)}
    answers, by_image = [], {}
    for k, item in enumerate(found):
        by_image.setdefault(item["path"], []).append(k)
    results = [None] * len(found)
    for path, ks in by_image.items():
        image = Image.open(path).convert("RGB")
        if emulate_dct:
            crops = [dct_emulated(inference, image, found[k]["bbox"]) for k in ks]
        else:
            crops = [inference.get_crop(image, tuple(found[k]["bbox"])) for k in ks]
        for k, answer in zip(ks, inference.classify_batch(np.stack([inference.get_tensor(c) for c in crops]))):
            name, conf = max(answer, key=lambda pair: pair[1])
            results[k] = (names[name], conf)
    answers.extend(results)
    return answers


def agreement(runs: list[Path], photos: int, workdir: Path, imagenet: bool = True) -> None:
    from trapkit.export.addaxai import AddaxaiSettings, export_addaxai, load_inference
    from trapkit.export.pipeline import export_model
    from trapkit.samples import SAMPLES_DIR

    sets = [("bundled photos", SAMPLES_DIR, SAMPLES_DIR / "md_v5a_detections.json")]
    if photos:
        made = camera_trap_photos(workdir / f"photos-{photos}", photos)
        sets.append(("camera-trap-like photos", made / "photos", made / "md.json"))
    print(f"\n2. AddaxAI's way against trapkit classify, the same detections ({load()})")
    print(f"{'model':28} {'detections':34} {'crop':12} {'n':>4} {'top-1':>6} {'max':>6} {'p99':>6} {'mean':>7} {'>0.02':>6}")
    for source in (["imagenet-lite0"] if imagenet else []) + runs:
        name = "imagenet-lite0" if source == "imagenet-lite0" else Path(source).name
        out, folder = workdir / f"onnx-{name}", workdir / f"addaxai-{name}"
        export_model(source, out)
        export_addaxai(source, AddaxaiSettings(folder))
        inference = load_inference(folder)
        for label, images, detections in sets:
            found = trapkit_answers(images, detections, out, workdir / f"{name}-{label[:7]}.json")
            for crop in ("shipped", "DCT emulated"):
                ours = addaxai_answers(inference, found, emulate_dct=crop == "DCT emulated")
                for part, keep in (("all", lambda f: True), ("one per photo", lambda f: not f["several"]),
                                   ("several per photo", lambda f: f["several"])):
                    pairs = [(f, o) for f, o in zip(found, ours) if keep(f)]
                    if not pairs:
                        continue
                    agree = np.mean([f["top"] == o[0] for f, o in pairs])
                    diff = np.array([abs(f["conf"] - o[1]) for f, o in pairs])
                    print(f"{name:28} {label + ', ' + part:34} {crop:12} {len(pairs):4d} {agree:6.3f} "
                          f"{diff.max():6.3f} {np.percentile(diff, 99):6.3f} {diff.mean():7.4f} "
                          f"{np.mean(diff > CONF_TOLERANCE):6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--how", action="store_true", help="also measure onnx2torch against the timm rebuild")
    ap.add_argument("--run", type=Path, action="append", default=[], help="a trained run folder (repeatable)")
    ap.add_argument("--photos", type=int, default=60, help="camera-trap-like photos to make (0: none)")
    ap.add_argument("--no-imagenet", action="store_true", help="leave imagenet-lite0 out of the agreement")
    ap.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: their default)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "trapkit-bench-addaxai")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.how:
        how(HOW_ARCHS)
    agreement([str(r) for r in args.run], args.photos, args.workdir, imagenet=not args.no_imagenet)


if __name__ == "__main__":
    main()
