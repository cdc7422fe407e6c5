"""Building a datalist from a hospital's data folder or a CSV of lesions: every file read and checked before
anything is written (``python -m bundle.data build``; the layouts are in ``docs/data.md``)."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom

from bundle.data.datalist import OPTIONAL_KEYS, REQUIRED_KEYS, assign_folds, lesions_per_image
from bundle.data.paths import image_key, resolve, sniff_format, split_selector, stem
from bundle.data.readers import WholeBodyScanReader
from bundle.data.validation import validate
from bundle.errors import BuildError, DataError, EntryKeyError, ProblemsError, UnknownLabelError

SCAN_FOLDERS = ("images", "scans")
LABEL_FOLDERS = {"benign": 0, "0": 0, "malignant": 1, "1": 1}
LABEL_WORDS = {"0": 0, "benign": 0, "1": 1, "malignant": 1}


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
        selectors = reader.mask_selectors(resolve(base, dataset_dir))
    except DataError as err:
        problems.append(err)
        return []
    if not selectors:
        return [(mask, lesion_prefix)]
    return [(f"{mask}#{s}", f"{lesion_prefix}_{s.replace(',', '-')}") for s in selectors]


def _read_patients_csv(path: Path, problems: list[DataError]) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"scan", "patient_id"} <= set(reader.fieldnames):
            problems.append(BuildError(path, "needs the columns scan,patient_id[,tumor_type]", "add a header row"))
            return rows
        for row in reader:
            rows[stem(str(row["scan"]).strip())] = {k: str(v or "").strip() for k, v in row.items() if k}
    return rows


def _dicom_patient_id(path: Path) -> str | None:
    """PatientID of a DICOM scan (a file, or the first DICOM file of a scan folder), else None."""
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
    return {stem(p.name): p for p in sorted(scan_dir.iterdir()) if not p.name.startswith(".") and p.name != "Thumbs.db"}


def lesion_masks(
    root: Path, mask_dir: Path, scans: dict[str, Path], reader: Any, problems: list[DataError]
) -> Iterator[tuple[str, str, str]]:
    """``(scan name, mask path relative to root, lesion id)`` for every lesion mask under ``mask_dir``.

    A mask belongs to the scan whose name starts its path (followed by ``_``, ``-``, ``.`` or ``/``); a label image
    or multi-segment SEG gives one lesion per value. A mask of no scan is added to ``problems``.
    """
    for mask in sorted(p for p in mask_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = stem(_rel(mask, mask_dir))
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
    unused = sorted(set(scans) - {Path(stem(e["image"])).name for e in entries})
    if unused:
        notes.append(f"{len(unused)} scan(s) without a lesion mask are left out: {', '.join(unused[:10])}")
    return entries, problems, notes


def _sniff_dicom(path: Path) -> bool:
    return path.is_dir() or sniff_format(path) == "dicom"


def collect_unlabelled_folder(root: Path, reader: Any) -> tuple[list[dict], list[Exception]]:
    """Entries of a folder whose masks are not sorted by label: ``masks/<scan>_<lesion>.<ext>``,
    ``masks/<scan>.<ext>`` (a label image or SEG: one lesion per value/segment) or ``masks/<scan>/<lesion>.<ext>``.

    Matching and label-image expansion follow the same rules as :func:`collect_folder`; entries have no label.
    Raises ``ValueError`` when the folder has no scans or masks folder.
    """
    problems: list[Exception] = []
    scan_dir = next((root / d for d in SCAN_FOLDERS if (root / d).is_dir()), None)
    mask_root = root / "masks"
    if scan_dir is None or not mask_root.is_dir():
        raise ValueError(
            f"{root}: no datalist.json, and no images/ (or scans/) and masks/ folders; see docs/inference.md"
        )
    scans = scans_in(scan_dir)
    entries = [
        {"image": _rel(scans[scan], root), "mask": mask_path, "lesion_id": lesion_id}
        for scan, mask_path, lesion_id in lesion_masks(root, mask_root, scans, reader, problems)
    ]
    return entries, problems


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
            prefix = (row.get("lesion_id") or "").strip() or stem(Path(split_selector(mask)[0]).name)
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
        reader: :class:`~bundle.data.readers.WholeBodyScanReader` to read with (e.g. with ``view_order``).
        name: the datalist's ``name``.

    Returns:
        (datalist content or ``None`` when there are problems, every problem, notes).
    """
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
    per_image = lesions_per_image(entries)
    for e in entries:
        e["lesions_in_image"] = per_image[image_key(e["image"])]
    try:
        entries = assign_folds(entries, num_folds=num_folds, seed=seed)
    except ProblemsError as err:
        all_problems.append(
            BuildError(source, "; ".join(err.problems), "use fewer folds (--num_folds) or add patients")
        )
        return None, all_problems, notes
    content = {
        "name": name,
        "description": f"built by `python -m bundle.data build` from {source}",
        "num_folds": num_folds,
        "seed": seed,
        "training": [{k: e[k] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS)} for e in entries],
    }
    report = validate(content, dataset_dir, reader, num_folds)
    all_problems.extend(report.problems)
    notes.extend(n for n in report.notes if n not in notes)
    return (None if all_problems else content), all_problems, notes
