"""MLP head (230, 100) training on 100,000 x 256 labelled embeddings.

trapkit's head (PyTorch, mini-batches of 256, early stopping on a 10% hold-out)
against the reference's approach, scikit-learn's MLPClassifier with the same
layers, measured in the same run (seconds per epoch). Target: < 60 s.

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
    from trapkit.train.head import fit_head, predict
    from trapkit.train.settings import HeadSettings

    n_test = min(10_000, args.n // 10)
    x, y = blobs(args.n + n_test, args.dim, args.classes, 0)  # same distribution; the last n_test rows are test
    x, y, xt, yt = x[:args.n], y[:args.n], x[args.n:], y[args.n:]
    print(f"{len(y):,} x {args.dim} training embeddings, {args.classes} classes, {n_test:,} test")
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
    # The reference's full fit runs for minutes here: time 3 epochs and compare seconds per epoch.
    t = time.perf_counter()
    ref = MLPClassifier((230, 100), max_iter=3, random_state=0).fit(x.astype(np.float32), y)
    per_epoch_ref = (time.perf_counter() - t) / 3
    acc_ref = (ref.predict(xt.astype(np.float32)) == yt).mean()
    per_epoch = dt / n_epochs
    print(f"scikit-learn MLPClassifier (230, 100), 3 epochs: {per_epoch_ref:.2f} s/epoch (test accuracy after 3 "
          f"epochs {acc_ref:.4f}); trapkit {per_epoch:.2f} s/epoch incl. hold-out checks, "
          f"ratio trapkit/sklearn {per_epoch / per_epoch_ref:.2f}")

if __name__ == "__main__":
    main()
