"""Validation metrics: accuracy, macro/micro precision and recall, per-class recall, confusion matrix."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from trapkit.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from trapkit.figures import confusion_png


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int counts, rows = true class, columns = predicted."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def compute(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Metrics over the classes that occur in the truth or the predictions (None without any validation image)."""
    m = confusion(y_true, y_pred, len(labels))
    tp = np.diag(m).astype(float)
    support, predicted = m.sum(axis=1), m.sum(axis=0)
    active = (support + predicted) > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    n = int(m.sum())
    # No validation images: nothing is measured, so None (JSON null), never a misleading 0.
    accuracy = float(tp.sum() / n) if n else None
    return {
        "n": n,
        "accuracy": accuracy,
        "macro_precision": float(precision[active].mean()) if active.any() else None,
        "macro_recall": float(recall[support > 0].mean()) if (support > 0).any() else None,
        # Single-label classification: micro precision = micro recall = accuracy.
        "micro_precision": accuracy,
        "micro_recall": accuracy,
        "per_class_recall": {lab: float(recall[i]) for i, lab in enumerate(labels) if support[i] > 0},
        "per_class_precision": {lab: float(precision[i]) for i, lab in enumerate(labels) if predicted[i] > 0},
        "per_class_support": {lab: int(support[i]) for i, lab in enumerate(labels)},
        "confusion": m.tolist(),
    }


def shown(value: float | None, digits: int = 3) -> str:
    """A score for people: 'n/a' where nothing was measured."""
    return "n/a" if value is None else f"{value:.{digits}f}"


FORMAT_VERSION = 2  # 2: the class list is `classes` (it was `labels`, which model/metrics.json uses for a count)


def write(directory: Path, metrics: dict, labels: list[str]) -> None:
    """metrics.json (with the class list as `classes`), confusion.csv and confusion.png (class names on both
    axes) into `directory`."""
    m = np.asarray(metrics["confusion"])
    atomic_write_json(directory / "metrics.json", {"format_version": FORMAT_VERSION} | {
        k: v for k, v in metrics.items() if k != "confusion"} | {"classes": list(labels)})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true \\ predicted", *labels])
    for lab, row in zip(labels, m):
        w.writerow([lab, *row.tolist()])
    atomic_write_text(directory / "confusion.csv", buf.getvalue())
    atomic_write_bytes(directory / "confusion.png", confusion_png(m, labels))
