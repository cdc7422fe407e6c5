"""DenseNet169: MONAI's network, loading torchvision-format ImageNet weights through a key mapping.

MONAI's ``DenseNet169`` has torchvision's layers but nests the dense-layer modules one level deeper and names the
head differently:

- ``features.denseblock1.denselayer1.norm1.weight`` -> ``features.denseblock1.denselayer1.layers.norm1.weight``
  (likewise ``conv1``, ``norm2``, ``conv2``);
- ``classifier.weight`` -> ``class_layers.out.weight`` (and ``bias``);
- all other keys (``features.conv0.*``, ``features.norm0.*``, ``features.transition1.*``, ``features.norm5.*``)
  are the same.

The torchvision hub file ``densenet169-b2777c0a.pth`` still uses the pre-0.4 names ``norm.1``/``conv.2``, which
torchvision itself renames on loading; :func:`torchvision_to_monai_key` accepts both (the regex idea of MONAI's
``monai.networks.nets.densenet._load_state_dict``).

Input size: any H, W >= 29 (torchvision's ``min_size``: stride-2 stem and max-pooling, then three 2×2
average-pooling transitions need a 2×2 map each).
"""

from __future__ import annotations

import re

from monai.networks.nets import DenseNet169

__all__ = ["FIRST_CONV", "HEAD_PREFIXES", "densenet169", "torchvision_to_monai_key"]

#: First-convolution key (same in both namings).
FIRST_CONV = "features.conv0.weight"
#: MONAI key prefix of the classification head (torchvision ``classifier.``).
HEAD_PREFIXES = ("class_layers.out.",)

_DENSE_LAYER = re.compile(r"^(.*\.denselayer\d+)\.(norm|relu|conv)\.?([12])\.(\w+)$")
_CLASSIFIER = re.compile(r"^classifier\.(weight|bias)$")


def torchvision_to_monai_key(key: str) -> str:
    """Map a torchvision ``densenet*`` state_dict key to MONAI's ``DenseNet`` name; other keys are returned as-is.

    Examples: ``features.denseblock2.denselayer3.conv2.weight`` and the hub file's
    ``features.denseblock2.denselayer3.conv.2.weight`` -> ``features.denseblock2.denselayer3.layers.conv2.weight``;
    ``classifier.bias`` -> ``class_layers.out.bias``.
    """
    match = _DENSE_LAYER.match(key)
    if match:
        prefix, kind, index, field = match.groups()
        return f"{prefix}.layers.{kind}{index}.{field}"
    match = _CLASSIFIER.match(key)
    if match:
        return f"class_layers.out.{match.group(1)}"
    return key


def densenet169(in_channels: int = 2, num_classes: int = 2) -> DenseNet169:
    """MONAI 2D DenseNet169 (growth 32, blocks 6/12/32/32): input (B, in_channels, H, W), logits (B, num_classes)."""
    return DenseNet169(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
