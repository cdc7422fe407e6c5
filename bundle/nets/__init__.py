"""The four classifiers compared in the paper, built by name for the bundle configs.

:data:`NETWORKS` maps each name to a :class:`NetworkSpec` (how to build it and how a torchvision-format ImageNet
``state_dict`` maps onto it); :func:`build_network` builds one and optionally loads such weights from a local file
with :func:`bundle.nets.pretrained.load_pretrained`. Every network takes (B, in_channels, H, W) (channel 0 = scan,
channel 1 = lesion mask) and returns logits (B, num_classes) as a plain tensor in training and evaluation mode.

Config use::

    "network_def": {"_target_": "bundle.nets.build_network", "name": "resnet50", "pretrained_weights": "@weights"}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from monai.networks.nets import resnet50
from torch import nn

from bundle.nets import densenet
from bundle.nets.inception import InceptionV3
from bundle.nets.pretrained import load_pretrained
from bundle.nets.vgg import VGG16

__all__ = ["NETWORKS", "VGG16", "InceptionV3", "NetworkSpec", "build_network", "load_weights"]


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one network and load torchvision-format weights into it.

    Args:
        build: ``build(in_channels, num_classes)`` returns the randomly initialised network.
        first_conv: network key of the RGB first-convolution kernel, adapted to ``in_channels``.
        head_prefixes: network key prefixes of the ImageNet head (and of file parts the network lacks), not loaded.
        rename: maps a torchvision key to the network's name for it; ``None`` when the names are torchvision's.
        min_size: smallest H and W the network computes on as designed.
        description: one line for humans.
        cam_layer: the module whose activations Grad-CAM explains (the last convolutional stage).
        classifier_layer: the final ``nn.Linear`` (features -> logits), replaced when a local stream is fused
            (:mod:`bundle.nets.tandem`).
    """

    build: Callable[[int, int], nn.Module]
    first_conv: str
    head_prefixes: tuple[str, ...]
    rename: Callable[[str], str] | None = None
    min_size: int = 32
    description: str = ""
    cam_layer: str = ""
    classifier_layer: str = ""


def _resnet50(in_channels: int, num_classes: int) -> nn.Module:
    return resnet50(
        spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, conv1_t_stride=2, bias_downsample=False
    )


def _vgg16(in_channels: int, num_classes: int) -> nn.Module:
    return VGG16(in_channels=in_channels, num_classes=num_classes)


def _inception_v3(in_channels: int, num_classes: int) -> nn.Module:
    return InceptionV3(in_channels=in_channels, num_classes=num_classes, aux_logits=False)


NETWORKS: Mapping[str, NetworkSpec] = MappingProxyType(
    {
        "resnet50": NetworkSpec(
            build=_resnet50,
            first_conv="conv1.weight",
            head_prefixes=("fc.",),
            min_size=1,
            description="MONAI ResNet50 with torchvision's layout (the paper's main model)",
            cam_layer="layer4",
            classifier_layer="fc",
        ),
        "densenet169": NetworkSpec(
            build=densenet.densenet169,
            first_conv=densenet.FIRST_CONV,
            head_prefixes=densenet.HEAD_PREFIXES,
            rename=densenet.torchvision_to_monai_key,
            min_size=29,
            description="MONAI DenseNet169; torchvision keys renamed to MONAI's",
            cam_layer="features",
            classifier_layer="class_layers.out",
        ),
        "vgg16": NetworkSpec(
            build=_vgg16,
            first_conv="features.0.weight",
            head_prefixes=("classifier.6.",),
            min_size=32,
            description="VGG16 without batch norm, torchvision names; pretrained fc6/fc7 kept",
            cam_layer="features",
            classifier_layer="classifier.6",
        ),
        "inception_v3": NetworkSpec(
            build=_inception_v3,
            first_conv="Conv2d_1a_3x3.conv.weight",
            # built without the auxiliary classifier: the whole AuxLogits branch of the ImageNet file is skipped
            head_prefixes=("fc.", "AuxLogits."),
            min_size=75,
            description="InceptionV3 without aux classifier, torchvision names; smaller inputs zero-padded to 75",
            cam_layer="Mixed_7c",
            classifier_layer="fc",
        ),
    }
)


def build_network(
    name: str, in_channels: int = 2, num_classes: int = 2, pretrained_weights: str | os.PathLike | None = None
) -> nn.Module:
    """Build a classifier by name, optionally with torchvision-format ImageNet weights from a local file.

    Args:
        name: one of :data:`NETWORKS` (``resnet50``, ``densenet169``, ``vgg16``, ``inception_v3``).
        in_channels: input channels; channel 0 is the scan, the others masks. Defaults to 2.
        num_classes: output logits. Defaults to 2.
        pretrained_weights: path to a torchvision-format ImageNet ``state_dict`` (3-channel, 1000 classes);
            ``None`` or ``""`` keeps the random initialisation. The first conv is adapted, the head not loaded.

    Returns:
        The network: input (B, in_channels, H, W), output logits (B, num_classes), in train and eval mode.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
        PretrainedWeightsError: the weights file is missing, unreadable or of another architecture.
    """
    return load_weights(_spec(name).build(in_channels, num_classes), name, pretrained_weights)


def _spec(name: str) -> NetworkSpec:
    spec = NETWORKS.get(name)
    if spec is None:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(sorted(NETWORKS))}")
    return spec


def load_weights(network: nn.Module, name: str, pretrained_weights: str | os.PathLike | None) -> nn.Module:
    """Load a torchvision-format ImageNet ``state_dict`` into ``network`` built as :data:`NETWORKS` ``[name]``.

    ``None``/``""`` returns ``network`` unchanged. Raises like :func:`build_network`.
    """
    spec = _spec(name)
    return load_pretrained(
        network, pretrained_weights, first_conv=spec.first_conv, head_prefixes=spec.head_prefixes, rename=spec.rename
    )
