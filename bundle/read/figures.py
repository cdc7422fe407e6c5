"""Figures of the read's evaluation (matplotlib, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bundle.io import atomic_save_figure


def plot_froc(points: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """FROC curve: lesion-level sensitivity against false positives per scan, one point per detector threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=120)
    fps = [p["false_positives_per_scan"] for p in points]
    sens = [p["sensitivity"] for p in points]
    ax.plot(fps, sens, "o-", color="#1f77b4")
    for p in points:
        ax.annotate(f"{p['threshold']:g}", (p["false_positives_per_scan"], p["sensitivity"]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("lesion-level sensitivity")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    atomic_save_figure(path, fig)
    plt.close(fig)
