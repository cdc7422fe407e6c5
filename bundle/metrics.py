"""Lesion-level diagnostic metrics of the paper: sensitivity, specificity, accuracy, PPV, NPV and ROC AUC."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

METRIC_NAMES = ("sensitivity", "specificity", "accuracy", "ppv", "npv", "auc")


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def binary_metrics(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> dict[str, float | int]:
    """Diagnostic metrics of malignancy probabilities against 0/1 labels.

    Args:
        labels: ground truth, shape (N,), 1 = malignant.
        probabilities: predicted probability of malignancy, shape (N,).
        threshold: a lesion is called malignant when its probability is >= threshold.

    Returns:
        ``sensitivity``, ``specificity``, ``accuracy``, ``ppv``, ``npv``, ``auc`` (NaN where undefined, e.g. AUC
        with one class) and the counts ``n``, ``positives``, ``negatives``, ``tp``, ``fp``, ``tn``, ``fn``.
    """
    y = np.asarray(labels, dtype=int).ravel()
    p = np.asarray(probabilities, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    called = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, called, labels=[0, 1]).ravel())
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, len(y)),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "auc": auc,
        "threshold": float(threshold),
        "n": len(y),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
