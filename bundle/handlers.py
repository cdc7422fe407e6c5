"""Ignite handlers MONAI lacks: atomic checkpoints for resuming, and the per-lesion prediction/metrics writer."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from monai.utils import string_list_all_gather

from bundle.io import atomic_write_csv, atomic_write_text
from bundle.metrics import binary_metrics

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("lesion_id", "patient_id", "label", "probability", "prediction")


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files are never half-written.

    Every file is written to a temporary name and renamed into place, and a fixed-name file (``model.pt``,
    ``model_final.pt``) is replaced in one step instead of being deleted before the new one is written. Together
    with ``n_saved >= 2`` for the per-epoch checkpoints, a run killed at any moment leaves a loadable checkpoint.
    Its key-metric record (best score so far) is part of ``state_dict()``, so a resumed run keeps the best model.

    Args:
        adopt_existing: when resuming, count the ``checkpoint_epoch=N.pt`` files already in ``save_dir`` as saved
            by this run, so that ``n_saved`` still holds and the stopped run's older checkpoints are rotated out
            instead of lingering on disk.
    """

    def __init__(self, *args: Any, adopt_existing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if adopt_existing and self._interval_checkpoint is not None:
            existing = [(epoch, path.name) for epoch, path in _epoch_checkpoints(self.save_dir)]
            self._interval_checkpoint.load_state_dict({"_saved": existing})
        fixed_name = (self._final_checkpoint, self._key_metric_checkpoint)
        for checkpoint in (*fixed_name, self._interval_checkpoint):
            if checkpoint is None:
                continue
            checkpoint.save_handler._atomic = True
            if checkpoint in fixed_name:
                checkpoint.save_handler.remove = lambda filename: None  # os.replace overwrites it atomically

    def state_dict(self) -> dict:
        """Best-score record of the key-metric checkpoint (empty when not saving on a key metric).

        Scores are stored as Python floats so that the record loads with ``torch.load(weights_only=True)``.
        """
        if self._key_metric_checkpoint is None:
            return {}
        record = self._key_metric_checkpoint.state_dict()
        return {**record, "_saved": [(float(score), name) for score, name in record["_saved"]]}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            super().load_state_dict(state_dict)


_EPOCH_FILE = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def _epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the per-epoch checkpoints in ``ckpt_dir``, oldest first (numeric, not lexical order)."""
    paths = Path(ckpt_dir).glob("checkpoint_epoch=*.pt")
    return sorted((int(m.group(1)), p) for p in paths if (m := _EPOCH_FILE.search(p.name)))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """Path of the newest readable per-epoch checkpoint (``checkpoint_epoch=N.pt``) in ``ckpt_dir``.

    Raises:
        FileNotFoundError: when ``ckpt_dir`` holds no readable per-epoch checkpoint to resume from.
    """
    for epoch, path in reversed(_epoch_checkpoints(ckpt_dir)):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated file from a killed run: fall back to the previous epoch
            logger.warning(f"skipping unreadable checkpoint {path} ({err})")
            continue
        logger.info(f"resuming from {path} (epoch {epoch})")
        return str(path)
    raise FileNotFoundError(
        f"{ckpt_dir}: no checkpoint_epoch=N.pt to resume from; start without --resume (or check --output_dir)"
    )


def _class_index(label: Any) -> int:
    """Class index of a label given as an index (shape () or (1,)) or one-hot (shape (2,))."""
    label = torch.as_tensor(label).reshape(-1)
    return int(label.argmax()) if label.numel() > 1 else int(label[0])


class LesionPredictionWriter:
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
        extra_metadata: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.predictions_filename = predictions_filename
        self.metrics_filename = metrics_filename
        self.extra_metadata = dict(extra_metadata or {})
        self._rows: list[tuple[str, str, int, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._rows = []

    def _collect(self, engine: Engine) -> None:
        outputs: Sequence[dict] = engine.state.output
        batch: Sequence[dict] = engine.state.batch
        for item, meta in zip(outputs, batch, strict=True):
            probability = float(torch.as_tensor(item["pred"]).float().reshape(-1)[1])
            label = _class_index(item["label"])
            self._rows.append((str(meta["lesion_id"]), str(meta["patient_id"]), label, probability))

    def _gathered_rows(self) -> list[tuple[str, str, int, float]]:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self._rows
        lines = string_list_all_gather(["\t".join(map(str, row)) for row in self._rows])
        rows = {}
        for line in lines:  # a DistributedSampler may repeat lesions to even out ranks: keep each lesion once
            lesion_id, patient_id, label, probability = line.split("\t")
            rows[lesion_id] = (lesion_id, patient_id, int(label), float(probability))
        return list(rows.values())

    def _write(self, engine: Engine) -> None:
        rows = self._gathered_rows()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        rows = sorted(rows)
        labels = [r[2] for r in rows]
        probabilities = [r[3] for r in rows]
        metrics = binary_metrics(labels, probabilities, self.threshold)

        predictions_path = self.output_dir / self.predictions_filename
        metrics_path = self.output_dir / self.metrics_filename
        atomic_write_csv(
            predictions_path,
            (dict(zip(PREDICTION_COLUMNS, (*row, int(row[3] >= self.threshold)), strict=True)) for row in rows),
            PREDICTION_COLUMNS,
        )
        content = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        content.update(self.extra_metadata)
        atomic_write_text(metrics_path, json.dumps(content, indent=2) + "\n")
        summary = ", ".join(
            f"{k}={metrics[k]:.3f}" for k in ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv")
        )
        logger.info(f"{metrics['n']} lesions: {summary}")
        logger.info(f"predictions written to {predictions_path.resolve()}; metrics to {metrics_path.resolve()}")


def model_selection_note(checkpoint: str | os.PathLike) -> str:
    """How the evaluated checkpoint was chosen, for the metrics file and the report."""
    name = Path(checkpoint).name
    if name == "model.pt":
        return "best AUC on the inner validation split (patients of the training folds); the test fold was not used"
    if name == "model_final.pt":
        return "last epoch; no model selection"
    return f"user-supplied checkpoint {name}"
