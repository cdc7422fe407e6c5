"""Transforms MONAI lacks for this task."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform


class OneHotLabel(Transform):
    """Turn a class index (int, or a tensor of shape () or (1,)) into a float one-hot vector of shape (num_classes,).

    A one-hot label keeps its shape through MONAI's decollation (a 0-d label would become a Python int), feeds
    ``ROCAUC``/``ConfusionMatrix`` directly, and ``torch.nn.CrossEntropyLoss`` accepts it as a target.

    Args:
        num_classes: number of classes (2: benign, malignant).
    """

    def __init__(self, num_classes: int = 2) -> None:
        self.num_classes = num_classes

    def __call__(self, label: Any) -> torch.Tensor:
        index = torch.as_tensor(label).reshape(-1)
        if index.numel() != 1:
            raise ValueError(f"expected one class index, got a label of shape {tuple(index.shape)}")
        value = int(index[0])
        if not 0 <= value < self.num_classes:
            raise ValueError(f"label {value} is outside 0..{self.num_classes - 1}")
        return torch.nn.functional.one_hot(torch.tensor(value), self.num_classes).float()


class OneHotLabeld(MapTransform):
    """Dictionary-based wrapper of :py:class:`OneHotLabel`.

    Args:
        keys: keys of the labels to convert.
        num_classes: number of classes.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(self, keys: KeysCollection, num_classes: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = OneHotLabel(num_classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
