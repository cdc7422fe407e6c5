"""Deep validation of a datalist before anything uses it: every scan and mask is read, every problem listed.

``LoadImage`` falls back on other readers when one fails, and a broken file found in the middle of a run wastes the
run, so the datalist is checked as a whole first: by ``python -m bundle.datalist validate``, by the builder before
it writes, and at the start of training and evaluation (``check_datalist`` in the configs' ``initialize``).

Each scan is read once (however many lesions it has) and each mask once. Every problem found is reported, each as
its own :class:`~bundle.readers.DataError` subclass whose message names the file or entry and the fix:

- datalist: malformed JSON or no ``training`` list (:class:`~bundle.datalist.MalformedDatalistError`), missing keys
  (:class:`~bundle.datalist.EntryKeyError`), unknown label (:class:`~bundle.datalist.UnknownLabelError`), fold out of
  range (:class:`~bundle.datalist.FoldValueError`), duplicated lesion id
  (:class:`~bundle.datalist.DuplicateLesionError`), patient in two folds (:class:`~bundle.datalist.PatientFoldError`),
  a fold without both classes (:class:`~bundle.datalist.FoldClassError`);
- files: missing (:class:`~bundle.readers.MissingFileError`), unreadable/corrupt
  (:class:`~bundle.readers.UnreadableFileError`, :class:`~bundle.readers.DicomReadError`), not an NM whole-body
  scan (:class:`~bundle.readers.NotWholeBodyNMError`), frames/views (:class:`~bundle.readers.ViewError`),
  NaN/Inf/negative counts (:class:`~bundle.readers.CountsError`), a mask selector that selects nothing
  (:class:`~bundle.readers.MaskSelectionError`);
- scan + mask: shapes differ after view assembly (:class:`ShapeMismatchError`), empty mask
  (:class:`EmptyMaskError`), non-binary mask (:class:`NonBinaryMaskError`), a single-view scan where both views
  are needed (:class:`SingleViewError`);
- the pretrained-weights file, when given: :class:`~bundle.networks.PretrainedWeightsError`.
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

from bundle.datalist import (
    DatalistError,
    _resolve,
    entry_problems,
    image_key,
    read_datalist,
)
from bundle.readers import (
    DataError,
    MissingFileError,
    ScanWarning,
    WholeBodyScanReader,
    check_counts,
    split_selector,
)

__all__ = [
    "DatasetValidationError",
    "EmptyMaskError",
    "NonBinaryMaskError",
    "ShapeMismatchError",
    "SingleViewError",
    "ValidationReport",
    "check_datalist",
    "check_pretrained",
    "describe",
    "validate",
    "validate_datalist",
]

logger = logging.getLogger("bundle")

DRAW_FIX = (
    "draw the mask on the scan in the pipeline's layout (export it with `python -m bundle.readers SCAN OUT.nii.gz`)"
)


class ShapeMismatchError(DataError):
    """A mask's shape differs from its scan's shape after the views are put side by side."""


class EmptyMaskError(DataError):
    """A mask has no lesion pixel."""


class NonBinaryMaskError(DataError):
    """A mask has more than one non-zero value (a label image), negative or fractional values."""


class SingleViewError(DataError):
    """A scan has one view only, and training needs anterior and posterior views."""


def describe(error: Exception) -> str:
    """One line for a problem; a :class:`~bundle.datalist.DatalistError` as ``source: its problems``."""
    if isinstance(error, DatalistError):
        return f"{error.source}: " + "; ".join(error.problems)
    return str(error)


class DatasetValidationError(DatalistError):
    """Raised by :func:`check_datalist`; ``errors`` holds every problem (exceptions), ``problems`` their messages."""

    def __init__(self, source: str | os.PathLike, errors: Sequence[Exception]):
        self.errors = list(errors)
        super().__init__(source, [describe(e) for e in self.errors])


@dataclass
class ValidationReport:
    """What :func:`validate` found: ``problems`` (each an exception), ``notes`` (warnings) and counts."""

    source: str
    problems: list[Exception] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entries: int = 0
    scans: int = 0
    masks: int = 0

    @property
    def messages(self) -> list[str]:
        return [describe(p) for p in self.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


def _with_users(err: DataError, users: Sequence[str]) -> DataError:
    """The same error, its problem text naming the lesions that use the file."""
    shown = ", ".join(repr(u) for u in users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
    what = "lesion_id" if len(users) == 1 else "lesion_ids"
    new = type(err)(err.path, f"{err.problem} (used by {what} {shown})", err.fix)
    new.__cause__ = err.__cause__
    return new


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
    from bundle.networks import PretrainedWeightsError, load_pretrained

    try:
        try:
            from bundle.nets import build_network
        except ImportError:  # before bundle.nets: the paper's ResNet50 only
            build_network = None
        if build_network is not None:
            build_network(network, pretrained_weights=path)
        else:
            from monai.networks.nets import resnet50

            if network != "resnet50":
                raise ValueError(f"unknown network {network!r}; valid names: resnet50")
            net = resnet50(spatial_dims=2, n_input_channels=2, num_classes=2, conv1_t_stride=2, bias_downsample=False)
            load_pretrained(net, path)
    except PretrainedWeightsError as err:
        return [err]
    except ValueError as err:
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
) -> ValidationReport:
    """Check a datalist and every file it names; collect all problems.

    Args:
        datalist: path of the datalist JSON, its content (a dict with ``training``), or the list of entries.
        dataset_dir: folder that relative paths are joined to; default: the datalist file's folder (or the
            working directory for in-memory datalists).
        reader: the reader the pipeline uses; default :class:`~bundle.readers.WholeBodyScanReader`.
        num_folds: folds expected; default: the datalist's ``num_folds`` when given.
        allow_single_view: accept single-view scans (a note instead of a :class:`SingleViewError`); for
            evaluation and inference, not training.
        pretrained_weights: also check this weights file against ``network``.
        network: network name for ``pretrained_weights`` (``bundle.nets.NETWORKS``).
        workers: threads reading files; default ``min(8, cpu count)``.

    Returns:
        a :class:`ValidationReport`.
    """
    source = str(datalist) if isinstance(datalist, str | os.PathLike) else "datalist"
    report = ValidationReport(source)
    if isinstance(datalist, str | os.PathLike):
        try:
            content = read_datalist(datalist)
        except DatalistError as err:
            report.problems.append(err)
            return report
        default_dir: str | os.PathLike = Path(datalist).parent
    else:
        content = datalist if isinstance(datalist, dict) else {"training": list(datalist)}
        default_dir = "."
    if not isinstance(content.get("training"), list):
        report.problems.append(DatalistError(source, ['expected a "training" list of lesion entries']))
        return report
    dataset_dir = default_dir if dataset_dir is None else dataset_dir
    entries = content["training"]
    report.entries = len(entries)
    num_folds = num_folds if num_folds is not None else content.get("num_folds")
    report.problems.extend(entry_problems(entries, num_folds))

    usable = [e for e in entries if isinstance(e, dict) and all(k in e for k in ("image", "mask"))]
    scans: dict[str, tuple[str | list[str], list[str]]] = {}
    masks: dict[str, tuple[str, str, list[str]]] = {}  # mask → (path, scan key, users)
    for i, entry in enumerate(usable):
        lesion = str(entry.get("lesion_id", f"entry {i}"))
        image = entry["image"]
        if not isinstance(image, str) and not (
            isinstance(image, list) and len(image) == 2 and all(isinstance(p, str) for p in image)
        ):
            report.problems.append(
                DataError(f"lesion_id {lesion!r}", f"image {image!r} is not a path or a list of two paths")
            )
            continue
        if not isinstance(entry["mask"], str):
            report.problems.append(DataError(f"lesion_id {lesion!r}", f"mask {entry['mask']!r} is not a path"))
            continue
        paths = _resolve(image, dataset_dir)
        key = image_key(paths)
        scans.setdefault(key, (paths, []))[1].append(lesion)
        mask = str(_resolve(entry["mask"], dataset_dir))
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
                _with_users(
                    MissingFileError(p, "scan file not found", "check the path (relative to dataset_dir)"), users
                )
                for p in missing
            ]
        array, meta, error, notes = _read(reader, paths)
        out: list[Exception | str] = list(notes)
        if error is not None:
            return [*out, _with_users(error, users)]
        try:
            if meta.get("modality") != "NM":  # DICOM counts were checked by the reader
                check_counts(array, key, lossy=False)
        except DataError as err:
            out.append(_with_users(err, users))
        if meta.get("single_view") and not allow_single_view:
            out.append(
                _with_users(
                    SingleViewError(
                        key,
                        f"single-view scan (views: {meta.get('views')}); training needs anterior and posterior views",
                        "add the missing view (both single-view files of the scan as a list or a folder), or drop "
                        "the scan's lesions from the training datalist (evaluation and inference accept it)",
                    ),
                    users,
                )
            )
        shapes[key] = array.shape
        return out

    def read_mask(item: tuple[str, tuple[str, str, list[str]]]) -> list[Exception | str]:
        _, (path, key, users) = item
        if _missing(path):
            return [
                _with_users(MissingFileError(split_selector(path)[0], "mask file not found", "check the path"), users)
            ]
        array, _, error, notes = _read(reader, path)
        if error is not None:
            return [*notes, _with_users(error, users)]
        problem = _check_mask(array, path, shapes.get(key), key)
        return [*notes, _with_users(problem, users)] if problem is not None else list(notes)

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
    num_folds: int | None = None,
    allow_single_view: bool = False,
) -> ValidationReport:
    """Validate before a run (configs' ``initialize``): log the notes, raise on any problem.

    ``reader`` may be the config's ``image_reader``; ``None`` (MONAI's own choice of readers) is validated with a
    :class:`~bundle.readers.WholeBodyScanReader`.

    Raises:
        DatasetValidationError: listing every problem; nothing else runs.
    """
    if reader is not None and not isinstance(reader, WholeBodyScanReader):
        logger.warning(f"image_reader {type(reader).__name__} is validated with WholeBodyScanReader's checks")
        reader = None
    report = validate(datalist, dataset_dir, reader, num_folds, allow_single_view=allow_single_view)
    for note in report.notes:
        logger.warning(note)
    if report.problems:
        raise DatasetValidationError(report.source, report.problems)
    logger.info(
        f"datalist {report.source}: {report.entries} lesions, {report.scans} scans, {report.masks} masks checked"
    )
    return report
