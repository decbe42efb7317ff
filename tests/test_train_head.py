"""MLP head training, growing for new classes, chunked prediction; validation metrics; settings resolution."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trapkit.errors import TrapkitError
from trapkit.train import head, metrics
from trapkit.train.settings import HeadSettings, RunSettings, resolve


def blobs(n_per=60, c=3, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 3
    x = np.concatenate([centres[k] + rng.normal(size=(n_per, d)) for k in range(c)]).astype(np.float16)
    return x, np.repeat(np.arange(c), n_per)


def test_head_learns_separable_classes_with_early_stopping():
    x, y = blobs()
    mlp = head.fit_head(x, y, 3, (230, 100), HeadSettings(max_epochs=40, patience=5))
    xt, yt = blobs(seed=0)
    acc = (head.predict(mlp, xt).argmax(1) == yt).mean()
    assert acc >= 0.95
    assert [m.out_features for m in mlp.layers if isinstance(m, torch.nn.Linear)] == [230, 100, 3]


def test_tiny_seed_without_holdout_still_trains():
    x, y = blobs(n_per=3)
    mlp = head.fit_head(x, y, 3, (8,), HeadSettings(max_epochs=200, patience=20, lr=1e-2))
    assert (head.predict(mlp, x).argmax(1) == y).mean() >= 0.8


def test_grow_keeps_existing_outputs_and_warm_start_adds_a_class():
    x, y = blobs(c=3)
    mlp = head.fit_head(x, y, 3, (12,), HeadSettings(max_epochs=20))
    grown = head.grow(mlp, 4)
    with torch.no_grad():
        z = torch.from_numpy(x[:5].astype(np.float32))
        assert torch.allclose(grown(z)[:, :3], mlp(z), atol=1e-6)
    x4, y4 = blobs(c=4, seed=1)
    warm = head.fit_head(x4, y4, 4, (12,), HeadSettings(max_epochs=60), init=mlp)
    assert warm.num_classes == 4 and (head.predict(warm, x4).argmax(1) == y4).mean() >= 0.9


def test_predict_in_chunks_equals_one_pass(monkeypatch):
    x, y = blobs()
    mlp = head.fit_head(x, y, 3, (12,), HeadSettings(max_epochs=5))
    whole = head.predict(mlp, x)
    monkeypatch.setattr(head, "CHUNK", 7)
    np.testing.assert_allclose(head.predict(mlp, x), whole, atol=1e-6)


def test_metrics_match_hand_counts(tmp_path):
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    m = metrics.compute(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    metrics.write(tmp_path, m, ["a", "b", "c"])
    assert (tmp_path / "confusion.csv").read_text().splitlines()[1] == "a,1,1,0"
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "metrics.json").read_text())["classes"] == ["a", "b", "c"]  # format 2: one meaning per key


def test_settings_resolve_defaults_config_then_flags(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"select": {"strategy": "badge", "batch": 50}, "model": {"feat_dim": 64}}))
    s = resolve(config, {"batch": 20, "strategy": None})
    assert (s.select.strategy, s.select.batch, s.model.feat_dim, s.finetune.loss) == ("badge", 20, 64, "softmax")
    s.save(tmp_path / "s.json")
    assert RunSettings.load(tmp_path / "s.json") == s
    config.write_text(json.dumps({"select": {"stratgy": "badge"}}))
    with pytest.raises(TrapkitError, match="unknown setting 'stratgy'"):
        resolve(config)
    with pytest.raises(TrapkitError, match="unknown strategy"):
        resolve(None, {"strategy": "psychic"})
    with pytest.raises(TrapkitError, match="--seed must be 0 or more"):
        resolve(None, {"seed": -1})


@pytest.mark.parametrize("section, key, value, expected", [
    ("select", "batch", "5", "a whole number"),
    ("head", "max_epochs", 10.5, "a whole number"),
    ("model", "head_hidden", 64, "a list of whole numbers"),
    ("data", "validation_fraction", "0.2", "a number"),
    ("finetune", "loss", 3, "text"),
    ("select", "seed", True, "a whole number"),
])
def test_config_values_of_the_wrong_type_are_refused_naming_the_key(tmp_path, section, key, value, expected):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({section: {key: value}}))
    with pytest.raises(TrapkitError, match=f"c.json.{section}.{key} must be {expected}, not"):
        resolve(config)


def test_config_values_are_converted_to_the_field_types(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"head_hidden": [64, 32], "input_size": None},
                                  "data": {"validation_fraction": 0, "validation": None}, "head": {"lr": 1}}))
    s = resolve(config)
    assert s.model.head_hidden == (64, 32) and s.model.input_size is None and s.data.validation is None
    assert isinstance(s.data.validation_fraction, float) and isinstance(s.head.lr, float)


def test_a_relative_weight_file_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(None, {"weights": "w.safetensors"}).model.weights == str(tmp_path / "w.safetensors")
    assert resolve(None, {"weights": "lite0-offline"}).model.weights == "lite0-offline"


def test_stopping_hint_only_when_accuracy_levels_off():
    from trapkit.train.loop import stopping_hint

    rising = [{"round": i, "labelled": 100 * i, "accuracy": 0.5 + 0.05 * i} for i in range(1, 6)]
    flat = rising[:2] + [{"round": i, "labelled": 100 * i, "accuracy": 0.6 + 0.001 * i} for i in range(3, 7)]
    assert stopping_hint(rising) is None and stopping_hint(rising[:3]) is None
    assert "levelled off" in stopping_hint(flat)
