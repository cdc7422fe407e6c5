"""The optional inputs beyond the paper's scan + mask: a full-resolution patch per lesion, and the other lesions' masks.

Both are switched on in train.yaml (``local_patch``, ``context_masks``) and reach the network next to the scan:

- **local patch** (:class:`LesionPatchd`): a fixed-size patch (``patch_size``, default 64×64 pixels) of the
  full-resolution scan, cut before the scan is resized for the global stream, centred on the lesion (the centre of
  its mask's bounding box) and zero-padded where it passes the image edge; with the patch of the mask and the patch at
  the same place in the **other view** (the scan is anterior | mirrored posterior side by side, docs/data.md, so the
  other view's point is half the width away). One lesion: (3, P, P) = [scan, mask, other view]; L lesions of a scan:
  (3L, P, P), lesion by lesion, channel-first so MONAI's flips act on the patches' width like on the scan.
- **context masks** (per-lesion mode, :class:`bundle.data.lesion_groups.LoadContextMaskd`): the union of the masks of
  the scan's **other** lesions, (1, H, W), read from the ``context_masks`` paths that :func:`add_context_masks` lists
  for each lesion; stacked as a third input channel. (In one-pass mode the network pools the other lesions' area from
  the same feature maps instead; no input is added: :class:`bundle.nets.onepass.OnePassLesionClassifier`.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from bundle.data.paths import image_key

__all__ = [
    "CONTEXT_KEY",
    "PATCH_CHANNELS",
    "PATCH_KEY",
    "LesionPatchd",
    "add_context_masks",
    "centred_crop",
    "lesion_centre",
    "lesion_patches",
]

#: item key of the local patches: (3, P, P) for one lesion, (3L, P, P) for the L lesions of a scan
PATCH_KEY = "patch"
#: item key of the other lesions' mask paths, then of their union (1, H, W)
CONTEXT_KEY = "context_masks"
#: channels of one lesion's patch: the scan, the lesion's mask, the scan at the same place in the other view
PATCH_CHANNELS = 3


def add_context_masks(entries: Sequence[Mapping[str, Any]], mask_key: str = "mask") -> list[dict[str, Any]]:
    """Per-lesion entries, each with :data:`CONTEXT_KEY`: the mask paths of the **other** lesions of its scan.

    Lesions belong to the same scan when their ``image`` is the same file(s) (:func:`bundle.data.paths.image_key`);
    the order is the entries' order. A mask listed twice for one scan counts once, and a lesion's own mask is never
    in its context.
    """
    by_scan: dict[str, list[str]] = {}
    for entry in entries:
        masks = by_scan.setdefault(image_key(entry["image"]), [])
        if entry[mask_key] not in masks:
            masks.append(entry[mask_key])
    return [
        {**entry, CONTEXT_KEY: [m for m in by_scan[image_key(entry["image"])] if m != entry[mask_key]]}
        for entry in entries
    ]


def lesion_centre(mask: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the centre of a (H, W) mask's bounding box (integer division); the image centre when the
    mask is empty."""
    rows = torch.nonzero(mask.reshape(mask.shape[-2:]).any(dim=1)).flatten()
    cols = torch.nonzero(mask.reshape(mask.shape[-2:]).any(dim=0)).flatten()
    if rows.numel() == 0:
        return mask.shape[-2] // 2, mask.shape[-1] // 2
    return int(rows[0] + rows[-1]) // 2, int(cols[0] + cols[-1]) // 2


def lesion_patches(scan: torch.Tensor, masks: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """The local patches of every lesion of one scan (module docstring).

    Args:
        scan: (1, H, W) or (H, W), full resolution, both views side by side (W even).
        masks: (L, H, W) lesion masks (L may be 0).
        patch_size: (P_h, P_w) of each patch.

    Returns:
        (3L, P_h, P_w) float32: per lesion [scan, mask, scan in the other view], each centred on the lesion's
        bounding-box centre (:func:`lesion_centre`; in the other view the same point half the width away) and
        zero-padded outside the image.
    """
    image = torch.as_tensor(scan, dtype=torch.float32).reshape(scan.shape[-2:])
    masks = torch.as_tensor(masks, dtype=torch.float32).reshape(-1, *image.shape)
    size = tuple(int(s) for s in patch_size)
    width = image.shape[-1]
    patches = []
    for mask in masks:
        row, col = lesion_centre(mask)
        other = col + width // 2 if col < width // 2 else col - width // 2
        patches += [centred_crop(image, row, col, size), centred_crop(mask, row, col, size)]
        patches.append(centred_crop(image, row, other, size))
    return torch.stack(patches) if patches else torch.zeros((0, *size))


def centred_crop(array: torch.Tensor, row: int, col: int, size: tuple[int, int]) -> torch.Tensor:
    """The (P_h, P_w) window of a (H, W) array whose centre pixel (P_h // 2, P_w // 2) is (row, col), zeros where it
    passes the edge (only the window is copied, nothing is padded)."""
    (ph, pw), (height, width) = size, array.shape
    top, left = row - ph // 2, col - pw // 2
    out = array.new_zeros(size)
    rows = slice(max(top, 0), min(top + ph, height))
    cols = slice(max(left, 0), min(left + pw, width))
    if rows.start < rows.stop and cols.start < cols.stop:
        out[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = array[rows, cols]
    return out


class LesionPatchd(MapTransform):
    """Add :data:`PATCH_KEY`: the local patches of the lesion(s) in ``keys`` (:func:`lesion_patches`).

    Runs on the full-resolution scan, after the intensity scaling and before the resize of the global stream.

    Args:
        keys: the mask key: ``mask`` (one lesion, (1, H, W) → (3, P, P)) or ``masks`` (L lesions → (3L, P, P)).
        patch_size: (P_h, P_w) pixels of the full-resolution scan.
        image_key: the scan, (1, H, W).
        patch_key: where the patches go.
    """

    #: reads the scan as well as the mask (bundle.engine.inference.ScanCachedCompose runs it per lesion)
    combines_keys = True

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: Sequence[int] = (64, 64),
        image_key: str = "image",
        patch_key: str = PATCH_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(patch_size) != 2 or min(int(s) for s in patch_size) < 1:
            raise ValueError(f"patch_size must be two positive sizes (P_h, P_w), got {list(patch_size)}")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.image_key, self.patch_key = image_key, patch_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            scan = convert_to_tensor(d[self.image_key], track_meta=False)
            d[self.patch_key] = lesion_patches(scan, convert_to_tensor(d[key], track_meta=False), self.patch_size)
        return d
