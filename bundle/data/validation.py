"""Deep validation of a datalist before anything uses it: every scan and mask is read, every problem listed.

``LoadImage`` falls back on other readers when one fails, and a broken file found in the middle of a run wastes the
run, so the datalist is checked first: as a whole by ``python -m bundle.data validate``, by the builder before it
writes and by the cross-validation runner before its first fold, and at the start of training and evaluation
(``check_datalist`` in the configs' entry points) on the lesions that run uses: ``trainval`` (the lesions it trains
and validates on) for training, ``eval_part`` of ``fold`` for evaluation, selected by
:func:`bundle.data.datalist.load_split` (the one definition of the splits). The datalist-wide checks (keys, labels,
folds, duplicated ids, a patient in two folds) always cover every entry.

Each scan is read once (however many lesions it has) and each mask once. Every problem found is reported, each as
its own :class:`~bundle.errors.DataError` kind (:mod:`bundle.errors`) whose message names the file or entry and the
fix: the datalist (malformed, missing keys, unknown label, fold out of range, duplicated lesion id, a patient in two
folds, a fold without both classes), the files (missing, unreadable, not an NM whole-body scan, frames/views,
NaN/Inf/negative counts, a mask selector that selects nothing), a scan and its mask (shapes differ, empty or
non-binary mask, a single-view scan where both views are needed), and the pretrained-weights file when given
(:class:`~bundle.nets.pretrained.PretrainedWeightsError`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.datalist import SPLIT_PARTS, entry_problems, load_split, read_datalist
from bundle.data.paths import image_key, resolve, split_selector
from bundle.data.readers import WholeBodyScanReader, check_counts
from bundle.errors import (
    DataError,
    EmptyMaskError,
    MissingFileError,
    NonBinaryMaskError,
    ProblemsError,
    ScanWarning,
    ShapeMismatchError,
    SingleViewError,
    describe,
)
from bundle.nets import build_network

__all__ = ["ValidationReport", "check_datalist", "check_pretrained", "validate", "validate_datalist"]

logger = logging.getLogger("bundle")

DRAW_FIX = (
    "draw the mask on the scan in the pipeline's layout (export it with `python -m bundle.data export SCAN OUT.nii.gz`)"
)


@dataclass
class ValidationReport:
    """What :func:`validate` found: ``problems`` (each an exception), ``notes`` (warnings) and counts.

    ``entries`` counts every datalist entry, ``checked`` those whose files were read (the ``scope``).
    """

    source: str
    problems: list[Exception] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entries: int = 0
    checked: int = 0
    scans: int = 0
    masks: int = 0
    scope: str = "all"

    @property
    def messages(self) -> list[str]:
        return [describe(p) for p in self.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


def _read(
    reader: WholeBodyScanReader, paths: str | list[str]
) -> tuple[np.ndarray | None, dict, Exception | None, list[str]]:
    """Read one scan/mask; (array, meta, error, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScanWarning)
        try:
            array, meta = reader.load(paths)
            error = None
        except DataError as err:
            array, meta, error = None, {}, err
    return array, meta, error, [str(w.message) for w in caught if issubclass(w.category, ScanWarning)]


def _missing(paths: str | list[str]) -> list[str]:
    names = [paths] if isinstance(paths, str) else paths
    return [p for p in names if not os.path.exists(split_selector(p)[0])]


def _check_mask(mask: np.ndarray, path: str, shape: tuple[int, ...] | None, scan: str) -> DataError | None:
    if shape is not None and mask.shape != shape:
        return ShapeMismatchError(
            path,
            f"mask is {'x'.join(map(str, mask.shape))} but its scan {scan} is {'x'.join(map(str, shape))} "
            "(H x W, after the anterior and mirrored posterior views are put side by side)",
            DRAW_FIX,
        )
    if not np.all(np.isfinite(mask)):
        return NonBinaryMaskError(path, "mask has NaN or infinite values", "save a 0/1 mask")
    values = np.unique(mask)
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return EmptyMaskError(path, "mask is empty (no lesion pixel)", "draw the lesion, or remove the entry")
    if nonzero.size > 1 or nonzero[0] < 0:
        shown = ", ".join(f"{v:g}" for v in values[:10]) + (" ..." if values.size > 10 else "")
        hint = (
            f"a label image: select one lesion per entry with '{os.path.basename(path)}#N'"
            if nonzero.size > 1 and np.all(nonzero == np.round(nonzero)) and nonzero.min() > 0
            else "save a binary mask (0 = background, 1 = lesion)"
        )
        return NonBinaryMaskError(path, f"mask is not binary (values {shown})", hint)
    return None


def check_pretrained(path: str | os.PathLike, network: str = "resnet50") -> list[Exception]:
    """Problems of a pretrained-weights file for ``network`` (empty when it loads)."""
    try:
        build_network(network, pretrained_weights=path)
    except ValueError as err:  # PretrainedWeightsError, or an unknown network name
        return [err]
    return []


def validate(
    datalist: str | os.PathLike | dict | Sequence[dict],
    dataset_dir: str | os.PathLike | None = None,
    reader: WholeBodyScanReader | None = None,
    num_folds: int | None = None,
    allow_single_view: bool = False,
    pretrained_weights: str | os.PathLike | None = None,
    network: str = "resnet50",
    workers: int | None = None,
    fold: int | None = None,
    part: str = "all",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ValidationReport:
    """Check a datalist and the files of the lesions a run uses; collect all problems.

    Args:
        datalist: path of the datalist JSON, its content (a dict with ``training``), or the list of entries.
        dataset_dir: folder that relative paths are joined to; default: the datalist file's folder (or the
            working directory for in-memory datalists).
        reader: the reader the pipeline uses; default :class:`~bundle.data.readers.WholeBodyScanReader`.
        num_folds: folds expected; default: the datalist's ``num_folds`` when given.
        allow_single_view: accept single-view scans (a note instead of a :class:`SingleViewError`); for
            evaluation and inference, not training.
        pretrained_weights: also check this weights file against ``network``.
        network: network name for ``pretrained_weights`` (``bundle.nets.NETWORKS``).
        workers: threads reading files; default ``min(8, cpu count)``.
        fold, part, val_fraction, seed: read only the files of this part of the split, as
            :func:`~bundle.data.datalist.load_split` selects it (``trainval``: what training uses; ``all``, the
            default: every entry, ``fold`` unused). The datalist-wide checks cover every entry whatever the part;
            when they fail the split is undefined and every entry's files are read. A part other than ``all``
            needs ``datalist`` as a file path and ``fold``.

    Returns:
        a :class:`ValidationReport`.

    Raises:
        ValueError: an unknown ``part``, or a part other than ``all`` without a datalist file or ``fold``.
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"part must be one of {SPLIT_PARTS}, got {part!r}")
    if part != "all" and (fold is None or not isinstance(datalist, str | os.PathLike)):
        raise ValueError(f"part {part!r} needs the datalist as a file path and a fold")
    source = str(datalist) if isinstance(datalist, str | os.PathLike) else "datalist"
    report = ValidationReport(source)
    if isinstance(datalist, str | os.PathLike):
        try:
            content = read_datalist(datalist)
        except ProblemsError as err:
            report.problems.extend(err.errors or [err])
            return report
        default_dir: str | os.PathLike = Path(datalist).parent
    else:
        content = datalist if isinstance(datalist, dict) else {"training": list(datalist)}
        default_dir = "."
    if not isinstance(content.get("training"), list):
        report.problems.append(ProblemsError(source, ['expected a "training" list of lesion entries']))
        return report
    dataset_dir = default_dir if dataset_dir is None else dataset_dir
    entries = content["training"]
    report.entries = len(entries)
    num_folds = num_folds if num_folds is not None else content.get("num_folds")
    report.problems.extend(entry_problems(entries, num_folds))

    usable: list[tuple[str, dict]] = []  # (lesion, entry) whose image and mask are paths
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(k in entry for k in ("image", "mask")):
            continue
        lesion = str(entry.get("lesion_id", f"entry {i}"))
        image = entry["image"]
        if not isinstance(image, str) and not (
            isinstance(image, list) and len(image) == 2 and all(isinstance(p, str) for p in image)
        ):
            report.problems.append(
                DataError(f"lesion_id {lesion!r}", f"image {image!r} is not a path or a list of two paths")
            )
        elif not isinstance(entry["mask"], str):
            report.problems.append(DataError(f"lesion_id {lesion!r}", f"mask {entry['mask']!r} is not a path"))
        else:
            usable.append((lesion, entry))
    if part != "all" and fold is not None and isinstance(datalist, str | os.PathLike) and not report.problems:
        report.scope = f"fold {fold} {part}"
        try:
            selected = load_split(datalist, dataset_dir, fold, part, val_fraction, seed, check_files=False)
        except ProblemsError as err:  # e.g. a fold that is not in the datalist
            report.problems.extend(err.errors or [DataError(None, p) for p in err.problems])
            return report
        used = {e["lesion_id"] for e in selected}  # str, as are the lesions here
        usable = [(lesion, entry) for lesion, entry in usable if lesion in used]
    report.checked = len(usable)
    scans: dict[str, tuple[str | list[str], list[str]]] = {}
    masks: dict[str, tuple[str, str, list[str]]] = {}  # mask → (path, scan key, users)
    for lesion, entry in usable:
        paths = resolve(entry["image"], dataset_dir)
        key = image_key(paths)
        scans.setdefault(key, (paths, []))[1].append(lesion)
        mask = str(resolve(entry["mask"], dataset_dir))
        if mask in masks:
            masks[mask][2].append(lesion)
        else:
            masks[mask] = (mask, key, [lesion])
    reader = reader if reader is not None else WholeBodyScanReader()
    workers = workers or min(8, os.cpu_count() or 1)

    shapes: dict[str, tuple[int, ...] | None] = {}

    def read_scan(item: tuple[str, tuple[str | list[str], list[str]]]) -> list[Exception | str]:
        key, (paths, users) = item
        shapes[key] = None
        missing = _missing(paths)
        if missing:
            return [
                MissingFileError(p, "scan file not found", "check the path (relative to dataset_dir)").for_users(users)
                for p in missing
            ]
        array, meta, error, notes = _read(reader, paths)
        out: list[Exception | str] = list(notes)
        if error is not None:
            return [*out, error.for_users(users)]
        try:
            if meta.get("modality") != "NM":  # DICOM counts were checked by the reader
                check_counts(array, key, lossy=False)
        except DataError as err:
            out.append(err.for_users(users))
        if meta.get("single_view") and not allow_single_view:
            out.append(
                SingleViewError(
                    key,
                    f"single-view scan (views: {meta.get('views')}); training needs anterior and posterior views",
                    "add the missing view (both single-view files of the scan as a list or a folder), or drop "
                    "the scan's lesions from the training datalist (evaluation and inference accept it)",
                ).for_users(users)
            )
        shapes[key] = array.shape
        return out

    def read_mask(item: tuple[str, tuple[str, str, list[str]]]) -> list[Exception | str]:
        _, (path, key, users) = item
        if _missing(path):
            return [MissingFileError(split_selector(path)[0], "mask file not found", "check the path").for_users(users)]
        array, _, error, notes = _read(reader, path)
        if error is not None:
            return [*notes, error.for_users(users)]
        problem = _check_mask(array, path, shapes.get(key), key)
        return [*notes, problem.for_users(users)] if problem is not None else list(notes)

    # scans first (sequentially: the reader registers DICOM frames that SEG masks refer to), then masks in threads
    for result in map(read_scan, scans.items()):
        _collect(report, result)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(read_mask, masks.items()):
            _collect(report, result)
    report.scans, report.masks = len(scans), len(masks)
    if pretrained_weights:
        report.problems.extend(check_pretrained(pretrained_weights, network))
    return report


def _collect(report: ValidationReport, results: list[Exception | str]) -> None:
    for item in results:
        if isinstance(item, str):
            if item not in report.notes:
                report.notes.append(item)
        else:
            report.problems.append(item)


def validate_datalist(
    datalist: str | os.PathLike | dict | Sequence[dict],
    dataset_dir: str | os.PathLike | None = None,
    reader: WholeBodyScanReader | None = None,
    num_folds: int | None = None,
    **kwargs: Any,
) -> list[str]:
    """Messages of every problem of a datalist and its files (empty when usable); see :func:`validate`."""
    return validate(datalist, dataset_dir, reader, num_folds, **kwargs).messages


def check_datalist(
    datalist: str | os.PathLike | dict | Sequence[dict],
    dataset_dir: str | os.PathLike | None = None,
    reader: WholeBodyScanReader | None = None,
    fold: int | None = None,
    part: str = "all",
    val_fraction: float = 0.1,
    seed: int = 0,
    allow_single_view: bool = False,
    num_folds: int | None = None,
) -> ValidationReport:
    """Validate the lesions a run uses before it starts (configs' entry points): log the notes, raise on a problem.

    Training passes ``fold`` and ``part="trainval"``, evaluation ``part=eval_part`` (see :func:`validate`);
    ``reader`` may be the config's ``image_reader``; ``None`` (MONAI's own choice of readers) is validated with a
    :class:`~bundle.data.readers.WholeBodyScanReader`.

    Raises:
        ProblemsError: listing every problem; nothing else runs.
    """
    if reader is not None and not isinstance(reader, WholeBodyScanReader):
        logger.warning(f"image_reader {type(reader).__name__} is validated with WholeBodyScanReader's checks")
        reader = None
    report = validate(
        datalist,
        dataset_dir,
        reader,
        num_folds,
        allow_single_view=allow_single_view,
        fold=fold,
        part=part,
        val_fraction=val_fraction,
        seed=seed,
    )
    for note in report.notes:
        logger.warning(note)
    if report.problems:
        raise ProblemsError(report.source, report.problems)
    logger.info(
        f"datalist {report.source} ({report.scope}): {report.checked} of {report.entries} lesions, "
        f"{report.scans} scans, {report.masks} masks checked"
    )
    return report
