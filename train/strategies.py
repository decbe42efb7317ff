"""Selection strategies: which unlabelled images to ask about next.

Every strategy is a stateless function of the current pool, so repeated
calls are always correct (k-center recomputes its distances from the
labelled set each call), handles any batch size up to the number of
candidates, and only returns candidate rows (never a labelled image).
Memory stays O(N (C + D)): distances are computed in chunks or against one
centre at a time, never as an N x N matrix (`trapkit.train.geometry`).

The names are those of the reference active-learning loop for camera traps (Norouzzadeh et al. 2020,
itself following Google's active-learning repository), plus a few of trapkit's own:

- uniform: random.
- margin / entropy / confidence: most uncertain by top-2 margin, entropy, or top-1 probability.
- kcenter: greedy k-center (core-set, Sener and Savarese 2018) on embeddings, from the labelled set.
- graph_density: the densest points of a k-NN graph of the embeddings, the density of a pick's (and of every
  labelled point's) neighbours lowered so the batch spreads (Ebert et al. 2012, "RALF").
- informative_diverse: lowest margin first, but no k-means cluster (as many clusters as classes) gets more of
  the batch than its share of the pool (informative and diverse, after Xu et al. 2003).
- hierarchical: Dasgupta and Hsu's hierarchical sampling (2008) on a cluster tree of the embeddings
  (`trapkit.train.hierarchical`).
- typiclust: the most typical point of each of the largest uncovered k-means clusters (Hacohen et al. 2022);
  made for tiny budgets, and the cover of a first batch without any label (`trapkit.train.cold_start`).
- cluster_margin (the reference loop's margin_cluster_mean): the 10 x batch lowest-margin images, k-means'd
  into `batch` clusters; the most uncertain of each cluster (uncertain and diverse).
- badge: k-means++ seeding on gradient embeddings (p - onehot(argmax)) x z (uncertain and diverse).
- balanced_margin: the batch is shared among predicted classes, more to a class the fewer labels it has and
  the lower its validation recall; lowest margin first within each.

Strategies whose cost grows faster than the pool (kcenter, badge, graph_density, typiclust, hierarchical)
look at a random `MAX_CANDIDATES` of a larger pool (the same ones for a given seed).

`select_per_sequence` wraps any of them for camera traps: at most one item per sequence (a burst of
photos, `trapkit.sequences`) in a batch, unless the pool runs out of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trapkit.errors import TrapkitError
from trapkit.train.geometry import (clusters, gather, kmeans, knn, min_distances, squared_norms, subsample,
                                    symmetric_graph)
from trapkit.train.hierarchical import hierarchical_sampling

MAX_CANDIDATES = 100_000  # candidates the quadratic strategies look at (a random subset of a larger pool)
GRAPH_NODES = 10_000  # candidates in graph_density's k-NN graph (its cost is nodes^2 D)
GRAPH_LABELLED = 5_000  # labelled rows in that graph (their neighbours' density is lowered)
GRAPH_NEIGHBOURS = 10  # k of the k-NN graph (Ebert et al. and the reference loop use 10)
TYPICAL_NEIGHBOURS = 20  # typicality: inverse mean distance to the 20 nearest in the cluster (TypiClust)
TYPICLUST_MAX_CLUSTERS = 500  # as TypiClust's own code caps k-means
TYPICLUST_MIN_SIZE = 5  # clusters smaller than this are never picked from (TypiClust)
TYPICAL_SAMPLE = 2_000  # members of a large cluster typicality is measured among


@dataclass
class Pool:
    probs: np.ndarray  # (N, C) float32 model probabilities, every row
    embeddings: np.ndarray  # (N, D) float16 or float32 (may be a memmap)
    candidates: np.ndarray  # (M,) int rows that may be picked: unlabelled, readable
    labelled: np.ndarray  # (L,) int rows already labelled
    label_counts: np.ndarray | None = None  # (C,) labelled examples per class
    labels: np.ndarray | None = None  # (L,) class index of each labelled row; -1: asked, not answered yet
    class_recall: np.ndarray | None = None  # (C,) validation recall per class; NaN: not measured


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
    candidates = subsample(pool.candidates, MAX_CANDIDATES, rng)
    x = gather(pool.embeddings, candidates)  # (M, D)
    sq = squared_norms(x)
    chosen = []
    if len(pool.labelled):
        dist = min_distances(x, gather(pool.embeddings, pool.labelled), sq)[0]
    else:  # no centre yet: a random first pick is the first centre
        chosen.append(int(rng.integers(len(x))))
        dist = min_distances(x, x[chosen], sq)[0]
        dist[chosen] = -np.inf
    while len(chosen) < min(batch, len(x)):
        i = int(np.argmax(dist))
        chosen.append(i)
        d = x @ x[i]
        d *= -2.0
        d += sq
        d += sq[i]
        np.minimum(dist, d, out=dist)
        dist[i] = -np.inf
    return candidates[np.array(chosen, dtype=np.int64)]


def cluster_margin(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    margins = margin_scores(pool.probs[pool.candidates])
    shortlist = _lowest(margins, 10 * batch)
    if batch >= len(shortlist):
        return pool.candidates[shortlist]
    x = gather(pool.embeddings, pool.candidates[shortlist])
    assign = kmeans(x, batch, rng)[1]
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
    candidates = subsample(pool.candidates, MAX_CANDIDATES, rng)
    p = pool.probs[candidates]  # (M, C)
    u = p.copy()
    u[np.arange(len(u)), p.argmax(axis=1)] -= 1.0
    z = gather(pool.embeddings, candidates)  # (M, D)
    norm = np.einsum("ij,ij->i", u, u) * squared_norms(z)  # |g|^2, (M,)
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
    return candidates[np.array(chosen, dtype=np.int64)]


def class_needs(counts: np.ndarray, recall: np.ndarray | None) -> np.ndarray:
    """(C,) how much of a batch each class should get: more the fewer labels it has and the lower its
    validation recall, (1 - recall + 0.1) / (labels + 1); a class not measured counts as recall 0.5."""
    counts = np.asarray(counts, dtype=np.float64)
    if recall is None:
        return 1.0 / (counts + 1.0)
    r = np.where(np.isnan(recall), 0.5, np.asarray(recall, dtype=np.float64))
    return (1.0 - r + 0.1) / (counts + 1.0)


def balanced_margin(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    p = pool.probs[pool.candidates]
    predicted = p.argmax(axis=1)
    margins = margin_scores(p)
    counts = pool.label_counts if pool.label_counts is not None else np.zeros(p.shape[1])
    present = np.unique(predicted)
    weight = class_needs(counts, pool.class_recall)[present]
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


def graph_density(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Ebert et al. 2012's graph density, as the reference loop selects with it.

    A symmetric k-NN graph (k = 10) of candidates and labelled rows, edges weighted by a Gaussian kernel of
    the Euclidean distance (bandwidth: the mean squared neighbour distance); a node's density is the mean
    weight of its edges. Greedy: the densest candidate is picked and each neighbour's density drops by the
    pick's. Labelled rows lower their neighbours' density the same way first (the reference keeps these
    drops from one batch to the next; here they are recomputed from the labelled set, as k-center does).
    Pools larger than `GRAPH_NODES` candidates: a random `GRAPH_NODES` of them are the graph's nodes.
    """
    candidates = subsample(pool.candidates, GRAPH_NODES, rng)
    labelled = subsample(pool.labelled, GRAPH_LABELLED, rng)
    nodes = np.concatenate([candidates, labelled])
    if len(nodes) < 2:
        return candidates[:batch]
    idx, d2 = knn(gather(pool.embeddings, nodes), GRAPH_NEIGHBOURS)  # (n, k)
    weight = np.exp(-d2 / max(float(d2.mean()), 1e-12))
    start, neighbour, edge = symmetric_graph(idx, weight)  # node i's neighbours: neighbour[start[i]:start[i + 1]]
    degree = np.diff(start)
    density = np.add.reduceat(edge, start[:-1]) / np.maximum(degree, 1)  # every node has >= k edges
    labelled_nodes = np.arange(len(candidates), len(nodes))
    owner = np.repeat(np.arange(len(nodes)), degree)  # the node each edge starts from
    from_labelled = owner >= len(candidates)
    np.subtract.at(density, neighbour[from_labelled], density[owner[from_labelled]].copy())
    density[labelled_nodes] = -np.inf
    chosen = []
    for _ in range(min(batch, len(candidates))):
        i = int(np.argmax(density))
        chosen.append(i)
        density[neighbour[start[i]:start[i + 1]]] -= density[i]
        density[chosen] = -np.inf
    return candidates[np.array(chosen, dtype=np.int64)]


def informative_diverse(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    """The reference loop's informative and diverse sampler: k-means with as many clusters as classes; then,
    lowest margin first, a candidate joins the batch while its cluster's part of the batch is below the
    cluster's share of the pool (rounded up); what is left of the batch is filled by margin alone."""
    margins = margin_scores(pool.probs[pool.candidates])
    k = min(pool.probs.shape[1], len(pool.candidates))
    cluster = clusters(pool.embeddings, pool.candidates, k, rng)[1]
    share = np.bincount(cluster, minlength=k) / len(cluster)
    quota = np.ceil(batch * share).astype(int)
    picked = []
    for c in range(k):  # each cluster's `quota` lowest margins; then the lowest of all of them
        members = np.flatnonzero(cluster == c)
        picked.append(members[_lowest(margins[members], quota[c])])
    picked = np.concatenate(picked)
    picked = picked[_lowest(margins[picked], batch)]
    if len(picked) < batch:
        rest = np.setdiff1d(np.arange(len(margins)), picked)
        picked = np.concatenate([picked, rest[_lowest(margins[rest], batch - len(picked))]])
    return pool.candidates[picked]


def hierarchical(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    labels = pool.labels if pool.labels is not None else pool.probs[pool.labelled].argmax(axis=1)
    candidates = subsample(pool.candidates, MAX_CANDIDATES, rng)
    return hierarchical_sampling(pool.embeddings, candidates, pool.labelled, labels, pool.probs.shape[1], batch, rng)


def typiclust(pool: Pool, batch: int, rng: np.random.Generator) -> np.ndarray:
    """TypiClust (Hacohen, Dekel and Weinshall 2022): k-means into labelled + batch clusters (at most 500);
    then, one pick at a time, the cluster with the fewest labelled or picked items (the largest first among
    equals; clusters under 5 items never) gives its most typical unpicked candidate: the one with the
    smallest mean distance to its 20 nearest neighbours in the cluster."""
    candidates = subsample(pool.candidates, MAX_CANDIDATES, rng)
    rows = np.concatenate([candidates, pool.labelled])
    k = max(1, min(len(pool.labelled) + batch, TYPICLUST_MAX_CLUSTERS, len(rows)))
    cluster = clusters(pool.embeddings, rows, k, rng)[1]
    size = np.bincount(cluster, minlength=k)
    covered = np.bincount(cluster[len(candidates):], minlength=k)
    is_candidate = np.zeros(len(rows), bool)
    is_candidate[:len(candidates)] = True
    typical: dict[int, list[int]] = {}  # cluster -> its candidates, most typical first
    chosen = []
    eligible = size >= min(TYPICLUST_MIN_SIZE, int(size.max()))
    while len(chosen) < min(batch, len(candidates)):
        open_ = eligible & np.array([typical.get(c, [None]) != [] for c in range(k)])
        if not open_.any():
            break
        order = np.lexsort((np.arange(k), -size, covered))  # fewest covered, then largest, then id
        c = int(next(c for c in order if open_[c]))
        if c not in typical:
            typical[c] = _most_typical(pool.embeddings, rows, np.flatnonzero(cluster == c), is_candidate, rng)
        if not typical[c]:
            continue
        chosen.append(typical[c].pop(0))
        covered[c] += 1
    if len(chosen) < min(batch, len(candidates)):  # clusters ran out: fill at random
        rest = np.setdiff1d(np.arange(len(candidates)), chosen)
        chosen += rng.choice(rest, size=min(batch, len(candidates)) - len(chosen), replace=False).tolist()
    return candidates[np.array(chosen, dtype=np.int64)]


def _most_typical(embeddings, rows, members, is_candidate, rng) -> list[int]:
    """Positions of a cluster's candidates, most typical first (typicality among at most `TYPICAL_SAMPLE`
    members of a large cluster)."""
    members = subsample(members, TYPICAL_SAMPLE, rng)
    if len(members) < 2:
        return [int(i) for i in members if is_candidate[i]]
    x = gather(embeddings, rows[members])
    d2 = knn(x, TYPICAL_NEIGHBOURS)[1]
    typicality = 1.0 / (np.sqrt(d2).mean(axis=1) + 1e-12)
    order = np.lexsort((members, -typicality))
    return [int(members[i]) for i in order if is_candidate[members[i]]]


STRATEGIES = {
    "uniform": uniform,
    "margin": _uncertainty("margin"),
    "entropy": _uncertainty("entropy"),
    "confidence": _uncertainty("confidence"),
    "kcenter": kcenter,
    "graph_density": graph_density,
    "informative_diverse": informative_diverse,
    "hierarchical": hierarchical,
    "typiclust": typiclust,
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
        sub = _asked(pool, rest, np.concatenate([taken, chosen]))
        for i in select(strategy, sub, batch - len(chosen), seed=seed + attempt):
            if sequence[i] not in used:
                chosen.append(int(i))
                used.add(int(sequence[i]))
        rest = rest[~np.isin(sequence[rest], list(used))]
    if len(chosen) < batch:  # the pool ran out of new sequences
        left = np.setdiff1d(candidates, chosen)
        if len(left):
            sub = _asked(pool, left, np.concatenate([taken, chosen]))
            chosen += select(strategy, sub, batch - len(chosen), seed=seed + batch).tolist()
    return np.array(chosen, dtype=np.int64)


def _asked(pool: Pool, candidates: np.ndarray, asked: np.ndarray) -> Pool:
    """`pool` with other candidates, and the `asked` rows (picked, not answered) counted among the labelled."""
    asked = np.asarray(asked, dtype=np.int64)
    labels = None if pool.labels is None else np.concatenate([pool.labels, np.full(len(asked), -1)])
    return Pool(pool.probs, pool.embeddings, candidates, np.concatenate([pool.labelled, asked]).astype(np.int64),
                pool.label_counts, labels, pool.class_recall)
