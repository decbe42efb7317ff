"""Learning curves on Fashion-MNIST (Debian's dataset-fashion-mnist): uniform vs active selection.

What it measures: mean validation accuracy per label count for `uniform` and
the given strategies, seed of 100 labels, batches of 100, a budget of 2,000,
over 3 seeds, each strategy's mean accuracy over the budget minus
uniform's, and how many labels each needs to reach uniform's final accuracy.

Shortcut, for time: the embedding is NOT fine-tuned. Images go once through
the frozen offline ImageNet EfficientNet-Lite0 at a small input size,
taking the backbone's pooled 1280-d features (`--feat-dim 256` adds trapkit's
default 256-d projection, untrained as with `--finetune-epochs 0`), and are
cached; each round then runs trapkit's real head training
(`trapkit.train.head.fit_head`, warm-started from the last round's head, as
`al next` does while the embedder is unchanged), selection
(`trapkit.train.strategies`) and metrics (`trapkit.train.metrics`).

    apt-get install dataset-fashion-mnist   # installs /usr/share/datasets/fashion-mnist/
    .venv/bin/python bench/bench_learning_curve.py

`--detections` measures something else, on trapkit's own path end to end: training on what you classify.
See `detections_benchmark` (camera-trap-like frames, `al simulate` three ways, then `trapkit classify`).

    .venv/bin/python bench/bench_learning_curve.py --detections
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np

DATA = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def embed_fashion_mnist(n_pool: int, n_val: int, size: int, feat_dim: int | None, cache: Path) -> tuple:
    """(pool emb, pool labels, val emb, val labels) from the frozen Lite0, cached as .npz (no pickle)."""
    if cache.is_file():
        z = np.load(cache)
        if len(z["y_pool"]) == n_pool and len(z["y_val"]) == n_val:
            return z["x_pool"], z["y_pool"], z["x_val"], z["y_val"]
    import torch
    from PIL import Image

    from trapkit.images import to_model_input
    from trapkit.spec import ModelSpec
    from trapkit.train.backbones import INCEPTION_MEAN, INCEPTION_STD
    from trapkit.train.model import build_model

    rng = np.random.default_rng(1234)
    train_x, train_y = read_idx(DATA / "train-images-idx3-ubyte.gz"), read_idx(DATA / "train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx(DATA / "t10k-images-idx3-ubyte.gz"), read_idx(DATA / "t10k-labels-idx1-ubyte.gz")
    pool_i = rng.choice(len(train_x), n_pool, replace=False)
    val_i = rng.choice(len(test_x), n_val, replace=False)
    torch.manual_seed(0)
    spec = ModelSpec(arch="tf_efficientnet_lite0", labels=CLASSES, input_size=size, mean=INCEPTION_MEAN,
                     std=INCEPTION_STD, feat_dim=feat_dim)
    model = build_model(spec, "lite0-offline").eval()

    def embed(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(images), 256):
                batch = np.stack([to_model_input(Image.fromarray(im, "L"), size) for im in images[s:s + 256]])
                out.append(model.embedder(model.normalize(torch.from_numpy(batch))).numpy().astype(np.float16))
        return np.concatenate(out)

    t = time.perf_counter()
    result = embed(train_x[pool_i]), train_y[pool_i].astype(np.int64), embed(test_x[val_i]), test_y[val_i].astype(np.int64)
    print(f"embedded {n_pool + n_val} images at {size} px in {time.perf_counter() - t:.1f} s (cached in {cache})")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x_pool=result[0], y_pool=result[1], x_val=result[2], y_val=result[3])
    return result


def curve(strategy: str, seed: int, data: tuple, start: int, batch: int, budget: int) -> list[tuple[int, float]]:
    from trapkit.train import head, metrics, strategies
    from trapkit.train.settings import HeadSettings

    x_pool, y_pool, x_val, y_val = data
    rng = np.random.default_rng(seed)
    labelled = rng.choice(len(y_pool), start, replace=False)
    points = []
    settings = HeadSettings()
    mlp = None
    while True:
        # As `al next` with an unchanged embedder: warm start from the last round's head, seed + round.
        mlp = head.fit_head(x_pool[labelled], y_pool[labelled], len(CLASSES), (230, 100), settings,
                            seed=seed + len(points) + 1, init=mlp)
        acc = metrics.compute(y_val, head.predict(mlp, x_val).argmax(1), list(CLASSES))["accuracy"]
        points.append((len(labelled), acc))
        if len(labelled) - start >= budget:
            return points
        probs = head.predict(mlp, x_pool)
        candidates = np.setdiff1d(np.arange(len(y_pool)), labelled)
        counts = np.bincount(y_pool[labelled], minlength=len(CLASSES))
        pool = strategies.Pool(probs, x_pool, candidates, labelled, counts)
        picked = strategies.select(strategy, pool, min(batch, budget - (len(labelled) - start)), seed=seed + len(points))
        labelled = np.concatenate([labelled, picked])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="cluster_margin,margin", help="comma-separated, compared against uniform")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=10000, help="pool images drawn from the 60k training set")
    ap.add_argument("--val", type=int, default=2000, help="validation images drawn from the 10k test set")
    ap.add_argument("--size", type=int, default=96, help="input size for the frozen Lite0")
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--feat-dim", type=int, default=0,
                    help="256: trapkit's default 256-d projection (untrained here, as with --finetune-epochs 0); "
                         "0: the backbone's pooled 1280-d features")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/trapkit-bench"))
    add_detection_options(ap)
    args = ap.parse_args()
    if args.detections:
        return detections_benchmark(args)
    import torch

    torch.set_num_threads(1)  # tiny MLP steps: one thread is fastest, and immune to a busy machine
    print(f"Fashion-MNIST from {DATA}; frozen offline Lite0 at {args.size} px, NOT fine-tuned (cached embeddings, "
          f"{f'{args.feat_dim}-d projection, untrained' if args.feat_dim else 'pooled 1280-d'}); "
          f"pool {args.pool}, validation {args.val}, seed set {args.start}, batch {args.batch}, budget {args.budget}, "
          f"{args.seeds} seeds")
    cache = args.cache / f"fmnist-lite0-{args.size}px-{args.feat_dim or 'pooled'}-{args.pool}.npz"
    data = embed_fashion_mnist(args.pool, args.val, args.size, args.feat_dim or None, cache)
    names = ["uniform", *[s for s in args.strategies.split(",") if s and s != "uniform"]]
    results = {}
    for name in names:
        t = time.perf_counter()
        runs = [curve(name, seed, data, args.start, args.batch, args.budget) for seed in range(args.seeds)]
        results[name] = (np.array([[p[0] for p in r] for r in runs])[0], np.array([[p[1] for p in r] for r in runs]))
        print(f"{name}: {time.perf_counter() - t:.1f} s for {args.seeds} seeds")
    labels_axis = results["uniform"][0]
    print("\nmean validation accuracy per label count")
    print("labels  " + "  ".join(f"{n:>14}" for n in names))
    for i, n_lab in enumerate(labels_axis):
        print(f"{n_lab:>6}  " + "  ".join(f"{results[n][1][:, i].mean():>14.4f}" for n in names))
    base = results["uniform"][1].mean()
    print("\nmean accuracy over the budget (all label counts, all seeds)")
    for n in names:
        m = results[n][1].mean()
        print(f"{n:>16}: {m:.4f}  ({100 * (m - base):+.2f} points vs uniform)")
    # Label savings: the fewest labels with which each strategy's mean curve reaches what uniform has at the end.
    target = results["uniform"][1].mean(axis=0)[-1]
    print(f"\nlabels needed to reach uniform's accuracy at {labels_axis[-1]} labels ({target:.4f})")
    for n in names:
        reached = np.flatnonzero(results[n][1].mean(axis=0) >= target)
        print(f"{n:>16}: {labels_axis[reached[0]]}" if len(reached) else f"{n:>16}: not within the budget")


# -- detections mode: train on what you classify ----------------------------------------------------------

FRAME_SIZE = (640, 480)  # (w, h): the animal covers 1-5% of it, as in camera-trap photos
BLANKS = ("blank.jpg", "blank2.jpg", "blank3.jpg")


def add_detection_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("detections mode (--detections)")
    g.add_argument("--detections", action="store_true",
                   help="whole frames vs hand-cut crops vs 'al --detections', then 'trapkit classify' on held-out frames")
    g.add_argument("--fashion-mnist", type=Path, default=DATA, help=f"the dataset's folder (default {DATA})")
    g.add_argument("--frames", type=Path, default=Path("/tmp/trapkit-bench/frames"),
                   help="where the frames, crops, MegaDetector files and runs are written")
    g.add_argument("--per-class", type=int, default=10, help="seed frames per class")
    g.add_argument("--pool-frames", type=int, default=1000)
    g.add_argument("--val-frames", type=int, default=300)
    g.add_argument("--test-frames", type=int, default=300, help="held-out frames classified by 'trapkit classify'")
    g.add_argument("--det-budget", type=int, default=400, help="pool labels each run spends")
    g.add_argument("--det-batch", type=int, default=100)
    g.add_argument("--input-size", type=int, default=None, help="model input size (default: the backbone's, 224)")
    g.add_argument("--modes", default="whole,crops,detections")


def _blank_sources():
    from PIL import Image

    from trapkit.samples import SAMPLES_DIR

    out = []
    for name in BLANKS:
        img = Image.open(SAMPLES_DIR / name).convert("RGB")
        img.draft("RGB", (1600, 1200))
        out.append(img.copy())
    return out


def _paste(rng: np.random.Generator, blanks, item: np.ndarray):
    """A FRAME_SIZE piece of a blank camera-trap photo with a Fashion-MNIST item pasted in (1-5% of the frame).

    Returns (frame, box) with box = normalised [x, y, w, h] around the item's visible pixels, as MegaDetector
    would draw it."""
    from PIL import Image

    src = blanks[int(rng.integers(len(blanks)))]
    w = int(src.width * rng.uniform(0.35, 1.0))
    h = w * FRAME_SIZE[1] // FRAME_SIZE[0]
    x, y = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
    frame = np.asarray(src.crop((x, y, x + w, y + h)).resize(FRAME_SIZE, Image.BILINEAR), dtype=np.float32)
    side = int(round(np.sqrt(rng.uniform(0.01, 0.05) * FRAME_SIZE[0] * FRAME_SIZE[1])))
    raw = np.asarray(Image.fromarray(item, "L").resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    alpha = np.clip(raw * 3.0, 0.0, 1.0)[..., None]  # (side, side, 1): the item's shape
    colour = rng.uniform(60, 230, size=3) * rng.uniform(0.7, 1.0)  # a coat colour
    shade = 0.3 + 0.7 * raw[..., None]  # the item's own texture, as shading
    px, py = int(rng.integers(0, FRAME_SIZE[0] - side)), int(rng.integers(0, FRAME_SIZE[1] - side))
    region = frame[py:py + side, px:px + side]
    frame[py:py + side, px:px + side] = alpha * colour * shade + (1 - alpha) * region
    ys, xs = np.nonzero(alpha[..., 0] > 0.15)
    box = [(px + xs.min()) / FRAME_SIZE[0], (py + ys.min()) / FRAME_SIZE[1],
           (xs.max() - xs.min() + 1) / FRAME_SIZE[0], (ys.max() - ys.min() + 1) / FRAME_SIZE[1]]
    return Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)), [round(v, 4) for v in box]


def _hand_cut(frame, box, margin: float = 0.1):
    """A crop cut outside trapkit, as a person with an image editor would: a square around the box with a
    little context, kept inside the photo, at the photo's own resolution."""
    x, y, w, h = box[0] * frame.width, box[1] * frame.height, box[2] * frame.width, box[3] * frame.height
    side = max(w, h) * (1 + 2 * margin)
    left = min(max(x + w / 2 - side / 2, 0), frame.width - side)
    top = min(max(y + h / 2 - side / 2, 0), frame.height - side)
    return frame.crop((int(left), int(top), int(left + side), int(top + side)))


def make_frames(root: Path, per_class: int, n_pool: int, n_val: int, n_test: int, seed: int = 1234,
                data: Path = DATA) -> dict:
    """Frames, hand-cut crops, MegaDetector files and the pool's oracle, written once under `root`.

    root/frames/{seed,val}/<class>/*.jpg, frames/{pool,test}/cam_N/*.jpg, with {seed,val,pool,test}.json;
    root/crops/{seed,val,pool}/... the same names, hand-cut; root/oracle.csv (pool truth per image).
    """
    import csv
    import json

    done = root / "made.json"
    if done.is_file() and json.loads(done.read_text()) == [per_class, n_pool, n_val, n_test, seed]:
        return json.loads((root / "truth.json").read_text())
    rng = np.random.default_rng(seed)
    x, y = read_idx(data / "train-images-idx3-ubyte.gz"), read_idx(data / "train-labels-idx1-ubyte.gz")
    tx, ty = read_idx(data / "t10k-images-idx3-ubyte.gz"), read_idx(data / "t10k-labels-idx1-ubyte.gz")
    order, torder = rng.permutation(len(y)), rng.permutation(len(ty))
    seed_idx = np.concatenate([order[y[order] == c][:per_class] for c in range(len(CLASSES))])
    rest = np.setdiff1d(order, seed_idx)
    rest = rest[rng.permutation(len(rest))]
    splits = {"seed": (x, y, seed_idx), "pool": (x, y, rest[:n_pool]), "val": (tx, ty, torder[:n_val]),
              "test": (tx, ty, torder[n_val:n_val + n_test])}
    blanks = _blank_sources()
    truth: dict[str, dict[str, str]] = {}
    for split, (images, labels, idx) in splits.items():
        entries, truth[split] = [], {}
        for k, i in enumerate(idx):
            cls = CLASSES[labels[i]]
            rel = f"{cls}/{split}_{k:05d}.jpg" if split in ("seed", "val") else f"cam_{k % 7}/{split}_{k:05d}.jpg"
            frame, box = _paste(rng, blanks, images[i])
            for folder, picture in (("frames", frame), ("crops", _hand_cut(frame, box))):
                if folder == "crops" and split == "test":
                    continue
                path = root / folder / split / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path, quality=90)
            entries.append({"file": rel, "detections": [{"category": "1", "conf": round(float(rng.uniform(0.6, 0.98)), 3),
                                                         "bbox": box}]})
            truth[split][rel] = cls
        (root / f"{split}.json").write_text(json.dumps({
            "info": {"format_version": "1.4", "detector": "pasted (bench_learning_curve.py)"},
            "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": entries}))
    with open(root / "oracle.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File", "RelativePath", "Species"])
        for rel, cls in truth["pool"].items():
            folder, _, name = rel.rpartition("/")
            w.writerow([name, folder, cls])
    (root / "truth.json").write_text(json.dumps(truth))
    done.write_text(json.dumps([per_class, n_pool, n_val, n_test, seed]))
    return truth


def _mode_flags(root: Path, mode: str) -> list[str]:
    if mode == "detections":
        f = root / "frames"
        return ["--labelled", str(f / "seed"), "--seed-detections", str(root / "seed.json"),
                "--validation", str(f / "val"), "--validation-detections", str(root / "val.json"),
                "--unlabelled", str(f / "pool"), "--detections", str(root / "pool.json")]
    tree = root / ("frames" if mode == "whole" else "crops")
    return ["--labelled", str(tree / "seed"), "--validation", str(tree / "val"), "--unlabelled", str(tree / "pool")]


def _classify_top1(root: Path, run: Path, truth: dict) -> float:
    """Export the run's model and classify the held-out frames' detections with 'trapkit classify'."""
    import json

    from trapkit.cli import main as trapkit

    export = run.with_name(run.name + "-export")
    out = run.with_name(run.name + "-test.json")
    for path in (export, out, out.with_name(out.name + ".log")):
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    assert trapkit(["export", str(run), "--out", str(export)]) == 0
    assert trapkit(["classify", str(root / "frames" / "test"), "--model", str(export), "--detections",
                    str(root / "test.json"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    names = doc["classification_categories"]
    right = 0
    for im in doc["images"]:
        det = (im.get("detections") or [{}])[0]
        classes = det.get("classifications")
        right += bool(classes) and names[classes[0][0]] == truth["test"][im["file"]]
    return right / len(doc["images"])


def detections_benchmark(args) -> None:
    """Camera-trap-like frames: Fashion-MNIST items (1-5% of the frame) pasted into the bundled blank photos,
    one MegaDetector-style box each. Three ways to train with `al simulate` (same seed set, pool, budget):

    - whole: the frames themselves are the items (what a README user did before detections);
    - crops: crops cut by hand outside trapkit (a square around the box with 10% context, saved as JPEG);
    - detections: the frames with `--seed-detections/--validation-detections/--detections` (trapkit crops them).

    For each: validation accuracy at the end of the budget (the run's own validation items), and top-1 of
    `trapkit classify` on held-out frames with their detections (the exported model, its own crop policy).
    """
    import json
    import shutil

    import torch

    from trapkit.cli import main as trapkit

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    truth = make_frames(args.frames, args.per_class, args.pool_frames, args.val_frames, args.test_frames,
                        data=args.fashion_mnist)
    print(f"frames: {args.per_class} seed per class, pool {args.pool_frames}, validation {args.val_frames}, held-out "
          f"test {args.test_frames}, {FRAME_SIZE[0]}x{FRAME_SIZE[1]} px, the item 1-5% of the frame "
          f"({time.perf_counter() - t0:.0f} s); budget {args.det_budget} pool labels in batches of {args.det_batch}; "
          f"offline Lite0, input {args.input_size or 'default (224)'} px; seeds 0..{args.seeds - 1}")
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for seed in range(args.seeds):
        for mode in modes:
            run = args.frames / "runs" / f"{mode}-s{seed}"
            shutil.rmtree(run, ignore_errors=True)
            t = time.perf_counter()
            flags = _mode_flags(args.frames, mode) + ["--seed", str(seed), "--batch", str(args.det_batch)]
            if args.input_size:
                flags += ["--input-size", str(args.input_size)]
            assert trapkit(["al", "simulate", "--oracle", str(args.frames / "oracle.csv"), "--budget",
                            str(args.det_budget), "--out", str(run), *flags]) == 0
            curve = (run / "curve.csv").read_text().splitlines()
            accuracy = float(curve[-1].split(",")[1])
            top1 = _classify_top1(args.frames, run, truth)
            results[mode].append((accuracy, top1))
            print(f"seed {seed} {mode:>10}: validation accuracy {accuracy:.4f}, classify top-1 on held-out frames "
                  f"{top1:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\nmean (sd) over {args.seeds} seeds, {int(curve[-1].split(',')[0])} labels")
    print(f"{'training items':>28}  {'validation accuracy':>20}  {'classify top-1 (held-out)':>26}")
    label = {"whole": "whole frames", "crops": "hand-cut crops", "detections": "al --detections"}
    for mode in modes:
        a = np.array(results[mode])
        print(f"{label[mode]:>28}  {a[:, 0].mean():>12.4f} ({a[:, 0].std():.4f})  "
              f"{a[:, 1].mean():>18.4f} ({a[:, 1].std():.4f})")
    if {"crops", "detections", "whole"} <= set(modes):
        d, c, w = (np.array(results[m]).mean(axis=0) for m in ("detections", "crops", "whole"))
        print(f"\n--detections minus hand-cut crops: {100 * (d[0] - c[0]):+.1f} points (validation), "
              f"{100 * (d[1] - c[1]):+.1f} (classify); target within 2")
        print(f"--detections minus whole frames:   {100 * (d[0] - w[0]):+.1f} points (validation), "
              f"{100 * (d[1] - w[1]):+.1f} (classify); target at least +30")
    (args.frames / "results.json").write_text(json.dumps(results))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
