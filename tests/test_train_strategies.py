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
