"""Follow-up comparison: alignment, hot-spot matching, new/persistent/resolved, PCWG call, refusals, outputs."""

from __future__ import annotations

import csv
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bundle.read.atlas import VIEW_FOV
from bundle.read.compare import ComparisonError, align, change_rows, check_pair, match_hotspots, pcwg_progression
from tests.conftest import run_bundle, run_python, save_nifti, save_seeded_resnet50

ANGLE, SCALE, SHIFT = math.radians(3.0), 1.04, np.array([6.0, -3.0])  # rotation, scale, shift (rows, cols) in px


def moved_view(view: np.ndarray) -> np.ndarray:
    """``view`` rotated, scaled and shifted: output[o] = view[M o + SHIFT] with M = R(ANGLE) / SCALE (rows, cols)."""
    c, s = math.cos(ANGLE), math.sin(ANGLE)
    matrix = np.array([[c, -s], [s, c]]) / SCALE
    return ndimage.affine_transform(view, matrix, offset=SHIFT, order=1)


def test_alignment_recovers_a_known_rotation_scale_and_shift(phantom_dir):
    scan = nib.load(phantom_dir / "images" / "P00002.nii.gz").get_fdata().astype(np.float32)
    regions = nib.load(phantom_dir / "regions" / "P00002.nii.gz").get_fdata().astype(np.int16)
    half = scan.shape[1] // 2
    moved = np.hstack([moved_view(scan[:, :half]), moved_view(scan[:, half:])])
    moved_regions = np.hstack(
        [ndimage.affine_transform(regions[:, v * half : (v + 1) * half], _m(), offset=SHIFT, order=0) for v in (0, 1)]
    )
    alignment = align(scan, moved, regions, moved_regions)
    assert sorted(alignment.transforms) == [0, 1]
    assert alignment.dice_before < 0.6 < 0.85 < alignment.dice_after
    # a baseline point b (row, col) shows in the follow-up at o = M^-1 (b - SHIFT); ITK points are (x, y) physical
    spacing = (VIEW_FOV[0] / scan.shape[0], VIEW_FOV[1] / half)
    inverse = np.linalg.inv(_m())
    errors = []
    for b in np.argwhere(regions[:, :half] > 0)[::97]:
        expected = inverse @ (b - SHIFT)
        x, y = alignment.transforms[0].TransformPoint(((b[1] + 0.5) * spacing[1], (b[0] + 0.5) * spacing[0]))
        found = np.array([y / spacing[0] - 0.5, x / spacing[1] - 0.5])
        errors.append(float(np.hypot(*(found - expected))))
    assert len(errors) > 20 and np.median(errors) < 1.0 and max(errors) < 2.5, (np.median(errors), max(errors))


def test_alignment_of_scans_of_different_sizes(phantom_dir):
    """A follow-up at twice the matrix size (the same field of view) is aligned in the common physical space."""
    scan = nib.load(phantom_dir / "images" / "P00003.nii.gz").get_fdata().astype(np.float32)
    regions = nib.load(phantom_dir / "regions" / "P00003.nii.gz").get_fdata().astype(np.int16)
    larger = ndimage.zoom(scan, 2, order=1)
    larger_regions = ndimage.zoom(regions, 2, order=0)
    alignment = align(scan, larger, regions, larger_regions)
    assert alignment.dice_after > 0.9


def _m() -> np.ndarray:
    c, s = math.cos(ANGLE), math.sin(ANGLE)
    return np.array([[c, -s], [s, c]]) / SCALE


def hotspot(k: int, p: float, area: float = 100.0, ratio: float = 3.0) -> dict:
    return {"hotspot_id": k, "p_malignant": p, "area_mm2": area, "peak_ratio": ratio, "region": "ribs"}


def test_hand_made_pair_one_persistent_one_resolved_two_new():
    baseline = np.zeros((60, 40), np.int32)
    baseline[10:14, 10:14] = 1  # persists (moved by 2 px, grown)
    baseline[40:44, 30:34] = 2  # resolves
    followup = np.zeros((60, 40), np.int32)
    followup[12:17, 11:16] = 1
    followup[25:28, 5:8] = 2  # new
    followup[50:53, 20:23] = 3  # new
    pairs = match_hotspots(baseline, followup, (4.0, 4.0), distance_mm=20.0)
    assert pairs == [(1, 1)]
    rows = change_rows(
        [hotspot(1, 0.9, 64.0, 3.0), hotspot(2, 0.8)],
        [hotspot(1, 0.9, 100.0, 4.5), hotspot(2, 0.7), hotspot(3, 0.6)],
        pairs,
        threshold=0.5,
    )
    assert [(r["status"], r["baseline_hotspot"], r["followup_hotspot"]) for r in rows] == [
        ("persistent", 1, 1), ("new", None, 2), ("new", None, 3), ("resolved", 2, None)
    ]  # fmt: skip
    assert [r["pair"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["area_change"] == pytest.approx(100 / 64) and rows[0]["peak_ratio_change"] == pytest.approx(1.5)
    new_lesions = sum(r["new_lesion"] for r in rows)
    assert new_lesions == 2 and pcwg_progression(new_lesions)
    # the call flips when one of the two new hot spots is called benign
    rows = change_rows([hotspot(1, 0.9), hotspot(2, 0.8)], [hotspot(1, 0.9), hotspot(2, 0.7), hotspot(3, 0.3)],
                       pairs, threshold=0.5)  # fmt: skip
    assert sum(r["new_lesion"] for r in rows) == 1 and not pcwg_progression(1)
    # without overlap: matched within the distance (5 px = 20 mm between centres), not beyond (10 px = 40 mm)
    near, far = np.zeros((60, 40), np.int32), np.zeros((60, 40), np.int32)
    near[45:49, 30:34] = 1
    far[50:54, 30:34] = 1
    assert match_hotspots(baseline, near, (4.0, 4.0), distance_mm=20.0) == [(2, 1)]
    assert match_hotspots(baseline, far, (4.0, 4.0), distance_mm=20.0) == []


def test_different_patients_and_dates_are_refused():
    check_pair("a.dcm", "b.dcm", {"patient_id": "P1", "date": "20260101"}, {"patient_id": "P1", "date": "20260601"},
               force=False)  # fmt: skip
    with pytest.raises(ComparisonError, match=r"a\.dcm \(patient P1\) and b\.dcm \(patient P2\).*--force"):
        check_pair("a.dcm", "b.dcm", {"patient_id": "P1"}, {"patient_id": "P2"}, force=False)
    check_pair("a.dcm", "b.dcm", {"patient_id": "P1"}, {"patient_id": "P2"}, force=True)
    with pytest.raises(ComparisonError, match=r"b\.dcm \(20250101\) is dated before its baseline a\.dcm"):
        check_pair("a.dcm", "b.dcm", {"date": "20260101"}, {"date": "20250101"}, force=True)


@pytest.mark.integration
def test_compare_writes_outputs_consistent_with_the_single_reads(phantom_dir, tmp_path):
    scan = nib.load(phantom_dir / "images" / "P00002.nii.gz").get_fdata().astype(np.float32)
    half = scan.shape[1] // 2
    followup = np.hstack([moved_view(scan[:, :half]), moved_view(scan[:, half:])])
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(phantom_dir / "images" / "P00002.nii.gz", scans / "P00002.nii.gz")
    save_nifti(scans / "P00002_later.nii.gz", np.rint(np.clip(followup, 0, None)))
    checkpoint = tmp_path / "model.pt"
    save_seeded_resnet50(checkpoint)
    tiny = ["--checkpoint", str(checkpoint), "--spatial_size", "[64,32]"]
    common = ["--baseline", str(scans / "P00002.nii.gz"), "--followup", str(scans / "P00002_later.nii.gz"), *tiny]
    refused = run_python("-m", "bundle.read", "compare", *common, "--out", str(tmp_path / "no"),
                         "--baseline_patient", "A", "--followup_patient", "B", check=False)  # fmt: skip
    assert refused.returncode == 2 and "different patients" in refused.stderr and not (tmp_path / "no").exists()
    out = tmp_path / "compare"
    run_python("-m", "bundle.read", "compare", *common, "--out", str(out))
    result = json.loads((out / "compare.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "baseline",
        "compare.csv",
        "compare.json",
        "compare.png",
        "followup",
    ]
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["persistent"] + result["new_hotspots"] + result["resolved"]
    assert result["hotspots_baseline"] == result["persistent"] + result["resolved"]
    assert result["hotspots_followup"] == result["persistent"] + result["new_hotspots"]
    alignment = result["alignment"]  # atlas maps of the two scans, compared: limited by the atlas itself
    assert (
        alignment["bone_region_dice_after"] > 0.75
        and alignment["bone_region_dice_after"] > alignment["bone_region_dice_before"] + 0.2
    )
    assert result["pcwg_progression_criterion_met"] == (result["new_lesions"] >= 2)
    # the baseline read inside the comparison is the read of configs/read.yaml of that scan
    single = tmp_path / "single"
    single_scans = tmp_path / "one" / "images"
    single_scans.mkdir(parents=True)
    shutil.copy(scans / "P00002.nii.gz", single_scans)
    run_bundle("run", "reading", "--config_file", "configs/read.yaml", "--dataset_dir", str(tmp_path / "one"),
               "--output_dir", str(single), *tiny)  # fmt: skip
    for name in ("hotspots.csv", "hotspots.nii.gz", "regions.nii.gz"):
        assert (out / "baseline" / "P00002" / name).read_bytes() == (single / "P00002" / name).read_bytes(), name
    baseline_read = json.loads((single / "P00002" / "read.json").read_text())
    assert result["bsi_baseline"] == baseline_read["bsi"] and result["hotspots_baseline"] == len(
        baseline_read["hotspots"]
    )


@pytest.mark.integration
def test_compare_eval_on_phantom_pairs(tmp_path):
    """`python -m bundle.read compare-eval` compares every pair of a pairs file and counts against its truth."""
    from bundle.phantom.followup import generate_pairs
    from bundle.phantom.scan import PhantomConfig

    pairs_dir = tmp_path / "pairs"
    generate_pairs(pairs_dir, patients=3, seed=11, config=PhantomConfig(height=256, width=128), num_folds=3)
    checkpoint = tmp_path / "model.pt"
    save_seeded_resnet50(checkpoint)
    out = tmp_path / "eval"
    run_python("-m", "bundle.read", "compare-eval", "--pairs", str(pairs_dir / "pairs.json"), "--out", str(out),
               "--checkpoint", str(checkpoint), "--spatial_size", "[64,32]")  # fmt: skip
    result = json.loads((out / "compare_evaluation.json").read_text())
    truth = json.loads((pairs_dir / "pairs.json").read_text())["pairs"]
    assert result["pairs"] == 3
    assert result["new_lesions_true"] == sum(p["new_lesions"] for p in truth)
    assert result["pcwg_call"]["progressing_pairs"] == sum(p["progression"] for p in truth)
    reads = {p["patient_id"]: json.loads((out / p["patient_id"] / "compare.json").read_text()) for p in truth}
    called = [reads[p["patient_id"]]["pcwg_progression_criterion_met"] for p in truth]
    assert result["pcwg_call"]["accuracy"] == pytest.approx(
        np.mean([c == p["progression"] for c, p in zip(called, truth, strict=True)]), abs=1e-4
    )
    true_change = [p["bsi_followup"] - p["bsi_baseline"] for p in truth]
    read_change = [reads[p["patient_id"]]["bsi_change"] for p in truth]
    assert result["bsi_change"]["mean_absolute_difference"] == pytest.approx(
        np.mean(np.abs(np.subtract(read_change, true_change))), abs=1e-3
    )
    assert all(r["patient_id"] == pid for pid, r in reads.items())
