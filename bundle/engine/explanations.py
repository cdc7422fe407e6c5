"""Grad-CAM explanations of the lesion classifier (``monai.visualize.GradCAM``), saved as overlay PNGs.

Switched on in ``configs/inference.yaml`` with ``--explain true``: for every lesion, the class-activation map of
P(malignant) at the network's last convolutional stage (``NetworkSpec.cam_layer``), upsampled to the input size,
drawn over the network's input scan with the lesion's outline, in ``output_dir/explanations/<lesion_id>.png``.
A map shows where the evidence for "malignant" came from; it is not a segmentation and not a proof.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.visualize import GradCAM

from bundle.engine.writers import ERROR_KEY, malignant_probability
from bundle.io import atomic_save_figure

MALIGNANT = 1


def gradcam_maps(
    network: torch.nn.Module, layer: str, images: torch.Tensor, class_index: int = MALIGNANT
) -> np.ndarray:
    """Grad-CAM maps of ``class_index`` for a batch, float32 (B, h, w) in [0, 1], at the input's size.

    Args:
        network: the classifier (its mode is kept; run it in eval mode for inference).
        layer: the module to explain, e.g. ``"layer4"`` (``bundle.nets.NETWORKS[name].cam_layer``).
        images: the network's input (B, C, h, w).
    """
    cam = GradCAM(nn_module=network, target_layers=layer)
    x = torch.as_tensor(images).detach().float().contiguous()
    with torch.enable_grad():
        maps = cam(x=x.requires_grad_(True), class_idx=class_index)
    return maps[:, 0].detach().cpu().numpy().astype(np.float32)


def safe_name(text: str) -> str:
    """A file name from a lesion id (characters other than letters, digits, ``._-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "lesion"


def save_overlay(path: Path, image: np.ndarray, cam: np.ndarray, title: str) -> None:
    """Input scan (channel 0) in inverted grey, the lesion mask (channel 1) outlined, the map over it; atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scan, mask = image[0], image[1] > 0.5
    height, width = scan.shape
    fig, ax = plt.subplots(figsize=(3.2, 3.2 * height / width + 0.4), dpi=120)
    ax.imshow(scan, cmap="gray_r", interpolation="nearest")
    ax.imshow(cam, cmap="jet", alpha=0.35, vmin=0, vmax=1, interpolation="bilinear")
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=["white"], linewidths=0.8)
    ax.set_title(title, fontsize=6)
    ax.set_axis_off()
    atomic_save_figure(path, fig)
    plt.close(fig)


class GradCAMWriter:
    """Ignite handler: after each iteration, Grad-CAM of P(malignant) for every lesion of the batch, as PNGs.

    Args:
        network: the classifier the evaluator runs.
        layer: the module to explain (``NetworkSpec.cam_layer``).
        output_dir: where ``<lesion_id>.png`` go.
        threshold: for the class named in each picture's title.
    """

    def __init__(self, network: torch.nn.Module, layer: str, output_dir: str | os.PathLike, threshold: float = 0.5):
        if not layer:
            raise ValueError(
                "--explain: Grad-CAM needs the network's layer to explain (NetworkSpec.cam_layer); it works with the "
                "per-lesion networks of bundle.nets.NETWORKS (lesion_mode lesion)"
            )
        self.network, self.layer = network, layer
        self.output_dir, self.threshold = Path(output_dir), float(threshold)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        items: list[Mapping[str, Any]] = engine.state.batch
        outputs: list[Mapping[str, Any]] = engine.state.output
        kept = [(i, o) for i, o in zip(items, outputs, strict=True) if not i.get(ERROR_KEY)]  # not placeholders
        if not kept:
            return
        images = torch.stack([torch.as_tensor(i["image"]) for i, _ in kept]).to(next(self.network.parameters()).device)
        maps = gradcam_maps(self.network, self.layer, images)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for (item, output), cam in zip(kept, maps, strict=True):
            p = malignant_probability(output["pred"])
            name = str(item.get("lesion_id", "lesion"))
            title = f"{name}: P(malignant) {p:.3f} ({'malignant' if p >= self.threshold else 'benign'})"
            image = torch.as_tensor(item["image"]).float().cpu().numpy()
            save_overlay(self.output_dir / f"{safe_name(name)}.png", image, cam, title)
