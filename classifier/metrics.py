"""Classification figures from predictions: accuracy, confusion, per-class precision/recall, F1."""

from __future__ import annotations

import numpy as np


def confusion(targets: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """``m[i, j]``: samples of true class i predicted as j."""
    return np.bincount(np.asarray(targets) * n + np.asarray(preds), minlength=n * n).reshape(n, n)


def summarize(targets: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro F1 and per-class precision, recall, F1 and support."""
    m = confusion(targets, preds, len(classes)).astype(float)
    tp, support, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(1.0, m.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "n": int(m.sum()),
        "per_class": {c: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                          "f1": round(float(f1[i]), 6), "support": int(support[i])}
                      for i, c in enumerate(classes)},
    }
