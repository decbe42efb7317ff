"""`trapkit features` on tables that hold no structure: identical rows, NaN and inf rows, too many morphs.

The tables are written directly in the format of `trapkit.feature_table` (a CSV and its `.meta.json`),
so each case is exactly the bad input a user could hand over.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trapkit.app.cli import main
from trapkit.feature_table import FIXED_COLUMNS, FeatureMeta, feature_columns, sidecar


def _table(path: Path, features: np.ndarray) -> Path:
    """A features CSV of len(features) detections, one per image, with `features` (n, D) as the embedding."""
    n, d = features.shape
    meta = FeatureMeta(feature_size=d, model_digest="sha256:" + "0" * 64, model="probe", input_size=32,
                       resize_mode="squash", interpolation="bilinear", margin=0.1, whole_images=False)
    sidecar(path).write_text(json.dumps(asdict(meta)))
    header = [*FIXED_COLUMNS, *feature_columns(d)]
    lines = [",".join(header)]
    for i, row in enumerate(features):
        fixed = [f"cam/img{i:03d}.jpg", "", "0", "0.9", "0.1", "0.1", "0.3", "0.3", "2024-05-01 10:00:00", "dog", "0.8"]
        lines.append(",".join(fixed + [repr(float(v)) for v in row]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_identical_rows_make_one_morph_not_two(tmp_path, capsys):
    table = _table(tmp_path / "same.csv", np.tile(np.arange(1, 9, dtype=np.float32), (20, 1)))
    assert main(["features", str(table), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "20 detections, 1 morph (no spread: every detection has the same features)" in captured.out
    summary = _summary(tmp_path / "out")
    assert summary["morphs"] == 1 and summary["silhouette"] == {} and summary["distinct_rows"] == 1
    assert "Warning" not in captured.err


def test_nan_and_inf_rows_are_left_out_and_named(tmp_path, caplog):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (12, 8)) + 5, rng.normal(0, 1, (12, 8)) - 5]).astype(np.float32)
    x[3, 2], x[7, 0] = np.nan, np.inf
    table = _table(tmp_path / "holes.csv", x)
    assert main(["features", str(table), "--out", str(tmp_path / "out")]) == 0
    assert "2 of 24 detections have NaN or infinite features and are left out" in caplog.text
    summary = _summary(tmp_path / "out")
    assert summary["rows"] == 22 and summary["non_finite_left_out"] == ["holes.csv: cam/img003.jpg#0",
                                                                        "holes.csv: cam/img007.jpg#0"]
    morphs = (tmp_path / "out" / "morphs.csv").read_text()
    assert "img003" not in morphs and "img007" not in morphs  # never a morph of their own
    assert summary["morphs"] == 2


def test_an_all_nan_table_is_one_line(tmp_path, capsys):
    table = _table(tmp_path / "nan.csv", np.full((6, 4), np.nan, np.float32))
    assert main(["features", str(table), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trapkit: error: every row of") and "NaN or infinite" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_more_morphs_than_distinct_points_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(0, 1, (13, 6)).astype(np.float32), 8, axis=0)  # 104 rows, 13 distinct points
    table = _table(tmp_path / "dups.csv", x)
    assert main(["features", str(table), "--out", str(tmp_path / "out"), "--morphs", "104"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--morphs 104 is more than the 13 distinct detections (of 104)" in err and "\n" not in err
    assert main(["features", str(table), "--out", str(tmp_path / "out")]) == 0
    assert 2 <= _summary(tmp_path / "out")["morphs"] <= 10
    assert max(int(k) for k in _summary(tmp_path / "out")["silhouette"]) <= 10


def test_no_raw_warnings_and_pca_fallback_is_said(tmp_path, caplog, monkeypatch):
    import importlib.util
    import logging

    caplog.set_level(logging.INFO, logger="trapkit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (40, 5)) + 3, rng.normal(0, 1, (40, 5)) - 3]).astype(np.float32)
    x[:10] = x[0]  # ties, which make k-means and the silhouette warn
    with _no_warning_escapes():
        assert main(["features", str(_table(tmp_path / "t.csv", x)), "--out", str(tmp_path / "out")]) == 0
    assert "umap-learn is not installed, so the map is PCA" in caplog.text
    assert _summary(tmp_path / "out")["map"] == "PCA"


class _no_warning_escapes:
    """Fails when a Python warning leaves the block (what would reach a user's terminal)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert [str(w.message) for w in self.caught] == []
