"""Metrics, intervals and tests of bundle.evaluation.metrics, each checked against an independent computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency, norm
from sklearn.metrics import confusion_matrix, roc_auc_score

from bundle.evaluation.metrics import (
    METRIC_NAMES,
    MIN_CASES_PER_CLASS,
    auc_delong_ci,
    binary_metrics,
    chi_square_across_groups,
    delong_auc_covariance,
    group_status,
    metrics_with_ci,
    paired_delong_test,
    weighted_auc_matrix,
    wilson_ci,
    youden_threshold,
)

# A small hand-made example with ties inside and across classes.
HAND_LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
HAND_SCORES_A = np.array([0.9, 0.8, 0.6, 0.4, 0.6, 0.3, 0.2, 0.4, 0.1])
HAND_SCORES_B = np.array([0.7, 0.9, 0.3, 0.5, 0.2, 0.6, 0.1, 0.4, 0.3])


def _random_case(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounded: ties
    return y, p


def _brute_force_components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components V10 (per positive) and V01 (per negative) by explicit pair comparisons."""
    pos = [v for v, t in zip(s, y, strict=True) if t == 1]
    neg = [v for v, t in zip(s, y, strict=True) if t == 0]

    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10 = np.array([sum(psi(x, z) for z in neg) / len(neg) for x in pos])
    v01 = np.array([sum(psi(x, z) for x in pos) / len(pos) for z in neg])
    return v10, v01


def _brute_force_cov(y: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
    comps = [_brute_force_components(y, s) for s in scores]
    m, n = int((y == 1).sum()), int((y == 0).sum())
    k = len(scores)
    cov = np.empty((k, k))
    for i, j in itertools.product(range(k), range(k)):
        (a10, a01), (b10, b01) = comps[i], comps[j]
        s10 = ((a10 - a10.mean()) * (b10 - b10.mean())).sum() / (m - 1)
        s01 = ((a01 - a01.mean()) * (b01 - b01.mean())).sum() / (n - 1)
        cov[i, j] = s10 / m + s01 / n
    return cov


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_binary_metrics_match_sklearn(seed: int, threshold: float) -> None:
    y, p = _random_case(seed)
    tn, fp, fn, tp = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel()
    m = binary_metrics(y, p, threshold)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))


def test_metric_names_are_the_papers_in_order() -> None:
    assert METRIC_NAMES == ("sensitivity", "specificity", "accuracy", "ppv", "npv", "auc")
    assert set(binary_metrics([1, 0], [0.9, 0.1])) >= set(METRIC_NAMES)


def test_binary_metrics_hand_counts() -> None:
    m = binary_metrics([1, 1, 0, 0, 0], [0.9, 0.2, 0.5, 0.1, 0.3], threshold=0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert m["ppv"] == 0.5 and m["npv"] == pytest.approx(2 / 3) and m["accuracy"] == 0.6


def wilson_closed_form(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson (1927) score interval written out: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    z = norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (81, 100), (1220, 1481), (1, 1)])
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_wilson_matches_closed_form(k: int, n: int, confidence: float) -> None:
    assert wilson_ci(k, n, confidence) == pytest.approx(wilson_closed_form(k, n, confidence), abs=1e-12)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (8, 10, (0.4902, 0.9433)),  # textbook value of 8/10
        (81, 263, (0.2553, 0.3662)),  # Newcombe (Stat Med 1998), example 81/263
        (0, 10, (0.0, 0.2775)),  # Newcombe (Stat Med 1998), example 0/10
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_known_values(k: int, n: int, expected: tuple[float, float]) -> None:
    low, high = wilson_ci(k, n)
    assert (round(low, 4), round(high, 4)) == expected


def test_wilson_edge_cases() -> None:
    assert all(math.isnan(v) for v in wilson_ci(0, 0))
    for bad in [(5, 3), (-1, 3), (0, -1)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_ci(*bad)
    for confidence in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="confidence"):
            wilson_ci(8, 10, confidence)


def test_delong_matches_brute_force_on_hand_example() -> None:
    aucs, cov = delong_auc_covariance(HAND_LABELS, np.vstack([HAND_SCORES_A, HAND_SCORES_B]))
    assert aucs[0] == pytest.approx(roc_auc_score(HAND_LABELS, HAND_SCORES_A))
    assert aucs[1] == pytest.approx(roc_auc_score(HAND_LABELS, HAND_SCORES_B))
    expected = _brute_force_cov(HAND_LABELS, [HAND_SCORES_A, HAND_SCORES_B])
    np.testing.assert_allclose(cov, expected, rtol=1e-12, atol=1e-15)
    # Hand check of A: V10 = (1, 1, 0.9, 0.7), V01 = (0.625, 1, 1, 0.875, 1) -> AUC 0.9.
    assert aucs[0] == pytest.approx(0.9)
    v10, v01 = np.array([1, 1, 0.9, 0.7]), np.array([0.625, 1, 1, 0.875, 1])
    assert cov[0, 0] == pytest.approx(v10.var(ddof=1) / 4 + v01.var(ddof=1) / 5)


@pytest.mark.parametrize("seed", [3, 4])
def test_delong_matches_brute_force_random(seed: int) -> None:
    y, p = _random_case(seed, n=80)
    q = np.clip(p + np.random.default_rng(seed).normal(0, 0.15, len(p)), 0, 1).round(2)
    aucs, cov = delong_auc_covariance(y, np.vstack([p, q]))
    np.testing.assert_allclose(aucs, [roc_auc_score(y, p), roc_auc_score(y, q)])
    np.testing.assert_allclose(cov, _brute_force_cov(y, [p, q]), rtol=1e-10)


def test_delong_needs_two_per_class() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        delong_auc_covariance([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])


def test_auc_ci_is_wald_on_delong_se() -> None:
    y, p = _random_case(5)
    ci = auc_delong_ci(y, p)
    se = math.sqrt(_brute_force_cov(y, [p])[0, 0])
    assert ci["value"] == pytest.approx(roc_auc_score(y, p))
    assert ci["se"] == pytest.approx(se)
    assert ci["ci_low"] == pytest.approx(ci["value"] - 1.959964 * se, abs=1e-6)
    assert ci["ci_high"] == pytest.approx(ci["value"] + 1.959964 * se, abs=1e-6)
    perfect = auc_delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect["value"] == 1.0 and perfect["ci_high"] == 1.0


def test_paired_delong_against_brute_force_symmetry_and_identity() -> None:
    ab = paired_delong_test(HAND_LABELS, HAND_SCORES_A, HAND_SCORES_B)
    ba = paired_delong_test(HAND_LABELS, HAND_SCORES_B, HAND_SCORES_A)
    cov = _brute_force_cov(HAND_LABELS, [HAND_SCORES_A, HAND_SCORES_B])
    diff = roc_auc_score(HAND_LABELS, HAND_SCORES_A) - roc_auc_score(HAND_LABELS, HAND_SCORES_B)
    z = diff / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert ab["difference"] == pytest.approx(diff)
    assert ab["z"] == pytest.approx(z)
    assert ab["p"] == pytest.approx(2 * norm.sf(abs(z)))
    assert 0 < ab["p"] < 1
    assert ba["p"] == pytest.approx(ab["p"]) and ba["difference"] == pytest.approx(-ab["difference"])
    same = paired_delong_test(HAND_LABELS, HAND_SCORES_A, HAND_SCORES_A)
    assert same["p"] == 1.0 and same["difference"] == 0.0
    # A monotone transform leaves every rank, hence the AUC and its components, unchanged.
    assert paired_delong_test(HAND_LABELS, HAND_SCORES_A, HAND_SCORES_A**3)["p"] == 1.0


def test_paired_delong_detects_a_real_difference() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(0, 0.5, 400)
    bad = y + rng.normal(0, 2.0, 400)
    result = paired_delong_test(y, good, bad)
    assert result["difference"] > 0.1 and result["p"] < 1e-6


def test_chi_square_matches_scipy_on_hand_table() -> None:
    correct, totals = [50, 30, 45], [60, 50, 50]
    table = np.array([[50, 30, 45], [10, 20, 5]])
    expected = chi2_contingency(table, correction=False)
    result = chi_square_across_groups(correct, totals)
    assert result["chi2"] == pytest.approx(expected.statistic)
    assert result["p"] == pytest.approx(expected.pvalue)
    assert result["dof"] == 2
    # By hand: expected incorrect = 35 * total / 160.
    exp_inc = np.array(totals) * 35 / 160
    exp_cor = np.array(totals) * 125 / 160
    by_hand = (((table[0] - exp_cor) ** 2) / exp_cor).sum() + (((table[1] - exp_inc) ** 2) / exp_inc).sum()
    assert result["chi2"] == pytest.approx(by_hand)
    assert result["min_expected"] == pytest.approx(exp_inc.min())


def test_chi_square_two_groups_has_no_continuity_correction() -> None:
    result = chi_square_across_groups([40, 25], [50, 50])
    assert result["chi2"] == pytest.approx(chi2_contingency([[40, 25], [10, 25]], correction=False).statistic)
    assert result["chi2"] != pytest.approx(chi2_contingency([[40, 25], [10, 25]]).statistic)


def test_chi_square_undefined_cases_say_why() -> None:
    all_correct = chi_square_across_groups([10, 20], [10, 20])
    assert all_correct["chi2"] is None and "expected count of zero" in all_correct["reason"]
    one_group = chi_square_across_groups([5], [10])
    assert one_group["p"] is None and "at least 2" in one_group["reason"]
    empty = chi_square_across_groups([5, 0], [10, 0])
    assert empty["p"] is None and "no lesion" in empty["reason"]


def test_youden_against_exhaustive_search() -> None:
    y, p = _random_case(8)
    best = youden_threshold(y, p)
    js = []
    for t in np.unique(p):
        called = p >= t
        js.append((called[y == 1].mean() - called[y == 0].mean(), -t))
    j, neg_t = max(js)
    assert best["youden_j"] == pytest.approx(j)
    assert best["threshold"] == pytest.approx(-neg_t)
    called = p >= best["threshold"]
    assert best["sensitivity"] == pytest.approx(called[y == 1].mean())
    assert best["specificity"] == pytest.approx(1 - called[y == 0].mean())


def test_metrics_with_ci_values_and_intervals() -> None:
    y, p = _random_case(9)
    out = metrics_with_ci(y, p, 0.5)
    base = binary_metrics(y, p, 0.5)
    assert out["reason"] is None
    for name in ("sensitivity", "specificity", "accuracy", "ppv", "npv", "auc"):
        assert out[name]["value"] == pytest.approx(base[name])
    tp, fn, tn, fp = base["tp"], base["fn"], base["tn"], base["fp"]
    expected = {
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "accuracy": (tp + tn, len(y)),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    for name, (k, n) in expected.items():
        assert (out[name]["successes"], out[name]["n"]) == (k, n)
        assert (out[name]["ci_low"], out[name]["ci_high"]) == pytest.approx(wilson_closed_form(k, n))
    assert out["counts"]["tp"] == tp and out["counts"]["fp"] == fp


def test_metrics_with_ci_not_evaluable_groups() -> None:
    one_class = metrics_with_ci([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.3])
    assert "only benign" in one_class["reason"]
    assert all(math.isnan(one_class[k]["value"]) for k in ("sensitivity", "specificity", "auc"))
    assert one_class["counts"]["fp"] == 1  # counts are still reported
    too_few = metrics_with_ci([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    assert "too few" in too_few["reason"] and math.isnan(too_few["auc"]["value"])
    assert group_status([1] * MIN_CASES_PER_CLASS + [0] * MIN_CASES_PER_CLASS) is None
    assert group_status([]) == "no lesions"


def test_metrics_with_ci_empty_denominator() -> None:
    out = metrics_with_ci([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], threshold=0.5)
    assert math.isnan(out["ppv"]["value"]) and out["ppv"]["reason"] == "no lesion called malignant"
    assert out["npv"]["value"] == 0.5 and out["npv"]["reason"] is None
    assert out["auc"]["value"] == 0.0


def test_weighted_auc_matches_sample_weight() -> None:
    y, p = _random_case(10, n=60)
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 4, size=(5, 60)).astype(float)
    got = weighted_auc_matrix(y, p, np.vstack([np.ones(60), weights]))
    assert got[0] == pytest.approx(roc_auc_score(y, p))
    for row, value in zip(weights, got[1:], strict=True):
        assert value == pytest.approx(roc_auc_score(y, p, sample_weight=row))
    assert math.isnan(weighted_auc_matrix(y, p, (1 - y)[None, :].astype(float))[0])
