"""The semi-supervised head: label spreading's pseudo-labels, their weights, and the head with an empty pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trapkit.train import head, semi
from trapkit.train.settings import HeadSettings


def two_moons_on_a_sphere(n=200, seed=0):
    """Two curved, well-separated arcs of L2-normalised points in 8-d (a linear model from two labels cannot
    follow the curves; the k-NN graph can)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    a = np.stack([np.cos(t), np.sin(t)], 1)
    b = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    x2 = np.concatenate([a, b]) + rng.normal(size=(2 * n, 2)) * 0.05
    x = np.concatenate([x2, np.ones((2 * n, 1)) * 2, rng.normal(size=(2 * n, 5)) * 0.01], 1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), np.repeat([0, 1], n)


def test_label_spreading_labels_the_pool_from_one_label_per_class():
    x, y = two_moons_on_a_sphere()
    labelled = np.array([0, 200])  # one point of each arc
    pool = np.setdiff1d(np.arange(len(y)), labelled)
    rows, labels, weights = semi.pseudo_labels(x, labelled, y[labelled], 2, pool, weight=1.0, seed=0)
    assert set(rows) <= set(pool) and len(rows) > 0.9 * len(pool)
    assert (labels == y[rows]).mean() > 0.95
    assert weights.sum() == pytest.approx(1.0 * len(labelled), rel=1e-4)  # together as much as the labels
    assert (weights >= 0).all()


def test_pseudo_labels_are_balanced_across_classes():
    x, y = two_moons_on_a_sphere()
    labelled = np.array([0, 1, 2, 3, 200])  # one class has four labels, the other one
    pool = np.setdiff1d(np.arange(len(y)), labelled)
    rows, labels, weights = semi.pseudo_labels(x, labelled, y[labelled], 2, pool, weight=1.0, seed=0)
    per_class = np.bincount(labels, weights=weights, minlength=2)
    assert per_class.min() / per_class.max() > 0.5


def test_spread_solves_the_linear_system(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    from trapkit.train.geometry import knn, symmetric_graph

    idx, d2 = knn(x, 5)
    start, neighbour, w = symmetric_graph(idx, np.exp(-d2))
    seeds = np.zeros((40, 2))
    seeds[0, 0] = seeds[1, 1] = 1
    monkeypatch.setattr(semi, "CG_STEPS", 200)
    f = semi.spread(start, neighbour, w, seeds)
    dense = np.zeros((40, 40))
    for i in range(40):
        dense[i, neighbour[start[i]:start[i + 1]]] = w[start[i]:start[i + 1]]
    d = 1 / np.sqrt(dense.sum(1))
    s = d[:, None] * dense * d[None, :]
    expected = np.linalg.solve(np.eye(40) - semi.ALPHA * s, seeds)
    np.testing.assert_allclose(f, expected, rtol=1e-4)  # float32 edge weights


def test_the_head_learns_the_curves_from_pseudo_labels():
    x, y = two_moons_on_a_sphere()
    labelled = np.array([0, 200])
    pool = np.setdiff1d(np.arange(len(y)), labelled)
    settings = HeadSettings()
    alone = semi.fit_round_head(x, labelled, y[labelled], pool, 2, (32,), settings, seed=0)
    settings.semi_supervised = True
    with_pool = semi.fit_round_head(x, labelled, y[labelled], pool, 2, (32,), settings, seed=0)
    accuracy = [(head.predict(m, x).argmax(1) == y).mean() for m in (alone, with_pool)]
    assert accuracy[1] > 0.85 and accuracy[1] > accuracy[0] + 0.05, accuracy  # 0.81 -> 0.90 when written


def test_an_empty_pool_gives_exactly_the_supervised_head():
    """So the head's logistic-regression test (tests/test_train_head.py) holds with the setting on."""
    x, y = two_moons_on_a_sphere(n=60)
    labelled = np.arange(0, 120, 3)
    on = HeadSettings(min_steps=50, semi_supervised=True)
    a = semi.fit_round_head(x, labelled, y[labelled], np.zeros(0, np.int64), 2, (16,), on, seed=3)
    b = head.fit_head(x[labelled], y[labelled], 2, (16,), HeadSettings(min_steps=50), seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
