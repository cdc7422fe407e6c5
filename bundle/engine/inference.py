"""Inference on new scans: lesion items from a datalist or a folder, tolerant loading, per-lesion/per-scan results.

``configs/inference.yaml`` wires these parts around MONAI's ``SupervisedEvaluator``:

- :func:`inference_items` turns a datalist (``image`` + ``mask`` per lesion; labels and folds not needed) or a
  folder of scans with their lesion masks into one item per lesion.
- :class:`ScanCachedCompose` runs train.yaml's scan + mask preprocessing (``image_transforms``: inference has no
  labels), so inference preprocesses exactly as training/evaluation did, the scan's share of it once per scan
  instead of once per lesion.
- :class:`TolerantDataset` catches a failing item (a corrupt scan, a missing mask), records which file failed and
  why, and returns a placeholder so that the other lesions of the batch are still classified.
- :class:`~bundle.engine.writers.LesionResultWriter` writes ``lesions.csv`` (one row per lesion), ``scans.csv``
  (one row per scan: number of lesions, highest probability, patient-level call), ``failed.csv`` and
  ``predictions.json`` (all three), each atomically; :func:`exit_on_failures` then ends the run with exit status 1
  if any item failed.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.data import Dataset
from monai.transforms import Compose, MapTransform, Randomizable
from monai.utils import ensure_tuple

from bundle.data.builder import LABEL_FOLDERS, collect_folder, collect_unlabelled_folder
from bundle.data.datalist import repeated_lesion_ids
from bundle.data.local_inputs import CONTEXT_KEY
from bundle.data.paths import resolve
from bundle.data.readers import WholeBodyScanReader
from bundle.engine.writers import ERROR_KEY, FAILED_FILE_KEY, META_KEYS
from bundle.errors import BuildError

logger = logging.getLogger(__name__)


def _lesion_item(entry: Mapping[str, Any], dataset_dir: str | os.PathLike, where: str) -> dict[str, Any]:
    """An item of :func:`inference_items` from a datalist entry (``image`` may be a list of two single-view files)."""
    image, mask = entry.get("image"), entry.get("mask")
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, str) and i for i in image):
        resolved_image: str | list[str] = [resolve(i, dataset_dir) for i in image]
        scan = " + ".join(image)
        first = image[0]
    elif isinstance(image, str) and image:
        resolved_image, scan, first = resolve(image, dataset_dir), image, image
    else:
        raise ValueError(f"{where}: needs an 'image' path (got {image!r})")
    if not isinstance(mask, str) or not mask:
        raise ValueError(f"{where}: needs a 'mask' path (got {mask!r})")
    scan_stem = Path(first.rstrip("/")).name.split(".")[0]
    mask_name = Path(mask).name
    mask_stem = mask_name.split(".")[0] + (f"_{mask_name.rsplit('#', 1)[1]}" if "#" in mask_name else "")
    return {
        "image": resolved_image,
        "mask": resolve(mask, dataset_dir),
        "scan": scan,
        "mask_file": mask,
        "patient_id": str(entry.get("patient_id") or scan_stem),
        "lesion_id": str(entry.get("lesion_id") or mask_stem),
    }


def items_from_datalist(
    datalist: str | os.PathLike, dataset_dir: str | os.PathLike, keys: Sequence[str] = ("training", "testing")
) -> list[dict[str, Any]]:
    """One item per lesion from a datalist JSON (``{"training": [{"image": ..., "mask": ...}, ...]}``).

    Only ``image`` (the scan) and ``mask`` (that lesion's mask, or ``labels.nii.gz#N`` for value ``N`` of a label
    image when the image reader supports it) are required; ``lesion_id`` defaults to the mask's file name,
    ``patient_id`` to the scan's. Labels and folds are ignored. Relative paths are joined to ``dataset_dir``.

    Args:
        datalist: path of the JSON file.
        dataset_dir: folder that relative paths are joined to.
        keys: the lists of the JSON object whose entries are used (those present).

    Returns:
        Items with keys ``image``/``mask`` (resolved paths), ``scan``/``mask_file`` (as written in the datalist),
        ``patient_id`` and ``lesion_id``.

    Raises:
        ValueError: unreadable JSON, no entries, an entry without image/mask, or a repeated lesion id.
    """
    path = Path(datalist)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the datalist ({err})") from None
    entries = [e for k in keys if isinstance(content, dict) for e in ensure_tuple(content.get(k) or ())]
    if not entries:
        raise ValueError(f"{path}: no lesion entries under {' or '.join(repr(k) for k in keys)}")
    items = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: entry {i} is not an object")
        items.append(_lesion_item(entry, dataset_dir, f"{path}: entry {i}"))
    return _check_unique(items, str(path))


def _check_unique(items: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    repeated = sorted(repeated_lesion_ids(item["lesion_id"] for item in items))
    if repeated:
        raise ValueError(f"{source}: lesion ids must be unique; repeated: {', '.join(repeated[:10])}")
    return items


def items_from_folder(dataset_dir: str | os.PathLike, reader: Any = None) -> list[dict[str, Any]]:
    """One item per lesion from a folder of scans with their lesion masks (no datalist needed).

    Layouts (``docs/inference.md``): ``images/<scan>.<ext>`` (or ``scans/``) with either unlabelled masks
    (``masks/<scan>_<lesion>.<ext>``; ``masks/<scan>.<ext>`` as a label image with one value per lesion) or the
    training layout ``masks/benign|malignant/...`` of ``python -m bundle.data build`` (labels are ignored).

    Raises:
        ValueError: when the folder has neither layout, or a mask belongs to no scan.
    """
    root = Path(dataset_dir)
    reader = reader if reader is not None else WholeBodyScanReader()
    labelled = any((root / "masks" / name).is_dir() for name in LABEL_FOLDERS)
    if labelled:
        entries, problems, notes = collect_folder(root, reader)
        for note in notes:
            logger.info(note)
    else:
        entries, problems = collect_unlabelled_folder(root, reader)
    layout = [p for p in problems if isinstance(p, BuildError)]
    if layout:
        raise ValueError(f"{root}: " + "; ".join(str(p) for p in layout))
    items = [_lesion_item(e, root, str(root)) for e in entries]
    for problem in problems:  # an unreadable mask file: reported as failed (and the run exits 1) by the writer
        path = str(getattr(problem, "path", "") or "")
        name = Path(path).name.split(".")[0] or "unknown"
        items.append(
            {
                "image": "", "mask": path, "scan": "", "mask_file": os.path.relpath(path, root) if path else "",
                "patient_id": "", "lesion_id": f"{name} (unreadable mask)", ERROR_KEY: str(problem),
            }
        )  # fmt: skip
    if not items:
        raise ValueError(f"{root}: no scans with lesion masks found")
    return _check_unique(items, str(root))


def inference_items(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Lesion items for inference: from ``datalist`` if given, else ``dataset_dir/datalist.json`` if present, else
    from the scans and masks found in ``dataset_dir`` (:func:`items_from_folder`).

    Raises:
        ValueError: a given datalist that is missing or unusable, or a folder without scans and masks.
    """
    if datalist:
        if not os.path.isfile(datalist):
            raise ValueError(f"datalist not found: {datalist}")
        return items_from_datalist(datalist, dataset_dir)
    default = Path(dataset_dir) / "datalist.json"
    if default.is_file():
        return items_from_datalist(default, dataset_dir)
    return items_from_folder(dataset_dir)


def require_dataset_dir(dataset_dir: str | os.PathLike) -> None:
    """Stop a run whose ``dataset_dir`` does not exist (the config lists no lesions then, so that MONAI's export and
    property checks can build it without data).

    Raises:
        FileNotFoundError: naming the folder and the override that sets it.
    """
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"{os.path.abspath(dataset_dir)}: no such folder; give the scans with --dataset_dir")


class ScanCachedCompose(Compose):
    """``Compose`` for lesion items that runs the scan's share of the preprocessing once per scan.

    A scan has several lesions, and its preprocessing (load, scale, resize) is the same for each of them. The
    leading transforms that act on each key on its own (dictionary transforms up to the first that is random,
    combines keys into a new one, like ``ConcatItemsd``, or is not a ``MapTransform``) run on ``scan_key`` alone,
    cached per scan path (the last ``cache_size`` scans), and on the other keys per lesion; the remaining
    transforms run per lesion on the merged item. The result is the same as ``Compose(transforms)``: the first
    item each process sees is also run through the plain chain, and caching is switched off (with a warning) if
    the two differ.

    Args:
        transforms: deterministic dictionary transforms (train.yaml's, without the label's).
        scan_key: key of the scan path in the items (its output keeps the name).
        cache_size: number of preprocessed scans kept per process.
    """

    def __init__(self, transforms: Sequence[Callable], scan_key: str = "image", cache_size: int = 8) -> None:
        super().__init__(transforms)
        self.scan_key = scan_key
        self.cache_size = cache_size
        split = 0
        for t in self.transforms:
            if not isinstance(t, MapTransform) or isinstance(t, Randomizable) or hasattr(t, "name"):
                break
            if hasattr(t, "names") or getattr(t, "combines_keys", False):
                break
            split += 1
        self.per_key = [copy.copy(t) for t in self.transforms[:split]]
        for t in self.per_key:
            t.allow_missing_keys = True  # each copy runs on the scan alone or on the lesion keys alone
        self.rest = list(self.transforms[split:])
        self.enabled = split > 0
        self._verified = False
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def _scan_part(self, scan: Any) -> Any:
        key = str(scan)  # a path, or a list of two single-view files
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = {self.scan_key: scan}
        for t in self.per_key:
            out = t(out)
        self._cache[key] = out[self.scan_key]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out[self.scan_key]

    def _cached_call(self, data: Mapping[Hashable, Any]) -> Any:
        lesion = {k: v for k, v in data.items() if k != self.scan_key}
        for t in self.per_key:
            lesion = t(lesion)
        scan = self._scan_part(data[self.scan_key])
        out: Any = {**lesion, self.scan_key: scan.clone() if isinstance(scan, torch.Tensor) else copy.deepcopy(scan)}
        for t in self.rest:
            out = t(out)
        return out

    def __call__(self, data: Mapping[Hashable, Any], *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return super().__call__(data, *args, **kwargs)
        if self._verified:
            return self._cached_call(data)
        plain = super().__call__(dict(data))  # a file that fails to load raises here, before any verdict
        try:
            cached = self._cached_call(data)
            same = plain.keys() == cached.keys() and all(_equal(plain[k], cached[k]) for k in plain)
        except Exception:  # e.g. a transform that needs another key
            same = False
        if not same:
            logger.warning("per-scan caching changes the preprocessing output: switched off")
            self.enabled = False
            self._cache.clear()
        self._verified = True
        return plain


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
    return type(a) is type(b) and (a == b if not hasattr(a, "shape") else bool((a == b).all()))


def root_cause(err: BaseException) -> str:
    """``Type: message`` of the innermost exception (MONAI wraps transform errors in ``RuntimeError``s)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


#: per-scan items (lesion_mode scan): the key of the lesion masks, and the per-lesion lists kept with a scan
SCAN_MASKS_KEY = "masks"
SCAN_LESION_KEYS = ("lesion_id", "mask_file")


class TolerantDataset(Dataset):
    """MONAI ``Dataset`` whose items never raise: a failing item comes back as a placeholder with its error.

    Each item is returned as ``{"image": tensor of placeholder_shape, "error": "", "failed_file": "", *meta_keys}``;
    when ``transform`` raises (a corrupt or missing file), ``image`` is zeros of ``placeholder_shape``, ``error``
    says why and ``failed_file`` which file failed, so the batch still collates and the other lesions are still
    classified. Items that arrive with an ``error`` (found unusable while listing a folder) come back the same
    way. :class:`~bundle.engine.writers.LesionResultWriter` reports such items and leaves them out of the results.

    With ``per_scan`` (train.yaml's ``lesion_mode: scan``) an item is a scan with its lesions
    (:func:`bundle.data.lesion_groups.items_for_mode`): it comes back as ``image``, ``masks`` (L, H, W), the
    per-lesion lists ``lesion_id``/``mask_file`` and the scan's ``scan``/``patient_id``; a placeholder has zero masks
    for each of its L lesions, so :func:`~bundle.data.lesion_groups.pad_lesions_collate` reports every lesion of a
    scan that failed and the other scans are still classified.

    Args:
        data: the items (see :func:`inference_items`).
        transform: preprocessing (a ``Compose`` whose first transform loads ``file_keys``); must return the
            ``image`` tensor of shape ``placeholder_shape``.
        placeholder_shape: (C, H, W) of a preprocessed image, e.g. (2, 512, 256).
        meta_keys: item keys copied to the output (strings).
        file_keys: item keys holding file paths (or lists of paths), checked one by one to name the file that failed.
        extra_shapes: other network inputs of the preprocessed item and their shapes (``{"patch": (3, 64, 64)}``
            with train.yaml's ``local_patch``), returned like ``image``: zeros of that shape in a placeholder (per
            scan: the first dimension times the scan's lesion count).
        per_scan: items are scans with their lesions (above).
    """

    def __init__(
        self,
        data: Sequence[Mapping[Hashable, Any]],
        transform: Callable | None,
        placeholder_shape: Sequence[int],
        meta_keys: Sequence[str] = META_KEYS,
        file_keys: Sequence[str] = ("image", "mask", CONTEXT_KEY),
        extra_shapes: Mapping[str, Sequence[int]] | None = None,
        per_scan: bool = False,
    ) -> None:
        super().__init__(data=data, transform=transform)
        self.per_scan = bool(per_scan)
        self.shapes = {"image": tuple(int(s) for s in placeholder_shape)}
        self.shapes.update({k: tuple(int(s) for s in v) for k, v in (extra_shapes or {}).items()})
        self.placeholder_shape = self.shapes["image"]
        self.meta_keys = tuple(meta_keys)
        self.file_keys = tuple(file_keys) + ((SCAN_MASKS_KEY,) if self.per_scan else ())

    def placeholders(self, lesions: int = 1) -> dict[str, torch.Tensor]:
        """Zeros of every input's shape; per scan the other inputs (patches) once per lesion, and ``lesions`` masks."""
        out = {
            key: torch.zeros((shape[0] * lesions, *shape[1:])) for key, shape in self.shapes.items() if key != "image"
        }
        out["image"] = torch.zeros(self.shapes["image"])
        if self.per_scan:
            out[SCAN_MASKS_KEY] = torch.zeros((lesions, *self.shapes["image"][1:]))
        return out

    def _scan_transform(self, index: int) -> dict[str, Any]:
        """One scan with its lesions (``per_scan``), or its placeholder."""
        item = self.data[index]
        lesions = {key: [str(v) for v in item.get(key, [])] for key in SCAN_LESION_KEYS}
        meta = {k: str(item.get(k, "")) for k in self.meta_keys if k not in SCAN_LESION_KEYS}
        try:
            out = super()._transform(index)
            inputs = {key: torch.as_tensor(out[key]) for key in (*self.shapes, SCAN_MASKS_KEY)}
            if tuple(inputs["image"].shape) != self.shapes["image"]:
                raise ValueError(
                    f"preprocessed image of shape {tuple(inputs['image'].shape)}, expected {self.shapes['image']}"
                )
        except Exception as err:  # reported per lesion by LesionResultWriter; the run exits non-zero at the end
            failed_file = self.failed_file(item)
            error = root_cause(err)
            logger.warning(f"scan {meta.get('scan')}: cannot load {failed_file or 'its files'}: {error}")
            placeholder = self.placeholders(len(lesions["lesion_id"]))
            return {**placeholder, ERROR_KEY: error, FAILED_FILE_KEY: failed_file, **meta, **lesions}
        return {**inputs, ERROR_KEY: "", FAILED_FILE_KEY: "", **meta, **lesions}

    def _transform(self, index: int) -> dict[str, Any]:
        if self.per_scan:
            return self._scan_transform(index)
        item = self.data[index]
        meta = {k: str(item.get(k, "")) for k in self.meta_keys}
        if item.get(ERROR_KEY):  # found unusable before loading (e.g. while listing a folder)
            return {**self.placeholders(), ERROR_KEY: str(item[ERROR_KEY]), FAILED_FILE_KEY: str(item["mask"]), **meta}
        try:
            out = super()._transform(index)
            inputs = {key: torch.as_tensor(out[key]) for key in self.shapes}
            for key, tensor in inputs.items():
                if tuple(tensor.shape) != self.shapes[key]:
                    raise ValueError(f"preprocessed {key} of shape {tuple(tensor.shape)}, expected {self.shapes[key]}")
        except Exception as err:  # reported by LesionResultWriter; the run exits non-zero at the end
            failed_file = self.failed_file(item)
            error = root_cause(err)
            logger.warning(f"lesion {meta.get('lesion_id')}: cannot load {failed_file or 'its files'}: {error}")
            return {**self.placeholders(), ERROR_KEY: error, FAILED_FILE_KEY: failed_file, **meta}
        return {**inputs, ERROR_KEY: "", FAILED_FILE_KEY: "", **meta}

    def failed_file(self, item: Mapping[Hashable, Any]) -> str:
        """The first of the item's files that is missing or that the loader cannot read ("" if none is found).

        The loader (first transform of a ``Compose``) is run on the item with every file key set to one file.
        """
        transforms = getattr(self.transform, "transforms", ())
        loader = transforms[0] if transforms else None
        for key in self.file_keys:
            value = item.get(key) or ""
            paths = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            missing = [p for p in paths if p and not os.path.exists(p.split("#")[0])]
            if missing:
                return missing[0]
            # a scan given as two single-view files is read as one; the other lesions' masks one by one
            for files in [[p] for p in paths] if key in (CONTEXT_KEY, SCAN_MASKS_KEY) else [paths]:
                if loader is None or not any(files):
                    continue
                try:
                    loader({**item, **dict.fromkeys(("image", "mask"), files[0] if len(files) == 1 else value)})
                except Exception:
                    return " + ".join(files)
        return ""


def exit_on_failures(evaluator: Engine) -> None:
    """End the process with exit status 1 when the writer recorded failed items (after every file was written).

    Raises:
        SystemExit: when ``evaluator.state.inference_failures`` > 0.
    """
    failures = int(getattr(evaluator.state, "inference_failures", 0) or 0)
    if failures:
        raise SystemExit(f"{failures} lesion(s) could not be loaded and were skipped; see failed.csv and the log above")
