"""Skeletal regions by a trained segmentation network (``configs/regions.yaml``): scan (H, W) → region map (H, W).

Train the network with::

    python -m monai.bundle run training --config_file "['configs/train.yaml','configs/regions.yaml']" \\
        --bundle_root . --dataset_dir DIR [--fold 0] [--spatial_size "[256,128]"]

then ``LearnedRegionSegmenter(ckpt_dir + '/model.pt', bundle_root)(scan)`` gives the region map of a scan in its
stored layout (anterior | mirrored posterior), with the labels of :data:`bundle.data.regions.REGIONS`. The network,
the intensity scaling (train.yaml's), the resizing and the compute settings are read from the two configs, not
copied here.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, ScaleIntensityRangePercentilesd, ThresholdIntensityd

from bundle.data.regions import bone_mask, classes_to_labels
from bundle.engine.configs import read_bundle_config
from bundle.engine.inferers import prepare_network
from bundle.read.hotspots import HotSpotDetector, HotSpots, assemble_hotspots, dilate

__all__ = [
    "HOTSPOTS_CONFIGS",
    "REGIONS_CONFIGS",
    "LearnedHotSpotDetector",
    "LearnedRegionSegmenter",
    "scaling_transforms",
]

# the configs of the region network and of the learned hot-spot detector, relative to the bundle root
REGIONS_CONFIGS = ("configs/train.yaml", "configs/regions.yaml")
HOTSPOTS_CONFIGS = (*REGIONS_CONFIGS, "configs/hotspots.yaml")


def scaling_transforms(image_transforms: Sequence[Any]) -> list[Any]:
    """The intensity scaling of the scan within train.yaml's ``image_transforms`` (the same objects, not copies).

    That is the run ``EnsureTyped`` (to numpy) → ``ScaleIntensityRangePercentilesd`` (counts / 99th percentile) →
    ``ThresholdIntensityd`` (cap at 10), all on the ``image`` key only.

    Raises:
        ValueError: ``image_transforms`` no longer holds that run (train.yaml was restructured).
    """
    transforms = list(image_transforms)
    kinds = (EnsureTyped, ScaleIntensityRangePercentilesd, ThresholdIntensityd)
    for start in range(len(transforms) - len(kinds) + 1):
        run = transforms[start : start + len(kinds)]
        if all(isinstance(t, k) and tuple(t.keys) == ("image",) for t, k in zip(run, kinds, strict=True)):
            return run
    raise ValueError(
        "train.yaml's image_transforms no longer holds the scan scaling EnsureTyped(numpy) -> "
        "ScaleIntensityRangePercentilesd -> ThresholdIntensityd on 'image'; update configs/regions.yaml"
    )


class LearnedRegionSegmenter:
    """A trained region network (``configs/regions.yaml``) applied to one scan at a time.

    Args:
        checkpoint: the network's ``state_dict`` (``model.pt`` of a regions training run).
        bundle_root: the bundle's folder (its ``configs/train.yaml`` and ``configs/regions.yaml`` are read).
        spatial_size: (H, W) the network was trained at; ``None``: the configs' ``spatial_size``.
        device: torch device; ``None``: the configs' (``cuda:0`` when available, else CPU).
        amp: reduced precision as in training; ``None``: the configs'.
        channels_last: ``None``: the configs'.
        features: the U-Net's ``features``; ``None``: the configs' ``regions_features``.
        configs: the config files the network was trained with (default: train.yaml + regions.yaml).

    Raises:
        ValueError: ``checkpoint`` is not a file, or does not fit the network.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        bundle_root: str | os.PathLike,
        spatial_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        amp: bool | None = None,
        channels_last: bool | None = None,
        features: Sequence[int] | None = None,
        configs: Sequence[str] = REGIONS_CONFIGS,
    ) -> None:
        if not os.path.isfile(checkpoint):
            raise ValueError(f"{os.path.abspath(checkpoint)}: segmentation network checkpoint not found")
        parser = read_bundle_config(
            bundle_root,
            list(configs),
            spatial_size=None if spatial_size is None else [int(s) for s in spatial_size],
            amp=amp,
            channels_last=channels_last,
            regions_features=None if features is None else [int(f) for f in features],
        )
        if device is not None:
            parser["device"] = f"$torch.device({str(torch.device(device))!r})"
        self.device: torch.device = parser.get_parsed_content("device")
        self.spatial_size: tuple[int, int] = tuple(int(s) for s in parser.get_parsed_content("spatial_size"))
        self.amp_dtype: torch.dtype | None = parser.get_parsed_content("amp_dtype")
        self.preprocessing = Compose(
            [*parser.get_parsed_content("regions_scaling"), parser.get_parsed_content("regions_image_resize")]
        )
        self.inferer = parser.get_parsed_content("train#inferer")
        network = parser.get_parsed_content("network_def")
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except (RuntimeError, KeyError, AttributeError, OSError) as err:
            raise ValueError(f"{checkpoint}: not a state_dict of configs/regions.yaml's network ({err})") from err
        self.network = prepare_network(network, self.device, parser.get_parsed_content("channels_last")).eval()

    @torch.no_grad()
    def logits(self, scan: np.ndarray) -> torch.Tensor:
        """The network's output for one scan (H, W) at its own ``spatial_size``: (1, C, h, w) float32 on the CPU."""
        scan = np.asarray(scan)
        if scan.ndim != 2:
            raise ValueError(f"expected one scan of shape (H, W), got an array of shape {scan.shape}")
        image = self.preprocessing({"image": scan.astype(np.float32)[None]})["image"]
        batch = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(self.device)
        return self.inferer(batch, self.network).float().cpu()

    def __call__(self, scan: np.ndarray) -> np.ndarray:
        """Region map of one scan.

        Args:
            scan: counts, shape (H, W), stored layout (anterior | mirrored posterior).

        Returns:
            int16 region labels (H, W) (the values of ``REGIONS``, 0 = background); a view half that is all zero
            (a single-view scan) is all zero.
        """
        logits = self.logits(scan)  # (1, NUM_CLASSES, h, w)
        height, width = np.asarray(scan).shape
        classes = logits.argmax(dim=1, keepdim=True).float()
        classes = torch.nn.functional.interpolate(classes, size=(height, width), mode="nearest-exact")
        labels = classes_to_labels(classes[0, 0].round().long().cpu().numpy())
        half = width // 2
        for view in (np.s_[:, :half], np.s_[:, half:]):
            if not np.any(scan[view]):
                labels[view] = 0
        return labels


class LearnedHotSpotDetector:
    """Hot spots from a trained lesion network (``configs/hotspots.yaml``): pixels whose lesion probability reaches
    ``threshold`` and that lie near bone, grouped, matched across views and described as the classical detector's.

    Args:
        checkpoint: ``model.pt`` of a hotspots training run; ``bundle_root``: the bundle's folder.
        threshold: lesion probability from which a pixel is a hot-spot pixel (its FROC: ``python -m bundle.read
            froc --detector CKPT``).
        geometry: the classical detector whose ``skeleton_margin_mm``, ``min_area_mm2``, ``match_distance_mm`` and
            ratio to normal bone (for the records) are used; default :class:`HotSpotDetector` ().
        spatial_size: the network's input size; ``None``: the configs'.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        bundle_root: str | os.PathLike,
        threshold: float = 0.5,
        geometry: HotSpotDetector | None = None,
        spatial_size: Sequence[int] | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"LearnedHotSpotDetector: threshold must lie in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.geometry = geometry or HotSpotDetector()
        self.network = LearnedRegionSegmenter(checkpoint, bundle_root, spatial_size, configs=HOTSPOTS_CONFIGS)
        # the geometry parameters read by assemble_hotspots
        self.min_area_mm2 = self.geometry.min_area_mm2
        self.match_distance_mm = self.geometry.match_distance_mm

    def at_threshold(self, threshold: float) -> LearnedHotSpotDetector:
        """The same network at another probability threshold (no reloading)."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"LearnedHotSpotDetector: threshold must lie in (0, 1), got {threshold}")
        other = copy.copy(self)
        other.threshold = float(threshold)
        return other

    def __repr__(self) -> str:
        return f"LearnedHotSpotDetector(threshold={self.threshold}, geometry={self.geometry!r})"

    def lesion_probability(self, scan: np.ndarray) -> np.ndarray:
        """P(lesion) per pixel, float32 (H, W) at the scan's size (bilinear from the network's grid)."""
        logits = self.network.logits(scan)
        probability = torch.softmax(logits, dim=1)[:, 1:2]
        size = tuple(np.asarray(scan).shape)
        return torch.nn.functional.interpolate(probability, size=size, mode="bilinear")[0, 0].numpy()

    def __call__(self, scan: np.ndarray, regions: np.ndarray, pixel_mm: tuple[float, float] | None = None) -> HotSpots:
        """Detect the hot spots of one scan (see :meth:`bundle.read.hotspots.HotSpotDetector.__call__`)."""
        probability = self.lesion_probability(scan)
        geometry = self.geometry

        def view_candidates(scan, regions, pixel_mm, view):
            half = scan.shape[1] // 2
            cols = slice(view * half, (view + 1) * half)
            near_bone = dilate(bone_mask(regions[:, cols]), geometry.skeleton_margin_mm, pixel_mm)
            ratio = geometry.ratio_image(scan[:, cols], regions[:, cols], pixel_mm)
            return (probability[:, cols] >= self.threshold) & near_bone, ratio

        return assemble_hotspots(self, scan, regions, pixel_mm, view_candidates)
