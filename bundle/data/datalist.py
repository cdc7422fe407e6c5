"""Datalist: one entry per lesion, folds assigned by patient, and the splits a run trains/validates/tests on.

A datalist is a Decathlon-style JSON file::

    {"name": "...", "num_folds": 5, "training": [
        {"image": "images/P0001.nii.gz", "mask": "masks/P0001_L01.nii.gz", "label": 1,
         "patient_id": "P0001", "lesion_id": "P0001_L01", "fold": 3,
         "tumor_type": "lung", "lesions_in_image": 4}, ...]}

Paths are relative to ``dataset_dir`` (absolute paths are kept). ``tumor_type`` and ``lesions_in_image`` are
optional; when absent they are filled with ``"unknown"`` and the number of lesions sharing the entry's image.
``image`` may also be a folder holding a scan's two single-view DICOM files, or a list of those two files;
``mask`` may select one lesion of a label image or DICOM SEG as ``"path#N"`` (see :mod:`bundle.data.readers`).

Built and checked on the command line (``docs/data.md``)::

    python -m bundle.data build DATA_DIR [--csv lesions.csv] [--num_folds 5] [--seed 0] [--overwrite]
    python -m bundle.data validate DATA_DIR/datalist.json [--dataset_dir DATA_DIR] [--pretrained_weights W]
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from bundle.data.paths import image_key, resolve, split_selector
from bundle.errors import (
    DataError,
    DuplicateLesionError,
    EntryKeyError,
    FoldClassError,
    FoldValueError,
    MalformedDatalistError,
    PatientFoldError,
    ProblemsError,
    UnknownLabelError,
)
from bundle.io import atomic_write_text

REQUIRED_KEYS = ("image", "mask", "label", "patient_id", "lesion_id", "fold")
OPTIONAL_KEYS = ("tumor_type", "lesions_in_image")
SPLIT_PARTS = ("train", "val", "test", "trainval", "all")
LABEL_NAMES = {0: "benign", 1: "malignant"}
# the paper's lesion-burden groups (its Table 4) by the number of lesions on the image, inclusive ranges
BURDEN_GROUPS = {"few": (1, 3), "medium": (4, 6), "extensive": (7, math.inf)}
BURDEN_LABELS = {"few": "Few (1–3)", "medium": "Medium (4–6)", "extensive": "Extensive (>6)"}


def burden_group(lesions_in_image: int) -> str:
    """Lesion-burden group of an image by its number of lesions: 1-3 ``few``, 4-6 ``medium``, >6 ``extensive``."""
    if lesions_in_image < 1:
        raise ValueError(f"an image with a lesion has at least 1 lesion, got {lesions_in_image}")
    return next(g for g, (lo, hi) in BURDEN_GROUPS.items() if lo <= lesions_in_image <= hi)


def lesions_per_image(entries: Sequence[Mapping[str, Any]]) -> Counter:
    """Number of entries (lesions) per image, keyed by :func:`~bundle.data.paths.image_key` of ``image``."""
    return Counter(image_key(e["image"]) for e in entries if e.get("image") is not None)


def lesions_in_image_of(entry: Mapping[str, Any], per_image: Mapping[str, int]) -> int | None:
    """An entry's ``lesions_in_image``: as given (0 included, so that validation can refuse it), else counted on its
    image in ``per_image`` (:func:`lesions_per_image`); None without an image."""
    given = entry.get("lesions_in_image")
    if given is not None and str(given).strip() != "":
        return int(given)
    return per_image[image_key(entry["image"])] if entry.get("image") is not None else None


def repeated_lesion_ids(lesion_ids: Iterable[Any]) -> dict[str, int]:
    """The lesion ids that occur more than once, with their counts (lesion ids must be unique)."""
    return {k: n for k, n in Counter(str(i) for i in lesion_ids).items() if n > 1}


def assign_folds(entries: Sequence[dict], num_folds: int = 5, seed: int = 0) -> list[dict]:
    """Return copies of ``entries`` with ``fold`` set so that no patient spans two folds.

    Folds are stratified by lesion label and grouped by ``patient_id`` (scikit-learn ``StratifiedGroupKFold``).

    Raises:
        ProblemsError: when there are fewer patients than folds.
    """
    patients = [str(e["patient_id"]) for e in entries]
    if len(set(patients)) < num_folds:
        raise ProblemsError("datalist", [f"{len(set(patients))} patient(s) cannot fill {num_folds} folds"])
    labels = np.array([int(e["label"]) for e in entries])
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(entries), dtype=int)
    for fold, (_, test_idx) in enumerate(splitter.split(np.zeros(len(entries)), labels, groups=patients)):
        folds[test_idx] = fold
    return [{**e, "fold": int(f)} for e, f in zip(entries, folds, strict=True)]


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file; the result has a ``training`` list of entries.

    Raises:
        ProblemsError: missing file, malformed JSON, or no ``training`` list.
    """
    path = Path(path)
    if not path.is_file():
        raise ProblemsError(
            path,
            [
                MalformedDatalistError(
                    path, "file not found", "create it with `python -m bundle.data build` or `python -m bundle.phantom`"
                )
            ],
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProblemsError(
            path, [MalformedDatalistError(path, f"not valid JSON ({err})", "fix the file or build it again")]
        ) from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise ProblemsError(
            path, [MalformedDatalistError(path, 'expected a JSON object with a "training" list of lesion entries')]
        )
    return content


def entry_problems(entries: Sequence[Any], num_folds: int | None = None) -> list[DataError]:
    """The problems of a datalist's entries, each as its own :class:`~bundle.data.readers.DataError` subclass.

    Checks: entries are objects with the required keys (:class:`EntryKeyError`), label 0/1
    (:class:`UnknownLabelError`), integer folds in range (:class:`FoldValueError`), unique lesion ids
    (:class:`DuplicateLesionError`), ``lesions_in_image`` a positive integer when given (:class:`EntryKeyError`), no
    patient in two folds (:class:`PatientFoldError`), and both classes in
    every fold (:class:`FoldClassError`).
    """
    problems: list[DataError] = []
    valid: list[dict] = []
    for i, entry in enumerate(entries):
        where = f"entry {i}" + (f" (lesion_id {entry.get('lesion_id')!r})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict):
            problems.append(EntryKeyError(where, f"expected an object, got {type(entry).__name__}"))
            continue
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            problems.append(
                EntryKeyError(
                    where, f"missing key(s) {', '.join(missing)}", f"every entry needs {', '.join(REQUIRED_KEYS)}"
                )
            )
            continue
        if entry["label"] not in (0, 1) or isinstance(entry["label"], bool):
            problems.append(
                UnknownLabelError(where, f"label {entry['label']!r} is not 0 (benign) or 1 (malignant)", "use 0 or 1")
            )
            continue
        if not isinstance(entry["fold"], int) or isinstance(entry["fold"], bool) or entry["fold"] < 0:
            problems.append(
                FoldValueError(where, f"fold {entry['fold']!r} is not a non-negative integer", "use 0..num_folds-1")
            )
            continue
        if num_folds is not None and entry["fold"] >= num_folds:
            problems.append(
                FoldValueError(
                    where,
                    f"fold {entry['fold']} is out of range 0..{num_folds - 1}",
                    "re-assign folds (`python -m bundle.data build`) or fix num_folds",
                )
            )
            continue
        given = entry.get("lesions_in_image")
        if given is not None and str(given).strip() != "" and not (str(given).isdigit() and int(given) >= 1):
            problems.append(
                EntryKeyError(
                    where,
                    f"lesions_in_image {given!r} is not a positive integer (an image with a lesion has at least 1)",
                    "give the number of lesions on the image, or leave it out to have it counted",
                )
            )
            continue
        valid.append(entry)

    for lesion_id, n in repeated_lesion_ids(e["lesion_id"] for e in valid).items():
        problems.append(
            DuplicateLesionError(
                None, f"lesion_id {lesion_id!r} appears {n} times; lesion ids must be unique", "rename the copies"
            )
        )
    folds_of_patient: dict[str, set[int]] = defaultdict(set)
    for e in valid:
        folds_of_patient[str(e["patient_id"])].add(e["fold"])
    for patient, folds in sorted(folds_of_patient.items()):
        if len(folds) > 1:
            problems.append(
                PatientFoldError(
                    None,
                    f"patient_id {patient!r} is in folds {sorted(folds)}; a patient must stay in one fold",
                    "re-assign folds with `python -m bundle.data build` (or bundle.data.datalist.assign_folds)",
                )
            )
    labels_per_fold: dict[int, set[int]] = defaultdict(set)
    for e in valid:
        labels_per_fold[e["fold"]].add(e["label"])
    for fold, labels in sorted(labels_per_fold.items()):
        for label in {0, 1} - labels:
            problems.append(
                FoldClassError(
                    None,
                    f"fold {fold} has no {LABEL_NAMES[label]} lesion; every fold needs both classes",
                    "use fewer folds, add patients, or re-assign folds with another --seed",
                )
            )
    return problems


def check_entries(entries: Sequence[Any], num_folds: int | None = None) -> list[str]:
    """Return the problems of a datalist's entries as messages (empty when it is usable); see :func:`entry_problems`."""
    return [str(p) for p in entry_problems(entries, num_folds)]


def entry_files(entry: dict) -> list[tuple[str, str]]:
    """(key, file path) of an entry's files: its image file(s) or folder, and its mask without a ``#N`` selector."""
    images = [entry["image"]] if isinstance(entry["image"], str) else list(entry["image"])
    return [("image", str(p)) for p in images] + [("mask", split_selector(str(entry["mask"]))[0])]


def normalise_entries(entries: Sequence[dict], dataset_dir: str | os.PathLike) -> list[dict]:
    """Entries with absolute paths and exactly the keys the pipeline uses (optional keys filled in)."""
    per_image = lesions_per_image(entries)
    out = []
    for e in entries:
        out.append(
            {
                "image": resolve(e["image"], dataset_dir),
                "mask": resolve(e["mask"], dataset_dir),
                "label": int(e["label"]),
                "patient_id": str(e["patient_id"]),
                "lesion_id": str(e["lesion_id"]),
                "fold": int(e["fold"]),
                "tumor_type": str(e.get("tumor_type") or "unknown"),
                "lesions_in_image": lesions_in_image_of(e, per_image),
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
        raise ProblemsError("datalist", [f"too few training patients ({len(set(patients))}) for val_fraction"])
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
        ProblemsError: listing every problem of the datalist (and its missing files).
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
        raise ProblemsError(datalist, problems)

    selected = entries if part == "all" else [e for e in entries if (e["fold"] == fold) == (part == "test")]
    selected = normalise_entries(selected, dataset_dir)
    if part in ("train", "val"):
        in_val = inner_validation_mask(selected, val_fraction, seed)
        selected = [e for e, v in zip(selected, in_val, strict=True) if v == (part == "val")]
    if check_files:
        missing = [
            f"lesion_id {e['lesion_id']!r}: {key} file not found: {path}"
            for e in selected
            for key, path in entry_files(e)
            if not (os.path.isfile(path) or (key == "image" and os.path.isdir(path)))
        ]
        if missing:
            raise ProblemsError(datalist, missing)
    return selected


def write_datalist(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Write a datalist JSON atomically (a temporary file renamed over the target)."""
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def summary(content: dict[str, Any]) -> str:
    """A table of patients, scans, lesions and class balance per fold."""
    entries = content["training"]
    rows = [("fold", "patients", "scans", "lesions", "benign", "malignant", "malignant %")]
    folds = sorted({e["fold"] for e in entries})
    for fold in [*folds, None]:
        part = [e for e in entries if fold is None or e["fold"] == fold]
        malignant = sum(e["label"] == 1 for e in part)
        rows.append(
            (
                "all" if fold is None else str(fold),
                str(len({e["patient_id"] for e in part})),
                str(len({image_key(e["image"]) for e in part})),
                str(len(part)),
                str(len(part) - malignant),
                str(malignant),
                f"{100 * malignant / max(len(part), 1):.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def load_scan_split(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fold: int = 0,
    part: str = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    check_files: bool = True,
    label_key: str = "regions",
) -> list[dict]:
    """Whole-scan entries of one part of a split, for a segmentation network (regions, or lesions with
    ``label_key="lesions"``: the scan's lesion label image).

    Reads the datalist's ``scans`` list (one entry per scan: ``image``, ``regions``, ``patient_id``, ``fold``; the
    phantom writes it); ``label`` is the entry's ``label_key`` file. ``part`` and the
    split are those of :func:`load_split`: the inner validation set (``val``) is about ``val_fraction`` of the
    training folds' patients, grouped by patient and stratified by whether the scan has malignant lesions. Entries
    returned: ``{"image", "label", "patient_id", "fold"}`` (paths absolute).

    Raises:
        ProblemsError: no ``scans`` list, entries without the keys above, an absent ``fold``, or missing files.
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"part must be one of {SPLIT_PARTS}, got {part!r}")
    path = Path(datalist)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProblemsError(path, [MalformedDatalistError(path, f"cannot read it ({err})")]) from None
    scans = content.get("scans") if isinstance(content, dict) else None
    if not isinstance(scans, list):
        raise ProblemsError(
            path, [MalformedDatalistError(path, 'no "scans" list of scan entries with region maps', "see docs/read.md")]
        )
    keys = ("image", label_key, "patient_id", "fold")
    problems = [
        f"scan entry {i}: missing key(s) {', '.join(k for k in keys if k not in s)}"
        for i, s in enumerate(scans)
        if not isinstance(s, dict) or any(k not in s for k in keys)
    ]
    if not problems and part != "all" and fold not in {s["fold"] for s in scans}:
        problems.append(f"fold {fold} is not in the scans list (folds present: {sorted({s['fold'] for s in scans})})")
    if problems:
        raise ProblemsError(path, problems)
    selected = scans if part == "all" else [s for s in scans if (s["fold"] == fold) == (part == "test")]
    selected = [
        {**s, "image": resolve(s["image"], dataset_dir), "label": resolve(s[label_key], dataset_dir),
         "patient_id": str(s["patient_id"]), "label_class": int(bool(s.get("malignant_lesions")))}
        for s in selected
    ]  # fmt: skip
    if part in ("train", "val"):
        grouped = [{**s, "label": s["label_class"]} for s in selected]
        in_val = inner_validation_mask(grouped, val_fraction, seed)
        selected = [s for s, v in zip(selected, in_val, strict=True) if v == (part == "val")]
    if check_files:
        missing = [
            f"scan of patient {s['patient_id']!r}: {key} file not found: {s[key]}"
            for s in selected
            for key in ("image", "label")
            if not (os.path.isfile(s[key]) or (key == "image" and os.path.isdir(s[key])))
        ]
        if missing:
            raise ProblemsError(path, missing)
    # only keys a DataLoader can batch (no None, no per-scan dicts)
    return [{k: s[k] for k in ("image", "label", "patient_id", "fold")} for s in selected]
