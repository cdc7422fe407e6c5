"""The evaluation's per-lesion writer: ``predictions.csv`` (one row per lesion) and ``metrics.json`` (the paper's
diagnostic metrics, and the calibration before and after temperature scaling), and the note of how the evaluated
checkpoint was chosen."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from bundle.engine.writers import LesionWriter, class_index
from bundle.evaluation.calibration import logits_from_probabilities
from bundle.evaluation.metrics import PROPORTION_NAMES, binary_metrics
from bundle.evaluation.temperature import calibration_summary, read_temperature
from bundle.io import atomic_write_csv, atomic_write_text

__all__ = ["PREDICTION_COLUMNS", "LesionPredictionWriter", "model_selection_note"]

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("lesion_id", "patient_id", "label", "probability", "prediction")


class LesionPredictionWriter(LesionWriter):
    """Write one row per lesion (``predictions.csv``) and the diagnostic metrics (``metrics.json``) of an evaluation.

    Attach it to an evaluator whose decollated outputs hold ``pred`` (softmax probabilities, shape (2,)) and
    ``label`` (one-hot, shape (2,)), optionally ``logits`` (the network's output before the softmax, shape (2,)), and
    whose batches hold ``lesion_id`` and ``patient_id``. At the end of each run it writes both files atomically (rank
    0 only; ranks' results are gathered first).

    ``predictions.csv`` holds the uncalibrated probability (as ``metrics.json``'s diagnostic metrics). ``metrics.json``
    also holds ``calibration`` (:func:`bundle.evaluation.temperature.calibration_summary`): ECE (top-label and
    P(malignant)) and reliability-diagram data before and, with the temperature of ``temperature_file``, after
    temperature scaling, and the metrics at the inner validation split's Youden threshold. Without ``logits`` the
    log-probabilities stand in for them.

    Args:
        output_dir: folder for the two files.
        threshold: a lesion is called malignant when P(malignant) >= threshold.
        predictions_filename: name of the CSV file.
        metrics_filename: name of the JSON file.
        extra_metadata: added to ``metrics.json`` (e.g. checkpoint path, fold, model-selection rule).
        temperature_file: ``temperature.json`` written after training (``None``: no scaling).
        checkpoint: the evaluated checkpoint; the temperature is used only when fitted for its file name.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        predictions_filename: str = "predictions.csv",
        metrics_filename: str = "metrics.json",
        extra_metadata: Mapping[str, Any] | None = None,
        temperature_file: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(output_dir, threshold)
        self.predictions_filename = predictions_filename
        self.metrics_filename = metrics_filename
        self.extra_metadata = dict(extra_metadata or {})
        self.temperature_file = temperature_file
        self.checkpoint = checkpoint

    def record(self, output: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
        record = {**super().record(output, item), "label": class_index(output["label"])}
        if "logits" in output:
            record["logits"] = [float(v) for v in torch.as_tensor(output["logits"]).float().reshape(-1)]
        return record

    def calibration(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The ``calibration`` block of ``metrics.json`` for the rows (each with ``label``, ``probability`` and
        optionally ``logits``)."""
        if not rows:
            logits = np.zeros((0, 2))
        elif all("logits" in r for r in rows):
            logits = np.array([r["logits"] for r in rows], dtype=np.float64)
        else:
            logits = logits_from_probabilities(np.array([r["probability"] for r in rows], dtype=np.float64))
        temperature = None
        if self.temperature_file is not None:
            temperature = read_temperature(self.temperature_file, self.checkpoint)
        labels = [r["label"] for r in rows]
        probabilities = np.array([r["probability"] for r in rows], dtype=np.float64)
        return calibration_summary(labels, logits.reshape(len(rows), -1), temperature, probabilities=probabilities)

    def write(self, records: Sequence[dict[str, Any]], engine: Engine) -> None:
        rows = sorted(records, key=lambda r: (r["lesion_id"], r["patient_id"]))
        for row in rows:
            row["prediction"] = int(row["probability"] >= self.threshold)
        metrics = binary_metrics([r["label"] for r in rows], [r["probability"] for r in rows], self.threshold)
        predictions_path = self.output_dir / self.predictions_filename
        metrics_path = self.output_dir / self.metrics_filename
        atomic_write_csv(predictions_path, rows, PREDICTION_COLUMNS)
        content = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        content.update(self.extra_metadata)
        content["calibration"] = self.calibration(rows)
        atomic_write_text(metrics_path, json.dumps(content, indent=2) + "\n")
        logger.info(
            f"{metrics['n']} lesions: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in ("auc", *PROPORTION_NAMES))
        )
        logger.info(f"predictions written to {predictions_path.resolve()}; metrics to {metrics_path.resolve()}")


def model_selection_note(checkpoint: str | os.PathLike) -> str:
    """How the evaluated checkpoint was chosen, for the metrics file and the report."""
    name = Path(checkpoint).name
    if name == "model.pt":
        return "best AUC on the inner validation split (patients of the training folds); the test fold was not used"
    if name == "model_final.pt":
        return "last epoch; no model selection"
    return f"user-supplied checkpoint {name}"
