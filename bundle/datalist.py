"""Datalist: one entry per lesion, folds assigned by patient, and the splits a run trains/validates/tests on.

A datalist is a Decathlon-style JSON file::

    {"name": "...", "num_folds": 5, "training": [
        {"image": "images/P0001.nii.gz", "mask": "masks/P0001_L01.nii.gz", "label": 1,
         "patient_id": "P0001", "lesion_id": "P0001_L01", "fold": 3,
         "tumor_type": "lung", "lesions_in_image": 4}, ...]}

Paths are relative to ``dataset_dir`` (absolute paths are kept). ``tumor_type`` and ``lesions_in_image`` are
optional; when absent they are filled with ``"unknown"`` and the number of lesions sharing the entry's image.
``image`` may also be a folder holding a scan's two single-view DICOM files, or a list of those two files;
``mask`` may select one lesion of a label image or DICOM SEG as ``"path#N"`` (see :mod:`bundle.readers`).

Command line (``docs/data.md``)::

    python -m bundle.datalist build DATA_DIR [--csv lesions.csv] [--num_folds 5] [--seed 0] [--overwrite]
    python -m bundle.datalist validate DATA_DIR/datalist.json [--dataset_dir DATA_DIR] [--pretrained_weights W]
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from bundle.readers import DataError, split_selector

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


class MalformedDatalistError(DatalistError):
    """The datalist file is missing, is not valid JSON, or has no ``training`` list."""


class EntryKeyError(DataError):
    """A datalist entry is not an object or lacks a required key."""


class UnknownLabelError(DataError):
    """A label is not 0 (benign) or 1 (malignant)."""


class FoldValueError(DataError):
    """A fold is not a non-negative integer, or is outside 0..num_folds-1."""


class DuplicateLesionError(DataError):
    """Two entries share a lesion id."""


class PatientFoldError(DataError):
    """A patient's lesions are in more than one fold."""


class FoldClassError(DataError):
    """A fold has no benign or no malignant lesion."""


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
        raise MalformedDatalistError(
            path, ["file not found: create it with `python -m bundle.datalist build` or `python -m bundle.phantom`"]
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedDatalistError(path, [f"not valid JSON ({err}); fix the file or build it again"]) from None
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise MalformedDatalistError(path, ['expected a JSON object with a "training" list of lesion entries'])
    return content


def entry_problems(entries: Sequence[Any], num_folds: int | None = None) -> list[DataError]:
    """The problems of a datalist's entries, each as its own :class:`~bundle.readers.DataError` subclass.

    Checks: entries are objects with the required keys (:class:`EntryKeyError`), label 0/1
    (:class:`UnknownLabelError`), integer folds in range (:class:`FoldValueError`), unique lesion ids
    (:class:`DuplicateLesionError`), no patient in two folds (:class:`PatientFoldError`), and both classes in
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
                    "re-assign folds (`python -m bundle.datalist build`) or fix num_folds",
                )
            )
            continue
        valid.append(entry)

    for lesion_id, n in Counter(str(e["lesion_id"]) for e in valid).items():
        if n > 1:
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
                    "re-assign folds with `python -m bundle.datalist build` (or bundle.datalist.assign_folds)",
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


def _resolve(path: str | Sequence[str], dataset_dir: str | os.PathLike) -> str | list[str]:
    if not isinstance(path, str):  # the two single-view files of one scan
        return [str(_resolve(p, dataset_dir)) for p in path]
    return path if os.path.isabs(path) else os.path.join(dataset_dir, path)


def image_key(image: str | Sequence[str]) -> str:
    """A hashable key for an entry's ``image`` (a path, or the list of a scan's two single-view files)."""
    return image if isinstance(image, str) else "|".join(map(str, image))


def entry_files(entry: dict) -> list[tuple[str, str]]:
    """(key, file path) of an entry's files: its image file(s) or folder, and its mask without a ``#N`` selector."""
    images = [entry["image"]] if isinstance(entry["image"], str) else list(entry["image"])
    return [("image", str(p)) for p in images] + [("mask", split_selector(str(entry["mask"]))[0])]


def normalise_entries(entries: Sequence[dict], dataset_dir: str | os.PathLike) -> list[dict]:
    """Entries with absolute paths and exactly the keys the pipeline uses (optional keys filled in)."""
    per_image = Counter(image_key(e["image"]) for e in entries)
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
                "lesions_in_image": int(e.get("lesions_in_image") or per_image[image_key(e["image"])]),
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
            f"lesion_id {e['lesion_id']!r}: {key} file not found: {path}"
            for e in selected
            for key, path in entry_files(e)
            if not (os.path.isfile(path) or (key == "image" and os.path.isdir(path)))
        ]
        if missing:
            raise DatalistError(datalist, missing)
    return selected


def write_datalist(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Write a datalist JSON atomically (a temporary file renamed over the target)."""
    from bundle.io import atomic_write_text

    atomic_write_text(path, json.dumps(content, indent=1) + "\n")


# ---- building a datalist from a folder or a CSV ----------------------------------------------------------------
SCAN_FOLDERS = ("images", "scans")
LABEL_FOLDERS = {"benign": 0, "0": 0, "malignant": 1, "1": 1}
LABEL_WORDS = {"0": 0, "benign": 0, "1": 1, "malignant": 1}
_EXTENSIONS = (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".tif", ".tiff")


class BuildError(DataError):
    """A file of the source folder or CSV cannot be turned into datalist entries."""


def _stem(name: str) -> str:
    lower = name.lower()
    for ext in _EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _expand_masks(
    mask: str, dataset_dir: Path, lesion_prefix: str, reader: Any, problems: list[DataError]
) -> list[tuple[str, str]]:
    """(mask path, lesion id) for each lesion of a mask file: one for a binary mask, one per label/segment else."""
    base, selector = split_selector(mask)
    if selector is not None:
        return [(mask, f"{lesion_prefix}_{selector.replace(',', '-')}")]
    try:
        selectors = reader.mask_selectors(_resolve(base, dataset_dir))
    except DataError as err:
        problems.append(err)
        return []
    if not selectors:
        return [(mask, lesion_prefix)]
    return [(f"{mask}#{s}", f"{lesion_prefix}_{s.replace(',', '-')}") for s in selectors]


def _read_patients_csv(path: Path, problems: list[DataError]) -> dict[str, dict[str, str]]:
    import csv

    rows: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"scan", "patient_id"} <= set(reader.fieldnames):
            problems.append(BuildError(path, "needs the columns scan,patient_id[,tumor_type]", "add a header row"))
            return rows
        for row in reader:
            rows[_stem(str(row["scan"]).strip())] = {k: str(v or "").strip() for k, v in row.items() if k}
    return rows


def _dicom_patient_id(path: Path) -> str | None:
    """PatientID of a DICOM scan (a file, or the first DICOM file of a scan folder), else None."""
    import pydicom

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:
            continue
        if str(ds.get("PatientID", "")).strip():
            return str(ds.PatientID).strip()
    return None


def scans_in(scan_dir: Path) -> dict[str, Path]:
    """The scans of a folder by name (file name without extensions; a sub-folder is a two-file DICOM scan)."""
    return {
        _stem(p.name): p for p in sorted(scan_dir.iterdir()) if not p.name.startswith(".") and p.name != "Thumbs.db"
    }


def lesion_masks(
    root: Path, mask_dir: Path, scans: dict[str, Path], reader: Any, problems: list[DataError]
) -> Iterator[tuple[str, str, str]]:
    """``(scan name, mask path relative to root, lesion id)`` for every lesion mask under ``mask_dir``.

    A mask belongs to the scan whose name starts its path (followed by ``_``, ``-``, ``.`` or ``/``); a label image
    or multi-segment SEG gives one lesion per value. A mask of no scan is added to ``problems``.
    """
    for mask in sorted(p for p in mask_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = _stem(_rel(mask, mask_dir))
        matches = [s for s in scans if relative == s or re.match(re.escape(s) + r"[_\-./]", relative)]
        if not matches:
            problems.append(
                BuildError(
                    mask,
                    "belongs to no scan (its name must start with a scan's name + '_')",
                    "rename the mask, e.g. <scan>_L1.nii.gz, or put it in a sub-folder named after its scan",
                )
            )
            continue
        scan = max(matches, key=len)
        prefix = relative.replace("/", "_")
        for mask_path, lesion_id in _expand_masks(_rel(mask, root), root, prefix, reader, problems):
            yield scan, mask_path, lesion_id


def collect_folder(root: str | os.PathLike, reader: Any = None) -> tuple[list[dict], list[DataError], list[str]]:
    """Datalist entries (without folds) from a folder laid out as ``docs/data.md`` describes.

    Layout::

        ROOT/images/<scan>.dcm|.nii.gz|.png|.tif   one scan per file (or scans/ instead of images/)
        ROOT/images/<scan>/                        a folder holding a scan's two single-view DICOM files
        ROOT/masks/benign/<scan>_<lesion>.<ext>    lesion masks, by label (benign|malignant, or 0|1)
        ROOT/masks/malignant/<scan>_<lesion>.<ext> (a label image or multi-segment SEG gives one lesion per value)
        ROOT/patients.csv                          optional: scan,patient_id[,tumor_type]

    A mask belongs to the scan whose name starts its file name (followed by ``_``, ``-`` or ``.``), or to the scan
    named by its sub-folder. Patient ids come from ``patients.csv``, else the DICOM ``PatientID``, else the scan name.

    Returns:
        (entries with paths relative to ``root``, problems, notes).
    """
    from bundle.readers import WholeBodyScanReader

    root = Path(root)
    reader = reader if reader is not None else WholeBodyScanReader()
    problems: list[DataError] = []
    notes: list[str] = []
    scan_dir = next((root / d for d in SCAN_FOLDERS if (root / d).is_dir()), None)
    if scan_dir is None:
        return (
            [],
            [BuildError(root, "no images/ (or scans/) folder of scans", "lay the folder out as in docs/data.md")],
            [],
        )
    scans = scans_in(scan_dir)
    patients_csv = root / "patients.csv"
    patients = _read_patients_csv(patients_csv, problems) if patients_csv.is_file() else {}
    mask_root = root / "masks"
    label_dirs = [d for d in sorted(mask_root.iterdir()) if d.is_dir()] if mask_root.is_dir() else []
    if not label_dirs:
        problems.append(
            BuildError(mask_root, "no masks/benign or masks/malignant folder", "put each lesion mask under its label")
        )
    entries = []
    from_names = 0
    for label_dir in label_dirs:
        label = LABEL_FOLDERS.get(label_dir.name.lower())
        if label is None:
            problems.append(BuildError(label_dir, "unknown label folder", "name it benign or malignant (or 0 or 1)"))
            continue
        for scan, mask_path, lesion_id in lesion_masks(root, label_dir, scans, reader, problems):
            info = patients.get(scan, {})
            patient = info.get("patient_id") or None
            if patient is None and _sniff_dicom(scans[scan]):
                patient = _dicom_patient_id(scans[scan])
            if patient is None:
                patient, from_names = scan, from_names + 1
            entries.append(
                {
                    "image": _rel(scans[scan], root),
                    "mask": mask_path,
                    "label": label,
                    "patient_id": patient,
                    "lesion_id": lesion_id,
                    "tumor_type": info.get("tumor_type") or "unknown",
                }
            )
    if from_names:
        notes.append(
            f"{from_names} lesion(s) take their patient id from the scan name (no patients.csv row, no DICOM "
            "PatientID): scans of one patient must then share one name, or folds may split a patient"
        )
    unused = sorted(set(scans) - {Path(_stem(e["image"])).name for e in entries})
    if unused:
        notes.append(f"{len(unused)} scan(s) without a lesion mask are left out: {', '.join(unused[:10])}")
    return entries, problems, notes


def _sniff_dicom(path: Path) -> bool:
    from bundle.readers import _sniff

    return path.is_dir() or _sniff(str(path)) == "dicom"


def collect_csv(
    csv_path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, reader: Any = None
) -> tuple[list[dict], list[DataError], list[str]]:
    """Datalist entries (without folds) from a CSV: ``image,mask,label,patient_id[,tumor_type][,lesion_id]``.

    ``image`` is a scan file or folder, or two single-view DICOM files joined by ``;``. ``mask`` may select one
    lesion as ``path#N``; a label image or multi-segment SEG without a selector gives one lesion per label value.
    ``label`` is 0/1 or benign/malignant. Paths are relative to ``dataset_dir`` (default: the CSV's folder).

    Returns:
        (entries, problems, notes).
    """
    import csv

    from bundle.readers import WholeBodyScanReader

    csv_path = Path(csv_path)
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else csv_path.parent
    reader = reader if reader is not None else WholeBodyScanReader()
    problems: list[DataError] = []
    if not csv_path.is_file():
        return [], [BuildError(csv_path, "CSV file not found", "check the path")], []
    entries = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = csv.DictReader(f)
        needed = {"image", "mask", "label", "patient_id"}
        if not rows.fieldnames or not needed <= set(rows.fieldnames):
            return (
                [],
                [
                    BuildError(
                        csv_path,
                        f"columns {rows.fieldnames} lack {sorted(needed - set(rows.fieldnames or []))}",
                        "give a header row: image,mask,label,patient_id[,tumor_type][,lesion_id]",
                    )
                ],
                [],
            )
        for line, row in enumerate(rows, start=2):
            where = f"{csv_path}, line {line}"
            label = LABEL_WORDS.get(str(row["label"]).strip().lower())
            if label is None:
                problems.append(
                    UnknownLabelError(
                        where, f"label {row['label']!r} is not 0/1 or benign/malignant", "use 0, 1, benign or malignant"
                    )
                )
                continue
            image_text = str(row["image"]).strip()
            image: str | list[str] = [p.strip() for p in image_text.split(";")] if ";" in image_text else image_text
            patient = str(row["patient_id"]).strip()
            if not image_text or not str(row["mask"]).strip() or not patient:
                problems.append(EntryKeyError(where, "empty image, mask or patient_id", "fill in every column"))
                continue
            mask = str(row["mask"]).strip()
            prefix = (row.get("lesion_id") or "").strip() or _stem(Path(split_selector(mask)[0]).name)
            expanded = _expand_masks(mask, dataset_dir, prefix, reader, problems)
            if (row.get("lesion_id") or "").strip() and len(expanded) == 1:
                expanded = [(expanded[0][0], prefix)]
            for mask_path, lesion_id in expanded:
                entries.append(
                    {
                        "image": image,
                        "mask": mask_path,
                        "label": label,
                        "patient_id": patient,
                        "lesion_id": lesion_id,
                        "tumor_type": (row.get("tumor_type") or "").strip() or "unknown",
                    }
                )
    return entries, problems, []


def build_datalist(
    source: str | os.PathLike,
    *,
    csv: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    num_folds: int = 5,
    seed: int = 0,
    reader: Any = None,
    name: str = "bone-scan-lesions",
) -> tuple[dict[str, Any] | None, list[Exception], list[str]]:
    """Build (but do not write) a datalist: entries, lesion counts, patient-level stratified folds, full validation.

    Args:
        source: the data folder (layout of :func:`collect_folder`), or a CSV file (see :func:`collect_csv`).
        csv: a CSV file, when ``source`` is the folder its paths are relative to.
        dataset_dir: folder that paths are relative to (default: ``source`` folder, or the CSV's folder).
        num_folds: cross-validation folds (patient-level, stratified by lesion label).
        seed: seed of the fold assignment.
        reader: :class:`~bundle.readers.WholeBodyScanReader` to read with (e.g. with ``view_order``).
        name: the datalist's ``name``.

    Returns:
        (datalist content or ``None`` when there are problems, every problem, notes).
    """
    from bundle.readers import WholeBodyScanReader
    from bundle.validation import validate

    reader = reader if reader is not None else WholeBodyScanReader()
    source = Path(source)
    if csv is None and source.is_file():
        csv = source
    if csv is not None:
        dataset_dir = (
            Path(dataset_dir) if dataset_dir is not None else (source if source.is_dir() else Path(csv).parent)
        )
        entries, problems, notes = collect_csv(csv, dataset_dir, reader)
    else:
        dataset_dir = Path(dataset_dir) if dataset_dir is not None else source
        if not source.is_dir():
            return None, [BuildError(source, "no such folder or CSV file", "check the path")], []
        entries, problems, notes = collect_folder(source, reader)
    all_problems: list[Exception] = list(problems)
    if not entries:
        all_problems.append(BuildError(source, "no lesion found", "see docs/data.md for the expected layout"))
        return None, all_problems, notes
    per_image = Counter(image_key(e["image"]) for e in entries)
    for e in entries:
        e["lesions_in_image"] = per_image[image_key(e["image"])]
    try:
        entries = assign_folds(entries, num_folds=num_folds, seed=seed)
    except DatalistError as err:
        all_problems.append(
            BuildError(source, "; ".join(err.problems), "use fewer folds (--num_folds) or add patients")
        )
        return None, all_problems, notes
    content = {
        "name": name,
        "description": f"built by `python -m bundle.datalist build` from {source}",
        "num_folds": num_folds,
        "seed": seed,
        "training": [{k: e[k] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS)} for e in entries],
    }
    report = validate(content, dataset_dir, reader, num_folds)
    all_problems.extend(report.problems)
    notes.extend(n for n in report.notes if n not in notes)
    return (None if all_problems else content), all_problems, notes


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


def _print_problems(problems: Sequence[Exception], notes: Sequence[str]) -> None:
    from bundle.validation import describe

    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem(s) found:")
        for p in problems:
            print(f"  - {describe(p)}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bundle.datalist {build,validate}``; returns the exit status (0 ok, 1 problems, 2 usage)."""
    import argparse

    from bundle.readers import WholeBodyScanReader

    parser = argparse.ArgumentParser(prog="python -m bundle.datalist", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build",
        help="build datalist.json from a data folder or a CSV",
        description="Build a datalist (one entry per lesion, patient-level stratified folds) from a data folder "
        "(images/, masks/benign/, masks/malignant/, optional patients.csv) or a CSV of "
        "image,mask,label,patient_id[,tumor_type][,lesion_id]. Every file is read and checked first; nothing is "
        "written when there is a problem. See docs/data.md.",
    )
    build.add_argument("source", help="data folder, or a CSV file")
    build.add_argument("--csv", help="CSV of lesions, its paths relative to SOURCE (a folder)")
    build.add_argument("--dataset_dir", help="folder the datalist's paths are relative to (default: SOURCE folder)")
    build.add_argument("--output", help="datalist file to write (default: DATASET_DIR/datalist.json)")
    build.add_argument("--num_folds", type=int, default=5, help="cross-validation folds (default: 5)")
    build.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: 0)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing datalist file")
    build.add_argument("--view_order", nargs="+", choices=["ANT", "POST"], help="views of DICOM frames without codes")
    check = commands.add_parser(
        "validate",
        help="check a datalist and every file it names",
        description="Read every scan and mask of a datalist and list every problem (exit status 1 when any).",
    )
    check.add_argument("datalist", help="datalist JSON file")
    check.add_argument("--dataset_dir", help="folder the datalist's paths are relative to (default: its folder)")
    check.add_argument("--num_folds", type=int, help="folds expected (default: the datalist's num_folds)")
    check.add_argument("--allow_single_view", action="store_true", help="accept single-view scans (evaluation only)")
    check.add_argument("--pretrained_weights", help="also check this torchvision-format weights file")
    check.add_argument("--network", default="resnet50", help="network of --pretrained_weights (default: resnet50)")
    check.add_argument("--view_order", nargs="+", choices=["ANT", "POST"], help="views of DICOM frames without codes")
    args = parser.parse_args(argv)
    reader = WholeBodyScanReader(view_order=args.view_order)

    if args.command == "validate":
        from bundle.validation import validate

        report = validate(
            args.datalist,
            args.dataset_dir,
            reader,
            args.num_folds,
            allow_single_view=args.allow_single_view,
            pretrained_weights=args.pretrained_weights,
            network=args.network,
        )
        _print_problems(report.problems, report.notes)
        if report.problems:
            return 1
        print(f"{args.datalist}: OK ({report.entries} lesions, {report.scans} scans, {report.masks} masks checked)")
        return 0

    source = Path(args.source)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else (source if source.is_dir() else source.parent)
    output = Path(args.output) if args.output else dataset_dir / "datalist.json"
    if output.exists() and not args.overwrite:
        print(f"error: {output} exists; pass --overwrite to replace it")
        return 1
    if args.num_folds < 2:
        print(f"error: --num_folds must be at least 2, got {args.num_folds}")
        return 2
    content, problems, notes = build_datalist(
        source, csv=args.csv, dataset_dir=dataset_dir, num_folds=args.num_folds, seed=args.seed, reader=reader
    )
    _print_problems(problems, notes)
    if content is None:
        print(f"nothing written to {output}")
        return 1
    write_datalist(output, content)
    entries = content["training"]
    print(
        f"{output}: {len({e['patient_id'] for e in entries})} patients, "
        f"{len({image_key(e['image']) for e in entries})} scans, {len(entries)} lesions, "
        f"{args.num_folds} folds (seed {args.seed})"
    )
    print(summary(content))
    return 0


if __name__ == "__main__":
    from bundle.datalist import main as _main  # the module's own classes, not __main__'s copies

    raise SystemExit(_main())
