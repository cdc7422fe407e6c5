"""Per-region Dice of the learned region segmenter (and the atlas, when available) on the held-out fold's scans.

    python scripts/evaluate_regions.py --dataset_dir DIR --checkpoint outputs/regions/fold0/checkpoints/model.pt \\
        --fold 0 --spatial_size 256 128 --out outputs/regions/fold0/eval

Reads the datalist's ``scans`` list, takes the scans of the test fold ``--fold`` (never used for training or model
selection), runs :class:`bundle.read.learned.LearnedRegionSegmenter` and, if :mod:`bundle.read.atlas` imports,
:class:`~bundle.read.atlas.AtlasRegionSegmenter` on each, and compares with the true region map by
:func:`bundle.read.region_metrics.region_dice`. Writes ``--out/regions_dice.md`` (a table: per region the mean Dice over
the scans where the region is in the map or the estimate) and ``--out/regions_dice.json`` (the same, with every
scan's values and the seconds per scan).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.data.datalist import load_scan_split
from bundle.data.readers import WholeBodyScanReader
from bundle.data.regions import BONE_REGIONS, REGIONS
from bundle.read.learned import LearnedRegionSegmenter
from bundle.read.region_metrics import region_dice

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_2d(reader: WholeBodyScanReader, path: str) -> np.ndarray:
    """A scan or region map file → (H, W) array in the stored layout."""
    return np.asarray(reader.get_data(reader.read(path))[0])


def mean_dice(per_scan: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per region: the mean over scans where it is present (NaN-skipping), plus ``bone_mean`` and ``all_mean``."""
    out = {}
    for region in REGIONS:
        values = [d[region.name] for d in per_scan if not math.isnan(d[region.name])]
        out[region.name] = float(np.mean(values)) if values else float("nan")
    out["bone_mean"] = float(np.nanmean([out[r.name] for r in BONE_REGIONS]))
    out["all_mean"] = float(np.nanmean([out[r.name] for r in REGIONS]))
    return out


def evaluate(
    segmenters: dict[str, Callable[[np.ndarray], np.ndarray]], entries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Dice per region and scan of each segmenter on ``entries`` (``image``, ``label`` = region map path)."""
    reader = WholeBodyScanReader()
    results: dict[str, Any] = {name: {"per_scan": [], "seconds": []} for name in segmenters}
    for i, entry in enumerate(entries):
        scan, truth = read_2d(reader, entry["image"]), read_2d(reader, entry["label"]).astype(np.int16)
        for name, segment in segmenters.items():
            start = time.perf_counter()
            pred = segment(scan)
            results[name]["seconds"].append(time.perf_counter() - start)
            results[name]["per_scan"].append({"patient_id": entry["patient_id"], **region_dice(pred, truth)})
        print(f"{i + 1}/{len(entries)} {entry['patient_id']}", flush=True)
    for res in results.values():
        res["mean"] = mean_dice(res["per_scan"])
        res["seconds_per_scan"] = float(np.mean(res["seconds"])) if res["seconds"] else float("nan")
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """Regions as rows, segmenters as columns (mean Dice over the test scans)."""
    names = list(results)
    rows = ["| region | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in [*(r.name for r in REGIONS), "bone_mean", "all_mean"]:
        cells = [f"{results[n]['mean'][key]:.3f}" if not math.isnan(results[n]["mean"][key]) else "–" for n in names]
        label = f"**{key}**" if key.endswith("_mean") else key
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append("| seconds per scan | " + " | ".join(f"{results[n]['seconds_per_scan']:.2f}" for n in names) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="phantom/data folder with datalist.json (scans list)")
    parser.add_argument("--datalist", default=None, help="default: DATASET_DIR/datalist.json")
    parser.add_argument("--checkpoint", required=True, help="model.pt of a configs/regions.yaml training run")
    parser.add_argument("--bundle_root", default=str(REPO_ROOT))
    parser.add_argument("--fold", type=int, default=0, help="the held-out test fold")
    parser.add_argument("--spatial_size", type=int, nargs=2, default=None, help="H W the network was trained at")
    parser.add_argument("--no_atlas", action="store_true", help="evaluate the learned segmenter only")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test scans")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="output folder (regions_dice.md, regions_dice.json)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    datalist = args.datalist or str(Path(args.dataset_dir) / "datalist.json")
    entries = load_scan_split(datalist, args.dataset_dir, args.fold, "test")[: args.limit]
    segmenters: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "learned": LearnedRegionSegmenter(args.checkpoint, args.bundle_root, spatial_size=args.spatial_size)
    }
    if not args.no_atlas:
        try:
            from bundle.read.atlas import AtlasRegionSegmenter
        except ImportError as err:
            print(f"atlas not evaluated: {err}")
        else:
            segmenters["atlas"] = AtlasRegionSegmenter()
    results = evaluate(segmenters, entries)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    header = (
        f"Mean Dice per region on the {len(entries)} scans of test fold {args.fold} ({Path(datalist).resolve()}); "
        f"learned: {Path(args.checkpoint).resolve()}\n\n"
    )
    (out / "regions_dice.md").write_text(header + table + "\n", encoding="utf-8")
    summary = {
        "datalist": str(Path(datalist).resolve()),
        "fold": args.fold,
        "scans": len(entries),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "spatial_size": args.spatial_size,
        "segmenters": results,
    }
    (out / "regions_dice.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
