"""The evaluation's per-lesion writer: ``predictions.csv`` (one row per lesion) and ``metrics.json`` (the paper's
diagnostic metrics), and the note of how the evaluated checkpoint was chosen."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine

from bundle.engine.writers import LesionWriter, class_index
from bundle.evaluation.metrics import PROPORTION_NAMES, binary_metrics
from bundle.io import atomic_write_csv, atomic_write_text

__all__ = ["PREDICTION_COLUMNS", "LesionPredictionWriter", "model_selection_note"]

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("lesion_id", "patient_id", "label", "probability", "prediction")


class LesionPredictionWriter(LesionWriter):
    """Write one row per lesion (``predictions.csv``) and the diagnostic metrics (``metrics.json``) of an evaluation.

    Attach it to an evaluator whose decollated outputs hold ``pred`` (softmax probabilities, shape (2,)) and
    ``label`` (one-hot, shape (2,)) and whose batches hold ``lesion_id`` and ``patient_id``. At the end of each
    run it writes both files atomically (rank 0 only; ranks' results are gathered first).

    Args:
        output_dir: folder for the two files.
        threshold: a lesion is called malignant when P(malignant) >= threshold.
        predictions_filename: name of the CSV file.
        metrics_filename: name of the JSON file.
        extra_metadata: added to ``metrics.json`` (e.g. checkpoint path, fold, model-selection rule).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        predictions_filename: str = "predictions.csv",
        metrics_filename: str = "metrics.json",
        extra_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(output_dir, threshold)
        self.predictions_filename = predictions_filename
        self.metrics_filename = metrics_filename
        self.extra_metadata = dict(extra_metadata or {})

    def record(self, output: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().record(output, item), "label": class_index(output["label"])}

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
