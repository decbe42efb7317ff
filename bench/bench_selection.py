"""Selection over a 1,000,000 x 256 pool: every strategy picks a batch of 100.

Prints, per strategy and embedding dtype (float16 memmap-like and float32):
seconds, peak traced memory beyond the inputs (numpy allocations, via
tracemalloc), and the time as a multiple of one chunked float32 pass over the
embeddings (the baseline, measured in the same run). Targets: every strategy
< 10 s, no N x N matrix (peak memory stays O(N (C + D))). The labelled rows
carry random classes and the classes random validation recalls (hierarchical
and balanced_margin read them).

    .venv/bin/python bench/bench_selection.py [--n 1000000] [--dim 256] [--classes 10]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from trapkit.train import strategies


def one_pass(x: np.ndarray) -> float:
    t = time.perf_counter()
    total = 0.0
    for s in range(0, len(x), 65536):
        total += float(x[s:s + 65536].astype(np.float32).sum())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labelled", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--dtypes", default="float16,float32")
    ap.add_argument("--strategies", default=",".join(strategies.STRATEGIES))
    args = ap.parse_args()
    import torch  # noqa: F401  (a round has torch loaded for the head: its import is not a strategy's cost)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(args.n, args.classes)).astype(np.float32) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    del logits
    labelled = rng.choice(args.n, args.labelled, replace=False)
    candidates = np.setdiff1d(np.arange(args.n), labelled)
    counts = np.maximum(1, (rng.pareto(1.0, args.classes) * 20).astype(int))  # long-tailed label counts
    labels = rng.integers(args.classes, size=args.labelled)
    recall = rng.uniform(0.3, 1.0, args.classes)
    print(f"pool {args.n:,} x {args.dim}, {args.classes} classes, {args.labelled} labelled, batch {args.batch}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'strategy':>16} {'dtype':>8} {'seconds':>8} {'x pass':>7} {'peak MB':>8}")
    for dtype in args.dtypes.split(","):
        emb = rng.standard_normal((args.n, args.dim), dtype=np.float32).astype(dtype)
        base = one_pass(emb)
        print(f"{'(one pass)':>16} {dtype:>8} {base:8.2f} {1.0:7.1f} {'':>8}")
        for name in args.strategies.split(","):
            pool = strategies.Pool(probs, emb, candidates, labelled, counts, labels, recall)
            tracemalloc.start()
            t = time.perf_counter()
            picked = strategies.select(name, pool, args.batch, seed=1)
            dt = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            ok = (len(picked) == args.batch and len(np.unique(picked)) == args.batch
                  and not np.isin(picked, labelled).any())
            print(f"{name:>16} {dtype:>8} {dt:8.2f} {dt / base:7.1f} {peak:8.0f}{'' if ok else '  WRONG BATCH'}"
                  f"{'' if dt < 10 else '  OVER 10 s'}", flush=True)
        del emb
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
