"""Datalist: one entry per lesion, folds assigned by patient, and the splits a run trains/validates/tests on.

A datalist is a Decathlon-style JSON file::

    {"name": "...", "num_folds": 5, "training": [
        {"image": "images/P0001.nii.gz", "mask": "masks/P0001_L01.nii.gz", "label": 1,
         "patient_id": "P0001", "lesion_id": "P0001_L01", "fold": 3,
         "tumor_type": "lung", "lesions_in_image": 4}, ...]}

Paths are relative to ``dataset_dir`` (absolute paths are kept). ``tumor_type`` and ``lesions_in_image`` are
optional; when absent they are filled with ``"unknown"`` and the number of lesions sharing the entry's image.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

REQUIRED_KEYS = ("image", "mask", "label", "patient_id", "lesion_id", "fold")
OPTIONAL_KEYS = ("tumor_type", "lesions_in_image")
SPLIT_PARTS = ("train", "val", "test", "trainval", "all")
LABEL_NAMES = {0: "benign", 1: "malignant"}


class DatalistError(ValueError):
    """Raised when a datalist cannot be used; ``problems`` lists every problem found, each naming its entry."""

    def __init__(self, source: str | os.PathLike, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source}: {len(self.problems)} problem(s) found:\n{listing}")


def assign_folds(entries: Sequence[dict], num_folds: int = 5, seed: int = 0) -> list[dict]:
    """Return copies of ``entries`` with ``fold`` set so that no patient spans two folds.

    Folds are stratified by lesion label and grouped by ``patient_id`` (scikit-learn ``StratifiedGroupKFold``).

    Raises:
        DatalistError: when there are fewer patients than folds.
    """
    patients = [str(e["patient_id"]) for e in entries]
    if len(set(patients)) < num_folds:
        raise DatalistError("datalist", [f"{len(set(patients))} patient(s) cannot fill {num_folds} folds"])
    labels = np.array([int(e["label"]) for e in entries])
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(entries), dtype=int)
    for fold, (_, test_idx) in enumerate(splitter.split(np.zeros(len(entries)), labels, groups=patients)):
        folds[test_idx] = fold
    return [{**e, "fold": int(f)} for e, f in zip(entries, folds, strict=True)]


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file; the result has a ``training`` list of entries.

    Raises:
        DatalistError: missing file, malformed JSON, or no ``training`` list.
    """
    path = Path(path)
    if not path.is_file():
        raise DatalistError(path, ["file not found: create it with `python -m bundle.phantom` or `bundle.datalist`"])
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatalistError(path, [f"not valid JSON ({err})"]) from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise DatalistError(path, ['expected a JSON object with a "training" list of lesion entries'])
    return content


def check_entries(entries: Sequence[Any], num_folds: int | None = None) -> list[str]:
    """Return the problems of a datalist's entries (empty when it is usable).

    Checks: required keys, label 0/1, unique lesion ids, integer folds in range, no patient in two folds,
    and both classes present in every fold.
    """
    problems: list[str] = []
    valid: list[dict] = []
    for i, entry in enumerate(entries):
        where = f"entry {i}" + (f" (lesion_id {entry.get('lesion_id')!r})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
            continue
        if entry["label"] not in (0, 1) or isinstance(entry["label"], bool):
            problems.append(f"{where}: label {entry['label']!r} is not 0 (benign) or 1 (malignant)")
            continue
        if not isinstance(entry["fold"], int) or isinstance(entry["fold"], bool) or entry["fold"] < 0:
            problems.append(f"{where}: fold {entry['fold']!r} is not a non-negative integer")
            continue
        if num_folds is not None and entry["fold"] >= num_folds:
            problems.append(f"{where}: fold {entry['fold']} is out of range 0..{num_folds - 1}")
            continue
        valid.append(entry)

    for lesion_id, n in Counter(str(e["lesion_id"]) for e in valid).items():
        if n > 1:
            problems.append(f"lesion_id {lesion_id!r} appears {n} times; lesion ids must be unique")
    folds_of_patient: dict[str, set[int]] = defaultdict(set)
    for e in valid:
        folds_of_patient[str(e["patient_id"])].add(e["fold"])
    for patient, folds in sorted(folds_of_patient.items()):
        if len(folds) > 1:
            problems.append(
                f"patient_id {patient!r} is in folds {sorted(folds)}; a patient must stay in one fold "
                "(re-assign folds with bundle.datalist.assign_folds)"
            )
    labels_per_fold: dict[int, set[int]] = defaultdict(set)
    for e in valid:
        labels_per_fold[e["fold"]].add(e["label"])
    for fold, labels in sorted(labels_per_fold.items()):
        for label in {0, 1} - labels:
            problems.append(f"fold {fold} has no {LABEL_NAMES[label]} lesion; every fold needs both classes")
    return problems


def _resolve(path: str, dataset_dir: str | os.PathLike) -> str:
    return path if os.path.isabs(path) else os.path.join(dataset_dir, path)


def normalise_entries(entries: Sequence[dict], dataset_dir: str | os.PathLike) -> list[dict]:
    """Entries with absolute paths and exactly the keys the pipeline uses (optional keys filled in)."""
    per_image = Counter(e["image"] for e in entries)
    out = []
    for e in entries:
        out.append(
            {
                "image": _resolve(e["image"], dataset_dir),
                "mask": _resolve(e["mask"], dataset_dir),
                "label": int(e["label"]),
                "patient_id": str(e["patient_id"]),
                "lesion_id": str(e["lesion_id"]),
                "fold": int(e["fold"]),
                "tumor_type": str(e.get("tumor_type") or "unknown"),
                "lesions_in_image": int(e.get("lesions_in_image") or per_image[e["image"]]),
            }
        )
    return out


def inner_validation_mask(entries: Sequence[dict], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the entries held out for model selection: about ``val_fraction`` of the patients.

    The split is grouped by patient and stratified by label, so it never shares a patient with training.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_splits = max(2, round(1 / val_fraction))
    patients = [e["patient_id"] for e in entries]
    if len(set(patients)) < n_splits:
        raise DatalistError("datalist", [f"too few training patients ({len(set(patients))}) for val_fraction"])
    labels = np.array([e["label"] for e in entries])
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(splitter.split(np.zeros(len(entries)), labels, groups=patients))
    mask = np.zeros(len(entries), dtype=bool)
    mask[val_idx] = True
    return mask


def load_split(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int = 0,
    part: str = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    check_files: bool = True,
) -> list[dict]:
    """Entries of one part of a cross-validation split, ready for a MONAI dataset.

    Args:
        datalist: path of the datalist JSON.
        dataset_dir: folder that relative ``image``/``mask`` paths are joined to.
        fold: the held-out test fold.
        part: ``test`` (fold == ``fold``), ``trainval`` (all other folds), ``train``/``val`` (``trainval`` split by
            patient into training and an inner validation set of about ``val_fraction`` of the patients, used for
            model selection), or ``all`` (every entry).
        val_fraction: share of the training patients held out as the inner validation set.
        seed: seed of the inner validation split.
        check_files: refuse entries whose image or mask file does not exist.

    Raises:
        DatalistError: listing every problem of the datalist (and its missing files).
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"part must be one of {SPLIT_PARTS}, got {part!r}")
    content = read_datalist(datalist)
    entries = content["training"]
    num_folds = content.get("num_folds")
    problems = check_entries(entries, num_folds=num_folds)
    if not problems:
        folds = {e["fold"] for e in entries}
        if part != "all" and fold not in folds:
            problems.append(f"fold {fold} is not in the datalist (folds present: {sorted(folds)})")
    if problems:
        raise DatalistError(datalist, problems)

    selected = entries if part == "all" else [e for e in entries if (e["fold"] == fold) == (part == "test")]
    selected = normalise_entries(selected, dataset_dir)
    if part in ("train", "val"):
        in_val = inner_validation_mask(selected, val_fraction, seed)
        selected = [e for e, v in zip(selected, in_val, strict=True) if v == (part == "val")]
    if check_files:
        missing = [
            f"lesion_id {e['lesion_id']!r}: {key} file not found: {e[key]}"
            for e in selected
            for key in ("image", "mask")
            if not os.path.isfile(e[key])
        ]
        if missing:
            raise DatalistError(datalist, missing)
    return selected


def write_datalist(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Write a datalist JSON atomically (a temporary file renamed over the target)."""
    from bundle.io import atomic_write_text

    atomic_write_text(path, json.dumps(content, indent=1) + "\n")
