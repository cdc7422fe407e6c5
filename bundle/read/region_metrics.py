"""Agreement of two skeletal-region maps: per-region Dice with MONAI's :func:`monai.metrics.compute_dice`."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice

from bundle.data.regions import CLASS_VALUES, NUM_CLASSES, REGIONS, labels_to_classes


def region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of every region of :data:`bundle.data.regions.REGIONS` between two region maps.

    Args:
        pred: estimated region labels, integer shape (H, W) (any layout, e.g. the stored anterior | posterior).
        truth: reference region labels of the same shape.

    Returns:
        ``{region name: Dice}`` in the order of ``REGIONS``: ``2 |P ∩ T| / (|P| + |T|)``, 0.0 for a region in one map
        only, NaN for a region absent from both. Unknown label values count as background.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"region maps of different shapes: pred {pred.shape}, truth {truth.shape}")

    def one_hot(labels: np.ndarray) -> torch.Tensor:
        classes = torch.from_numpy(labels_to_classes(labels)).reshape(1, 1, *labels.shape)
        return torch.nn.functional.one_hot(classes[:, 0], NUM_CLASSES).movedim(-1, 1).float()

    p, t = one_hot(pred), one_hot(truth)
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0]
    present = (p.flatten(2).sum(-1) + t.flatten(2).sum(-1))[0] > 0
    dice = torch.where(present, dice, torch.full_like(dice, float("nan")))
    index = {value: k for k, value in enumerate(CLASS_VALUES)}
    return {region.name: float(dice[index[region.value]]) for region in REGIONS}
