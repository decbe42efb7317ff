"""Learning curves on Fashion-MNIST (Debian's dataset-fashion-mnist): uniform vs active selection, on `al`'s own path.

What it measures, per strategy (`uniform` and the given ones), mean over seeds: validation
accuracy at every label count (seed of 100 labels, batches of 100, a budget of 2,000), the
first-round accuracy (the seed alone), the mean over the budget, and how many labels each
strategy needs to reach uniform's final accuracy.

What runs is what `trapkit al simulate` runs, with `--finetune-epochs 0`:

- the images are PNG files read by the embedding code of a run (`trapkit.train.embed.extract`,
  float16 cache) through the default model (`RunSettings()` defaults: offline ImageNet
  EfficientNet-Lite0, the 256-d projection seeded as a run seeds it, L2 normalisation);
- every round fits the head with `trapkit.train.head.fit_head` and the run's `HeadSettings`
  (a fresh head, or with `head.warm_start` the previous round's), seed `seed + round`, as `al next` does; predicts
  every row; scores validation with `trapkit.train.metrics`; selects with `trapkit.train.strategies`
  (seed `seed + round`), on the same row order a run's manifest has (validation, seed, pool).

One shortcut, stated in the output: the embedding is not fine-tuned (a run finetunes on the seed
and again every 500 labels; each would re-embed the pool). The input is the backbone's own 224 px,
as a run's (`--size 96` embeds ~5x faster, but understates what selection gains: issue 26's
figures in docs/model-quality.md). `--check-simulate` runs
`trapkit.train.loop.simulate` itself on a small subset, then this benchmark's rounds on that
run's own rows and embedding cache, and prints whether the two curves are identical.

    apt-get install dataset-fashion-mnist   # installs /usr/share/datasets/fashion-mnist/
    .venv/bin/python bench/bench_learning_curve.py [--seeds 3] [--size 96] [--check-simulate]

`--detections` measures something else, on trapkit's own path end to end: training on what you classify.
See `detections_benchmark` (camera-trap-like frames, `al simulate` three ways, then `trapkit classify`).

    .venv/bin/python bench/bench_learning_curve.py --detections
"""

from __future__ import annotations

import argparse
import gzip
import json
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


def write_images(root: Path, n_pool: int, n_val: int) -> tuple[list[Path], np.ndarray, int]:
    """PNG files as a run would read them: validation rows first, then the pool (a run's manifest order).
    Returns (paths, labels, number of validation rows)."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    train_x, train_y = read_idx(DATA / "train-images-idx3-ubyte.gz"), read_idx(DATA / "train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx(DATA / "t10k-images-idx3-ubyte.gz"), read_idx(DATA / "t10k-labels-idx1-ubyte.gz")
    pool_i = rng.choice(len(train_x), n_pool, replace=False)
    val_i = rng.choice(len(test_x), n_val, replace=False)
    paths, labels = [], []
    for split, xs, ys in (("validation", test_x[val_i], test_y[val_i]), ("pool", train_x[pool_i], train_y[pool_i])):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for k, (image, label) in enumerate(zip(xs, ys)):
            path = folder / f"{k:05d}.png"
            if not path.is_file():
                Image.fromarray(image, "L").save(path)
            paths.append(path)
            labels.append(int(label))
    return paths, np.array(labels, np.int64), n_val


def product_settings(size: int, semi_supervised: bool | None = None):
    """The settings of a run made with defaults, `--finetune-epochs 0 --input-size SIZE` (and
    `--[no-]semi-supervised` when given)."""
    from trapkit.train.settings import RunSettings

    settings = RunSettings()
    settings.model.input_size = size
    settings.finetune.epochs = 0
    if semi_supervised is not None:
        settings.head.semi_supervised = semi_supervised
    return settings


def embed_rows(paths: list[Path], settings, cache: Path) -> np.ndarray:
    """(N, 256) float16: the run's embedding of every row, through `embed.extract` (cached)."""
    import torch

    from trapkit.train import embed
    from trapkit.train.loop import _spec
    from trapkit.train.model import build_model
    from trapkit.train.run import Item

    if not cache.is_file():
        torch.manual_seed(settings.select.seed)  # as a round seeds the model it builds (the projection's init)
        model = build_model(_spec(settings, list(CLASSES)), settings.model.weights)
        t = time.perf_counter()
        failures = embed.extract(model, [Item(p) for p in paths], cache).failures  # whole images, as a run's rows
        assert not failures, failures
        print(f"embedded {len(paths)} images at {settings.model.input_size} px in {time.perf_counter() - t:.1f} s "
              f"(cached in {cache})")
    return embed.open_embeddings(cache)


def curve(strategy: str, seed: int, emb: np.ndarray, y: np.ndarray, val: np.ndarray, pool_rows: np.ndarray,
          labelled: np.ndarray, batch: int, budget: int, settings) -> list[tuple[int, float]]:
    """(labels, validation accuracy) per round, as `al simulate` runs them from the `labelled` seed rows.

    Rows are a run's manifest rows: `y` their class indices (head order), `val` and `pool_rows` indices.
    """
    from trapkit.train import head, metrics, semi, strategies

    settings.select.seed, settings.select.strategy, settings.select.batch = seed, strategy, batch
    classes = [str(c) for c in range(int(y.max()) + 1)]
    start = len(labelled)
    points, mlp = [], None
    for n in range(1, 10 ** 6):
        # loop._run_round: the head on the labelled rows (manifest order), seed + round, warm-started from the last
        # round's with `head.warm_start`; with `head.semi_supervised`, the unlabelled pool's pseudo-labels too.
        candidates = np.setdiff1d(pool_rows, labelled)  # every unlabelled pool row
        mlp = semi.fit_round_head(emb, labelled, y[labelled], candidates, len(classes), settings.model.head_hidden,
                                  settings.head, seed=settings.select.seed + n,
                                  init=mlp if settings.head.warm_start else None)
        probs = head.predict(mlp, emb)  # (N, C)
        m = metrics.compute(y[val], probs[val].argmax(1), classes)
        points.append((len(labelled), m["accuracy"]))
        if len(labelled) - start >= budget:
            return points
        # loop._request: every unlabelled pool row is a candidate; simulate answers the whole batch.
        counts = np.bincount(y[labelled], minlength=len(classes))
        recall = np.array([m["per_class_recall"].get(c, np.nan) for c in classes])
        pool = strategies.Pool(probs, emb, candidates, labelled, counts, y[labelled], recall)
        k = min(batch, budget - (len(labelled) - start))
        picked = strategies.select(strategy, pool, k, seed=settings.select.seed + n)
        labelled = np.sort(np.concatenate([labelled, picked]))
    raise AssertionError("unreachable")


def check_simulate(paths: list[Path], y: np.ndarray, n_val: int, size: int, workdir: Path) -> None:
    """`al simulate` itself on a small subset, and `curve` on that run's own embeddings and rows."""
    import shutil

    import pandas as pd

    from trapkit.train import embed
    from trapkit.train.loop import simulate
    from trapkit.train.settings import resolve

    n_small_val, n_seed, n_pool, batch, budget = 200, 30, 300, 30, 90
    root = workdir / "check"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    candidates = np.arange(n_val, n_val + n_seed + n_pool)
    # 3 seed images per class: `al init` refuses validation classes the seed lacks.
    seed_rows = np.concatenate([rng.choice(candidates[y[candidates] == c], n_seed // len(CLASSES), replace=False)
                                for c in range(len(CLASSES))])
    oracle = ["File,RelativePath,Species"]
    for split, chosen in (("validation", np.arange(n_small_val)), ("seed", seed_rows),
                          ("pool", np.setdiff1d(candidates, seed_rows))):
        for i in chosen:
            folder = root / split / (CLASSES[y[i]] if split != "pool" else "")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(paths[i], folder / f"{i:05d}.png")
            if split == "pool":
                oracle.append(f"{i:05d}.png,,{CLASSES[y[i]]}")
    (root / "oracle.csv").write_text("\n".join(oracle) + "\n")
    run_settings = resolve(None, {"labelled": str(root / "seed"), "unlabelled": str(root / "pool"),
                                  "validation": str(root / "validation"), "finetune_epochs": 0,
                                  "input_size": size, "batch": batch, "strategy": "margin"})
    t = time.perf_counter()
    ran = simulate(root / "run", run_settings, root / "oracle.csv", budget)
    print(f"\n--check-simulate: al simulate on {n_seed} seed + {n_pool} pool + {n_small_val} validation images "
          f"({time.perf_counter() - t:.0f} s)")
    print("  al simulate:          " + ", ".join(f"{r['labels']}: {r['accuracy']:.4f}" for r in ran))
    # The same rounds through `curve`, on the run's own manifest rows and embedding cache.
    df = pd.read_csv(root / "run" / "manifest.csv", keep_default_na=False)
    classes = sorted(CLASSES)  # a run's head order: the seed's class names, sorted
    truth = {f"{i:05d}.png": CLASSES[y[i]] for i in candidates}
    labels = np.array([classes.index(label or truth[path]) for path, label in zip(df["path"], df["label"])])
    emb = embed.open_embeddings(next((root / "run" / "embeddings").glob("*.npy")))
    split = df["split"].to_numpy()
    ours = curve("margin", 0, emb, labels, np.flatnonzero(split == "validation"), np.flatnonzero(split == "pool"),
                 np.flatnonzero(split == "seed"), batch, budget, resolve(None, {"finetune_epochs": 0,
                                                                                "input_size": size}))
    print("  this benchmark's path: " + ", ".join(f"{n}: {a:.4f}" for n, a in ours))
    same = len(ours) == len(ran) and all(abs(a - r["accuracy"]) < 1e-9 for (_, a), r in zip(ours, ran))
    print(f"  identical: {same}")


def label_efficiency(results: dict, names: list[str], baseline: str) -> None:
    """Per curve: first round, final, mean, and the labels it needs to reach the baseline's final accuracy;
    "fewer labels" = the labels the baseline's own curve first reaches its final accuracy with (its curve is
    noisy: it may touch it before the end) / the labels this curve needs; and the budget's end / that."""
    labels_axis, base_acc = results[baseline]
    target = base_acc.mean(axis=0)[-1]
    own = int(labels_axis[np.flatnonzero(base_acc.mean(axis=0) >= target)[0]])
    base = base_acc.mean()
    print(f"{'strategy':>22}  {'first round':>11}  {'final':>6}  {'mean over budget':>16}  labels to reach "
          f"{baseline}'s final {target:.4f}  fewer labels than {baseline} (its first touch {own} / end "
          f"{labels_axis[-1]})")
    for n in names:
        acc = results[n][1]
        reached = np.flatnonzero(acc.mean(axis=0) >= target)
        need = int(labels_axis[reached[0]]) if len(reached) else None
        ratio = f"{own / need:.2f}x / {labels_axis[-1] / need:.2f}x" if need else "-"
        print(f"{n:>22}  {acc[:, 0].mean():>11.4f}  {acc[:, -1].mean():>6.4f}  "
              f"{acc.mean():>8.4f} ({100 * (acc.mean() - base):+.2f})  {need or 'not within the budget':>14}  {ratio}")


def cold_start_table(args, emb: np.ndarray, y: np.ndarray, val: np.ndarray, pool_rows: np.ndarray) -> None:
    """Without a seed (`al init` with no `--labelled`): the first round's accuracy after labelling a first batch
    of `--start` items picked by each strategy, against a uniform batch of the same size. As the run does it:
    round 1 picks with seed + 1 on the embeddings alone, round 2 fits the head on the answers (seed + 2) with
    the pool's pseudo-labels when `head.semi_supervised` is on; validation: the test split (`--validation`)."""
    from trapkit.train import head, metrics, semi, strategies

    names = ["uniform", *[s for s in args.cold_start.split(",") if s and s != "uniform"]]
    classes = [str(c) for c in range(int(y.max()) + 1)]
    rows = {}
    for name in names:
        acc, covered = [], []
        settings = product_settings(args.size, None if args.semi in ("default", "both") else args.semi == "on")
        for seed in range(args.seeds):
            pool = strategies.Pool(np.ones((len(y), 1), np.float32), emb, pool_rows, np.zeros(0, np.int64))
            picked = np.sort(strategies.select(name, pool, args.start, seed=seed + 1))
            mlp = semi.fit_round_head(emb, picked, y[picked], np.setdiff1d(pool_rows, picked), len(classes),
                                      settings.model.head_hidden, settings.head, seed=seed + 2)
            probs = head.predict(mlp, emb[val])
            acc.append(metrics.compute(y[val], probs.argmax(1), classes)["accuracy"])
            covered.append(len(np.unique(y[picked])))
        rows[name] = (np.array(acc), np.array(covered))
    print(f"\nwithout a seed: first-round accuracy after labelling a first batch of {args.start}, {args.seeds} seeds "
          f"(semi-supervised head: {'on' if settings.head.semi_supervised else 'off'})")
    print(f"{'first batch':>14}  {'accuracy (sd)':>16}  {'vs uniform':>10}  {'classes in it':>13}")
    for name, (acc, covered) in rows.items():
        gain = 100 * (acc.mean() - rows["uniform"][0].mean())
        print(f"{name:>14}  {acc.mean():>9.4f} ({acc.std():.4f})  {gain:>+9.1f}  "
              f"{covered.mean():>13.1f}")
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="cluster_margin,margin", help="comma-separated, compared against uniform")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=10000, help="pool images drawn from the 60k training set")
    ap.add_argument("--val", type=int, default=2000, help="validation images drawn from the 10k test set")
    ap.add_argument("--size", type=int, default=None,
                    help="input size in pixels (default: the backbone's own, as a run's)")
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/trapkit-bench/learning-curve"))
    ap.add_argument("--check-simulate", action="store_true",
                    help="also run `al simulate` itself on a small subset and print both curves")
    ap.add_argument("--semi", choices=("default", "on", "off", "both"), default="default",
                    help="the head's semi-supervised pseudo-labels: the default setting, on, off, or each curve "
                    "both ways")
    ap.add_argument("--cold-start", metavar="STRATEGIES", default="",
                    help="also measure a start without a seed: first batches of --start items by these strategies "
                    "(e.g. typiclust,kcenter) against a uniform one")
    add_detection_options(ap)
    args = ap.parse_args()
    if args.detections:
        return detections_benchmark(args)

    if args.size is None:  # as `al init` resolves it
        from trapkit.train.backbones import backbone_preprocessing
        from trapkit.train.settings import ModelSettings

        args.size = backbone_preprocessing(ModelSettings.backbone, ModelSettings.weights).input_size
    settings = product_settings(args.size)
    print(f"Fashion-MNIST from {DATA}: pool {args.pool}, validation {args.val}, seed set {args.start}, "
          f"batch {args.batch}, budget {args.budget}, {args.seeds} seeds; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    head_start = "warm-started from the last round's" if settings.head.warm_start else "a fresh one each round"
    print(f"al's path: {settings.model.backbone} ({settings.model.weights}) at {args.size} px, "
          f"{settings.model.feat_dim}-d projection + L2, NOT fine-tuned (--finetune-epochs 0); head "
          f"{settings.model.head_hidden} with the run's HeadSettings, {head_start}")
    paths, y, n_val = write_images(args.workdir / "images", args.pool, args.val)
    emb = embed_rows(paths, settings, args.workdir / f"emb-{args.size}px-{args.pool}-{args.val}.npy")
    val, pool_rows = np.arange(n_val), np.arange(n_val, len(y))
    if args.cold_start:
        cold_start_table(args, emb, y, val, pool_rows)
    strategies_given = [s for s in args.strategies.split(",") if s and s != "uniform"]
    semi_modes = {"default": [None], "on": [True], "off": [False], "both": [False, True]}[args.semi]
    variants = [(f"{name}{'+semi' if semi else ''}", name, semi) for semi in semi_modes
                for name in ["uniform", *strategies_given]]
    results = {}
    for label, name, semi in variants:
        t = time.perf_counter()
        # Each seed starts from `start` random pool images, the same ones for every strategy.
        runs = [curve(name, seed, emb, y, val, pool_rows,
                      np.sort(np.random.default_rng(seed).choice(pool_rows, args.start, replace=False)),
                      args.batch, args.budget, product_settings(args.size, semi))
                for seed in range(args.seeds)]
        results[label] = (np.array([p[0] for p in runs[0]]), np.array([[p[1] for p in r] for r in runs]))
        print(f"{label}: {time.perf_counter() - t:.1f} s for {args.seeds} seeds; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    names = [v[0] for v in variants]
    labels_axis = results[names[0]][0]
    print("\nmean validation accuracy per label count")
    print("labels  " + "  ".join(f"{n:>16}" for n in names))
    for i, n_lab in enumerate(labels_axis):
        print(f"{n_lab:>6}  " + "  ".join(f"{results[n][1][:, i].mean():>16.4f}" for n in names))
    for semi in semi_modes:
        baseline = "uniform" + ("+semi" if semi else "")
        print(f"\nagainst {baseline}:")
        label_efficiency(results, [v[0] for v in variants if v[2] == semi], baseline)
    if len(semi_modes) == 2:
        print("\nwith the pool's pseudo-labels, against uniform without them:")
        label_efficiency(results, [v[0] for v in variants if v[2]], "uniform")
    print(f"first round = the {args.start}-label seed alone (sd over seeds "
          f"{results[names[0]][1][:, 0].std():.4f}); load average {os.getloadavg()[0]:.1f} at end")
    out = args.workdir / f"results-{args.semi}-{args.seeds}seeds.json"
    out.write_text(json.dumps({k: {"labels": v[0].tolist(), "accuracy": v[1].tolist()} for k, v in results.items()}))
    print(f"curves written to {out}")
    if args.check_simulate:
        check_simulate(paths, y, n_val, args.size, args.workdir)


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
    g.add_argument("--det-strategies", metavar="STRATEGIES", default="",
                   help="instead of the three modes: 'al --detections' with each strategy (and uniform), 3 seeds; the "
                   "first round, final accuracy and labels to reach uniform's final")
    g.add_argument("--det-cold", metavar="STRATEGIES", default="",
                   help="also 'al --detections' without a seed: the first round's accuracy after labelling one "
                   "--det-batch picked by each of these first strategies (and uniform)")
    g.add_argument("--det-flags", default="", help="extra 'al simulate' flags for every run, e.g. '--semi-supervised'")
    g.add_argument("--det-reuse", action="store_true",
                   help="reuse the curve of a run an earlier invocation finished with the same flags")


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
    from trapkit.app.cli import main as trapkit

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
    import shutil

    import torch

    from trapkit.app.cli import main as trapkit

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    truth = make_frames(args.frames, args.per_class, args.pool_frames, args.val_frames, args.test_frames,
                        data=args.fashion_mnist)
    print(f"frames: {args.per_class} seed per class, pool {args.pool_frames}, validation {args.val_frames}, held-out "
          f"test {args.test_frames}, {FRAME_SIZE[0]}x{FRAME_SIZE[1]} px, the item 1-5% of the frame "
          f"({time.perf_counter() - t0:.0f} s); budget {args.det_budget} pool labels in batches of {args.det_batch}; "
          f"offline Lite0, input {args.input_size or 'default (224)'} px; seeds 0..{args.seeds - 1}")
    if args.det_strategies or args.det_cold:
        return detection_strategies(args)
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


def _simulate_detections(args, name: str, seed: int, extra: list[str],
                         seeded: bool = True) -> list[tuple[int, float | None]]:
    """`al simulate` on the frames' detections (without the seed set unless `seeded`); (labels, validation
    accuracy) per round (None: not measured)."""
    import shutil

    from trapkit.app.cli import main as trapkit

    flags = _mode_flags(args.frames, "detections")
    if not seeded:  # drop --labelled SEED --seed-detections SEED.json
        flags = flags[4:]
    flags += ["--seed", str(seed), "--batch", str(args.det_batch), *extra, *args.det_flags.split()]
    if args.input_size:
        flags += ["--input-size", str(args.input_size)]
    tag = "-".join(args.det_flags.split()).strip("-")
    run = args.frames / "runs" / f"{name}{'-' + tag if tag else ''}-s{seed}"
    done = run.with_name(run.name + ".flags.json")  # a finished run with these flags is reused (--det-reuse)
    if not (args.det_reuse and done.is_file() and json.loads(done.read_text()) == flags):
        shutil.rmtree(run, ignore_errors=True)
        done.unlink(missing_ok=True)
        assert trapkit(["al", "simulate", "--oracle", str(args.frames / "oracle.csv"), "--out", str(run), *flags]) == 0
        done.write_text(json.dumps(flags))
    rows = [line.split(",") for line in (run / "curve.csv").read_text().splitlines()[1:]]
    return [(int(r[0]), float(r[1]) if r[1] else None) for r in rows]


def detection_strategies(args) -> None:
    """'al simulate --detections' per strategy (each against uniform) and, with --det-cold, without a seed."""
    t0 = time.perf_counter()
    make_frames(args.frames, args.per_class, args.pool_frames, args.val_frames, args.test_frames,
                data=args.fashion_mnist)
    print(f"frames: {args.per_class} seed per class, pool {args.pool_frames}, validation {args.val_frames}; budget "
          f"{args.det_budget} in batches of {args.det_batch}; offline Lite0 at {args.input_size or 'its own 224'} px, "
          f"fine-tuned as a run does; seeds 0..{args.seeds - 1}; extra flags '{args.det_flags}'; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    names = ["uniform", *[s for s in args.det_strategies.split(",") if s and s != "uniform"]] if args.det_strategies \
        else []
    results = {}
    for name in names:
        runs = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            runs.append(_simulate_detections(args, name, seed, ["--strategy", name, "--budget", str(args.det_budget)]))
            print(f"seed {seed} {name:>20}: " + ", ".join(f"{n}: {a:.4f}" for n, a in runs[-1]) +
                  f" ({time.perf_counter() - t:.0f} s, load average {os.getloadavg()[0]:.1f})", flush=True)
        results[name] = (np.array([n for n, _ in runs[0]]), np.array([[a for _, a in r] for r in runs]))
    if results:
        print(f"\nmean validation accuracy per label count, {args.seeds} seeds")
        print("labels  " + "  ".join(f"{n:>16}" for n in names))
        for i, n_lab in enumerate(results["uniform"][0]):
            print(f"{n_lab:>6}  " + "  ".join(f"{results[n][1][:, i].mean():>16.4f}" for n in names))
        print()
        label_efficiency(results, names, "uniform")
    cold = ["uniform", *[s for s in args.det_cold.split(",") if s and s != "uniform"]] if args.det_cold else []
    first = {}
    for name in cold:
        acc = []
        for seed in range(args.seeds):
            curve = _simulate_detections(args, f"cold-{name}", seed, [
                "--first-strategy", name, "--budget", str(args.det_batch)], seeded=False)
            acc.append(curve[-1][1])
        first[name] = np.array(acc, dtype=float)
        print(f"without a seed, first batch by {name}: " + ", ".join(f"{a:.4f}" for a in acc), flush=True)
    if first:
        print(f"\nwithout a seed: first-round accuracy after labelling one batch of {args.det_batch} detections")
        for name, acc in first.items():
            gain = 100 * (acc.mean() - first["uniform"].mean())
            print(f"{name:>14}  {acc.mean():.4f} ({acc.std():.4f})  {gain:+.1f}")
    (args.frames / "strategies.json").write_text(json.dumps(
        {k: {"labels": v[0].tolist(), "accuracy": v[1].tolist()} for k, v in results.items()} |
        {f"cold-{k}": v.tolist() for k, v in first.items()}))
    print(f"total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
