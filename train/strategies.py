"""Selection strategies: which unlabelled images to ask about next.

Every strategy is a stateless function of the current pool, so repeated
calls are always correct (k-center recomputes its distances from the
labelled set each call), handles any batch size up to the number of
candidates, and only returns candidate rows (never a labelled image).
Memory stays O(N (C + D)): distances are computed in chunks or against one
centre at a time, never as an N x N matrix.

- uniform: random.
- margin / entropy / confidence: most uncertain by top-2 margin, entropy, or top-1 probability.
- kcenter: greedy k-center (core-set) on embeddings, from the labelled set.
- cluster_margin: the 10 x batch lowest-margin images, k-means'd into `batch` clusters; the most
  uncertain of each cluster (uncertain and diverse).
- badge: k-means++ seeding on gradient embeddings (p - onehot(argmax)) x z (uncertain and diverse).
- balanced_margin: class-balance aware for long-tailed data: the batch is shared among predicted
  classes in inverse proportion to their labelled counts, lowest margin first within each.

`select_per_sequence` wraps any of them for camera traps: at most one item per sequence (a burst of
photos, `trapkit.sequences`) in a batch, unless the pool runs out of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trapkit.errors import TrapkitError

CHUNK = 65536


@dataclass
class Pool:
    probs: np.ndarray  # (N, C) float32 model probabilities, every row
    embeddings: np.ndarray  # (N, D) float16 or float32 (may be a memmap)
    candidates: np.ndarray  # (M,) int rows that may be picked: unlabelled, readable
    labelled: np.ndarray  # (L,) int rows already labelled
    label_counts: np.ndarray | None = None  # (C,) labelled examples per class


def _gather(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] as float32, chunked so a float16 memmap is never copied whole at once in float64."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    for s in range(0, len(rows), CHUNK):
        out[s:s + CHUNK] = x[rows[s:s + CHUNK]]
    return out


def _lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k lowest scores, lowest first (ties by position: deterministic)."""
    k = min(k, len(scores))
    part = np.argpartition(scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, scores[part]))]


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """top1 - top2 per row; (N,)."""
    if probs.shape[1] < 2:
        return np.zeros(len(probs), np.float32)
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _uncertainty(name: str):
    def pick(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
        p = pool.probs[pool.candidates]
        if name == "margin":
            scores = margin_scores(p)
        elif name == "entropy":
            scores = (p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)  # negative entropy: lowest = most uncertain
        else:
            scores = p.max(axis=1)
        return pool.candidates[_lowest(scores, batch)]

    return pick


def uniform(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(pool.candidates, size=min(batch, len(pool.candidates)), replace=False)


def kcenter(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    x = _gather(pool.embeddings, pool.candidates)  # (M, D)
    sq = np.einsum("ij,ij->i", x, x)
    if len(pool.labelled):
        lab = _gather(pool.embeddings, pool.labelled)  # (L, D)
        lab_sq = np.einsum("ij,ij->i", lab, lab)
        dist = np.empty(len(x), np.float32)
        step = max(256, 2**24 // max(len(lab), 1))  # chunk x L floats stays ~64 MB
        for s in range(0, len(x), step):
            d = sq[s:s + step, None] - 2.0 * x[s:s + step] @ lab.T + lab_sq[None, :]
            dist[s:s + step] = d.min(axis=1)
    else:
        dist = np.full(len(x), np.inf, np.float32)
        dist[rng.integers(len(x))] = np.float32(np.finfo(np.float32).max)
    chosen = []
    for _ in range(min(batch, len(x))):
        i = int(np.argmax(dist))
        chosen.append(i)
        d = sq - 2.0 * (x @ x[i]) + sq[i]
        np.minimum(dist, d, out=dist)
        dist[i] = -np.inf
    return pool.candidates[np.array(chosen, dtype=np.int64)]


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20) -> np.ndarray:
    """Lloyd's k-means with k-means++ init; returns (n,) cluster ids. x is small (a few thousand rows)."""
    centres = x[_kmeanspp(x, k, rng)]
    for _ in range(iters):
        d = (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None, :]
        assign = d.argmin(axis=1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return assign


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    sq = (x**2).sum(1)
    chosen = [int(rng.integers(len(x)))]
    dist = np.maximum(sq - 2 * x @ x[chosen[0]] + sq[chosen[0]], 0)
    for _ in range(k - 1):
        total = dist.sum()
        i = int(rng.choice(len(x), p=dist / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(i)
        np.minimum(dist, np.maximum(sq - 2 * x @ x[i] + sq[i], 0), out=dist)
    return np.array(chosen)


def cluster_margin(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    margins = margin_scores(pool.probs[pool.candidates])
    shortlist = _lowest(margins, 10 * batch)
    if batch >= len(shortlist):
        return pool.candidates[shortlist]
    x = _gather(pool.embeddings, pool.candidates[shortlist])
    assign = _kmeans(x, batch, rng)
    picked = []
    for c in np.unique(assign):
        members = np.flatnonzero(assign == c)
        picked.append(shortlist[members[np.argmin(margins[shortlist[members]])]])
    if len(picked) < batch:  # empty clusters: fill with the next most uncertain
        taken = set(picked)
        picked += [i for i in shortlist if i not in taken][: batch - len(picked)]
    return pool.candidates[np.array(picked, dtype=np.int64)]


def badge(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ on g = (p - onehot(argmax p)) (x) z without forming g:

    |g_i - g_j|^2 = |u_i|^2 |z_i|^2 + |u_j|^2 |z_j|^2 - 2 (u_i . u_j)(z_i . z_j), u = p - onehot.
    """
    p = pool.probs[pool.candidates]  # (M, C)
    u = p.copy()
    u[np.arange(len(u)), p.argmax(axis=1)] -= 1.0
    z = _gather(pool.embeddings, pool.candidates)  # (M, D)
    norm = np.einsum("ij,ij->i", u, u) * np.einsum("ij,ij->i", z, z)  # |g|^2, (M,)
    k = min(batch, len(z))
    chosen = [int(np.argmax(norm))]
    dist = np.full(len(z), np.inf, np.float32)
    for _ in range(k):
        c = chosen[-1]
        d = norm + norm[c] - 2.0 * (u @ u[c]) * (z @ z[c])
        np.minimum(dist, np.maximum(d, 0), out=dist)
        dist[chosen] = 0
        if len(chosen) == k:
            break
        total = float(dist.sum(dtype=np.float64))
        nxt = int(rng.choice(len(z), p=dist / total)) if total > 0 else \
            int(rng.choice(np.setdiff1d(np.arange(len(z)), chosen)))
        chosen.append(nxt)
    return pool.candidates[np.array(chosen, dtype=np.int64)]


def balanced_margin(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    p = pool.probs[pool.candidates]
    predicted = p.argmax(axis=1)
    margins = margin_scores(p)
    counts = pool.label_counts if pool.label_counts is not None else np.zeros(p.shape[1])
    present = np.unique(predicted)
    weight = 1.0 / (np.asarray(counts, dtype=np.float64)[present] + 1.0)
    quota = np.floor(batch * weight / weight.sum()).astype(int)
    picked: list[int] = []
    for c, q in zip(present, quota):
        members = np.flatnonzero(predicted == c)
        picked += members[_lowest(margins[members], q)].tolist()
    if len(picked) < batch:  # rounding and small classes: fill by global margin
        taken = np.zeros(len(margins), bool)
        taken[picked] = True
        rest = np.flatnonzero(~taken)
        picked += rest[_lowest(margins[rest], batch - len(picked))].tolist()
    return pool.candidates[np.array(picked, dtype=np.int64)]


STRATEGIES = {
    "uniform": uniform,
    "margin": _uncertainty("margin"),
    "entropy": _uncertainty("entropy"),
    "confidence": _uncertainty("confidence"),
    "kcenter": kcenter,
    "cluster_margin": cluster_margin,
    "badge": badge,
    "balanced_margin": balanced_margin,
}


def select(strategy: str, pool: Pool, batch: int, seed: int = 0) -> np.ndarray:
    """Up to `batch` distinct candidate rows, (k,) int64. Deterministic for a given seed."""
    if strategy not in STRATEGIES:
        raise TrapkitError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if batch < 1:
        raise TrapkitError(f"batch must be at least 1, got {batch}")
    pool.candidates = np.asarray(pool.candidates, dtype=np.int64)
    pool.labelled = np.asarray(pool.labelled, dtype=np.int64)
    if len(pool.candidates) == 0:
        return np.zeros(0, np.int64)
    picked = np.asarray(STRATEGIES[strategy](pool, batch, np.random.default_rng(seed)), dtype=np.int64)
    return picked


def select_per_sequence(strategy: str, pool: Pool, batch: int, sequence: np.ndarray, taken=(),
                        seed: int = 0) -> np.ndarray:
    """`select`, with at most one pick per sequence (`sequence`: (N,) id of every row) and none from the
    sequences of `taken` rows; when every sequence has one, the rest of the batch comes from any candidate.

    The strategy runs again on what is left after each pass (the picks so far count as labelled, so
    diversity strategies spread around them) and keeps its first pick in each new sequence.
    """
    candidates = np.asarray(pool.candidates, dtype=np.int64)
    taken = np.asarray(taken, dtype=np.int64)
    used = set(sequence[taken].tolist())
    chosen: list[int] = []
    rest = candidates[~np.isin(sequence[candidates], list(used))]
    for attempt in range(batch):
        if len(chosen) >= batch or not len(rest):
            break
        sub = Pool(pool.probs, pool.embeddings, rest, np.concatenate([pool.labelled, taken, chosen]).astype(np.int64),
                   pool.label_counts)
        for i in select(strategy, sub, batch - len(chosen), seed=seed + attempt):
            if sequence[i] not in used:
                chosen.append(int(i))
                used.add(int(sequence[i]))
        rest = rest[~np.isin(sequence[rest], list(used))]
    if len(chosen) < batch:  # the pool ran out of new sequences
        left = np.setdiff1d(candidates, chosen)
        if len(left):
            sub = Pool(pool.probs, pool.embeddings, left, np.concatenate([pool.labelled, taken, chosen]).astype(np.int64),
                       pool.label_counts)
            chosen += select(strategy, sub, batch - len(chosen), seed=seed + batch).tolist()
    return np.array(chosen, dtype=np.int64)
