"""Selection strategies: any batch size, never a labelled row, deterministic, k-center correct across calls."""

from __future__ import annotations

import numpy as np
import pytest

from trapkit.errors import TrapkitError
from trapkit.train import strategies
from trapkit.train.strategies import STRATEGIES, Pool


def make_pool(n=300, c=4, d=8, labelled=40, seed=0, dtype=np.float16) -> Pool:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    emb = rng.normal(size=(n, d)).astype(dtype)
    lab = rng.choice(n, size=labelled, replace=False)
    cand = np.setdiff1d(np.arange(n), lab)
    counts = np.array([30, 5, 4, 1][:c])
    return Pool(probs.astype(np.float32), emb, cand, lab, counts)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("batch", [1, 7, 100, 260, 1000])
def test_any_batch_size_only_candidates_no_duplicates(name, batch):
    pool = make_pool()
    picked = strategies.select(name, pool, batch, seed=3)
    assert len(picked) == min(batch, len(pool.candidates))
    assert len(np.unique(picked)) == len(picked)
    assert np.isin(picked, pool.candidates).all() and not np.isin(picked, pool.labelled).any()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_deterministic_for_a_seed(name):
    a = strategies.select(name, make_pool(), 25, seed=11)
    b = strategies.select(name, make_pool(), 25, seed=11)
    assert np.array_equal(a, b)


def test_margin_picks_the_smallest_margins():
    pool = make_pool()
    picked = strategies.select("margin", pool, 10)
    margins = strategies.margin_scores(pool.probs)
    assert np.allclose(np.sort(margins[picked]), np.sort(margins[pool.candidates])[:10])


def brute_kcenter(emb, labelled, candidates, k):
    x = emb.astype(np.float64)
    centres = list(labelled)
    out = []
    for _ in range(k):
        d = ((x[candidates, None, :] - x[None, centres, :]) ** 2).sum(-1).min(1)
        d[np.isin(candidates, out)] = -1
        out.append(candidates[int(np.argmax(d))])
        centres.append(out[-1])
    return np.array(out)


def test_kcenter_matches_brute_force_on_repeated_calls():
    pool = make_pool(n=200, labelled=10, dtype=np.float32)
    for _ in range(3):  # each call sees the previous picks as labelled, as the loop does
        picked = strategies.select("kcenter", pool, 15)
        assert np.array_equal(picked, brute_kcenter(pool.embeddings, pool.labelled, pool.candidates, 15))
        pool = Pool(pool.probs, pool.embeddings, np.setdiff1d(pool.candidates, picked),
                    np.concatenate([pool.labelled, picked]), pool.label_counts)


def test_balanced_margin_favours_rare_classes():
    pool = make_pool(n=2000, labelled=0)
    picked = strategies.select("balanced_margin", pool, 40)
    predicted = pool.probs[picked].argmax(1)
    assert (predicted == 0).sum() < (predicted == 3).sum()  # class 0 has 30 labels, class 3 one


def test_empty_pool_and_bad_arguments():
    pool = make_pool()
    pool.candidates = np.zeros(0, np.int64)
    assert len(strategies.select("badge", pool, 5)) == 0
    with pytest.raises(TrapkitError, match="unknown strategy"):
        strategies.select("psychic", make_pool(), 5)
    with pytest.raises(TrapkitError, match="at least 1"):
        strategies.select("margin", make_pool(), 0)


# -- the reference loop's other strategies, each on a case whose right pick is known ----------------------

def blob_pool(centres, sizes, spread=0.05, labelled=(), labels=None, seed=0, c=2) -> tuple[Pool, np.ndarray]:
    """Tight blobs around `centres` (one row each, in order), returns (pool, blob of every row)."""
    rng = np.random.default_rng(seed)
    emb = np.concatenate([np.asarray(m, np.float32) + spread * rng.normal(size=(n, len(m))).astype(np.float32)
                          for m, n in zip(centres, sizes)])
    blob = np.repeat(np.arange(len(sizes)), sizes)
    probs = np.full((len(emb), c), 1.0 / c, np.float32)
    lab = np.asarray(labelled, np.int64)
    cand = np.setdiff1d(np.arange(len(emb)), lab)
    return Pool(probs, emb, cand, lab, None, None if labels is None else np.asarray(labels)), blob


def test_graph_density_picks_the_densest_region_then_moves_away_from_labels():
    # blob 0: 11 tight points, blob 1: 11 looser ones (k = 10: each blob's points are all neighbours), blob 2:
    # 30 scattered far away.
    centres, sizes = [[0, 0, 0], [3, 0, 0], [0, 10, 0]], [11, 11, 30]
    pool, blob = blob_pool(centres, sizes, spread=0.05)
    pool.embeddings[blob == 1] = 3 * pool.embeddings[blob == 1] - 6 * np.array([1, 0, 0], np.float32)
    pool.embeddings[blob == 2] = 20 * pool.embeddings[blob == 2] - 19 * np.array([0, 10, 0], np.float32)
    assert blob[strategies.select("graph_density", pool, 1)].tolist() == [0]
    # The pick's neighbours (its blob) lose its density: the next pick is the next dense blob.
    assert blob[strategies.select("graph_density", pool, 2)].tolist() == [0, 1]
    labelled, _ = blob_pool(centres, sizes, labelled=[3])
    labelled.embeddings[:] = pool.embeddings
    assert blob[strategies.select("graph_density", labelled, 1)].tolist() == [1]  # a label lowers its neighbours


def test_informative_diverse_keeps_each_clusters_share_of_the_batch():
    # Two clusters, 180 and 20 items; every item of the small one is less certain than any of the big one.
    pool, blob = blob_pool([[0, 0], [5, 5]], [180, 20])
    margin = np.where(blob == 1, 0.01, 0.5) + np.arange(len(blob)) * 1e-4
    pool.probs = np.stack([(1 + margin) / 2, (1 - margin) / 2], axis=1).astype(np.float32)
    picked = strategies.select("informative_diverse", pool, 10)
    assert (blob[picked] == 1).sum() == 1  # its share: ceil(10 x 0.1)
    assert sorted(picked[blob[picked] == 0].tolist()) == list(range(9))  # the 9 lowest margins of the big one
    assert (blob[strategies.select("margin", pool, 10)] == 1).all()  # margin alone would take only the small one


def test_hierarchical_asks_where_the_labels_disagree():
    # Two far clusters of 100; cluster 0's 40 labels all say class 0, cluster 1's 20 say class 1 but 6 of them 0:
    # the pruning splits them, and cluster 1's label is the less sure.
    rng = np.random.default_rng(0)
    labelled = np.concatenate([np.arange(40), 100 + np.arange(20)])
    labels = np.concatenate([np.zeros(40, int), rng.permutation(np.repeat([1, 0], [14, 6]))])
    pool, blob = blob_pool([[0, 0], [10, 10]], [100, 100], spread=1.0, labelled=labelled, labels=labels)
    picked = strategies.select("hierarchical", pool, 20, seed=2)
    assert (blob[picked] == 1).sum() >= 17, blob[picked]
    # Without labels the root is the pruning: items come from both clusters, as uniform sampling.
    bare, _ = blob_pool([[0, 0], [10, 10]], [100, 100], spread=1.0)
    assert 5 <= (blob[strategies.select("hierarchical", bare, 20, seed=2)] == 1).sum() <= 15


def test_hierarchical_reads_labels_and_ignores_asked_rows():
    from trapkit.train.hierarchical import hierarchical_sampling

    pool, blob = blob_pool([[0, 0], [10, 10]], [60, 60], spread=1.0)
    labelled = np.array([0, 1, 2, 60, 61])
    picked = hierarchical_sampling(pool.embeddings, np.setdiff1d(np.arange(120), labelled), labelled,
                                   np.array([0, 0, 0, 1, -1]), 2, 30, np.random.default_rng(0))
    assert len(set(picked.tolist())) == 30 and not np.isin(picked, labelled).any()


def test_typiclust_takes_the_most_typical_item_of_each_cluster():
    # Three clusters (60, 40, 25 items): 21 items at the centre (the most typical: their 20 nearest are at
    # distance 0), the rest around it.
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0]], np.float32)
    parts = []
    for m, n in zip(centres, (60, 40, 25)):
        around = m + rng.normal(size=(n - 21, 3)).astype(np.float32) * 0.5
        parts.append(np.concatenate([np.repeat(m[None], 21, axis=0), around]))
    emb = np.concatenate(parts)
    probs = np.full((len(emb), 2), 0.5, np.float32)
    pool = Pool(probs, emb, np.arange(len(emb)), np.zeros(0, np.int64))
    assert strategies.select("typiclust", pool, 3).tolist() == [0, 60, 100]  # the largest cluster first
    # With the biggest cluster covered by a label, the picks go to the uncovered ones, the larger first.
    pool = Pool(probs, emb, np.arange(1, len(emb)), np.array([0]))
    assert strategies.select("typiclust", pool, 2).tolist() == [60, 100]


@pytest.mark.parametrize("name", ["kcenter", "badge", "graph_density", "typiclust", "hierarchical"])
def test_large_pools_are_subsampled_deterministically(name, monkeypatch):
    monkeypatch.setattr(strategies, "MAX_CANDIDATES", 60)
    monkeypatch.setattr(strategies, "GRAPH_NODES", 60)
    monkeypatch.setattr(strategies, "GRAPH_LABELLED", 10)
    pool = make_pool(n=400, labelled=40)
    a = strategies.select(name, pool, 20, seed=5)
    assert np.array_equal(a, strategies.select(name, make_pool(n=400, labelled=40), 20, seed=5))
    assert len(np.unique(a)) == 20 and np.isin(a, pool.candidates).all()


def test_balanced_margin_gives_low_recall_classes_more():
    pool = make_pool(n=2000, labelled=0)
    pool.label_counts = np.array([10, 10, 10, 10])
    pool.class_recall = np.array([0.95, 0.95, 0.3, np.nan])
    predicted = pool.probs[strategies.select("balanced_margin", pool, 40)].argmax(1)
    counts = np.bincount(predicted, minlength=4)
    assert counts[2] > counts[3] > counts[0]  # low recall > not measured (0.5) > high recall


def test_kcenter_without_labels_starts_at_a_random_item_then_goes_farthest():
    pool = make_pool(n=200, labelled=0, dtype=np.float32)
    firsts = {int(strategies.select("kcenter", pool, 1, seed=s)[0]) for s in range(5)}
    assert len(firsts) > 1  # the seed picks the first centre
    picked = strategies.select("kcenter", pool, 6, seed=1)
    assert np.array_equal(picked[1:], brute_kcenter(pool.embeddings, picked[:1], np.setdiff1d(
        pool.candidates, picked[:1]), 5))
