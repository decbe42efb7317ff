"""Hierarchical sampling for active learning (Dasgupta and Hsu, ICML 2008), the reference loop's `hierarchical`.

A cluster tree of the data; a pruning of it (a set of disjoint subtrees covering every item), each pruning
node labelled with its majority class. Queries go where the pruning is least sure: a node is drawn with
probability proportional to its size times (1 - the lower confidence bound of its label's share), and a
random unlabelled item of it is asked about. As labels arrive, a node whose children are purer (by their
confidence-adjusted errors) is split into them, so the queries follow the cluster structure down to where
the classes part.

For every node v and class l, from the labelled items under v (n_v of them, a share p_vl of class l, each cell's
share weighted by the cell's size):

    delta = 1 / n_v + sqrt(p_vl (1 - p_vl) / n_v),  p_LB = max(p_vl - delta, 0),  p_UB = min(p_vl + delta, 1)
    (v, l) admissible  <=>  1 - p_LB(v, l) < BETA (1 - p_UB(v, l')) for every other class l'
    error(v, l) = 1 - p_vl if admissible, else 1

A node with an admissible label is split when its children's size-weighted best error is below its own.
These are the paper's rules as the reference loop (Google's active-learning repository) applies them.

Two changes make it a stateless function of the pool that runs on a million items, as the other strategies
are (`trapkit.train.strategies`):
- the tree's leaves are k-means cells (at most `MAX_LEAVES`), joined by Ward's criterion, not single items
  (agglomerative clustering of every item is O(N^2)); an item drawn from a node is a random unlabelled item
  of its cells;
- the pruning is recomputed from the root from all labels each call, where the paper refines the previous
  one: the splits a round finds are the ones the labels so far support.
"""

from __future__ import annotations

import numpy as np

from trapkit.train.geometry import clusters, ward_tree

BETA = 2.0  # admissibility slack (Dasgupta and Hsu's and the reference loop's)
MAX_LEAVES = 256  # k-means cells at the bottom of the tree
LEAF_SIZE = 8  # items per cell in a small pool


def hierarchical_sampling(embeddings: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, labels: np.ndarray,
                          num_classes: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `batch` distinct rows of `candidates`. `labels` (L,): the class of each `labelled` row (-1: asked,
    not answered: it is neither a candidate nor counted)."""
    known = np.asarray(labels) >= 0
    lab_rows, lab_y = np.asarray(labelled)[known], np.asarray(labels)[known].astype(np.int64)
    rows = np.concatenate([candidates, lab_rows])
    k = int(np.clip(len(rows) // LEAF_SIZE, 1, MAX_LEAVES))
    centres, leaf = clusters(embeddings, rows, k, rng)
    sizes = np.bincount(leaf, minlength=k)
    keep = np.flatnonzero(sizes)
    renumber = np.full(k, -1)
    renumber[keep] = np.arange(len(keep))
    leaf = renumber[leaf]
    tree = _Tree(ward_tree(centres[keep], sizes[keep]), len(keep))
    n_c = len(candidates)
    tree.fill(leaf[:n_c], leaf[n_c:], lab_y, num_classes)
    pruning, label = tree.best_pruning()
    node_of = tree.owner(pruning)[leaf[:n_c]]  # candidate -> position of its node in `pruning`
    order = np.argsort(node_of, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(node_of, minlength=len(pruning)))[:-1])
    lower = tree.lower
    weight = np.array([tree.size[v] * (1.0 - (lower[v, label[v]] if label[v] >= 0 else 0.0)) for v in pruning])
    weight[[not len(m) for m in members]] = 0.0
    shuffled: dict[int, list[int]] = {}
    chosen: list[int] = []
    while len(chosen) < min(batch, n_c) and weight.sum() > 0:
        j = int(rng.choice(len(pruning), p=weight / weight.sum()))
        if j not in shuffled:
            shuffled[j] = rng.permutation(members[j]).tolist()
        chosen.append(shuffled[j].pop())
        if not shuffled[j]:
            weight[j] = 0.0
    return candidates[np.array(chosen, dtype=np.int64)]


class _Tree:
    """A binary tree in scipy's numbering (leaves 0..K-1, merge t makes node K + t, the root last) and, per
    node: items under it, candidates under it, labelled items per class, and Dasgupta and Hsu's statistics."""

    def __init__(self, children: np.ndarray, leaves: int):
        self.children, self.leaves = children, leaves
        self.nodes = 2 * leaves - 1
        self.root = self.nodes - 1

    def _up(self, per_leaf: np.ndarray) -> np.ndarray:
        """Per-leaf values summed up the tree: (nodes, ...)."""
        out = np.zeros((self.nodes, *per_leaf.shape[1:]), per_leaf.dtype)
        out[:self.leaves] = per_leaf
        for t, (a, b) in enumerate(self.children):
            out[self.leaves + t] = out[a] + out[b]
        return out

    def fill(self, candidate_leaf: np.ndarray, labelled_leaf: np.ndarray, labels: np.ndarray, num_classes: int):
        k = self.leaves
        self.candidates = self._up(np.bincount(candidate_leaf, minlength=k))
        per_leaf = np.zeros((k, num_classes), np.int64)
        np.add.at(per_leaf, (labelled_leaf, labels), 1)
        self.counts = self._up(per_leaf)  # (nodes, C)
        self.size = self.candidates + self.counts.sum(axis=1)
        # A node's class shares: its labelled cells' shares averaged by cell size, so labels drawn unevenly
        # across the tree (a seed, other strategies' picks) do not bias them; n counts its labels.
        cell_n = per_leaf.sum(axis=1, keepdims=True)
        cell_size = np.where(cell_n > 0, self.size[:k, None], 0).astype(np.float64)
        shares = self._up(cell_size * np.divide(per_leaf, cell_n, out=np.zeros(per_leaf.shape), where=cell_n > 0))
        weight = self._up(cell_size)
        n = self.counts.sum(axis=1, keepdims=True).astype(np.float64)
        seen = n > 0
        p = np.divide(shares, weight, out=np.zeros(shares.shape), where=weight > 0)
        delta = np.divide(1.0, n, out=np.zeros_like(n), where=seen) + np.sqrt(
            np.divide(p * (1 - p), n, out=np.zeros(p.shape), where=seen))
        self.lower = np.where(seen, np.maximum(p - delta, 0.0), 0.0)
        upper = np.where(seen, np.minimum(p + delta, 1.0), 1.0)
        alternative = 1.0 - upper  # (nodes, C); the smallest over the other classes, per class:
        if num_classes > 1:
            two = np.partition(alternative, 1, axis=1)[:, :2]
            smallest_other = np.where(alternative <= two[:, :1], two[:, 1:2], two[:, :1])
        else:
            smallest_other = np.full_like(alternative, np.inf)
        self.admissible = (1.0 - self.lower) < BETA * smallest_other
        self.error = np.where(self.admissible, 1.0 - p, 1.0)

    def best_pruning(self) -> tuple[list[int], dict[int, int]]:
        """(the pruning's nodes, node -> label (-1: none admissible on the way down)): bottom up, a node with an
        admissible label splits when its children's size-weighted scores beat its own error."""
        score = self.error.min(axis=1)
        split = np.zeros(self.nodes, bool)
        has_label = self.admissible.any(axis=1)
        size = np.maximum(self.size, 1)
        for t, (a, b) in enumerate(self.children):
            v = self.leaves + t
            if has_label[v]:
                below = (size[a] * score[a] + size[b] * score[b]) / size[v]
                if below < score[v]:
                    score[v], split[v] = below, True
        pruning, label, stack = [], {}, [(self.root, -1)]
        while stack:
            v, inherited = stack.pop()
            own = int(self.error[v].argmin()) if has_label[v] else inherited
            if split[v]:
                a, b = self.children[v - self.leaves]
                stack += [(int(b), own), (int(a), own)]
            else:
                pruning.append(v)
                label[v] = own
        return pruning, label

    def owner(self, pruning: list[int]) -> np.ndarray:
        """(leaves,) the position in `pruning` of the node each leaf is under."""
        out = np.full(self.leaves, -1)
        for pos, v in enumerate(pruning):
            stack = [v]
            while stack:
                u = stack.pop()
                if u < self.leaves:
                    out[u] = pos
                else:
                    stack += list(self.children[u - self.leaves])
        return out
