"""MLP head (230, 100): speed on 100,000 x 256 labelled embeddings, and quality on real embeddings of small seeds.

1. Speed: trapkit's head (PyTorch, mini-batches of 256, early stopping on a 10%
   hold-out) against the reference's approach, scikit-learn's MLPClassifier with
   the same layers, measured in the same run (seconds per epoch). Target: < 60 s.
2. Quality (issue 15): scikit-learn's digits through the default embedder of a
   run (offline ImageNet Lite0, 256-d projection, L2; 64 px for time), seeds of 2
   to 60 images per class, 300 validation images, 3 draws each: the head's
   validation accuracy and expected calibration error (10 bins) against a
   logistic regression on the same embeddings, raw and standardised.
   Target: the head within 2 points of a logistic regression.

    .venv/bin/python bench/bench_head.py [--n 100000] [--dim 256] [--classes 20] [--no-sklearn] [--no-real]
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


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    return float(sum(np.mean(m) * abs(right[m].mean() - conf[m].mean())
                     for lo, hi in zip(edges[:-1], edges[1:]) if (m := (conf > lo) & (conf <= hi)).any()))


def digit_embeddings(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, 256) float16, y (N,)): the 1,797 digits through a run's default embedder (the projection seeded
    as round 1 seeds it), stored as the run's cache stores them."""
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    from trapkit.images import to_model_input
    from trapkit.train.loop import _spec
    from trapkit.train.model import build_model
    from trapkit.train.settings import RunSettings

    settings = RunSettings()
    settings.model.input_size = size
    torch.manual_seed(settings.select.seed)
    model = build_model(_spec(settings, [str(d) for d in range(10)]), settings.model.weights).eval()
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = np.stack([to_model_input(Image.fromarray(p, "L"), size) for p in pixels])  # (N, S, S, 3) uint8
    with torch.no_grad():
        x = np.concatenate([model.embedder(model.normalize(torch.from_numpy(images[i:i + 256]))).numpy()
                            for i in range(0, len(images), 256)])
    return x.astype(np.float16), digits.target


def real_embeddings(draws: int = 3) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trapkit.train.head import fit_head, predict
    from trapkit.train.settings import HeadSettings

    t = time.perf_counter()
    x, y = digit_embeddings()
    print(f"\nreal embeddings: {len(y)} digits through the default embedder at 64 px in {time.perf_counter() - t:.0f} s; "
          f"300 validation images, {draws} seed draws each")
    val = np.arange(300)
    print(f"{'seed':>10} {'head':>6} {'ECE':>5} {'log. regression':>15} {'ECE':>5} {'standardised':>12} {'ECE':>5} "
          f"{'head s':>6}")
    for per_class in (2, 4, 8, 20, 60):
        rows = []
        for draw in range(draws):
            rest = np.random.default_rng(draw).permutation(np.arange(300, len(y)))
            seed = np.concatenate([rest[y[rest] == c][:per_class] for c in range(10)])
            t = time.perf_counter()
            probs = predict(fit_head(x[seed], y[seed], 10, (230, 100), HeadSettings(), seed=draw), x[val])
            seconds = time.perf_counter() - t
            xs, xv = x[seed].astype(np.float32), x[val].astype(np.float32)
            lr = LogisticRegression(max_iter=5000).fit(xs, y[seed]).predict_proba(xv)
            std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xs, y[seed]).predict_proba(xv)
            rows.append([v for p in (probs, lr, std) for v in (np.mean(p.argmax(1) == y[val]),
                                                                expected_calibration_error(p, y[val]))] + [seconds])
        m = np.mean(rows, axis=0)
        print(f"{10 * per_class:>4} ({per_class:>2}/c) {m[0]:6.3f} {m[1]:5.3f} {m[2]:15.3f} {m[3]:5.3f} {m[4]:12.3f} "
              f"{m[5]:5.3f} {m[6]:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--no-real", action="store_true", help="skip the real-embedding quality comparison")
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
          f"an epoch): {dt:.1f} s, {n_epochs} epochs, {mlp.steps_trained} steps (early stopping), "
          f"test accuracy {acc:.4f}")
    if not args.no_real:
        real_embeddings()
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
