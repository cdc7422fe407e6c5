"""Calibration of predicted probabilities: expected calibration error, reliability-diagram data, temperature scaling.

**Bins.** ``n_bins`` equal-width bins of the confidence on [0, 1]: bin k holds confidences in (k/n, (k+1)/n], the
first bin also 0.

**What is binned** (``kind``):

- ``"top_label"`` (Guo et al., ICML 2017): confidence = the largest class probability, outcome = whether that class
  is the true one; the usual ECE of classifiers;
- ``"positive"``: confidence = the probability of class 1 (malignant), outcome = whether the label is 1; it asks
  whether a written probability of malignancy means what it says.

ECE = sum over bins of (count_k / N) * |accuracy_k - mean confidence_k| (empty bins contribute nothing).

**Temperature scaling** (Guo et al. 2017): one scalar T > 0 fitted by minimising the negative log-likelihood of
softmax(logits / T) on a held-out set (the inner validation split, never the test fold); the calibrated logits are
``logits / T``. Dividing all logits by one T keeps every argmax, so accuracy and AUC are unchanged. When only
probabilities were saved, :func:`logits_from_probabilities` gives logits (log-probabilities) that softmax back to them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = [
    "CALIBRATION_KINDS",
    "ReliabilityDiagram",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "logits_from_probabilities",
    "reliability_diagram",
]

CALIBRATION_KINDS = ("top_label", "positive")
#: search range of log(T): T in [0.01, 100]
LOG_TEMPERATURE_BOUNDS = (np.log(0.01), np.log(100.0))


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram; arrays of shape (n_bins,), NaN where a bin is empty.

    Attributes:
        bin_lower, bin_upper: bin edges.
        mean_confidence: mean confidence of the bin's samples.
        accuracy: fraction of the bin's samples whose outcome is positive (right class / label 1).
        count: samples in the bin (int).
        ece: expected calibration error over all bins.
    """

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float

    def to_dict(self) -> dict:
        """JSON-ready: lists (NaN as ``None``) and the ECE."""

        def clean(values: np.ndarray) -> list:
            return [None if isinstance(v, float) and np.isnan(v) else v for v in values.tolist()]

        return {
            "bin_lower": clean(self.bin_lower),
            "bin_upper": clean(self.bin_upper),
            "mean_confidence": clean(self.mean_confidence),
            "accuracy": clean(self.accuracy),
            "count": self.count.tolist(),
            "ece": self.ece,
        }


def as_class_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """(N,) probabilities of class 1 or (N, K) class probabilities -> (N, K) float64. Raises ValueError otherwise."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape (N,) or (N, K >= 2), got {np.shape(probabilities)}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def as_class_indices(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) class indices or (N, K) one-hot labels -> (N,) int. Raises ValueError on other shapes or values."""
    y = np.asarray(labels)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    y = y.astype(np.int64)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"expected labels (N,) in 0..{num_classes - 1} or one-hot (N, {num_classes})")
    return y


def confidence_and_outcome(probabilities: np.ndarray, labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The binned confidence (N,) and outcome (N,) bool of ``kind`` (module docstring)."""
    p = as_class_probabilities(probabilities)
    y = as_class_indices(labels, p.shape[1])
    if len(y) != len(p):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if kind == "top_label":
        predicted = p.argmax(axis=1)
        return p[np.arange(len(p)), predicted], predicted == y
    if kind == "positive":
        if p.shape[1] != 2:
            raise ValueError("kind 'positive' needs two classes")
        return p[:, 1], y == 1
    raise ValueError(f"kind must be one of {CALIBRATION_KINDS}, got {kind!r}")


def reliability_diagram(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10, kind: str = "top_label"
) -> ReliabilityDiagram:
    """Reliability-diagram data and ECE over ``n_bins`` equal-width confidence bins (module docstring).

    Args:
        probabilities: (N, K) class probabilities (rows summing to 1), or (N,) probabilities of class 1.
        labels: (N,) class indices or (N, K) one-hot labels.
        n_bins: number of equal-width bins on [0, 1].
        kind: ``"top_label"`` or ``"positive"``.

    Raises:
        ValueError: bad shapes, values, ``n_bins`` or ``kind``; no samples.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, outcome = confidence_and_outcome(probabilities, labels, kind)
    if len(confidence) == 0:
        raise ValueError("no samples to calibrate")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin k holds (edges[k], edges[k+1]]; 0 goes to bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=outcome.astype(np.float64), minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] / count.sum() * np.abs(accuracy[filled] - mean_confidence[filled])))
    return ReliabilityDiagram(edges[:-1], edges[1:], mean_confidence, accuracy, count, ece)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10, kind: str = "top_label"
) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins; arguments as :func:`reliability_diagram`."""
    return reliability_diagram(probabilities, labels, n_bins, kind).ece


def logits_from_probabilities(probabilities: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Logits (N, K) whose softmax is ``probabilities`` ((N, K), or (N,) of class 1), clipped to [eps, 1]."""
    return np.log(np.clip(as_class_probabilities(probabilities), eps, 1.0))


def softmax_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of softmax(logits (N, K)) at the labels (N,)."""
    return float(-np.mean(log_softmax(logits, axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (bounded 1-D search over log T in [0.01, 100]).

    Args:
        logits: (N, K) logits (or log-probabilities) of a held-out set.
        labels: (N,) class indices or (N, K) one-hot labels.

    Returns:
        T > 0; T > 1 softens over-confident predictions, T < 1 sharpens under-confident ones.

    Raises:
        ValueError: bad shapes, non-finite logits, or no samples.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2 or len(z) == 0:
        raise ValueError(f"expected logits of shape (N >= 1, K >= 2), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    y = as_class_indices(labels, z.shape[1])
    if len(y) != len(z):
        raise ValueError(f"{len(z)} logits but {len(y)} labels")
    result = minimize_scalar(
        lambda log_t: softmax_nll(z / np.exp(log_t), y),
        bounds=LOG_TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated logits ``logits / temperature`` (any array type that divides: numpy, torch)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits / temperature


def calibrated_postprocessing(postprocessing: Any, temperature: float) -> Any:
    """``postprocessing`` (a MONAI ``Compose`` whose first step turns the logits in ``pred`` into probabilities)
    preceded by the division of ``pred`` by ``temperature``; ``postprocessing`` itself when ``temperature`` is 1."""
    from monai.transforms import Compose, Lambdad

    if temperature == 1.0:
        return postprocessing
    scale = Lambdad(keys="pred", func=functools.partial(apply_temperature, temperature=float(temperature)))
    return Compose([scale, *postprocessing.transforms])
