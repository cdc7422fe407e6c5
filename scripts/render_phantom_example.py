"""Render one phantom scan with its lesion outlines (red malignant, green benign) for docs/images/phantom_example.png.

Typical usage::

    python scripts/render_phantom_example.py                       # seed 0, patient index 14, default output
    python scripts/render_phantom_example.py --seed 1 --patient 4 --out /tmp/example.png

Display: inverted grey (black = many counts) as on clinical workstations, windowed at the 99.5th percentile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.phantom import PhantomConfig, generate_patient, patient_id, patient_rng

REPO = Path(__file__).resolve().parents[1]
COLOURS = {1: "#e0242b", 0: "#1a9e3f"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="data-set seed (default: 0)")
    parser.add_argument("--patient", type=int, default=14, help="0-based patient index (default: 14)")
    parser.add_argument(
        "--out",
        default=str(REPO / "docs" / "images" / "phantom_example.png"),
        help="PNG to write (default: %(default)s)",
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the figure (default: 100)")
    return parser


def render(seed: int, index: int, out: Path, dpi: int) -> None:
    scan, masks, records = generate_patient(patient_rng(seed, index), PhantomConfig(), patient_id(index))
    image = scan.image
    half = image.shape[1] // 2
    fig, ax = plt.subplots(figsize=(5.2, 8.6), dpi=dpi)
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=float(np.percentile(image, 99.5)), interpolation="antialiased")
    for mask, record in zip(masks, records, strict=True):
        ax.contour(mask, levels=[0.5], colors=[COLOURS[record["label"]]], linewidths=0.7)
    ax.axvline(half - 0.5, color="0.6", linewidth=0.5)
    ax.text(half * 0.5, 12, "anterior", ha="center", va="top", fontsize=8)
    ax.text(half * 1.5, 12, "posterior (mirrored)", ha="center", va="top", fontsize=8)
    malignant = sum(r["label"] for r in records)
    ax.set_title(
        f"{scan.patient_id}: {scan.info['tumor_type']} primary, {len(records)} lesions "
        f"({malignant} malignant, {len(records) - malignant} benign)\n"
        f"{scan.info['counts_anterior'] / 1e6:.1f} M / {scan.info['counts_posterior'] / 1e6:.1f} M counts, "
        f"hottest pixel {image.max()}",
        fontsize=8,
    )
    handles = [Line2D([], [], color=COLOURS[k], label=name) for k, name in ((1, "malignant"), (0, "benign"))]
    ax.legend(handles=handles, loc="lower center", fontsize=7, frameon=False, ncol=2)
    ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    render(args.seed, args.patient, Path(args.out), args.dpi)
