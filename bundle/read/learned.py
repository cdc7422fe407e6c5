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

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, ScaleIntensityRangePercentilesd, ThresholdIntensityd

from bundle.data.regions import classes_to_labels
from bundle.engine.configs import read_bundle_config
from bundle.engine.inferers import prepare_network

__all__ = ["REGIONS_CONFIGS", "LearnedRegionSegmenter", "scaling_transforms"]

# the config pair of the region network, relative to the bundle root
REGIONS_CONFIGS = ("configs/train.yaml", "configs/regions.yaml")


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
    ) -> None:
        if not os.path.isfile(checkpoint):
            raise ValueError(f"{os.path.abspath(checkpoint)}: region network checkpoint not found")
        parser = read_bundle_config(
            bundle_root,
            list(REGIONS_CONFIGS),
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
    def __call__(self, scan: np.ndarray) -> np.ndarray:
        """Region map of one scan.

        Args:
            scan: counts, shape (H, W), stored layout (anterior | mirrored posterior).

        Returns:
            int16 region labels (H, W) (the values of ``REGIONS``, 0 = background); a view half that is all zero
            (a single-view scan) is all zero.
        """
        scan = np.asarray(scan)
        if scan.ndim != 2:
            raise ValueError(f"expected one scan of shape (H, W), got an array of shape {scan.shape}")
        height, width = scan.shape
        image = self.preprocessing({"image": scan.astype(np.float32)[None]})["image"]
        batch = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(self.device)
        logits = self.inferer(batch, self.network)  # (1, NUM_CLASSES, h, w)
        classes = logits.argmax(dim=1, keepdim=True).float()
        classes = torch.nn.functional.interpolate(classes, size=(height, width), mode="nearest-exact")
        labels = classes_to_labels(classes[0, 0].round().long().cpu().numpy())
        half = width // 2
        for view in (np.s_[:, :half], np.s_[:, half:]):
            if not np.any(scan[view]):
                labels[view] = 0
        return labels
