"""Follow-up: a scan compared with the patient's previous one — new, persistent and resolved hot spots, BSI change,
and the PCWG2/3 "two or more new lesions" criterion of bone progression.

    python -m bundle.read compare --baseline SCAN --followup SCAN --out DIR --checkpoint CKPT [read.yaml overrides]

1. Both scans are read with the full read (:class:`~bundle.read.reading.WholeScanReader`, ``configs/read.yaml``)
   into ``DIR/baseline/`` and ``DIR/followup/``.
2. The follow-up is **aligned** to the baseline, per view: its normalised counts registered to the baseline's with
   ITK (affine, :func:`bundle.read.atlas.register_view`, in a physical space common to any matrix size, so scans of
   different sizes are resampled). Quality: the mean Dice of the bone regions of the two region maps before and
   after alignment.
3. The follow-up's hot spots, warped onto the baseline, are **matched** one to one with the baseline's: by overlap,
   else by centre distance ≤ ``match_distance_mm``. Matched: **persistent** (area and peak-ratio change); baseline
   only: **resolved**; follow-up only: **new**.
4. **New lesions** are the new hot spots the classifier calls malignant (P ≥ the read's threshold). The PCWG2/3
   criterion — two or more new lesions — is reported as met or not; PCWG asks for confirmation on a later scan,
   which this comparison of two scans cannot give (``compare.json`` says so).

Outputs (written into a temporary folder renamed to ``DIR``): ``compare.json``, ``compare.csv`` (one row per hot
spot of either scan: status, ids, areas, ratios, P(malignant)), ``compare.png`` (the two anterior views side by side,
matched hot spots numbered alike: yellow persistent, red new, grey resolved), and the two reads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from bundle.data.regions import BONE_REGIONS, check_region_map
from bundle.io import atomic_directory, atomic_save_figure, atomic_write_csv, atomic_write_text
from bundle.read.atlas import normalise_view, register_view, resample_to, warp
from bundle.read.reading import WholeScanReader

logger = logging.getLogger(__name__)

ALIGN_SHAPE = (512, 128)  # rows, columns of one view while aligning the two scans
COMPARE_COLUMNS = (
    "status", "pair", "baseline_hotspot", "followup_hotspot", "region", "baseline_area_mm2", "followup_area_mm2",
    "area_change", "baseline_peak_ratio", "followup_peak_ratio", "peak_ratio_change", "baseline_p_malignant",
    "followup_p_malignant", "new_lesion",
)  # fmt: skip
PCWG_NEW_LESIONS = 2


class ComparisonError(ValueError):
    """Two scans that cannot be compared (different patients, follow-up before baseline), naming both files."""


@dataclass
class Alignment:
    """The follow-up aligned to the baseline, per view (0 anterior, 1 posterior): ITK transforms mapping baseline
    physical points onto the follow-up, and the region-map Dice before and after."""

    transforms: dict[int, Any]
    dice_before: float
    dice_after: float
    deformable: bool = False

    def warp_labels(self, labels: np.ndarray, view: int, shape: tuple[int, int]) -> np.ndarray:
        """A follow-up label image of one view (h', w') resampled onto the baseline view's grid ``shape``, int32."""
        values = np.asarray(labels)
        if values.max(initial=0) > 255:
            raise ValueError("more than 255 hot spots in one scan cannot be warped as 8-bit labels")
        return warp(values.astype(np.uint8), self.transforms[view], shape, nearest=True).astype(np.int32)


def bone_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the bone regions present in either map (NaN when none)."""
    scores = []
    for region in BONE_REGIONS:
        x, y = a == region.value, b == region.value
        total = int(x.sum() + y.sum())
        if total:
            scores.append(2.0 * int((x & y).sum()) / total)
    return float(np.mean(scores)) if scores else float("nan")


def align(
    baseline: np.ndarray,
    followup: np.ndarray,
    baseline_regions: np.ndarray,
    followup_regions: np.ndarray,
    deformable: bool = False,
) -> Alignment:
    """Register the follow-up scan to the baseline per view present in both (stored layouts, any sizes); affine,
    then a B-spline stage with ``deformable``."""
    transforms: dict[int, Any] = {}
    before, after = [], []
    b_half, f_half = baseline.shape[1] // 2, followup.shape[1] // 2
    for view in (0, 1):
        b_view = baseline[:, view * b_half : (view + 1) * b_half]
        f_view = followup[:, view * f_half : (view + 1) * f_half]
        if not (b_view.any() and f_view.any()):
            continue
        fixed = resample_to(normalise_view(b_view), ALIGN_SHAPE)
        moving = resample_to(normalise_view(f_view), ALIGN_SHAPE)
        transforms[view] = register_view(fixed, moving, deformable)
        b_regions = baseline_regions[:, view * b_half : (view + 1) * b_half]
        f_regions = followup_regions[:, view * f_half : (view + 1) * f_half].astype(np.uint8)
        identity = warp(f_regions, _identity(), b_regions.shape, nearest=True)
        before.append(bone_dice(b_regions, identity))
        after.append(bone_dice(b_regions, warp(f_regions, transforms[view], b_regions.shape, nearest=True)))
    if not transforms:
        raise ComparisonError("the two scans share no view (one anterior-only, the other posterior-only)")
    return Alignment(transforms, float(np.nanmean(before)), float(np.nanmean(after)), deformable)


def _identity() -> Any:
    import itk

    transform = itk.AffineTransform[itk.D, 2].New()
    transform.SetIdentity()
    return transform


def match_hotspots(
    baseline_labels: np.ndarray, followup_warped: np.ndarray, pixel_mm: tuple[float, float], distance_mm: float
) -> list[tuple[int, int]]:
    """One-to-one (baseline id, follow-up id) pairs: largest overlaps first, then nearest centres within
    ``distance_mm``. Both label images (h, w) on the baseline's grid."""
    pairs: list[tuple[int, int]] = []
    used_b, used_f = set(), set()
    overlap = {}
    both = (baseline_labels > 0) & (followup_warped > 0)
    for b, f in zip(baseline_labels[both].tolist(), followup_warped[both].tolist(), strict=True):
        overlap[(b, f)] = overlap.get((b, f), 0) + 1
    for (b, f), _ in sorted(overlap.items(), key=lambda kv: -kv[1]):
        if b not in used_b and f not in used_f:
            pairs.append((b, f))
            used_b.add(b)
            used_f.add(f)
    centres_b = _centres(baseline_labels, pixel_mm)
    centres_f = _centres(followup_warped, pixel_mm)
    candidates = sorted(
        (float(np.hypot(*(cb - cf))), b, f)
        for b, cb in centres_b.items()
        for f, cf in centres_f.items()
        if b not in used_b and f not in used_f
    )
    for distance, b, f in candidates:
        if distance <= distance_mm and b not in used_b and f not in used_f:
            pairs.append((b, f))
            used_b.add(b)
            used_f.add(f)
    return sorted(pairs)


def _centres(labels: np.ndarray, pixel_mm: tuple[float, float]) -> dict[int, np.ndarray]:
    """Centre (row mm, col mm) of each label of a label image."""
    out = {}
    for value in np.unique(labels[labels > 0]).tolist():
        points = np.argwhere(labels == value)
        out[int(value)] = points.mean(axis=0) * np.asarray(pixel_mm)
    return out


def dicom_info(scan: str | Sequence[str]) -> dict[str, str]:
    """PatientID and the acquisition date (YYYYMMDD) of a DICOM scan; empty for other formats."""
    first = scan if isinstance(scan, str) else scan[0]
    if os.path.isdir(first):
        files = sorted(Path(first).glob("*"))
        first = str(files[0]) if files else first
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, IsADirectoryError):
        return {}
    date = next((str(ds.get(k)) for k in ("AcquisitionDate", "SeriesDate", "StudyDate") if ds.get(k)), "")
    return {"patient_id": str(ds.get("PatientID", "") or ""), "date": date}


def check_pair(
    baseline: str, followup: str, baseline_info: Mapping[str, str], followup_info: Mapping[str, str], force: bool
) -> None:
    """Refuse two different patients (unless ``force``) and a follow-up dated before its baseline.

    Raises:
        ComparisonError: naming both scans.
    """
    b_id, f_id = baseline_info.get("patient_id"), followup_info.get("patient_id")
    if b_id and f_id and b_id != f_id and not force:
        raise ComparisonError(
            f"{baseline} (patient {b_id}) and {followup} (patient {f_id}) are scans of different patients; "
            "pass --force to compare them anyway"
        )
    b_date, f_date = baseline_info.get("date"), followup_info.get("date")
    if b_date and f_date and f_date < b_date:
        raise ComparisonError(f"{followup} ({f_date}) is dated before its baseline {baseline} ({b_date})")


def compare(
    reader: WholeScanReader,
    baseline: str | Sequence[str],
    followup: str | Sequence[str],
    out_dir: str | os.PathLike,
    force: bool = False,
    dates: tuple[str, str] | None = None,
    patient_ids: tuple[str, str] | None = None,
    match_distance_mm: float = 20.0,
    deformable: bool = False,
) -> dict[str, Any]:
    """Read both scans, align, match and report (see the module docstring); returns ``compare.json``'s content.

    Args:
        reader: the full read (its ``output_dir`` is replaced by ``out_dir/baseline`` and ``out_dir/followup``).
        dates, patient_ids: (baseline, follow-up) when the files do not carry them (DICOM files do).
        force: compare scans of different patients.
        deformable: add a B-spline stage to the affine alignment.
    """
    source_b = baseline if isinstance(baseline, str) else " + ".join(baseline)
    source_f = followup if isinstance(followup, str) else " + ".join(followup)
    info_b, info_f = dicom_info(baseline), dicom_info(followup)
    if patient_ids:
        info_b["patient_id"], info_f["patient_id"] = patient_ids
    if dates:
        info_b["date"], info_f["date"] = dates
    check_pair(source_b, source_f, info_b, info_f, force)

    with atomic_directory(out_dir) as tmp:
        reads, arrays = {}, {}
        for key, scan in (("baseline", baseline), ("followup", followup)):
            (tmp / key).mkdir()
            reader.output_dir = tmp / key
            loaded = reader.load(scan)
            arrays[key] = loaded[0]
            reads[key] = reader.read_scan(scan, loaded)
        if arrays["baseline"].shape != arrays["followup"].shape:
            logger.info(
                "the scans differ in size (%s vs %s): the follow-up is resampled onto the baseline's grid",
                arrays["baseline"].shape, arrays["followup"].shape,
            )  # fmt: skip
        labels, regions = {}, {}
        for key in reads:
            folder = tmp / key / reads[key]["name"]
            labels[key] = _load_labels(folder / "hotspots.nii.gz")
            regions[key] = check_region_map(_load_labels(folder / "regions.nii.gz"), arrays[key].shape, str(folder))
        alignment = align(arrays["baseline"], arrays["followup"], regions["baseline"], regions["followup"], deformable)
        view = min(alignment.transforms)
        b_half, f_half = arrays["baseline"].shape[1] // 2, arrays["followup"].shape[1] // 2
        b_view = labels["baseline"][:, view * b_half : (view + 1) * b_half]
        f_view = labels["followup"][:, view * f_half : (view + 1) * f_half]
        warped = alignment.warp_labels(f_view, view, b_view.shape)
        pixel_mm = tuple(reads["baseline"]["pixel_mm"])
        pairs = match_hotspots(b_view, warped, pixel_mm, match_distance_mm)
        result = _report(reads, pairs, reader.threshold, alignment, source_b, source_f, info_b, info_f)
        atomic_write_text(tmp / "compare.json", json.dumps(result, indent=1))
        atomic_write_csv(tmp / "compare.csv", result["hotspots"], COMPARE_COLUMNS)
        render_compare_png(tmp / "compare.png", arrays, labels, result, view)
    return result


def _load_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.rint(np.asanyarray(nib.load(str(path)).dataobj)).astype(np.int32)


def _ratio(after: float | None, before: float | None) -> float | None:
    return round(after / before, 4) if after is not None and before else None


def change_rows(
    baseline: Sequence[Mapping[str, Any]],
    followup: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[int, int]],
    threshold: float,
) -> list[dict[str, Any]]:
    """One row per hot spot of either scan: ``persistent`` (a matched pair), ``new`` (follow-up only; a new
    **lesion** when P(malignant) ≥ ``threshold``), ``resolved`` (baseline only); numbered by pair.

    Args:
        baseline, followup: the hot-spot records of the two reads (``hotspot_id``, ``area_mm2``, ``peak_ratio``,
            ``p_malignant``, ``region``).
        pairs: (baseline id, follow-up id) of the matched hot spots.
    """
    by_b = {h["hotspot_id"]: h for h in baseline}
    by_f = {h["hotspot_id"]: h for h in followup}
    matched_b, matched_f = {b for b, _ in pairs}, {f for _, f in pairs}
    rows = [_row("persistent", 0, by_b[b], by_f[f], threshold) for b, f in sorted(pairs)]
    rows += [_row("new", 0, None, h, threshold) for f, h in sorted(by_f.items()) if f not in matched_f]
    rows += [_row("resolved", 0, h, None, threshold) for b, h in sorted(by_b.items()) if b not in matched_b]
    for number, row in enumerate(rows, start=1):
        row["pair"] = number
    return rows


def pcwg_progression(new_lesions: int) -> bool:
    """PCWG2/3 bone progression criterion: two or more new lesions against the baseline scan."""
    return new_lesions >= PCWG_NEW_LESIONS


def _report(
    reads: Mapping[str, dict],
    pairs: Sequence[tuple[int, int]],
    threshold: float,
    alignment: Alignment,
    source_b: str,
    source_f: str,
    info_b: Mapping[str, str],
    info_f: Mapping[str, str],
) -> dict[str, Any]:
    rows = change_rows(reads["baseline"]["hotspots"], reads["followup"]["hotspots"], pairs, threshold)
    new_lesions = sum(r["new_lesion"] for r in rows)
    bsi_b, bsi_f = reads["baseline"]["bsi"], reads["followup"]["bsi"]
    return {
        "baseline": source_b,
        "followup": source_f,
        "baseline_date": info_b.get("date") or None,
        "followup_date": info_f.get("date") or None,
        "patient_id": info_b.get("patient_id") or info_f.get("patient_id") or None,
        "alignment": {
            "method": "ITK affine" + (" + B-spline" if alignment.deformable else "") + " per view (normalised counts, "
            "mean squares), physical space common to any matrix",
            "views": sorted(alignment.transforms),
            "bone_region_dice_before": round(alignment.dice_before, 4),
            "bone_region_dice_after": round(alignment.dice_after, 4),
        },
        "bsi_baseline": bsi_b,
        "bsi_followup": bsi_f,
        "bsi_change": round(bsi_f - bsi_b, 4),
        "hotspots_baseline": len(reads["baseline"]["hotspots"]),
        "hotspots_followup": len(reads["followup"]["hotspots"]),
        "persistent": sum(r["status"] == "persistent" for r in rows),
        "new_hotspots": sum(r["status"] == "new" for r in rows),
        "resolved": sum(r["status"] == "resolved" for r in rows),
        "new_lesions": new_lesions,
        "pcwg_progression_criterion_met": pcwg_progression(new_lesions),
        "rules": {
            "new_lesion": f"a new hot spot (no baseline match) with P(malignant) >= {threshold}",
            "pcwg": f"PCWG2/3 bone progression: >= {PCWG_NEW_LESIONS} new lesions versus baseline; to be confirmed "
            "on a later scan (not assessable from two scans)",
            "match": "one to one, largest overlap after alignment first, then nearest centres within the distance",
        },
        "hotspots": rows,
        "reads": {
            "baseline": f"baseline/{reads['baseline']['name']}",
            "followup": f"followup/{reads['followup']['name']}",
        },
    }


def _row(status: str, number: int, hb: Mapping | None, hf: Mapping | None, threshold: float) -> dict[str, Any]:
    p_f = hf["p_malignant"] if hf else None
    return {
        "status": status,
        "pair": number,
        "baseline_hotspot": hb["hotspot_id"] if hb else None,
        "followup_hotspot": hf["hotspot_id"] if hf else None,
        "region": (hf or hb)["region"],
        "baseline_area_mm2": hb["area_mm2"] if hb else None,
        "followup_area_mm2": hf["area_mm2"] if hf else None,
        "area_change": _ratio(hf and hf["area_mm2"], hb and hb["area_mm2"]),
        "baseline_peak_ratio": hb["peak_ratio"] if hb else None,
        "followup_peak_ratio": hf["peak_ratio"] if hf else None,
        "peak_ratio_change": _ratio(hf and hf["peak_ratio"], hb and hb["peak_ratio"]),
        "baseline_p_malignant": hb["p_malignant"] if hb else None,
        "followup_p_malignant": p_f,
        "new_lesion": bool(status == "new" and p_f is not None and p_f >= threshold),
    }


def render_compare_png(
    path: Path, arrays: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], result: Mapping, view: int
) -> None:
    """Baseline and follow-up (one view each) side by side; hot spots numbered by pair: yellow persistent, red new,
    grey resolved; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"persistent": "#e6b400", "new": "#d62728", "resolved": "#7f7f7f"}
    fig, axes = plt.subplots(1, 2, figsize=(7, 7.5), dpi=110)
    for ax, key in zip(axes, ("baseline", "followup"), strict=True):
        scan = arrays[key]
        half = scan.shape[1] // 2
        image = scan[:, view * half : (view + 1) * half]
        hot = labels[key][:, view * half : (view + 1) * half]
        vmax = float(np.percentile(image[image > 0], 99.5)) if (image > 0).any() else 1.0
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
        id_key = "baseline_hotspot" if key == "baseline" else "followup_hotspot"
        for row in result["hotspots"]:
            k = row[id_key]
            if k is None:
                continue
            mask = hot == k
            if not mask.any():
                continue
            colour = colours[row["status"]]
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=0.8)
            r, c = np.argwhere(mask).mean(axis=0)
            ax.text(c + 5, r, str(row["pair"]), color=colour, fontsize=6)
        bsi = result[f"bsi_{key}"]
        ax.set_title(f"{key} ({'ANT' if view == 0 else 'POST'}): BSI {bsi:.2f}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(
        f"BSI change {result['bsi_change']:+.2f}; new lesions {result['new_lesions']} "
        f"(PCWG >= 2: {'met' if result['pcwg_progression_criterion_met'] else 'not met'}); "
        f"{result['persistent']} persistent, {result['resolved']} resolved",
        fontsize=8,
    )
    atomic_save_figure(path, fig)
    plt.close(fig)
