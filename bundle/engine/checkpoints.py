"""Ignite handlers MONAI lacks: atomic checkpoints for resuming, and the per-lesion prediction/metrics writer."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointSaver

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
