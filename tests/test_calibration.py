"""Tests of bundle.evaluation.calibration: ECE against hand computations, reliability bins, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax

from bundle.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    reliability_diagram,
)

# probability of class 1 and labels of six lesions (no confidence on a bin edge)
P_MALIGNANT = np.array([0.1, 0.3, 0.35, 0.78, 0.9, 0.95])
LABELS = np.array([0, 1, 0, 1, 1, 0])


def test_top_label_ece_matches_hand_computation():
    # top-label confidences 0.9, 0.7, 0.65, 0.78, 0.9, 0.95; correct: yes, no, yes, yes, yes, no
    # 5 bins: (0.6, 0.8] holds 0.7, 0.65, 0.78 (mean 0.71, accuracy 2/3); (0.8, 1] holds 0.9, 0.9, 0.95
    # (mean 2.75/3, accuracy 2/3)
    expected = 3 / 6 * abs(2 / 3 - 0.71) + 3 / 6 * abs(2 / 3 - 2.75 / 3)
    assert expected_calibration_error(P_MALIGNANT, LABELS, n_bins=5) == pytest.approx(expected, abs=1e-12)
    # (N, K) probabilities and one-hot labels give the same
    probs = np.stack([1 - P_MALIGNANT, P_MALIGNANT], axis=1)
    assert expected_calibration_error(probs, np.eye(2)[LABELS], n_bins=5) == pytest.approx(expected, abs=1e-12)


def test_positive_class_ece_matches_hand_computation():
    # 5 bins of P(malignant): [0, 0.2] 0.1 (label 0); (0.2, 0.4] 0.3, 0.35 (labels 1, 0); (0.6, 0.8] 0.78 (1);
    # (0.8, 1] 0.9, 0.95 (labels 1, 0)
    expected = (abs(0 - 0.1) + 2 * abs(0.5 - 0.325) + abs(1 - 0.78) + 2 * abs(0.5 - 0.925)) / 6
    assert expected_calibration_error(P_MALIGNANT, LABELS, n_bins=5, kind="positive") == pytest.approx(expected)


def test_reliability_diagram_bins():
    diagram = reliability_diagram(P_MALIGNANT, LABELS, n_bins=5, kind="positive")
    np.testing.assert_allclose(diagram.bin_lower, [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(diagram.bin_upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(diagram.count, [1, 2, 0, 1, 2])
    np.testing.assert_allclose(diagram.mean_confidence, [0.1, 0.325, np.nan, 0.78, 0.925])
    np.testing.assert_allclose(diagram.accuracy, [0.0, 0.5, np.nan, 1.0, 0.5])
    as_dict = diagram.to_dict()
    assert as_dict["accuracy"][2] is None and as_dict["count"] == [1, 2, 0, 1, 2]
    assert as_dict["ece"] == pytest.approx(diagram.ece)


def test_confidence_on_bin_edges_and_zero():
    # 0 goes to the first bin, 1 to the last; 0.5 (an edge with 2 bins) to the lower bin
    diagram = reliability_diagram(np.array([0.0, 0.5, 1.0]), np.array([0, 1, 1]), n_bins=2, kind="positive")
    np.testing.assert_array_equal(diagram.count, [2, 1])


def miscalibrated_set(n: int = 20_000, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated binary model (labels drawn from its probabilities), multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(z)).astype(int)
    return np.stack([np.zeros(n), scale * z], axis=1), labels


def test_temperature_scaling_recovers_temperature_and_lowers_ece():
    logits, labels = miscalibrated_set()
    before = expected_calibration_error(softmax(logits, axis=1), labels)
    temperature = fit_temperature(logits, labels)
    calibrated = apply_temperature(logits, temperature)
    after = expected_calibration_error(softmax(calibrated, axis=1), labels)
    assert temperature == pytest.approx(3.0, abs=0.15)
    assert before > 0.05
    assert after < 0.02 and after < before / 3
    # one temperature for all logits keeps every decision
    np.testing.assert_array_equal(calibrated.argmax(axis=1), logits.argmax(axis=1))


def test_temperature_of_a_calibrated_model_is_one_and_under_confidence_sharpens():
    logits, labels = miscalibrated_set(scale=1.0, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.08)
    soft, labels = miscalibrated_set(scale=0.5, seed=2)
    assert fit_temperature(soft, labels) == pytest.approx(0.5, abs=0.05)


def test_temperature_from_saved_probabilities():
    logits, labels = miscalibrated_set(n=5000)
    probs = softmax(logits, axis=1)
    recovered = logits_from_probabilities(probs[:, 1])
    np.testing.assert_allclose(softmax(recovered, axis=1), probs, atol=1e-6)
    assert fit_temperature(recovered, labels) == pytest.approx(fit_temperature(logits, labels), rel=0.02)


def test_apply_temperature_to_torch_logits():
    logits = torch.tensor([[0.0, 3.0], [1.5, -1.5]])
    torch.testing.assert_close(apply_temperature(logits, 3.0), torch.tensor([[0.0, 1.0], [0.5, -0.5]]))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: expected_calibration_error(P_MALIGNANT, LABELS[:3]), "6 predictions but 3 labels"),
        (lambda: expected_calibration_error(P_MALIGNANT, LABELS, kind="other"), "kind"),
        (lambda: expected_calibration_error(P_MALIGNANT + 1, LABELS), r"\[0, 1\]"),
        (lambda: expected_calibration_error(P_MALIGNANT, LABELS, n_bins=0), "n_bins"),
        (lambda: expected_calibration_error(P_MALIGNANT, LABELS + 1), "labels"),
        (lambda: fit_temperature(np.array([[0.0, np.inf]]), np.array([1])), "finite"),
        (lambda: fit_temperature(np.zeros(4), np.zeros(4)), "shape"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
