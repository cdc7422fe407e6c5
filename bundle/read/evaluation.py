"""Measuring the read against ground truth (a datalist with lesion masks, region maps and true BSI, e.g. the phantom).

- :func:`froc`: the detector alone, over a list of thresholds: lesion-level sensitivity and false positives per scan
  (the matching rule of :mod:`bundle.read.detection_metrics`), overall, by lesion size, by region and for lesions
  next to the bladder (the known hard case).
- :func:`evaluate_read`: a finished read (``OUT/<scan>/read.json`` + ``hotspots.nii.gz``) against the truth:
  detection at the read's operating point, BSI against the true BSI (Spearman, mean absolute difference), and the
  patient-level probability against "has a malignant lesion" (AUC, sensitivity, specificity).

Command line: ``python -m bundle.read froc|evaluate ...`` (docs/read.md).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score

from bundle.data.datalist import read_datalist
from bundle.data.paths import resolve
from bundle.data.readers import WholeBodyScanReader
from bundle.data.regions import REGION_BY_NAME, check_region_map
from bundle.read.detection_metrics import ScanMatch, froc_point, match_scan
from bundle.read.hotspots import HotSpotDetector, pixel_size_mm
from bundle.read.reading import scan_name

SIZE_BINS_MM = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, float("inf")))
NEAR_BLADDER_MM = 30.0


def size_bin(size_mm: float) -> str:
    """Name of the lesion-size bin of a diameter in mm (``"<10"``, ``"10-20"``, ``"20-30"``, ``">=30"``)."""
    for lo, hi in SIZE_BINS_MM:
        if lo <= size_mm < hi:
            return f"<{hi:g}" if lo == 0 else (f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}")
    return "unknown"


class TruthScan:
    """Ground truth of one scan: its counts, region map, lesion masks (one half) and lesion/scan records."""

    def __init__(self, entry: dict[str, Any], lesions: list[dict[str, Any]], dataset_dir: Path, reader: Any) -> None:
        self.entry, self.lesions = entry, lesions
        self.image_path = resolve(entry["image"], dataset_dir)
        self.counts, _ = reader.get_data(reader.read(self.image_path))
        self.half = self.counts.shape[1] // 2
        self.regions = None
        if entry.get("regions"):
            path = resolve(entry["regions"], dataset_dir)
            regions, _ = reader.get_data(reader.read(path))
            self.regions = check_region_map(np.rint(regions), self.counts.shape, path)
        self.masks = []
        for lesion in lesions:
            path = resolve(lesion["mask"], dataset_dir)
            mask, _ = reader.get_data(reader.read(path))
            if mask.shape != self.counts.shape:
                raise ValueError(
                    f"{path}: mask of shape {mask.shape}, its scan {self.image_path} is {self.counts.shape}"
                )
            self.masks.append(mask[:, : self.half] > 0)
        self.pixel_mm = pixel_size_mm(self.counts.shape)

    def near_bladder(self) -> list[bool]:
        """Per lesion: its centre lies within :data:`NEAR_BLADDER_MM` of the bladder label (needs the region map)."""
        if self.regions is None:
            return [False] * len(self.lesions)
        bladder = self.regions[:, : self.half] == REGION_BY_NAME["bladder"].value
        if not bladder.any():
            return [False] * len(self.lesions)
        distance = ndimage.distance_transform_edt(~bladder, sampling=self.pixel_mm)
        near = []
        for mask in self.masks:
            points = np.argwhere(mask)
            near.append(
                bool(len(points)) and float(distance[tuple(points.mean(axis=0).round().astype(int))]) <= NEAR_BLADDER_MM
            )
        return near


def truth_scans(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    folds: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[TruthScan]:
    """The scans of a datalist with ``scans`` and ``training`` lists (the phantom's), optionally of some folds."""
    root = Path(dataset_dir)
    content = read_datalist(datalist or root / "datalist.json")
    scans = content.get("scans")
    if not scans:
        raise ValueError(f"{datalist or root / 'datalist.json'}: no 'scans' list (regions, true BSI) to evaluate on")
    by_image = defaultdict(list)
    for entry in content["training"]:
        by_image[entry["image"]].append(entry)
    reader = WholeBodyScanReader()
    chosen = [s for s in scans if folds is None or s.get("fold") in set(folds)][:limit]
    return [TruthScan(s, by_image.get(s["image"], []), root, reader) for s in chosen]


def _grouped(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        groups[str(row[key])].append(row["found"])
    return {g: {"lesions": len(v), "sensitivity": round(float(np.mean(v)), 4)} for g, v in sorted(groups.items())}


def detection_summary(scans: Sequence[TruthScan], matches: Sequence[ScanMatch]) -> dict[str, Any]:
    """Sensitivity and false positives per scan, overall and by size, region, pattern and next-to-bladder."""
    rows = []
    for scan, match in zip(scans, matches, strict=True):
        for lesion, found, near in zip(scan.lesions, match.found, scan.near_bladder(), strict=True):
            rows.append(
                {
                    "found": bool(found),
                    "size": size_bin(float(lesion.get("size_mm", 0.0))),
                    "region": lesion.get("region", "unknown"),
                    "kind": "cold" if lesion.get("cold") else ("whole bone" if lesion.get("whole_bone") else "hot"),
                    "label": "malignant" if lesion.get("label") == 1 else "benign",
                    "near_bladder": "next to the bladder" if near else "elsewhere",
                }
            )
    sensitivity, fp = froc_point(matches)
    return {
        "scans": len(scans),
        "lesions": len(rows),
        "sensitivity": round(sensitivity, 4),
        "false_positives_per_scan": round(fp, 3),
        "by_size_mm": _grouped(rows, "size"),
        "by_region": _grouped(rows, "region"),
        "by_kind": _grouped(rows, "kind"),
        "by_label": _grouped(rows, "label"),
        "near_bladder": _grouped(rows, "near_bladder"),
    }


def froc(
    scans: Sequence[TruthScan],
    thresholds: Sequence[float],
    segmenter: Callable[[np.ndarray], np.ndarray] | None = None,
    detector_at: Callable[[float], Any] | None = None,
) -> list[dict[str, Any]]:
    """One :func:`detection_summary` per detector threshold.

    Args:
        segmenter: region maps of the scans; None: the true ones of the datalist.
        detector_at: ``threshold -> detector``; default the classical :class:`HotSpotDetector` at that threshold.
    """
    detector_at = detector_at or (lambda t: HotSpotDetector(threshold=t))
    region_maps = [scan.regions if segmenter is None else segmenter(scan.counts) for scan in scans]
    points = []
    for threshold in thresholds:
        detector = detector_at(float(threshold))
        matches = []
        for scan, regions in zip(scans, region_maps, strict=True):
            hotspots = detector(scan.counts, regions, scan.pixel_mm)
            matches.append(match_scan(hotspots.labels[:, : scan.half], scan.masks))
        points.append({"threshold": float(threshold), **detection_summary(scans, matches)})
    return points


def choose_threshold(points: Sequence[dict[str, Any]], max_false_positives: float) -> float:
    """The lowest threshold whose false positives per scan do not exceed ``max_false_positives`` (the rule by
    which the default operating point is chosen, on scans that are not reported)."""
    allowed = [p["threshold"] for p in points if p["false_positives_per_scan"] <= max_false_positives]
    if not allowed:
        raise ValueError(f"no threshold keeps false positives at or below {max_false_positives} per scan")
    return min(allowed)


def evaluate_read(scans: Sequence[TruthScan], read_dir: str | os.PathLike, threshold: float = 0.5) -> dict[str, Any]:
    """A finished read against the truth: detection, BSI agreement, patient-level performance."""
    root = Path(read_dir)
    matches, used, bsi_pairs, patients = [], [], [], []
    for scan in scans:
        folder = root / scan_name(scan.image_path)
        if not (folder / "read.json").is_file():
            continue
        result = json.loads((folder / "read.json").read_text())
        labels, _ = WholeBodyScanReader().get_data(WholeBodyScanReader().read(str(folder / "hotspots.nii.gz")))
        matches.append(match_scan(np.rint(labels[:, : scan.half]).astype(np.int32), scan.masks))
        used.append(scan)
        bsi_pairs.append((float(scan.entry.get("bsi", 0.0)), float(result["bsi"])))
        malignant = int(any(les.get("label") == 1 for les in scan.lesions))
        patients.append((malignant, float(result["patient_probability"])))
    if not used:
        raise ValueError(f"{root}: no read results of the datalist's scans")
    true_bsi, read_bsi = map(np.asarray, zip(*bsi_pairs, strict=True))
    truth, probability = map(np.asarray, zip(*patients, strict=True))
    rho = stats.spearmanr(true_bsi, read_bsi).statistic if len(used) > 2 else float("nan")
    called = probability >= threshold
    return {
        "detection": detection_summary(used, matches),
        "bsi": {
            "scans": len(used),
            "spearman": round(float(rho), 4),
            "mean_absolute_difference": round(float(np.mean(np.abs(read_bsi - true_bsi))), 4),
            "mean_true": round(float(true_bsi.mean()), 4),
            "mean_read": round(float(read_bsi.mean()), 4),
        },
        "patient": {
            "scans": len(used),
            "with_malignant_lesion": int(truth.sum()),
            "auc": round(float(roc_auc_score(truth, probability)), 4) if len(set(truth)) == 2 else None,
            "sensitivity": round(float(called[truth == 1].mean()), 4) if truth.any() else None,
            "specificity": round(float((~called[truth == 0]).mean()), 4) if (truth == 0).any() else None,
        },
    }


def evaluate_comparisons(
    pairs_file: str | os.PathLike, compare_root: str | os.PathLike, folds: Sequence[int] | None = None
) -> dict[str, Any]:
    """Finished comparisons (``compare_root/<patient_id>/compare.json``) against the truth of a pairs file (the
    phantom's ``pairs.json``): new-lesion detection, false new lesions per pair, the "two or more new lesions"
    call, BSI-change agreement.

    A true new lesion is **detected** when a hot spot the comparison calls a new lesion (new, P(malignant) ≥ the
    threshold) finds its follow-up mask by the read's matching rule; a new lesion that finds none is a **false new
    lesion**.
    """
    path = Path(pairs_file)
    root = path.parent
    content = json.loads(path.read_text(encoding="utf-8"))
    reader = WholeBodyScanReader()
    detected = total_new = false_new = 0
    calls, bsi_changes, used = [], [], 0
    for pair in content["pairs"]:
        if folds is not None and pair.get("fold") not in set(folds):
            continue
        folder = Path(compare_root) / str(pair["patient_id"])
        if not (folder / "compare.json").is_file():
            continue
        result = json.loads((folder / "compare.json").read_text())
        used += 1
        read_name = Path(result["reads"]["followup"])
        labels, _ = reader.get_data(reader.read(str(folder / read_name / "hotspots.nii.gz")))
        labels = np.rint(labels).astype(np.int32)
        half = labels.shape[1] // 2
        new_ids = [r["followup_hotspot"] for r in result["hotspots"] if r["new_lesion"]]
        new_only = np.where(np.isin(labels[:, :half], new_ids), labels[:, :half], 0)
        masks = []
        for lesion in pair["lesions"]:
            if lesion["fate"] == "new" and lesion.get("followup_mask"):
                mask, _ = reader.get_data(reader.read(resolve(lesion["followup_mask"], root)))
                masks.append(mask[:, :half] > 0)
        match = match_scan(new_only, masks)
        total_new += len(masks)
        detected += int(match.found.sum())
        false_new += int(sum(1 for k in new_ids if not match.true_positive[k - 1]))
        calls.append((bool(pair["progression"]), bool(result["pcwg_progression_criterion_met"])))
        bsi_changes.append((pair["bsi_followup"] - pair["bsi_baseline"], result["bsi_change"]))
    if not used:
        raise ValueError(f"{compare_root}: no comparison results of the pairs in {path}")
    truth, called = (np.array(v) for v in zip(*calls, strict=True))
    true_change, read_change = (np.array(v, float) for v in zip(*bsi_changes, strict=True))
    rho = stats.spearmanr(true_change, read_change).statistic if used > 2 else float("nan")
    return {
        "pairs": used,
        "new_lesions_true": total_new,
        "new_lesion_sensitivity": round(detected / total_new, 4) if total_new else None,
        "false_new_lesions_per_pair": round(false_new / used, 3),
        "pcwg_call": {
            "progressing_pairs": int(truth.sum()),
            "accuracy": round(float((truth == called).mean()), 4),
            "sensitivity": round(float(called[truth].mean()), 4) if truth.any() else None,
            "specificity": round(float((~called[~truth]).mean()), 4) if (~truth).any() else None,
        },
        "bsi_change": {
            "spearman": round(float(rho), 4),
            "mean_absolute_difference": round(float(np.abs(read_change - true_change).mean()), 4),
            "mean_true": round(float(true_change.mean()), 4),
            "mean_read": round(float(read_change.mean()), 4),
        },
    }
