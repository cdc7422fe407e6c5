"""How well hot spots find the true lesions: the matching rule, lesion-level sensitivity, false positives, FROC.

Matching rule (docs/read.md): a true lesion is **found** when a hot spot overlaps its mask with IoU ≥ ``iou`` (0.3)
or contains the lesion's centre pixel. A hot spot that finds no lesion is a **false positive**. Both are measured
in one half of the stored layout (lesion masks and hot spots are drawn identically in both halves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.3


@dataclass
class ScanMatch:
    """Matching of one scan: ``found`` per true lesion (bool), ``true_positive`` per hot spot (bool), and for each
    lesion the id of the hot spot that found it (0 = missed)."""

    found: np.ndarray
    true_positive: np.ndarray
    hotspot_of_lesion: np.ndarray


def lesion_centre(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel nearest the centroid of a mask (H, W'), or (-1, -1) for an empty mask."""
    points = np.argwhere(mask)
    if not len(points):
        return -1, -1
    centre = points.mean(axis=0)
    nearest = points[np.argmin(((points - centre) ** 2).sum(axis=1))]
    return int(nearest[0]), int(nearest[1])


def match_scan(hotspot_labels: np.ndarray, lesion_masks: Sequence[np.ndarray], iou: float = MATCH_IOU) -> ScanMatch:
    """Match the hot spots of one scan to its true lesions.

    Args:
        hotspot_labels: int (H, W') label image of the hot spots (one half of the stored layout), 0 background.
        lesion_masks: the true lesions' masks, each (H, W') bool/0-1, same half.
        iou: IoU from which an overlap counts.
    """
    labels = np.asarray(hotspot_labels)
    num_hot = int(labels.max()) if labels.size else 0
    hot_area = np.bincount(labels.ravel(), minlength=num_hot + 1)
    found = np.zeros(len(lesion_masks), bool)
    hotspot_of_lesion = np.zeros(len(lesion_masks), np.int64)
    true_positive = np.zeros(num_hot, bool)
    for i, mask in enumerate(lesion_masks):
        mask = np.asarray(mask, bool)
        inter = np.bincount(labels[mask], minlength=num_hot + 1)
        inter[0] = 0
        union = hot_area + mask.sum() - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            ious = np.where(union > 0, inter / union, 0.0)
        ious[0] = 0.0
        hits = set(np.flatnonzero(ious >= iou).tolist())
        row, col = lesion_centre(mask)
        if row >= 0 and labels[row, col] > 0:
            hits.add(int(labels[row, col]))
        if hits:
            found[i] = True
            hotspot_of_lesion[i] = max(hits, key=lambda k: ious[k])
            for k in hits:
                true_positive[k - 1] = True
    return ScanMatch(found, true_positive, hotspot_of_lesion)


def froc_point(matches: Sequence[ScanMatch]) -> tuple[float, float]:
    """(lesion-level sensitivity, mean false positives per scan) over the scans' matches."""
    lesions = sum(len(m.found) for m in matches)
    found = sum(int(m.found.sum()) for m in matches)
    false_positives = sum(int((~m.true_positive).sum()) for m in matches)
    sensitivity = found / lesions if lesions else float("nan")
    return sensitivity, false_positives / max(len(matches), 1)
