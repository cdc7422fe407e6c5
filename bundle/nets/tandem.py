"""The per-lesion classifier with a local stream: lesion detail at full resolution fused with the paper's network.

The paper's network sees the lesion only after the whole scan is shrunk to its input size. With ``local_patch``
(train.yaml) each lesion also comes with a fixed-size patch of the **full-resolution** scan around it
(:class:`bundle.data.local_inputs.LesionPatchd`: scan, mask and the same place in the other view). Here:

- the global stream is one of the paper's networks (:data:`bundle.nets.NETWORKS`) with its final linear layer
  removed: (B, C, H, W) -> (B, D_global) features;
- the local stream, :class:`PatchEncoder`, a small ResNet (MONAI ``resnet10``): (B, 3, P, P) -> (B, 512);
- a linear layer on both, concatenated: (B, D_global + 512) -> (B, num_classes) logits.

The one-pass network fuses the same local stream in :class:`bundle.nets.onepass.OnePassLesionClassifier`.

Config use (train.yaml's ``lesion_network_def``)::

    {"_target_": "bundle.nets.tandem.build_lesion_classifier", "name": "resnet50", "local_patch": true}
"""

from __future__ import annotations

import os

import torch
from monai.networks.nets import resnet10
from torch import nn

from bundle.nets import NETWORKS, build_network

__all__ = ["PatchEncoder", "TandemLesionClassifier", "build_lesion_classifier"]


class PatchEncoder(nn.Module):
    """The local stream: a MONAI ResNet10 (2D) without its classification layer.

    Args:
        in_channels: patch channels (3: scan, mask, other view).

    Shapes: (N, in_channels, P_h, P_w) -> (N, :attr:`out_features`); P of 32 or more keeps every stage non-empty.
    """

    out_features = 512

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.net = resnet10(
            spatial_dims=2, n_input_channels=in_channels, num_classes=1, conv1_t_stride=2, bias_downsample=False
        )
        self.net.fc = nn.Identity()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)


class TandemLesionClassifier(nn.Module):
    """A paper network (global stream) and :class:`PatchEncoder` (local stream) fused by one linear layer.

    Args:
        network: a classifier of :data:`bundle.nets.NETWORKS` (its final layer ``classifier_layer`` is replaced by
            the identity, so its output becomes its features).
        classifier_layer: dotted name of that final ``nn.Linear``.
        num_classes: logits.
        patch_channels: channels of the local patch.

    Shapes: ``forward(image (B, C, H, W), patch (B, patch_channels, P_h, P_w))`` -> (B, num_classes).
    """

    def __init__(
        self, network: nn.Module, classifier_layer: str, num_classes: int = 2, patch_channels: int = 3
    ) -> None:
        super().__init__()
        final = network.get_submodule(classifier_layer)
        if not isinstance(final, nn.Linear):
            raise ValueError(f"{classifier_layer!r} of {type(network).__name__} is not the final nn.Linear layer")
        parent, _, child = classifier_layer.rpartition(".")
        setattr(network.get_submodule(parent), child, nn.Identity())
        self.global_stream = network
        self.local_stream = PatchEncoder(patch_channels)
        self.head = nn.Linear(final.in_features + PatchEncoder.out_features, num_classes)

    def forward(self, image: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.global_stream(image), self.local_stream(patch)], dim=1)
        return self.head(features)


def build_lesion_classifier(
    name: str,
    in_channels: int = 2,
    num_classes: int = 2,
    local_patch: bool = False,
    pretrained_weights: str | os.PathLike | None = None,
) -> nn.Module:
    """The per-lesion classifier of train.yaml: the paper's network (:func:`bundle.nets.build_network`, with its
    ImageNet weights when given), wrapped as a :class:`TandemLesionClassifier` when ``local_patch`` is true.

    Args:
        name: one of :data:`bundle.nets.NETWORKS`.
        in_channels: 2 (scan, mask) or 3 (and the other lesions' masks, ``context_masks``).
        num_classes: logits.
        local_patch: fuse the local stream (then ``forward(image, patch)``).
        pretrained_weights: local torchvision-format ImageNet ``state_dict`` of the global stream.
    """
    network = build_network(name, in_channels, num_classes, pretrained_weights)
    if not local_patch:
        return network
    return TandemLesionClassifier(network, NETWORKS[name].classifier_layer, num_classes)
