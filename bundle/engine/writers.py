"""Per-lesion result writers: one base that collects each lesion's P(malignant) from an evaluator's outputs, and
the inference writer (``lesions.csv``, ``scans.csv``, ``failed.csv``, ``predictions.json``).

The evaluation writer (``predictions.csv`` + ``metrics.json``) builds on the same base in
:mod:`bundle.evaluation.predictions`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import string_list_all_gather

from bundle.io import atomic_write_csv, atomic_write_text

__all__ = [
    "CLASS_NAMES",
    "LesionResultWriter",
    "LesionWriter",
    "class_index",
    "is_rank0",
    "malignant_probability",
]

logger = logging.getLogger(__name__)

CLASS_NAMES = ("benign", "malignant")
ERROR_KEY = "error"
FAILED_FILE_KEY = "failed_file"
# the item keys that travel with each lesion to the inference writer (besides the image)
META_KEYS = ("scan", "mask_file", "patient_id", "lesion_id")
LESION_COLUMNS = (*META_KEYS, "probability", "prediction", "predicted_class", "model_version")
SCAN_COLUMNS = (
    "scan",
    "patient_id",
    "lesions",
    "malignant_lesions",
    "max_probability",
    "top_lesion_id",
    "patient_call",
    "model_version",
)
FAILED_COLUMNS = (*META_KEYS, FAILED_FILE_KEY, ERROR_KEY)
PATIENT_RULE = (
    "patient_call = malignant when any lesion of the scan has probability >= threshold "
    "(patient score = highest lesion probability)"
)


def malignant_probability(pred: Any) -> float:
    """P(malignant) from a lesion's softmax output ``pred`` of shape (2,)."""
    return float(torch.as_tensor(pred).float().reshape(-1)[1])


def class_index(label: Any) -> int:
    """Class index of a label given as an index (shape () or (1,)) or one-hot (shape (2,))."""
    label = torch.as_tensor(label).reshape(-1)
    return int(label.argmax()) if label.numel() > 1 else int(label[0])


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_rank0() -> bool:
    """True outside a distributed run and in its first process."""
    return not is_distributed() or torch.distributed.get_rank() == 0


class LesionWriter:
    """Base of the per-lesion writers: collects one record per lesion of a run and writes them when it ends.

    Attach it to an evaluator whose decollated outputs hold ``pred`` (softmax probabilities, shape (2,)). For each
    lesion (an output and its batch item) :meth:`record` returns a flat dict of strings and numbers, or ``None`` to
    skip it; at the end of each run the records of every rank are gathered (a lesion repeated by a
    ``DistributedSampler`` is kept once, by ``lesion_id``) and :meth:`write` is called on rank 0 only.

    Args:
        output_dir: folder of the files written.
        threshold: a lesion is called malignant when P(malignant) >= threshold.
    """

    def __init__(self, output_dir: str | os.PathLike, threshold: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.records: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.finish)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []

    def collect(self, engine: Engine) -> None:
        for output, item in zip(engine.state.output, engine.state.batch, strict=True):
            record = self.record(output, item)
            if record is not None:
                self.records.append(record)

    def record(self, output: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of one lesion: its ``lesion_id``, ``patient_id`` and ``probability`` (P(malignant))."""
        return {
            "lesion_id": str(item["lesion_id"]),
            "patient_id": str(item["patient_id"]),
            "probability": malignant_probability(output["pred"]),
        }

    def gathered(self) -> list[dict[str, Any]]:
        """Every rank's records (this process's outside a distributed run)."""
        if not is_distributed():
            return self.records
        lines = string_list_all_gather([json.dumps(r) for r in self.records])
        unique: dict[str, dict[str, Any]] = {}
        for line in lines:
            record = json.loads(line)
            unique[record["lesion_id"]] = record
        return list(unique.values())

    def finish(self, engine: Engine) -> None:
        records = self.gathered()
        if is_rank0():
            self.write(records, engine)

    def write(self, records: Sequence[dict[str, Any]], engine: Engine) -> None:
        raise NotImplementedError


class LesionResultWriter(LesionWriter):
    """Write the per-lesion and per-scan results of an inference run, and the items that failed.

    The evaluator's decollated batch items hold ``error`` and the keys of :data:`META_KEYS` (see
    :class:`~bundle.engine.inference.TolerantDataset`). At the end of the run it writes, each atomically, in
    ``output_dir``:

    - ``lesions.csv``: one row per lesion (:data:`LESION_COLUMNS`); ``probability`` = P(malignant);
    - ``scans.csv``: one row per scan (:data:`SCAN_COLUMNS`): number of lesions, highest probability, and the
      patient-level call (malignant when any lesion is called malignant);
    - ``failed.csv``: one row per lesion that could not be loaded, with the error (header only when none);
    - ``predictions.json``: all of the above with the model version, threshold and checkpoint.

    The number of failed items is stored as ``engine.state.inference_failures`` (see
    :func:`~bundle.engine.inference.exit_on_failures`).

    Args:
        output_dir: folder for the files.
        model_version: written in every row (the bundle's ``metadata.json`` ``version``).
        threshold: a lesion is called malignant when P(malignant) >= threshold.
        extra_metadata: added to ``predictions.json`` (e.g. the checkpoint path).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        model_version: str,
        threshold: float = 0.5,
        extra_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(output_dir, threshold)
        self.model_version = str(model_version)
        self.extra_metadata = dict(extra_metadata or {})

    @property
    def lesions(self) -> list[dict[str, Any]]:
        """The classified lesions' rows (:data:`LESION_COLUMNS`)."""
        return [r for r in self.records if not r.get(ERROR_KEY)]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The lesions that could not be loaded (:data:`FAILED_COLUMNS`)."""
        return [{k: r[k] for k in FAILED_COLUMNS} for r in self.records if r.get(ERROR_KEY)]

    def record(self, output: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
        meta = {k: str(item[k]) for k in META_KEYS}
        if item.get(ERROR_KEY):  # TolerantDataset marks failed items; other datasets have none
            return {**meta, FAILED_FILE_KEY: str(item[FAILED_FILE_KEY]), ERROR_KEY: str(item[ERROR_KEY])}
        probability = malignant_probability(output["pred"])
        prediction = int(probability >= self.threshold)
        return {
            **meta,
            "probability": probability,
            "prediction": prediction,
            "predicted_class": CLASS_NAMES[prediction],
            "model_version": self.model_version,
        }

    def scan_summaries(self) -> list[dict[str, Any]]:
        """One summary per scan of the collected lesions, in order of the scans' first lesion."""
        by_scan: dict[str, list[dict[str, Any]]] = {}
        for lesion in self.lesions:
            by_scan.setdefault(lesion["scan"], []).append(lesion)
        summaries = []
        for scan, lesions in by_scan.items():
            top = max(lesions, key=lambda x: x["probability"])
            malignant = sum(x["prediction"] for x in lesions)
            summaries.append(
                {
                    "scan": scan,
                    "patient_id": top["patient_id"],
                    "lesions": len(lesions),
                    "malignant_lesions": malignant,
                    "max_probability": top["probability"],
                    "top_lesion_id": top["lesion_id"],
                    "patient_call": CLASS_NAMES[int(malignant > 0)],
                    "model_version": self.model_version,
                }
            )
        return summaries

    def write(self, records: Sequence[dict[str, Any]], engine: Engine) -> None:
        self.records = list(records)
        lesions, failed, scans = self.lesions, self.failed, self.scan_summaries()
        atomic_write_csv(self.output_dir / "lesions.csv", lesions, LESION_COLUMNS)
        atomic_write_csv(self.output_dir / "scans.csv", scans, SCAN_COLUMNS)
        atomic_write_csv(self.output_dir / "failed.csv", failed, FAILED_COLUMNS)
        content = {
            "model_version": self.model_version,
            "threshold": self.threshold,
            "patient_rule": PATIENT_RULE,
            **self.extra_metadata,
            "lesions": lesions,
            "scans": scans,
            "failed": failed,
        }
        atomic_write_text(self.output_dir / "predictions.json", json.dumps(content, indent=1) + "\n")
        engine.state.inference_failures = len(failed)
        logger.info(f"{len(lesions)} lesions of {len(scans)} scans classified; results in {self.output_dir.resolve()}")
        by_file: dict[tuple[str, str], list[str]] = {}
        for failure in failed:
            by_file.setdefault((failure[FAILED_FILE_KEY], failure[ERROR_KEY]), []).append(failure["lesion_id"])
        for (failed_file, error), lesion_ids in by_file.items():
            logger.error(
                f"FAILED to load {failed_file or 'the files'} ({error}); skipped lesion(s) {', '.join(lesion_ids)}"
            )
