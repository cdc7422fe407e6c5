"""Lesion-level diagnostic metrics of the paper: sensitivity, specificity, accuracy, PPV, NPV and ROC AUC."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import binomtest, chi2_contingency, norm, rankdata
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


class Proportion(NamedTuple):
    """How a proportion is counted from a confusion matrix, and why it is undefined when its denominator is empty."""

    successes: tuple[str, ...]  # keys of the counts ``tp``, ``fp``, ``tn``, ``fn`` summed in the numerator
    denominator: tuple[str, ...]  # ... and in the denominator
    empty_reason: str

    def count(self, counts: Mapping[str, Any]) -> tuple[Any, Any]:
        """(successes, denominator) from counts keyed ``tp``/``fp``/``tn``/``fn`` (ints or arrays)."""
        return sum(counts[k] for k in self.successes), sum(counts[k] for k in self.denominator)


# the paper's lesion-level metrics: the five proportions (the one definition of their names and counts), then ROC AUC
PROPORTIONS: dict[str, Proportion] = {
    "sensitivity": Proportion(("tp",), ("tp", "fn"), "no malignant lesion"),
    "specificity": Proportion(("tn",), ("tn", "fp"), "no benign lesion"),
    "accuracy": Proportion(("tp", "tn"), ("tp", "tn", "fp", "fn"), "no lesion"),
    "ppv": Proportion(("tp",), ("tp", "fp"), "no lesion called malignant"),
    "npv": Proportion(("tn",), ("tn", "fn"), "no lesion called benign"),
}
PROPORTION_NAMES = tuple(PROPORTIONS)
METRIC_NAMES = (*PROPORTION_NAMES, "auc")


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
    cells = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan
    return {
        **{name: _ratio(*rule.count(cells)) for name, rule in PROPORTIONS.items()},
        "auc": auc,
        "threshold": float(threshold),
        "n": len(y),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        **cells,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Confidence intervals and tests used by the evaluation report (bundle/report.py).
# ---------------------------------------------------------------------------------------------------------------------

MIN_CASES_PER_CLASS = 2
"""Fewest benign and fewest malignant lesions a group needs before its metrics are reported.

Two is the least that DeLong's variance (a sample variance over each class) is defined for; a group below it gets
"n/a" with the reason instead of a number.
"""


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _z(confidence: float) -> float:
    _check_confidence(confidence)
    return float(norm.ppf(0.5 + confidence / 2))


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) of a binomial proportion ``successes / n``.

    Computed by ``scipy.stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")``. Unlike the Wald
    interval it stays inside [0, 1] and keeps close to nominal coverage for proportions near 0 or 1.

    Returns:
        (low, high); (NaN, NaN) when ``n`` is 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    _check_confidence(confidence)  # (0, 1) open, as for the other intervals
    interval = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(interval.low)), min(1.0, float(interval.high))


def proportion(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | int | None]:
    """A proportion with its Wilson interval: ``value``, ``ci_low``, ``ci_high``, ``successes``, ``n`` (NaN if n=0)."""
    low, high = wilson_ci(successes, n, confidence)
    return {"value": _ratio(successes, n), "ci_low": low, "ci_high": high, "successes": int(successes), "n": int(n)}


def _midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties share their average rank) along the last axis."""
    return rankdata(x, method="average", axis=-1)


def delong_auc_covariance(labels: Sequence[int] | np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of one or more score vectors on the same lesions and their DeLong covariance (fast algorithm).

    DeLong, DeLong & Clarke-Pearson (Biometrics 1988) estimate the covariance of correlated AUCs from the
    "structural components" ``V10(X_i)`` (share of negatives that positive ``i`` outranks, ties counting 1/2) and
    ``V01(Y_j)`` (share of positives that outrank negative ``j``): ``S = S10 / m + S01 / n``. Sun & Xu (IEEE Signal
    Processing Letters 2014) compute them from midranks in O(N log N) instead of O(m n) comparisons:
    ``V10_i = (R_i - R^X_i) / n`` and ``V01_j = 1 - (R_j - R^Y_j) / m``, where ``R`` is the midrank among all
    lesions and ``R^X``/``R^Y`` the midrank within the positives/negatives.

    Args:
        labels: 0/1 ground truth, shape (N,), with at least two lesions of each class.
        scores: shape (N,) for one model or (K, N) for K models scored on the same lesions.

    Returns:
        ``aucs`` of shape (K,) and ``covariance`` of shape (K, K).

    Raises:
        ValueError: when a class has fewer than two lesions (the variance is then undefined).
    """
    y = np.asarray(labels, dtype=int).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.shape[0]:
        raise ValueError(f"labels {y.shape} and scores {s.shape} do not match")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 lesions of each class, got {m} malignant and {n} benign")
    x, yy = s[:, pos], s[:, neg]
    r_all = _midranks(np.concatenate([x, yy], axis=1))
    r_x, r_y = _midranks(x), _midranks(yy)
    aucs = (r_all[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (r_all[:, :m] - r_x) / n
    v01 = 1 - (r_all[:, m:] - r_y) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def auc_delong_ci(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """ROC AUC with its DeLong standard error and the Wald interval ``AUC ± z·SE`` clipped to [0, 1].

    Returns:
        ``value``, ``se``, ``ci_low``, ``ci_high``.
    """
    aucs, cov = delong_auc_covariance(labels, np.asarray(scores, dtype=float)[None, :])
    auc, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    z = _z(confidence)
    return {"value": auc, "se": se, "ci_low": max(0.0, auc - z * se), "ci_high": min(1.0, auc + z * se)}


def paired_delong_test(
    labels: Sequence[int] | np.ndarray,
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Two-sided DeLong test of equal AUC for two models scored on the same lesions.

    ``z = (AUC_a - AUC_b) / sqrt(V_a + V_b - 2 C_ab)``. When the difference has zero variance (for instance identical
    scores) the AUCs cannot differ: ``z`` is 0 and ``p`` is 1.

    Returns:
        ``auc_a``, ``auc_b``, ``difference`` (a - b), ``se``, ``ci_low``, ``ci_high`` (Wald interval of the
        difference), ``z`` and ``p``.
    """
    stacked = np.vstack([np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)])
    aucs, cov = delong_auc_covariance(labels, stacked)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(var) if var > 1e-15 else 0.0
    if se == 0.0:
        z, p = 0.0, 1.0
    else:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    half = _z(confidence) * se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "z": float(z),
        "p": min(1.0, p),
    }


def chi_square_across_groups(correct: Sequence[int], totals: Sequence[int]) -> dict[str, float | int | str | None]:
    """Pearson chi-square test that a proportion (correct / total) is the same in k groups.

    The 2 x k table has the correct and incorrect counts of each group as its columns; it is passed to
    ``scipy.stats.chi2_contingency`` without Yates' continuity correction (SPSS's "Pearson Chi-Square").

    Returns:
        ``chi2``, ``p``, ``dof``, ``min_expected`` and ``cells_expected_below_5``, or ``chi2``/``p`` None with a
        ``reason`` when the test is undefined (fewer than two groups, or a zero expected count because every
        lesion was correct, or every one incorrect).
    """
    correct = np.asarray(correct, dtype=int)
    totals = np.asarray(totals, dtype=int)
    if correct.shape != totals.shape or np.any(correct < 0) or np.any(correct > totals):
        raise ValueError(f"need 0 <= correct <= totals elementwise, got {correct.tolist()} / {totals.tolist()}")
    out: dict[str, float | int | str | None] = {
        "chi2": None,
        "p": None,
        "dof": None,
        "min_expected": None,
        "cells_expected_below_5": None,
        "reason": None,
    }
    if len(totals) < 2:
        out["reason"] = f"{len(totals)} group(s) to compare; the test needs at least 2"
        return out
    if np.any(totals == 0):
        out["reason"] = "a group has no lesion in the denominator"
        return out
    table = np.vstack([correct, totals - correct])
    if np.any(table.sum(axis=1) == 0):
        which = "correct" if table[1].sum() == 0 else "incorrect"
        out["reason"] = f"expected count of zero: every lesion is {which}, so there is no difference to test"
        return out
    result = chi2_contingency(table, correction=False)
    expected = np.asarray(result.expected_freq)
    out.update(
        chi2=float(result.statistic),
        p=float(result.pvalue),
        dof=int(result.dof),
        min_expected=float(expected.min()),
        cells_expected_below_5=int((expected < 5).sum()),
    )
    return out


def youden_threshold(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> dict:
    """Threshold of the ROC curve that maximises Youden's J = sensitivity + specificity - 1.

    A lesion is called malignant when its probability is >= the threshold (as in ``binary_metrics``). Ties in J go to
    the highest threshold. Computed on the data given: descriptive only, never a threshold to select a model with.

    Returns:
        ``threshold``, ``youden_j``, ``sensitivity``, ``specificity``.
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float))
    real = np.isfinite(thresholds)  # sklearn prepends +inf (nothing called malignant): not a usable threshold
    fpr, tpr, thresholds = fpr[real], tpr[real], thresholds[real]
    j = tpr - fpr
    best = int(np.argmax(j))
    return {
        "threshold": float(thresholds[best]),
        "youden_j": float(j[best]),
        "sensitivity": float(tpr[best]),
        "specificity": float(1 - fpr[best]),
    }


def group_status(labels: Sequence[int] | np.ndarray, min_per_class: int = MIN_CASES_PER_CLASS) -> str | None:
    """Why a group's metrics cannot be reported (too few lesions of a class), or None when they can."""
    y = np.asarray(labels, dtype=int).ravel()
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m + n == 0:
        return "no lesions"
    if m == 0:
        return f"only benign lesions ({n})"
    if n == 0:
        return f"only malignant lesions ({m})"
    if m < min_per_class or n < min_per_class:
        return f"too few lesions of a class ({n} benign, {m} malignant; at least {min_per_class} of each needed)"
    return None


def metrics_with_ci(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    confidence: float = 0.95,
    min_per_class: int = MIN_CASES_PER_CLASS,
) -> dict:
    """``binary_metrics`` with a 95% Wilson interval for every proportion and a DeLong interval for the AUC.

    A group with fewer than ``min_per_class`` lesions of either class is not evaluable: its counts are kept, but
    every metric is NaN with the group's ``reason``. In an evaluable group a proportion with an empty denominator
    (PPV when nothing is called malignant) is NaN with its own reason.

    Returns:
        ``counts`` (the binary_metrics counts), ``reason`` (None when evaluable) and, for each name of
        ``METRIC_NAMES``, a dict with ``value``, ``ci_low``, ``ci_high``, ``reason`` (plus ``successes``/``n`` for
        proportions, ``se`` for the AUC).
    """
    base = binary_metrics(labels, probabilities, threshold)
    counts = {k: base[k] for k in ("n", "positives", "negatives", "tp", "fp", "tn", "fn")}
    reason = group_status(labels, min_per_class)
    out: dict = {"counts": counts, "threshold": float(threshold), "reason": reason}
    for name, rule in PROPORTIONS.items():
        successes, n = rule.count(counts)
        entry = proportion(successes, n, confidence)
        entry["reason"] = reason or (rule.empty_reason if n == 0 else None)
        if reason:
            entry.update(value=math.nan, ci_low=math.nan, ci_high=math.nan)
        out[name] = entry
    if reason:
        out["auc"] = {"value": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan, "reason": reason}
    else:
        out["auc"] = {**auc_delong_ci(labels, probabilities, confidence), "reason": None}
    return out


def weighted_auc_matrix(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    weights: np.ndarray,
    clusters: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """ROC AUC (ties count 1/2) under each row of weights: the Mann-Whitney statistic with weighted lesions.

    Used for the patient-cluster bootstrap, where a lesion's weight is how often its patient was drawn. The lesions
    are summed per (tie group, cluster) with a sparse matrix, so B resamples cost one sparse-dense product.

    Args:
        labels: 0/1, shape (N,).
        scores: shape (N,).
        weights: non-negative, shape (B, K): one row per resample, one column per cluster.
        clusters: cluster (patient) index in 0..K-1 of each lesion, shape (N,); None = every lesion its own
            cluster (K = N).

    Returns:
        Shape (B,); NaN for a row whose positive or negative weights sum to zero.
    """
    y = np.asarray(labels, dtype=int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    c = np.arange(len(y)) if clusters is None else np.asarray(clusters, dtype=int).ravel()
    if not len(y) == len(s) == len(c) or (len(c) and c.max() >= w.shape[1]):
        raise ValueError(f"labels {y.shape}, scores {s.shape}, clusters {c.shape} and weights {w.shape} differ")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    tie_group = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1
    n_groups = int(tie_group[-1]) + 1 if len(y) else 0
    group_of = np.empty(len(y), dtype=int)
    group_of[order] = tie_group

    def summed(mask: np.ndarray) -> np.ndarray:  # (G, B): weight of the class's lesions in each tie group
        g = csr_matrix((np.ones(int(mask.sum())), (group_of[mask], c[mask])), shape=(n_groups, w.shape[1]))
        return np.asarray(g @ w.T)

    pos_w, neg_w = summed(y == 1), summed(y == 0)
    below = np.cumsum(neg_w, axis=0) - neg_w
    num = (pos_w * (below + 0.5 * neg_w)).sum(axis=0)
    den = pos_w.sum(axis=0) * neg_w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
