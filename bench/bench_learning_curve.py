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
"""

from __future__ import annotations

import argparse
import gzip
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
