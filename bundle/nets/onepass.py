"""One backbone pass per scan: every lesion of the scan classified from its mask on shared feature maps.

The paper runs the whole classifier once per lesion (scan + that lesion's mask as a 2-channel image). Here the
backbone of one of the paper's networks runs **once** on the scan, and each lesion is read off its feature maps:

1. backbone input (``in_channels``): ``1`` = the scan alone; ``2`` (default) = the scan and the **union** of the
   scan's lesion masks, so the paper's 2-channel first convolution and its ImageNet adaptation
   (:func:`bundle.nets.pretrained.adapt_first_conv`) are reused unchanged, and a scan with one lesion gets exactly the
   paper's input;
2. feature maps of several stages (``stages``; for ResNets ``layer1``..``layer4``, strides 4..32);
3. per lesion and stage, the mask-weighted average of the feature map (the mask resized to the map with area
   interpolation, so every non-empty mask keeps a non-zero weight however small it gets), concatenated over stages;
4. optionally (``context_masks``) the same average over the **other** lesions' area (the union of the scan's other
   valid masks; zeros for a scan's only lesion) appended: how the rest of the scan's lesions look;
5. optionally (``local_patch``) the lesion's full-resolution patch encoded by the local stream
   (:class:`bundle.nets.tandem.PatchEncoder`; patches from :class:`bundle.data.local_inputs.LesionPatchd`) appended;
6. a small MLP head (LayerNorm, Linear, ReLU, Dropout, Linear) -> ``num_classes`` logits.

Shapes (B scans, at most L lesions per scan, N = number of valid lesions in the batch)::

    image         (B, 1, H, W)       the preprocessed scan
    lesion_masks  (B, L, H, W)       lesion masks padded with empty masks to L (L may be 0)
    lesion_valid  (B, L) bool        True for real lesions
    lesion_patches (B, L, 3, P, P)   local patches (``local_patch`` only)
    forward(...)  (N, num_classes)   logits of the valid lesions, scan by scan in mask order
                                     (the order of ``lesion_valid.nonzero()``, the order of ``labels[lesion_valid]``)

A flat (N, num_classes) output trains with ``CrossEntropyLoss`` against flat one-hot labels (N, num_classes) and
decollates into one item per lesion for MONAI's metrics; :func:`scatter_lesions` turns it back into (B, L, classes).
:func:`per_lesion_logits` is the brute-force reference: the same backbone and head run once per lesion.

Config use::

    "network_def": {"_target_": "bundle.nets.onepass.OnePassLesionClassifier", "backbone": "resnet50"}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from monai.networks.nets import resnet10, resnet18, resnet34
from torch import nn

from bundle.nets import NETWORKS, load_weights
from bundle.nets.tandem import PatchEncoder

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FeatureExtractor",
    "OnePassLesionClassifier",
    "context_union",
    "masked_average_pool",
    "per_lesion_logits",
    "scatter_lesions",
]


@dataclass(frozen=True)
class BackboneSpec:
    """How to take multi-scale feature maps from one classifier.

    Args:
        build: ``build(in_channels)`` returns the whole classifier (its head is removed afterwards).
        path: names of the submodules (dotted paths) that, run in this order, compute the features.
        stages: default names in ``path`` whose outputs are pooled (from fine to coarse).
        head: names of the classifier's submodules not on ``path`` (deleted, so no parameter goes unused).
        weights_name: the :data:`bundle.nets.NETWORKS` name whose torchvision-format weights it loads; ``None``: none.
    """

    build: Callable[[int], nn.Module]
    path: tuple[str, ...]
    stages: tuple[str, ...]
    head: tuple[str, ...]
    weights_name: str | None = None


def _monai_resnet(factory: Callable[..., nn.Module]) -> Callable[[int], nn.Module]:
    def build(in_channels: int) -> nn.Module:
        return factory(
            spatial_dims=2, n_input_channels=in_channels, num_classes=2, conv1_t_stride=2, bias_downsample=False
        )

    return build


_RESNET_PATH = ("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4")
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
# MONAI DenseNet169 features: stem, then dense blocks and transitions (strides 4, 8, 16, 32), then the final norm
_DENSENET_PATH = (
    *(f"features.{name}" for name in ("conv0", "norm0", "relu0", "pool0")),
    *(f"features.{part}{i}" for i in (1, 2, 3) for part in ("denseblock", "transition")),
    *("features.denseblock4", "features.norm5"),
)
# torchvision VGG16 features: the ReLUs before the 3rd, 4th and 5th max pool (strides 4, 8, 16); the last pool removed
_VGG_PATH = tuple(f"features.{i}" for i in range(30))

BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType(
    {
        "resnet50": BackboneSpec(
            build=lambda c: NETWORKS["resnet50"].build(c, 2),
            path=_RESNET_PATH,
            stages=_RESNET_STAGES,
            head=("avgpool", "fc"),
            weights_name="resnet50",
        ),
        # smaller MONAI ResNets of the same layout (torchvision's resnet18/34 files load like resnet50's)
        "resnet34": BackboneSpec(_monai_resnet(resnet34), _RESNET_PATH, _RESNET_STAGES, ("avgpool", "fc"), "resnet50"),
        "resnet18": BackboneSpec(_monai_resnet(resnet18), _RESNET_PATH, _RESNET_STAGES, ("avgpool", "fc"), "resnet50"),
        "resnet10": BackboneSpec(_monai_resnet(resnet10), _RESNET_PATH, _RESNET_STAGES, ("avgpool", "fc"), None),
        "densenet169": BackboneSpec(
            build=lambda c: NETWORKS["densenet169"].build(c, 2),
            path=_DENSENET_PATH,
            stages=("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"),
            head=("class_layers",),
            weights_name="densenet169",
        ),
        "vgg16": BackboneSpec(
            build=lambda c: NETWORKS["vgg16"].build(c, 2),
            path=_VGG_PATH,
            stages=("features.15", "features.22", "features.29"),
            head=("avgpool", "classifier", "features.30"),
            weights_name="vgg16",
        ),
    }
)


def masked_average_pool(feature_map: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mask-weighted average of a feature map, one vector per mask.

    The masks are resized to the feature map with area interpolation (the fraction of each feature cell the lesion
    covers), and each lesion's vector is the weighted mean of the cells. Computed in float32 outside autocast.

    Args:
        feature_map: (B, C, h, w), any memory format and float dtype.
        masks: (B, L, H, W), 0/1 (or soft) masks; L may be 0; an empty mask gives a zero vector.
        eps: floor of the weight sum.

    Returns:
        (B, L, C) float32.
    """
    with torch.autocast(feature_map.device.type, enabled=False):
        weights = F.interpolate(masks.float(), size=feature_map.shape[-2:], mode="area")  # (B, L, h, w)
        sums = torch.einsum("blhw,bchw->blc", weights, feature_map.float())
        return sums / weights.sum(dim=(-2, -1)).clamp_min(eps).unsqueeze(-1)


class FeatureExtractor(nn.Module):
    """A classifier of :data:`BACKBONES` without its head, returning the feature maps of ``stages``.

    Parameter names are the classifier's under ``body.`` (``body.conv1.weight``, ...); the head and the modules after
    the last of ``stages`` are removed.

    Args:
        name: a key of :data:`BACKBONES`.
        in_channels: input channels.
        stages: names (of the backbone's ``path``) whose outputs are returned; ``None``: the backbone's default.
        pretrained_weights: local torchvision-format ImageNet ``state_dict`` loaded with
            :func:`bundle.nets.load_weights` before the head is removed; ``None``/``""``: random initialisation.

    Raises:
        ValueError: unknown ``name`` or stage, or weights for a backbone without a weights format.
    """

    def __init__(
        self,
        name: str = "resnet50",
        in_channels: int = 2,
        stages: Sequence[str] | None = None,
        pretrained_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        spec = BACKBONES.get(name)
        if spec is None:
            raise ValueError(f"unknown one-pass backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
        self.stages = tuple(stages) if stages else spec.stages
        unknown = [s for s in self.stages if s not in spec.path]
        if unknown or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages {list(self.stages)} of {name!r} must be distinct names of {list(spec.path)}")
        body = spec.build(in_channels)
        if pretrained_weights:
            if spec.weights_name is None:
                raise ValueError(f"backbone {name!r} has no pretrained-weights format")
            body = load_weights(body, spec.weights_name, pretrained_weights)
        last = max(spec.path.index(s) for s in self.stages)
        self.path = spec.path[: last + 1]
        # the head and the modules after the last pooled stage are removed: no parameter is left unused
        for module_name in (*spec.head, *spec.path[last + 1 :]):
            parent, _, child = module_name.rpartition(".")
            delattr(body.get_submodule(parent), child)
        self.body = body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) -> the feature maps of ``stages`` in ``path`` order, each (B, C_s, H/s, W/s) at the
        stage's stride s."""
        maps = []
        for name in self.path:
            x = self.body.get_submodule(name)(x)
            if name in self.stages:
                maps.append(x)
        return maps


class OnePassLesionClassifier(nn.Module):
    """Classify every lesion of a scan from one backbone pass (module docstring: inputs, pooling, shapes).

    Args:
        backbone: a key of :data:`BACKBONES` (``resnet50``, the paper's main model; ``resnet10/18/34``,
            ``densenet169``, ``vgg16``).
        in_channels: what the backbone sees: 1 = the scan; 2 = the scan and the union of the scan's lesion masks.
        num_classes: logits per lesion.
        stages: feature maps pooled (names of the backbone's modules); ``None``: the backbone's default (all four
            ResNet layers).
        hidden_channels: width of the head's hidden layer.
        dropout: dropout probability before the head's last layer.
        pretrained_weights: local torchvision-format ImageNet ``state_dict`` of the backbone's paper network (its
            first convolution adapted to ``in_channels``); ``None``/``""``: random initialisation.
        context_masks: also pool the other lesions' area (module docstring, step 4).
        local_patch: also encode each lesion's full-resolution patch (step 5); ``forward`` then needs
            ``lesion_patches``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 2,
        num_classes: int = 2,
        stages: Sequence[str] | None = None,
        hidden_channels: int = 256,
        dropout: float = 0.0,
        pretrained_weights: str | os.PathLike | None = None,
        context_masks: bool = False,
        local_patch: bool = False,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 2):
            raise ValueError(f"in_channels must be 1 (scan) or 2 (scan + union of lesion masks), got {in_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.context_masks, self.local_patch = bool(context_masks), bool(local_patch)
        self.backbone = FeatureExtractor(backbone, in_channels, stages, pretrained_weights)
        feature_channels = sum(self.feature_channels()) * (2 if self.context_masks else 1)
        # built only when used: the default network draws the same random initialisation as before
        self.local_stream = PatchEncoder() if self.local_patch else None
        if self.local_stream is not None:
            feature_channels += PatchEncoder.out_features
        self.head = nn.Sequential(
            nn.LayerNorm(feature_channels),
            nn.Linear(feature_channels, hidden_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_channels, num_classes),
        )

    @property
    def cam_layer(self) -> str:
        """The module Grad-CAM explains: the backbone's last pooled stage (``backbone.body.layer4`` for ResNets)."""
        return f"backbone.body.{self.backbone.stages[-1]}"

    def feature_channels(self) -> list[int]:
        """Channels of each pooled stage (found by running the backbone once on a small zero input)."""
        was_training = self.backbone.training
        probe = next(self.backbone.parameters())
        self.backbone.eval()
        with torch.no_grad():
            maps = self.backbone(probe.new_zeros(1, self.in_channels, 64, 64))
        self.backbone.train(was_training)
        return [m.shape[1] for m in maps]

    def backbone_input(
        self, image: torch.Tensor, lesion_masks: torch.Tensor, lesion_valid: torch.Tensor
    ) -> torch.Tensor:
        """The backbone's input (B, in_channels, H, W): the scan (B, 1, H, W), with the union of the valid masks
        (B, L, H, W) as channel 1 when ``in_channels`` is 2. Raises ValueError on inconsistent shapes."""
        check_lesion_inputs(image, lesion_masks, lesion_valid)
        if self.in_channels == 1:
            return image
        valid = lesion_valid.to(lesion_masks.dtype)[..., None, None]
        union = (lesion_masks * valid).amax(dim=1, keepdim=True) if lesion_masks.shape[1] else torch.zeros_like(image)
        return torch.cat([image, union.to(image.dtype)], dim=1)

    def lesion_features(
        self, image: torch.Tensor, lesion_masks: torch.Tensor, lesion_valid: torch.Tensor
    ) -> torch.Tensor:
        """Pooled features (B, L, D) of every mask, padding included (D = sum of :meth:`feature_channels`, twice
        that with ``context_masks``: each lesion's own area, then the other lesions' area)."""
        maps = self.backbone(self.backbone_input(image, lesion_masks, lesion_valid))
        pools = [lesion_masks, context_union(lesion_masks, lesion_valid)] if self.context_masks else [lesion_masks]
        return torch.cat([masked_average_pool(m, weights) for weights in pools for m in maps], dim=-1)

    def forward(
        self,
        image: torch.Tensor,
        lesion_masks: torch.Tensor,
        lesion_valid: torch.Tensor,
        lesion_patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (N, num_classes) of the N valid lesions in ``lesion_valid.nonzero()`` order.

        Args:
            image: (B, 1, H, W) scans.
            lesion_masks: (B, L, H, W) masks, padded with empty masks; L may be 0.
            lesion_valid: (B, L) bool, True for real lesions.
            lesion_patches: (B, L, 3, P_h, P_w) local patches (required with ``local_patch``, else ignored).
        """
        valid = lesion_valid.bool()
        features = self.lesion_features(image, lesion_masks, lesion_valid)[valid]
        if self.local_stream is not None:
            features = torch.cat([features, self.encode_patches(lesion_patches, valid)], dim=-1)
        return self.head(features)

    def encode_patches(self, lesion_patches: torch.Tensor | None, lesion_valid: torch.Tensor) -> torch.Tensor:
        """Local-stream features (N, 512) of the valid lesions' patches (B, L, C, P_h, P_w), in float32.

        Raises:
            ValueError: no patches, or patches not shaped (B, L, C, P_h, P_w) like ``lesion_valid`` (B, L).
        """
        if lesion_patches is None or lesion_patches.ndim != 5 or lesion_patches.shape[:2] != lesion_valid.shape:
            got = None if lesion_patches is None else tuple(lesion_patches.shape)
            raise ValueError(
                f"local_patch: lesion_patches must be (B, L, C, P_h, P_w) with (B, L) = {tuple(lesion_valid.shape)}, "
                f"got {got}"
            )
        assert self.local_stream is not None
        return self.local_stream(lesion_patches[lesion_valid]).float()


def check_lesion_inputs(image: torch.Tensor, lesion_masks: torch.Tensor, lesion_valid: torch.Tensor) -> None:
    """Raise ValueError unless image is (B, 1, H, W), lesion_masks (B, L, H, W) and lesion_valid (B, L)."""
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, H, W) scans, got {tuple(image.shape)}")
    if lesion_masks.ndim != 4 or lesion_masks.shape[0] != image.shape[0] or lesion_masks.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"lesion_masks must be (B, L, H, W) = ({image.shape[0]}, L, {image.shape[2]}, {image.shape[3]}), "
            f"got {tuple(lesion_masks.shape)}"
        )
    if tuple(lesion_valid.shape) != tuple(lesion_masks.shape[:2]):
        raise ValueError(
            f"lesion_valid must be (B, L) = {tuple(lesion_masks.shape[:2])}, got {tuple(lesion_valid.shape)}"
        )


def context_union(lesion_masks: torch.Tensor, lesion_valid: torch.Tensor) -> torch.Tensor:
    """For each lesion the union of the **other** valid masks of its scan: (B, L, H, W) 0/1 (masks taken as > 0)."""
    binary = (lesion_masks > 0).to(lesion_masks.dtype) * lesion_valid.to(lesion_masks.dtype)[..., None, None]
    return ((binary.sum(dim=1, keepdim=True) - binary) > 0).to(lesion_masks.dtype)


def per_lesion_logits(
    model: OnePassLesionClassifier,
    image: torch.Tensor,
    lesion_masks: torch.Tensor,
    lesion_valid: torch.Tensor,
    lesion_patches: torch.Tensor | None = None,
) -> torch.Tensor:
    """The brute-force reference of ``model(image, lesion_masks, lesion_valid, lesion_patches)``: the backbone and
    head run once per valid lesion, on that lesion's scan (one scan at a time), pooled with that lesion's mask alone
    (and, with ``context_masks``, with the maximum of the scan's other valid masks; with ``local_patch``, that
    lesion's patch encoded alone).

    Returns:
        (N, num_classes) logits in the order of ``model``'s output.
    """
    outputs = []
    for b, lesion in lesion_valid.bool().nonzero().tolist():
        scan, masks, valid = image[b : b + 1], lesion_masks[b : b + 1], lesion_valid[b : b + 1]
        maps = model.backbone(model.backbone_input(scan, masks, valid))
        pools = [masks[:, lesion : lesion + 1]]
        if model.context_masks:
            others = [masks[0, j] > 0 for j in range(masks.shape[1]) if j != lesion and bool(valid[0, j])]
            union = torch.stack(others).any(dim=0) if others else torch.zeros_like(masks[0, 0], dtype=torch.bool)
            pools.append(union.to(masks.dtype)[None, None])
        features = torch.cat([masked_average_pool(m, w) for w in pools for m in maps], dim=-1)[0]  # (1, D)
        if model.local_stream is not None:
            assert lesion_patches is not None
            features = torch.cat([features, model.local_stream(lesion_patches[b, lesion][None]).float()], dim=-1)
        outputs.append(model.head(features))
    if not outputs:
        return image.new_zeros(0, model.num_classes)
    return torch.cat(outputs)


def scatter_lesions(flat: torch.Tensor, lesion_valid: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
    """Per-lesion rows (N, K), in ``lesion_valid.nonzero()`` order, put back into a padded (B, L, K) tensor.

    Padding entries are ``fill``. Raises ValueError when N is not the number of valid lesions.
    """
    valid = lesion_valid.bool()
    if flat.shape[0] != int(valid.sum()):
        raise ValueError(f"{flat.shape[0]} rows for {int(valid.sum())} valid lesions")
    padded = flat.new_full((*valid.shape, *flat.shape[1:]), fill)
    padded[valid] = flat
    return padded
