"""The unlabelled pool at work: label spreading on the k-NN graph of the embeddings, as pseudo-labels for the head.

Each round (with `HeadSettings.semi_supervised`), the round's labels spread over a k-NN graph of the
labelled items and the pool (Zhou et al. 2004, "Learning with local and global consistency"), and the head
trains on its labels plus the pool's pseudo-labels, each weighted by how sure the spreading is of it, as
Iscen et al. (CVPR 2019, "Label propagation for deep semi-supervised learning") do:

- graph: each node's k = 10 nearest (Euclidean, on the L2-normalised embeddings), edge weight
  max(cos, 0)^3, symmetrised; S = D^-1/2 W D^-1/2;
- spreading: solve (I - alpha S) F = Y (alpha = 0.99; conjugate gradients), Y one-hot on labelled nodes;
- pseudo-label of a pool node: argmax of its row of F; its certainty 1 - H(F_i / sum F_i) / log C;
- class balance: each pseudo-label weighted by 1 / (pseudo-labels of its class), so a class the spreading
  favours does not swamp the others;
- the pool's weights together equal `semi_weight` x the number of labels, so labels keep their say.

Guards against confirmation bias: pseudo-labels come from the labels alone (never from the head's own
predictions), are recomputed from scratch every round and never stored as labels, are weighted by the
spreading's certainty and balanced across classes; the head's early stopping holds out true labels only.

Pools larger than `POOL_NODES` items: a random `POOL_NODES` of them join the graph (its cost is nodes^2 D).
"""

from __future__ import annotations

import logging

import numpy as np

from trapkit.train.geometry import gather, knn, subsample, symmetric_graph

log = logging.getLogger(__name__)

NEIGHBOURS = 10
ALPHA = 0.99
POOL_NODES = 10_000
LABELLED_NODES = 10_000
CG_STEPS = 20


def pseudo_labels(embeddings: np.ndarray, labelled: np.ndarray, y: np.ndarray, num_classes: int, pool: np.ndarray,
                  weight: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool rows (P,), their pseudo-labels (P,), weights (P,)) from spreading `y` (the classes of the
    `labelled` rows) over a k-NN graph with (a sample of) the `pool` rows; empty arrays for an empty pool."""
    rng = np.random.default_rng(seed)
    pool = subsample(np.asarray(pool, np.int64), POOL_NODES, rng)
    keep = subsample(np.arange(len(labelled)), LABELLED_NODES, rng)
    labelled, y = np.asarray(labelled)[keep], np.asarray(y)[keep]
    if not len(pool) or num_classes < 2 or len(pool) + len(labelled) <= NEIGHBOURS:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    x = gather(embeddings, np.concatenate([labelled, pool]))
    idx, d2 = knn(x, NEIGHBOURS)
    similarity = np.maximum(1.0 - d2 / 2.0, 0.0) ** 3  # cos on L2-normalised rows, as Iscen et al. weight edges
    start, neighbour, w = symmetric_graph(idx, similarity)
    f = spread(start, neighbour, w, _one_hot(y, num_classes, len(x)))[len(labelled):]  # (P, C)
    f = np.maximum(f, 0.0)
    total = f.sum(axis=1, keepdims=True)
    reached = total[:, 0] > 0
    z = np.divide(f, total, out=np.full_like(f, 1.0 / num_classes), where=total > 0)
    entropy = -(z * np.log(np.clip(z, 1e-12, 1.0))).sum(axis=1)
    certainty = np.where(reached, 1.0 - entropy / np.log(num_classes), 0.0)
    label = z.argmax(axis=1)
    per_class = np.bincount(label, weights=reached.astype(float), minlength=num_classes)
    weights = certainty / np.maximum(per_class[label], 1.0)
    if weights.sum() > 0:
        weights *= weight * len(labelled) / weights.sum()
    kept = weights > 0
    log.debug("label spreading: %d labels over %d pool items; mean certainty %.3f", len(labelled), len(pool),
              float(certainty.mean()))
    return pool[kept], label[kept].astype(np.int64), weights[kept].astype(np.float32)


def _one_hot(y: np.ndarray, num_classes: int, n: int) -> np.ndarray:
    out = np.zeros((n, num_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


def spread(start: np.ndarray, neighbour: np.ndarray, w: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """F solving (I - ALPHA S) F = seeds, S = D^-1/2 W D^-1/2 of the graph (start, neighbour, w) (CSR arrays of
    `trapkit.train.geometry.symmetric_graph`): conjugate gradients, `CG_STEPS` steps, every column at once."""
    degree = np.add.reduceat(w, start[:-1])
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    scaled = w * inv_sqrt[np.repeat(np.arange(len(degree)), np.diff(start))] * inv_sqrt[neighbour]

    def apply(v: np.ndarray) -> np.ndarray:  # (I - ALPHA S) v
        return v - ALPHA * np.add.reduceat(scaled[:, None] * v[neighbour], start[:-1], axis=0)

    f = np.zeros_like(seeds)
    r = seeds - apply(f)
    p = r.copy()
    rr = (r * r).sum(axis=0)
    for _ in range(CG_STEPS):
        ap = apply(p)
        step = rr / np.maximum((p * ap).sum(axis=0), 1e-30)
        f += step * p
        r -= step * ap
        new = (r * r).sum(axis=0)
        if new.max() < 1e-12:
            break
        p = r + (new / np.maximum(rr, 1e-30)) * p
        rr = new
    return f


def fit_round_head(embeddings: np.ndarray, trained: np.ndarray, y: np.ndarray, pool: np.ndarray, num_classes: int,
                   hidden: tuple[int, ...], settings, seed: int, init=None):
    """The head a round fits (`al next`, `al simulate`, the learning-curve benchmark): on the `trained` rows'
    labels `y`, and with `settings.semi_supervised` the `pool` rows' pseudo-labels too."""
    from trapkit.train.head import fit_head

    extra = None
    if settings.semi_supervised:
        rows, labels, weights = pseudo_labels(embeddings, trained, y, num_classes, pool, settings.semi_weight, seed)
        if len(rows):
            extra = (embeddings[rows], labels, weights)
    return fit_head(embeddings[trained], y, num_classes, hidden, settings, seed=seed, init=init, extra=extra)
