"""Lesions grouped by scan, for networks that read every lesion of a scan in one pass (bundle.nets.onepass).

The datalist has one entry per lesion (:mod:`bundle.data.datalist`). :func:`group_by_scan` turns the entries of a split
into one item per scan::

    {"image": "/data/images/P0001.nii.gz", "scan": "/data/images/P0001.nii.gz",
     "masks": ["/data/masks/P0001_L01.nii.gz", ...], "labels": [1, 0, ...],
     "lesion_id": ["P0001_L01", ...], "mask_file": ["/data/masks/P0001_L01.nii.gz", ...],
     "patient_id": "P0001", "fold": 3, "tumor_type": "lung", "lesions_in_image": 4}

:class:`LoadLesionMasksd` reads the list of masks into one (L, H, W) array (one channel per lesion, so MONAI's
spatial transforms resize and flip all of them like the scan), :func:`pad_lesions_collate` pads the lesions of a batch
to the largest count L_max, and :class:`PrepareScanBatch` hands a collated batch to MONAI's engines. A collated batch
holds what the network reads **per scan** and everything else **per lesion** (N = valid lesions of the batch)::

    batch["image"]         (B, 1, H, W)       scans (every tensor-valued key is collated per scan)
    batch["masks"]         (B, L_max, H, W)   masks, padded with empty masks
    batch["lesion_valid"]  (B, L_max) bool    True for real lesions
    batch["labels"]        (B, L_max) int64   labels, padded with -1
    batch["patch"]         (B, L_max, 3, P, P) local patches, zero-padded (``local_patch`` only; per item (3L, P, P))
    batch["lesion_id"]     N values           per-lesion lists (``lesion_keys``) flattened
    batch["patient_id"]    N values           every other key repeated for each lesion of its scan

So MONAI's decollation of the batch gives one item per lesion, side by side with the network's flat (N, classes)
output: the engines' postprocessing and the per-lesion writers (which zip outputs with batch items) see every lesion
with its ``lesion_id`` and ``patient_id``. This needs N >= B, true when every scan has a lesion (every scan of a
datalist does). The lesion order is scan by scan, in datalist order within a scan: the order of
``lesion_valid.nonzero()`` and of the one-pass network's flat output.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import list_data_collate
from monai.data.image_reader import ImageReader
from monai.engines.utils import PrepareBatch
from monai.transforms import LoadImage, MapTransform

from bundle.data.local_inputs import CONTEXT_KEY, PATCH_CHANNELS, PATCH_KEY, add_context_masks
from bundle.data.paths import image_key
from bundle.errors import EntryKeyError, PatientFoldError, ProblemsError, ShapeMismatchError

__all__ = [
    "LESION_MODES",
    "LESION_VALID_KEY",
    "LoadContextMaskd",
    "LoadLesionMasksd",
    "PrepareScanBatch",
    "group_by_scan",
    "is_scan_mode",
    "items_for_mode",
    "pad_lesions_collate",
]

#: key that :func:`pad_lesions_collate` adds: (B, L_max) bool, True for real lesions
LESION_VALID_KEY = "lesion_valid"
#: value of a padded label
PADDED_LABEL = -1
#: the configs' ``lesion_mode``: one sample per lesion (the paper's) or one sample per scan (bundle.nets.onepass)
LESION_MODES = ("lesion", "scan")


def is_scan_mode(lesion_mode: str) -> bool:
    """Whether the configs' ``lesion_mode`` is ``"scan"`` (one item per scan) rather than ``"lesion"`` (the paper's).

    Raises:
        ValueError: any other value, naming the setting and the valid ones.
    """
    if lesion_mode not in LESION_MODES:
        raise ValueError(
            f"--lesion_mode must be 'lesion' (one network pass per lesion, the paper's) or 'scan' (one pass per scan, "
            f"every lesion classified from its mask), got {lesion_mode!r}"
        )
    return lesion_mode == "scan"


def items_for_mode(
    entries: Sequence[Mapping[str, Any]], lesion_mode: str, context_masks: bool = False
) -> Sequence[Mapping[str, Any]]:
    """The items of a split for ``lesion_mode``: ``entries`` themselves (``"lesion"``, one per lesion; with
    ``context_masks`` each with the mask paths of its scan's other lesions, :func:`~bundle.data.local_inputs.
    add_context_masks`), or :func:`group_by_scan` of them (``"scan"``, where the network takes the context from the
    masks it has), each with a ``scan`` string (the entries' own, else the image path or a two-file scan's paths
    joined by " + ", as the inference writer's ``scan`` column). Raises ValueError on another mode."""
    if not is_scan_mode(lesion_mode):
        return add_context_masks(entries) if context_masks else entries
    scans = group_by_scan(entries)
    for scan in scans:
        image = scan["image"]
        scan.setdefault("scan", image if isinstance(image, str) else " + ".join(map(str, image)))
    return scans


def group_by_scan(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One item per scan from per-lesion entries (as :func:`bundle.data.datalist.load_split` returns them).

    Scans are in the order of their first lesion, lesions in entry order. Keys: ``image``; ``masks``, ``labels``
    (left out when no entry has a ``label``, as inference items),
    ``lesion_id`` and ``mask_file`` (lists, one element per lesion; ``masks`` is replaced by the loaded masks,
    ``mask_file`` keeps the paths); ``patient_id``, ``fold``, ``tumor_type``, ``lesions_in_image``, ``scan`` from the
    scan's first lesion (``tumor_type``/``lesions_in_image``/``scan`` when present).

    Raises:
        ProblemsError: a scan's lesions disagree on ``patient_id`` or ``fold`` (one :class:`PatientFoldError` each),
            or only some of them have a ``label`` (:class:`EntryKeyError`).
    """
    groups: dict[str, dict[str, Any]] = {}
    problems = []
    for entry in entries:
        key = image_key(entry["image"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"image": entry["image"], "masks": [], "labels": [], "lesion_id": [], "mask_file": []}
            for field in ("patient_id", "fold", "tumor_type", "lesions_in_image", "scan"):
                if field in entry:
                    group[field] = entry[field]
        else:
            for field in ("patient_id", "fold"):
                if entry.get(field) != group.get(field):
                    problems.append(
                        PatientFoldError(
                            key,
                            f"lesion_id {entry.get('lesion_id')!r} has {field} {entry.get(field)!r}, other lesions of "
                            f"this scan {group.get(field)!r}",
                            "give every lesion of a scan the same patient_id and fold",
                        )
                    )
        group["masks"].append(entry["mask"])
        if "label" in entry:  # inference items have none
            group["labels"].append(int(entry["label"]))
        group["lesion_id"].append(str(entry.get("lesion_id", "")))
        group["mask_file"].append(entry["mask"])
    for key, group in groups.items():
        if not group["labels"]:
            del group["labels"]
        elif len(group["labels"]) != len(group["masks"]):
            problems.append(
                EntryKeyError(key, "some lesions of this scan have a label, others not", "label every lesion")
            )
    if problems:
        raise ProblemsError("datalist", problems)
    return list(groups.values())


class LoadLesionMasksd(MapTransform):
    """Read a list of mask paths into one (L, H, W) float32 tensor, one channel per lesion.

    Each path is read with ``reader`` (the configs' ``image_reader``; ``path#N`` selectors allowed) as
    ``LoadImaged`` reads a single mask. An empty list gives a (0, H, W) tensor shaped like ``reference_key``.

    Args:
        keys: keys of the mask lists (``masks``).
        reader: the image reader (:class:`bundle.data.readers.WholeBodyScanReader`); ``None``: MONAI's choice.
        reference_key: the already loaded scan whose (H, W) the masks must have.
        allow_missing_keys: don't raise an exception if a key is missing.

    Raises:
        ShapeMismatchError: a mask's shape is not the scan's (H, W).
    """

    def __init__(
        self,
        keys: KeysCollection = "masks",
        reader: ImageReader | None = None,
        reference_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(reader=reader, image_only=True)
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.reference_key]
        if not is_array(reference) or reference.ndim < 2:
            raise ValueError(
                f"{self.reference_key!r} must be the loaded scan, an array (..., H, W), not "
                f"{type(reference).__name__}: load it before the masks"
            )
        shape = tuple(reference.shape[-2:])
        for key in self.key_iterator(d):
            masks = []
            for path in d[key]:
                mask = torch.as_tensor(self.loader(path), dtype=torch.float32)
                if tuple(mask.shape) != shape:
                    raise ShapeMismatchError(
                        path,
                        f"mask of shape {tuple(mask.shape)}, its scan {scan_name(reference)} is {shape}",
                        "draw the mask on the scan in the pipeline's layout (docs/data.md)",
                    )
                masks.append(mask)
            d[key] = torch.stack(masks) if masks else torch.zeros((0, *shape))
        return d


class LoadContextMaskd(LoadLesionMasksd):
    """Read a list of mask paths (the other lesions of a scan, :data:`~bundle.data.local_inputs.CONTEXT_KEY`) into
    their union, a (1, H, W) float32 0/1 tensor; an empty list (a scan's only lesion) gives zeros.

    Args and errors as :class:`LoadLesionMasksd`.
    """

    #: reads the scan as well as its own key (bundle.engine.inference.ScanCachedCompose runs it per lesion)
    combines_keys = True

    def __init__(
        self,
        keys: KeysCollection = CONTEXT_KEY,
        reader: ImageReader | None = None,
        reference_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, reader, reference_key, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = super().__call__(data)
        for key in self.key_iterator(d):
            masks = d[key] > 0
            d[key] = (masks.any(dim=0, keepdim=True) if len(masks) else masks.new_zeros(1, *masks.shape[1:])).float()
        return d


def scan_name(scan: Any) -> str:
    """The file name a loaded scan came from (MONAI's ``filename_or_obj``), else "(loaded)"."""
    meta = getattr(scan, "meta", None) or {}
    return str(meta.get("filename_or_obj") or "(loaded)")


def is_array(value: Any) -> bool:
    """Whether ``value`` is a tensor or numpy array of at least one dimension (collated per scan)."""
    return isinstance(value, torch.Tensor | np.ndarray) and value.ndim >= 1


def pad_lesions_collate(
    batch: Sequence[Mapping[str, Any]],
    mask_key: str = "masks",
    label_key: str = "labels",
    lesion_keys: Sequence[str] = ("lesion_id", "mask_file"),
    patch_key: str = PATCH_KEY,
) -> dict[str, Any]:
    """Collate scan items with different lesion counts: per-scan tensors, padded masks and labels, per-lesion rest.

    Args:
        batch: items with ``mask_key`` (L_i, H, W) (equal H, W) and optionally ``label_key`` (L_i,) (list or tensor).
        mask_key: key of the masks, collated to (B, L_max, H, W) with empty masks as padding.
        label_key: key of the labels, collated to (B, L_max) int64 padded with -1.
        lesion_keys: keys of per-lesion lists (L_i values each), flattened to one list of N values; absent keys are
            skipped.
        patch_key: key of the local patches (C * L_i, P_h, P_w) when the items have them, collated to
            (B, L_max, C, P_h, P_w) with zero patches as padding.

    Returns:
        the collated dict (module docstring): :data:`LESION_VALID_KEY` (B, L_max) bool added; every other key whose
        value is a tensor or array of >= 1 dimension collated per scan by MONAI's ``list_data_collate``; every
        remaining key a list of N values, the scan's value repeated for each of its lesions.

    Raises:
        ValueError: the masks of the batch differ in (H, W), or an item's labels or per-lesion lists do not have one
            value per mask.
    """
    masks = [torch.as_tensor(item[mask_key]) for item in batch]
    shapes = {tuple(m.shape[1:]) for m in masks}
    if len(shapes) != 1 or any(m.ndim != 3 for m in masks):
        raise ValueError(
            f"every item's {mask_key!r} must be (L, H, W) with one (H, W), got {[tuple(m.shape) for m in masks]}"
        )
    counts = [m.shape[0] for m in masks]
    l_max = max(counts, default=0)
    padded = torch.zeros((len(batch), l_max, *shapes.pop()), dtype=torch.float32)
    valid = torch.zeros((len(batch), l_max), dtype=torch.bool)
    for i, (m, n) in enumerate(zip(masks, counts, strict=True)):
        padded[i, :n] = m
        valid[i, :n] = True
    collated: dict[str, Any] = {mask_key: padded, LESION_VALID_KEY: valid}
    handled = {mask_key}
    if all(patch_key in item for item in batch) and batch:
        collated[patch_key] = pad_patches([torch.as_tensor(item[patch_key]) for item in batch], counts)
        handled.add(patch_key)
    if all(label_key in item for item in batch):
        labels = torch.full((len(batch), l_max), PADDED_LABEL, dtype=torch.int64)
        for i, (item, n) in enumerate(zip(batch, counts, strict=True)):
            values = torch.as_tensor(item[label_key], dtype=torch.int64).reshape(-1)
            if values.numel() != n:
                raise ValueError(f"item {i} has {values.numel()} labels for {n} masks")
            labels[i, :n] = values
        collated[label_key] = labels
        handled.add(label_key)
    per_scan = {k for k in batch[0] if k not in handled and is_array(batch[0][k])}
    for key in (k for k in batch[0] if k not in handled | per_scan):
        values: list[Any] = []
        for i, (item, n) in enumerate(zip(batch, counts, strict=True)):
            if key in lesion_keys:
                if len(item[key]) != n:
                    raise ValueError(f"item {i} has {len(item[key])} values of {key!r} for {n} masks")
                values.extend(item[key])
            else:
                values.extend([item[key]] * n)
        collated[key] = values
    if per_scan:
        collated.update(list_data_collate([{k: item[k] for k in per_scan} for item in batch]))
    return collated


def pad_patches(patches: Sequence[torch.Tensor], counts: Sequence[int]) -> torch.Tensor:
    """Per-scan patches (C * L_i, P_h, P_w) -> (B, L_max, C, P_h, P_w), zero-padded.

    Raises:
        ValueError: patches of different sizes, or channels not a multiple of the scan's lesion count.
    """
    sizes = {tuple(p.shape[1:]) for p in patches}
    channels = {p.shape[0] // n for p, n in zip(patches, counts, strict=True) if n} or {PATCH_CHANNELS}
    c = max(channels)
    if (
        len(sizes) != 1
        or len(channels) != 1
        or any(p.ndim != 3 or p.shape[0] != n * c for p, n in zip(patches, counts, strict=True))
    ):
        raise ValueError(
            f"local patches must be (C * L, P_h, P_w) with one C and (P_h, P_w), got "
            f"{[tuple(p.shape) for p in patches]} for {list(counts)} lesions"
        )
    out = torch.zeros((len(patches), max(counts, default=0), c, *sizes.pop()), dtype=torch.float32)
    for i, (p, n) in enumerate(zip(patches, counts, strict=True)):
        out[i, :n] = p.reshape(n, c, *p.shape[1:])
    return out


class PrepareScanBatch(PrepareBatch):
    """``prepare_batch`` of MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` for batches of
    :func:`pad_lesions_collate`: the engine then calls ``network(image, lesion_masks=..., lesion_valid=...)`` and
    compares its flat (N, num_classes) output with flat one-hot labels (N, num_classes) of the valid lesions.

    Args:
        num_classes: classes of the one-hot targets.
        image_key, mask_key, label_key: keys of the collated batch.

    Returns (when called):
        ``(image (B, 1, H, W), targets (N, num_classes) float or None without labels, (), {"lesion_masks":
        (B, L_max, H, W), "lesion_valid": (B, L_max)[, "lesion_patches": (B, L_max, 3, P_h, P_w)]})``, all on
        ``device`` (the patches when the batch has ``patch_key``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        image_key: str = "image",
        mask_key: str = "masks",
        label_key: str = "labels",
        patch_key: str = PATCH_KEY,
    ) -> None:
        self.num_classes = num_classes
        self.image_key, self.mask_key, self.label_key, self.patch_key = image_key, mask_key, label_key, patch_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple, dict[str, torch.Tensor]]:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(tensor).to(device=device, non_blocking=non_blocking, **kwargs)

        valid = batchdata[LESION_VALID_KEY]
        targets = None
        if self.label_key in batchdata:
            labels = torch.as_tensor(batchdata[self.label_key])[valid]
            targets = move(torch.nn.functional.one_hot(labels, self.num_classes).float())
        masks = {"lesion_masks": move(batchdata[self.mask_key]), "lesion_valid": move(valid)}
        if self.patch_key in batchdata:
            masks["lesion_patches"] = move(batchdata[self.patch_key])
        return move(batchdata[self.image_key]), targets, (), masks
