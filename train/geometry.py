"""Distances, nearest neighbours and clusters on embeddings, chunked so no N x N matrix is ever formed.

What the selection strategies, the cold start and the semi-supervised head share. Embeddings may be a
float16 memmap; everything here works on float32 copies of the rows it is given (`gather`), a chunk at a
time where N x k matrices would be large. Every function is deterministic for a given `rng`.
"""

from __future__ import annotations

import numpy as np

CHUNK = 65536  # rows cast or scored at a time
BLOCK_FLOATS = 2 ** 24  # (rows x columns) of one distance block: 64 MB of float32
FIT_SAMPLE = 10_000  # rows k-means is fitted on by `clusters` (every row is then assigned to its nearest centre)


def gather(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] as float32, chunked so a float16 memmap is never copied whole at once in float64."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    for s in range(0, len(rows), CHUNK):
        out[s:s + CHUNK] = x[rows[s:s + CHUNK]]
    return out


def squared_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def subsample(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` when there are at most `cap`, else `cap` of them drawn without replacement (sorted)."""
    if len(rows) <= cap:
        return rows
    return np.sort(rng.choice(rows, size=cap, replace=False))


def min_distances(x: np.ndarray, centres: np.ndarray, x_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(squared distance to the nearest centre (N,), its index (N,)) for (N, D) `x` and (K, D) `centres`."""
    x_sq = squared_norms(x) if x_sq is None else x_sq
    c_sq = squared_norms(centres)
    dist = np.empty(len(x), np.float32)
    nearest = np.empty(len(x), np.int64)
    step = max(256, BLOCK_FLOATS // max(len(centres), 1))
    for s in range(0, len(x), step):
        d = x[s:s + step] @ centres.T  # (step, K)
        d *= -2.0
        d += c_sq[None, :]
        k = d.argmin(axis=1)
        nearest[s:s + step] = k
        dist[s:s + step] = d[np.arange(len(k)), k] + x_sq[s:s + step]
    np.maximum(dist, 0.0, out=dist)
    return dist, nearest


def knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of every row of (N, D) `x`: (indices (N, k), squared distances (N, k)), nearest
    first. Exact, in blocks of rows (N x N is never formed; the cost is N^2 D, so callers cap N). The top k
    of a block is torch's (numpy's argpartition along rows is ~20x slower)."""
    import torch

    n = len(x)
    k = min(k, n - 1)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    sq = (xt * xt).sum(1)
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float32)
    step = max(64, BLOCK_FLOATS // max(n, 1))
    with torch.no_grad():
        for s in range(0, n, step):
            d = xt[s:s + step] @ xt.T  # (step, N)
            d.mul_(-2.0).add_(sq[None, :]).add_(sq[s:s + step, None])
            rows = torch.arange(len(d))
            d[rows, s + rows] = float("inf")  # not its own neighbour
            near, part = torch.topk(d, k, dim=1, largest=False, sorted=True)
            idx[s:s + step] = part.numpy()
            dist[s:s + step] = near.numpy()
    np.maximum(dist, 0.0, out=dist)
    return idx, dist


def symmetric_graph(idx: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The symmetrised k-NN graph (i ~ j when either lists the other), as (start (n + 1,), neighbour, weight):
    node i's edges are positions start[i]:start[i + 1]."""
    n, k = idx.shape
    src = np.repeat(np.arange(n), k)
    a = np.concatenate([src, idx.ravel()])
    b = np.concatenate([idx.ravel(), src])
    w = np.concatenate([weight.ravel(), weight.ravel()])
    order = np.lexsort((b, a))
    a, b, w = a[order], b[order], w[order]
    keep = np.ones(len(a), bool)
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])  # an edge both ends list: once
    a, b, w = a[keep], b[keep], w[keep]
    return np.searchsorted(a, np.arange(n + 1)), b, w


def kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): (k,) row indices of `x`."""
    sq = squared_norms(x)
    chosen = [int(rng.integers(len(x)))]
    dist = np.maximum(sq - 2 * x @ x[chosen[0]] + sq[chosen[0]], 0)
    for _ in range(k - 1):
        total = dist.sum()
        i = int(rng.choice(len(x), p=dist / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(i)
        np.minimum(dist, np.maximum(sq - 2 * x @ x[i] + sq[i], 0), out=dist)
    return np.array(chosen)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (centres (k, D), assignment (N,)). Stops early once no row moves.

    An empty cluster keeps its centre (so k centres always come back)."""
    centres = x[kmeanspp(x, k, rng)].copy()
    x_sq = squared_norms(x)
    assign = None
    for _ in range(iters):
        new = min_distances(x, centres, x_sq)[1]
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        centres = cluster_means(x, assign, k, centres)
    return centres, assign


def clusters(embeddings: np.ndarray, rows: np.ndarray, k: int, rng: np.random.Generator,
             iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """k-means of embeddings[rows], fitted on a random `FIT_SAMPLE` of them, then every row assigned to its
    nearest centre: (centres (k, D), cluster of each row (len(rows),))."""
    fit = subsample(np.arange(len(rows)), FIT_SAMPLE, rng)
    centres = kmeans(gather(embeddings, rows[fit]), k, rng, iters=iters)[0]
    assign = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), CHUNK):  # a chunk of float32 rows at a time
        assign[s:s + CHUNK] = min_distances(gather(embeddings, rows[s:s + CHUNK]), centres)[1]
    return centres, assign


def cluster_means(x: np.ndarray, assign: np.ndarray, k: int, fallback: np.ndarray) -> np.ndarray:
    """(k, D) mean of each cluster's rows; `fallback`'s row for an empty cluster."""
    order = np.argsort(assign, kind="stable")
    counts = np.bincount(assign, minlength=k)
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    out = fallback.copy()
    out[present] = np.add.reduceat(x[order], starts, axis=0) / counts[present, None]
    return out


def ward_tree(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Agglomerative clustering of weighted points with Ward's criterion: (K - 1, 2) children of each merge, in
    merge order, numbered as scipy numbers them (leaves 0..K-1, merge t makes node K + t; the root is the last).

    Merging clusters a and b costs n_a n_b / (n_a + n_b) |c_a - c_b|^2, the growth in within-cluster variance.
    O(K^2) memory, O(K^3) time: meant for a few hundred leaf clusters."""
    k = len(centres)
    c = centres.astype(np.float64).copy()
    n = sizes.astype(np.float64).copy()
    cost = _ward_costs(c, n)
    node = np.arange(k)  # slot -> node id
    active = np.ones(k, bool)
    children = np.empty((max(k - 1, 0), 2), np.int64)
    for t in range(k - 1):
        flat = int(np.argmin(cost))
        a, b = divmod(flat, k)
        a, b = min(a, b), max(a, b)
        children[t] = (node[a], node[b])
        c[a] = (n[a] * c[a] + n[b] * c[b]) / (n[a] + n[b])
        n[a] += n[b]
        active[b] = False
        node[a] = k + t
        cost[b, :] = cost[:, b] = np.inf
        row = _ward_costs(c, n, a)
        row[~active] = np.inf
        row[a] = np.inf
        cost[a, :] = cost[:, a] = row
    return children


def _ward_costs(c: np.ndarray, n: np.ndarray, one: int | None = None) -> np.ndarray:
    """Ward merge costs: (K, K) between every pair (diagonal inf), or (K,) from slot `one` to every slot."""
    sq = (c ** 2).sum(1)
    if one is None:
        d = np.maximum(sq[:, None] + sq[None, :] - 2 * c @ c.T, 0)
        out = n[:, None] * n[None, :] / (n[:, None] + n[None, :]) * d
        np.fill_diagonal(out, np.inf)
        return out
    d = np.maximum(sq + sq[one] - 2 * c @ c[one], 0)
    return n[one] * n / (n[one] + n) * d
