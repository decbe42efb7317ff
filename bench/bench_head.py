"""MLP head (230, 100) training on 100,000 x 256 labelled embeddings.

trapkit's head (PyTorch, mini-batches of 256, early stopping on a 10% hold-out)
against the reference's approach, scikit-learn's MLPClassifier with the same
layers, measured in the same run with the same epoch count. Target: < 60 s.

    .venv/bin/python bench/bench_head.py [--n 100000] [--dim 256] [--classes 20] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def blobs(n: int, dim: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    # Centre spacing ~3.4 noise sd: overlapping classes (~90% Bayes accuracy), so early stopping has work to do.
    centres = rng.normal(scale=0.15, size=(classes, dim)).astype(np.float32)
    y = rng.integers(classes, size=n)
    x = centres[y] + rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # L2-normalised like trapkit embeddings
    return x.astype(np.float16), y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--no-sklearn", action="store_true")
    args = ap.parse_args()
    import torch

    from trapkit.train.head import fit_head, predict
    from trapkit.train.settings import HeadSettings

    x, y = blobs(args.n, args.dim, args.classes, 0)
    rng = np.random.default_rng(1)
    test = rng.choice(args.n, min(10_000, args.n // 10), replace=False)
    train = np.setdiff1d(np.arange(args.n), test)
    xt, yt = x[test], y[test]
    x, y = x[train], y[train]
    print(f"{len(y):,} x {args.dim} training embeddings, {args.classes} classes, {len(test):,} test")
    t = time.perf_counter()
    mlp = fit_head(x, y, args.classes, (230, 100), HeadSettings())
    dt = time.perf_counter() - t
    acc = (predict(mlp, xt).argmax(1) == yt).mean()
    n_epochs = mlp.epochs_trained
    print(f"trapkit head ({HeadSettings().threads} thread, batches of >= {HeadSettings().batch_size}, <= 200 steps "
          f"an epoch): {dt:.1f} s, {n_epochs} epochs (early stopping), test accuracy {acc:.4f}")
    if args.no_sklearn:
        return
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    t = time.perf_counter()
    ref = MLPClassifier((230, 100), max_iter=n_epochs, random_state=0).fit(x.astype(np.float32), y)
    dt_ref = time.perf_counter() - t
    acc_ref = (ref.predict(xt.astype(np.float32)) == yt).mean()
    print(f"scikit-learn MLPClassifier, same {n_epochs} epochs: {dt_ref:.1f} s, test accuracy {acc_ref:.4f} "
          f"(trapkit/sklearn time ratio {dt / dt_ref:.2f})")


if __name__ == "__main__":
    main()
