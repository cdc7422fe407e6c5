"""Render the annotation app's hot-spot proposals over a phantom scan (docs/images/label_proposals.png).

Asks a running annotation app (bundle/label) for its proposals on one scan, at its proposal operating point and at
the full read's (2.2 x normal bone), and draws them with the phantom's true lesions:

    python scripts/render_label_proposals.py --url http://127.0.0.1:8000 --image P00001 \\
        --scan data/shot/images/P00001.nii.gz --lesions data/shot/lesions/P00001.nii.gz \\
        --out docs/images/label_proposals.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import requests
from matplotlib.lines import Line2D

from bundle.data.readers import WholeBodyScanReader
from bundle.io import atomic_save_figure
from bundle.read.detection_metrics import lesion_centre, match_scan


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the running annotation app")
    parser.add_argument("--image", required=True, help="image id in its datastore")
    parser.add_argument("--scan", type=Path, required=True, help="the same scan's file (for display)")
    parser.add_argument("--lesions", type=Path, required=True, help="the phantom's lesion label image of the scan")
    parser.add_argument("--thresholds", default="1.2,2.2", help="proposal thresholds to draw, one panel each")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dpi", type=int, default=110)
    return parser


def proposals(url: str, image: str, threshold: float) -> np.ndarray:
    """The app's proposal label image (H, W) at ``threshold``."""
    response = requests.post(
        f"{url}/infer/hotspot_proposal",
        params={"image": image, "output": "image"},
        data={"params": json.dumps({"proposal_threshold": threshold})},
        timeout=600,
    )
    response.raise_for_status()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "proposals.nii.gz"
        path.write_bytes(response.content)
        return np.asarray(nib.load(str(path)).dataobj)


def main() -> None:
    args = get_args_parser().parse_args()
    reader = WholeBodyScanReader()
    scan, _ = reader.get_data(reader.read(str(args.scan)))
    truth = np.asarray(nib.load(str(args.lesions)).dataobj)
    half = scan.shape[1] // 2
    lesion_masks = [truth[:, :half] == k for k in np.unique(truth) if k > 0]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    fig, axes = plt.subplots(1, len(thresholds), figsize=(4.2 * len(thresholds), 8.6))
    for ax, threshold in zip(np.atleast_1d(axes), thresholds, strict=True):
        labels = proposals(args.url, args.image, threshold)
        match = match_scan(labels[:, :half], lesion_masks)
        ax.imshow(scan, cmap="gray_r", vmin=0, vmax=np.percentile(scan, 99.5), interpolation="nearest")
        ax.contour(labels > 0, levels=[0.5], colors="tab:orange", linewidths=0.7)
        for mask, found in zip(lesion_masks, match.found, strict=True):
            row, col = lesion_centre(mask)
            for offset in (0, half):
                ax.plot(col + offset, row, marker="o", ms=9, mfc="none", mew=1.4, color="tab:green" if found else "red")
        ax.set_title(
            f"threshold {threshold:g} x normal bone\n{int(match.found.sum())}/{len(match.found)} lesions found, "
            f"{int((~match.true_positive).sum())} false positives",
            fontsize=9,
        )
        ax.set_axis_off()
    legend = [
        Line2D([], [], color="tab:orange", lw=1.2, label="proposed hot spot (outline)"),
        Line2D([], [], color="tab:green", marker="o", mfc="none", ls="", label="true lesion, found"),
        Line2D([], [], color="red", marker="o", mfc="none", ls="", label="true lesion, missed"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"hotspot_proposal on phantom scan {args.image} (anterior | mirrored posterior)", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.set_dpi(args.dpi)
    atomic_save_figure(args.out, fig)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
