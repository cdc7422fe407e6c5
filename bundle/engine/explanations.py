"""Grad-CAM explanations of the lesion classifier (``monai.visualize.GradCAM``), saved as overlay PNGs.

Switched on in ``configs/inference.yaml`` with ``--explain true``: for every lesion, the class-activation map of
P(malignant) at the network's last convolutional stage (``NetworkSpec.cam_layer``), upsampled to the input size,
drawn over the network's input scan with the lesion's outline, in ``output_dir/explanations/<lesion_id>.png``.
A map shows where the evidence for "malignant" came from; it is not a segmentation and not a proof.

In the one-pass mode (``lesion_mode: scan``) each lesion's map is the gradient of **its** output row, one backward
pass per lesion, at the backbone's last pooled stage (:attr:`bundle.nets.onepass.OnePassLesionClassifier.cam_layer`),
over the scan with that lesion's outline.
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
from monai.engines.utils import IterationEvents
from monai.visualize import GradCAM
from torch import nn

from bundle.data.local_inputs import PATCH_KEY
from bundle.engine.writers import ERROR_KEY, malignant_probability
from bundle.io import atomic_save_figure

MALIGNANT = 1


def gradcam_maps(
    network: torch.nn.Module, layer: str, images: torch.Tensor, class_index: int = MALIGNANT, **inputs: torch.Tensor
) -> np.ndarray:
    """Grad-CAM maps of ``class_index`` for a batch, float32 (B, h, w) in [0, 1], at the input's size.

    Args:
        network: the classifier (its mode is kept; run it in eval mode for inference).
        layer: the module to explain, e.g. ``"layer4"`` (``bundle.nets.NETWORKS[name].cam_layer``).
        images: the network's input (B, C, h, w).
        inputs: the network's other inputs (``patch=`` (B, 3, P, P) with train.yaml's ``local_patch``).
    """
    cam = GradCAM(nn_module=network, target_layers=layer)
    x = torch.as_tensor(images).detach().float().contiguous()
    with torch.enable_grad():
        maps = cam(x=x.requires_grad_(True), class_idx=class_index, **inputs)
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


class LesionRow(nn.Module):
    """One lesion's logits (1, classes) from a one-pass network: ``forward(scan (1, 1, H, W))`` runs
    ``network(scan, **inputs)`` (the scan's masks, validity and patches) and keeps output row ``row``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.net = network
        self.row = 0
        self.inputs: dict[str, torch.Tensor] = {}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image, **self.inputs)[self.row : self.row + 1]


class GradCAMWriter:
    """Ignite handler: after each iteration, Grad-CAM of P(malignant) for every lesion of the batch, as PNGs.

    Args:
        network: the classifier the evaluator runs.
        layer: the module to explain (``NetworkSpec.cam_layer``; one pass: the network's ``cam_layer``).
        output_dir: where ``<lesion_id>.png`` go.
        threshold: for the class named in each picture's title.
        per_scan: the network is a one-pass network and batches hold scans (train.yaml ``lesion_mode: scan``).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        layer: str,
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        per_scan: bool = False,
    ):
        if not layer:
            raise ValueError(
                "--explain: Grad-CAM needs the network's layer to explain (NetworkSpec.cam_layer, or the one-pass "
                "network's cam_layer)"
            )
        self.network, self.layer, self.per_scan = network, layer, bool(per_scan)
        self.output_dir, self.threshold = Path(output_dir), float(threshold)
        self.collated: Mapping[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        if self.per_scan:  # the collated batch (scans, padded masks) before MONAI decollates it per lesion
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.keep_batch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def keep_batch(self, engine: Engine) -> None:
        self.collated = engine.state.batch

    def __call__(self, engine: Engine) -> None:
        items: list[Mapping[str, Any]] = engine.state.batch
        outputs: list[Mapping[str, Any]] = engine.state.output
        if self.per_scan:
            self.explain_scans(items, outputs)
            return
        kept = [(i, o) for i, o in zip(items, outputs, strict=True) if not i.get(ERROR_KEY)]  # not placeholders
        if not kept:
            return
        device = next(self.network.parameters()).device
        images = torch.stack([torch.as_tensor(i["image"]) for i, _ in kept]).to(device)
        # the local patch of train.yaml's local_patch goes to the network beside the image
        inputs = {
            key: torch.stack([torch.as_tensor(i[key]) for i, _ in kept]).float().to(device)
            for key in (PATCH_KEY,)
            if key in kept[0][0]
        }
        maps = gradcam_maps(self.network, self.layer, images, **inputs)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for (item, output), cam in zip(kept, maps, strict=True):
            self.save(item, output, torch.as_tensor(item["image"]).float().cpu().numpy(), cam)

    def save(self, item: Mapping[str, Any], output: Mapping[str, Any], picture: np.ndarray, cam: np.ndarray) -> None:
        """``<lesion_id>.png``: ``picture`` (scan, mask) with ``cam`` over it, P(malignant) and class in the title."""
        p = malignant_probability(output["pred"])
        name = str(item.get("lesion_id", "lesion"))
        title = f"{name}: P(malignant) {p:.3f} ({'malignant' if p >= self.threshold else 'benign'})"
        save_overlay(self.output_dir / f"{safe_name(name)}.png", picture, cam, title)

    def explain_scans(self, items: list[Mapping[str, Any]], outputs: list[Mapping[str, Any]]) -> None:
        """One-pass mode: a map per valid lesion of the kept collated batch, its output row's gradient."""
        batch = self.collated
        device = next(self.network.parameters()).device
        valid = torch.as_tensor(batch["lesion_valid"]).bool()
        masks, images = torch.as_tensor(batch["masks"]).float(), torch.as_tensor(batch["image"]).float()
        patches = batch.get(PATCH_KEY)
        lesion = LesionRow(self.network)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for k, (b, row) in enumerate(valid.nonzero().tolist()):
            if items[k].get(ERROR_KEY):  # a placeholder of a scan that failed to load
                continue
            lesion.row = row  # the valid lesions of a scan come first, in order
            lesion.inputs = {"lesion_masks": masks[b : b + 1].to(device), "lesion_valid": valid[b : b + 1].to(device)}
            if patches is not None:
                lesion.inputs["lesion_patches"] = torch.as_tensor(patches[b : b + 1]).float().to(device)
            cam = gradcam_maps(lesion, f"net.{self.layer}", images[b : b + 1].to(device))[0]
            self.save(items[k], outputs[k], torch.stack([images[b, 0], masks[b, row]]).numpy(), cam)
