"""Networks: load torchvision-format ImageNet weights into 2-channel (scan + lesion mask) classifiers.

The paper fine-tunes an ImageNet-pretrained ResNet50. MONAI's ``resnet50(spatial_dims=2, conv1_t_stride=2,
bias_downsample=False)`` has torchvision's layout and parameter names, so a torchvision ``state_dict`` saved to a
local file loads into it after two adaptations:

- the first convolution takes 2 channels instead of RGB: the scan channel gets the **sum** of the three RGB filters
  (what the ImageNet net computes on a gray image copied into R, G and B) and the mask channel their **mean**
  (a gray stimulus of one colour channel's strength, so the mask is seen from the first step);
- the 1000-class ImageNet head is dropped: the 2-class head keeps its random initialisation.

Nothing is ever downloaded: ``pretrained_weights`` is a path to a file on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn


class PretrainedWeightsError(ValueError):
    """Raised when a pretrained-weights file is missing, unreadable or of another architecture."""


def adapt_first_conv(weight: torch.Tensor, in_channels: int = 2) -> torch.Tensor:
    """Adapt an RGB first-convolution kernel to (scan, mask[, ...]) inputs.

    Args:
        weight: kernel of shape (out_channels, 3, kH, kW).
        in_channels: channels of the new input; channel 0 is the scan, the others are masks.

    Returns:
        Kernel of shape (out_channels, in_channels, kH, kW): channel 0 = sum over RGB, others = mean over RGB.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise PretrainedWeightsError(f"expected an RGB first-conv kernel (out, 3, kH, kW), got {tuple(weight.shape)}")
    scan = weight.sum(dim=1, keepdim=True)
    mask = weight.mean(dim=1, keepdim=True).expand(-1, in_channels - 1, -1, -1)
    return torch.cat([scan, mask], dim=1)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict saved with ``torch.save`` (plain, or wrapped under ``state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: pretrained weights file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means the file is unusable
        raise PretrainedWeightsError(f"{path}: not a readable PyTorch state_dict ({err})") from None
    for key in ("state_dict", "model"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise PretrainedWeightsError(f"{path}: expected a dict of tensors (a state_dict), got {type(content).__name__}")
    return content


def load_pretrained(
    network: nn.Module,
    path: str | os.PathLike | None,
    first_conv: str = "conv1.weight",
    head_prefixes: Sequence[str] = ("fc.",),
    rename: Callable[[str], str] | None = None,
) -> nn.Module:
    """Load torchvision-format ImageNet weights into ``network`` (returned, modified in place).

    Args:
        network: the 2-channel classifier, with torchvision parameter names (or those that ``rename`` gives).
        path: local ``.pth``/``.pt`` state_dict; ``None`` or ``""`` leaves the network as initialised.
        first_conv: key of the RGB first-convolution kernel, adapted with :func:`adapt_first_conv`.
        head_prefixes: key prefixes of the ImageNet classification head, which is not loaded.
        rename: maps each key of the file to ``network``'s name for it (e.g. torchvision to MONAI DenseNet names),
            applied first; ``first_conv`` and ``head_prefixes`` are then ``network``'s names. ``None``: keys as-is.

    Raises:
        PretrainedWeightsError: the file is missing/unreadable, or its keys or shapes do not match ``network``
            (a file of another architecture); the message names the file and the first mismatches.
    """
    if not path:
        return network
    source = read_state_dict(path)
    if rename is not None:
        renamed = {rename(k): v for k, v in source.items()}
        if len(renamed) != len(source):
            raise PretrainedWeightsError(f"{path}: renaming its keys made {len(source) - len(renamed)} collide")
        source = renamed
    target = network.state_dict()
    if first_conv in source and first_conv in target:
        source[first_conv] = adapt_first_conv(source[first_conv], target[first_conv].shape[1])

    def is_head(key: str) -> bool:
        return any(key.startswith(prefix) for prefix in head_prefixes)

    body_source = {k: v for k, v in source.items() if not is_head(k)}
    body_target = {k: v for k, v in target.items() if not is_head(k)}
    # BatchNorm counters are absent from pre-0.4 files (torchvision's densenet169, resnet50 V1); BatchNorm's own
    # loading tolerates that, so they are not missing weights.
    missing = sorted(k for k in set(body_target) - set(body_source) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(body_source) - set(body_target))
    wrong_shape = [
        f"{k}: file {tuple(body_source[k].shape)} vs network {tuple(v.shape)}"
        for k, v in body_target.items()
        if k in body_source and body_source[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} shape mismatch(es), e.g. {wrong_shape[:3]}")
        raise PretrainedWeightsError(
            f"{path}: not a torchvision-format state_dict of this network ({type(network).__name__}): "
            + "; ".join(details)
        )
    network.load_state_dict(body_source, strict=False)
    return network
