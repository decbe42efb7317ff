"""Learning curves on Fashion-MNIST (Debian's dataset-fashion-mnist): uniform vs active selection, on `al`'s own path.

What it measures, per strategy (`uniform` and the given ones), mean over seeds: validation
accuracy at every label count (seed of 100 labels, batches of 100, a budget of 2,000), the
first-round accuracy (the seed alone), the mean over the budget, and how many labels each
strategy needs to reach uniform's final accuracy.

What runs is what `trapkit al simulate` runs, with `--finetune-epochs 0`:

- the images are PNG files read by the embedding code of a run (`trapkit.train.embed.extract`,
  float16 cache) through the default model (`RunSettings()` defaults: offline ImageNet
  EfficientNet-Lite0, the 256-d projection seeded as a run seeds it, L2 normalisation);
- every round fits the head with `trapkit.train.head.fit_head` and the run's `HeadSettings`,
  warm-started from the previous round's head, seed `seed + round`, as `al next` does; predicts
  every row; scores validation with `trapkit.train.metrics`; selects with `trapkit.train.strategies`
  (seed `seed + round`), on the same row order a run's manifest has (validation, seed, pool).

Two shortcuts, both stated in the output: the embedding is not fine-tuned (a run finetunes on
the seed and again every 500 labels; each would re-embed the pool), and the input size is 96 px
by default (`--size 224` is the backbone's own, ~5x slower). `--check-simulate` runs
`trapkit.train.loop.simulate` itself on a small subset, then this benchmark's rounds on that
run's own rows and embedding cache, and prints whether the two curves are identical.

    apt-get install dataset-fashion-mnist   # installs /usr/share/datasets/fashion-mnist/
    .venv/bin/python bench/bench_learning_curve.py [--seeds 3] [--size 96] [--check-simulate]
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


def product_settings(size: int):
    """The settings of a run made with defaults, `--finetune-epochs 0 --input-size SIZE`."""
    from trapkit.train.settings import RunSettings

    settings = RunSettings()
    settings.model.input_size = size
    settings.finetune.epochs = 0
    return settings


def embed_rows(paths: list[Path], settings, cache: Path) -> np.ndarray:
    """(N, 256) float16: the run's embedding of every row, through `embed.extract` (cached)."""
    import torch

    from trapkit.train import embed
    from trapkit.train.loop import _spec
    from trapkit.train.model import build_model

    if not cache.is_file():
        torch.manual_seed(settings.select.seed)  # as a round seeds the model it builds (the projection's init)
        model = build_model(_spec(settings, list(CLASSES)), settings.model.weights)
        t = time.perf_counter()
        failures = embed.extract(model, paths, cache)
        assert not failures, failures
        print(f"embedded {len(paths)} images at {settings.model.input_size} px in {time.perf_counter() - t:.1f} s "
              f"(cached in {cache})")
    return embed.open_embeddings(cache)


def curve(strategy: str, seed: int, emb: np.ndarray, y: np.ndarray, val: np.ndarray, pool_rows: np.ndarray,
          labelled: np.ndarray, batch: int, budget: int, settings) -> list[tuple[int, float]]:
    """(labels, validation accuracy) per round, as `al simulate` runs them from the `labelled` seed rows.

    Rows are a run's manifest rows: `y` their class indices (head order), `val` and `pool_rows` indices.
    """
    from trapkit.train import head, metrics, strategies

    settings.select.seed, settings.select.strategy, settings.select.batch = seed, strategy, batch
    classes = [str(c) for c in range(int(y.max()) + 1)]
    start = len(labelled)
    points, mlp = [], None
    for n in range(1, 10 ** 6):
        # loop._run_round: the head on the labelled rows (manifest order), warm-started, seed + round.
        mlp = head.fit_head(emb[labelled], y[labelled], len(classes), settings.model.head_hidden, settings.head,
                            seed=settings.select.seed + n, init=mlp)
        probs = head.predict(mlp, emb)  # (N, C)
        points.append((len(labelled), metrics.compute(y[val], probs[val].argmax(1), classes)["accuracy"]))
        if len(labelled) - start >= budget:
            return points
        # loop._request: every unlabelled pool row is a candidate; simulate answers the whole batch.
        candidates = np.setdiff1d(pool_rows, labelled)
        counts = np.bincount(y[labelled], minlength=len(classes))
        pool = strategies.Pool(probs, emb, candidates, labelled, counts)
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
    seed_rows = rng.choice(candidates, n_seed, replace=False)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="cluster_margin,margin", help="comma-separated, compared against uniform")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=10000, help="pool images drawn from the 60k training set")
    ap.add_argument("--val", type=int, default=2000, help="validation images drawn from the 10k test set")
    ap.add_argument("--size", type=int, default=96, help="input size in pixels (the backbone's own is 224)")
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/trapkit-bench/learning-curve"))
    ap.add_argument("--check-simulate", action="store_true",
                    help="also run `al simulate` itself on a small subset and print both curves")
    args = ap.parse_args()

    settings = product_settings(args.size)
    print(f"Fashion-MNIST from {DATA}: pool {args.pool}, validation {args.val}, seed set {args.start}, "
          f"batch {args.batch}, budget {args.budget}, {args.seeds} seeds; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print(f"al's path: {settings.model.backbone} ({settings.model.weights}) at {args.size} px, "
          f"{settings.model.feat_dim}-d projection + L2, NOT fine-tuned (--finetune-epochs 0); head "
          f"{settings.model.head_hidden} with the run's HeadSettings, warm-started")
    paths, y, n_val = write_images(args.workdir / "images", args.pool, args.val)
    emb = embed_rows(paths, settings, args.workdir / f"emb-{args.size}px-{args.pool}-{args.val}.npy")
    names = ["uniform", *[s for s in args.strategies.split(",") if s and s != "uniform"]]
    val, pool_rows = np.arange(n_val), np.arange(n_val, len(y))
    results = {}
    for name in names:
        t = time.perf_counter()
        # Each seed starts from `start` random pool images, the same ones for every strategy.
        runs = [curve(name, seed, emb, y, val, pool_rows,
                      np.sort(np.random.default_rng(seed).choice(pool_rows, args.start, replace=False)),
                      args.batch, args.budget, product_settings(args.size))
                for seed in range(args.seeds)]
        results[name] = (np.array([p[0] for p in runs[0]]), np.array([[p[1] for p in r] for r in runs]))
        print(f"{name}: {time.perf_counter() - t:.1f} s for {args.seeds} seeds")
    labels_axis = results["uniform"][0]
    print("\nmean validation accuracy per label count")
    print("labels  " + "  ".join(f"{n:>14}" for n in names))
    for i, n_lab in enumerate(labels_axis):
        print(f"{n_lab:>6}  " + "  ".join(f"{results[n][1][:, i].mean():>14.4f}" for n in names))
    target = results["uniform"][1].mean(axis=0)[-1]
    base = results["uniform"][1].mean()
    print(f"\n{'strategy':>16}  {'first round':>11}  {'final':>6}  {'mean over budget':>16}  "
          f"labels to reach uniform's final {target:.4f} (at {labels_axis[-1]})")
    for n in names:
        acc = results[n][1]
        reached = np.flatnonzero(acc.mean(axis=0) >= target)
        need = f"{labels_axis[reached[0]]}" if len(reached) else "not within the budget"
        print(f"{n:>16}  {acc[:, 0].mean():>11.4f}  {acc[:, -1].mean():>6.4f}  "
              f"{acc.mean():>8.4f} ({100 * (acc.mean() - base):+.2f})  {need}")
    print(f"first round = the {args.start}-label seed alone (sd over seeds "
          f"{results['uniform'][1][:, 0].std():.4f}); load average {os.getloadavg()[0]:.1f} at end")
    if args.check_simulate:
        check_simulate(paths, y, n_val, args.size, args.workdir)


if __name__ == "__main__":
    main()
