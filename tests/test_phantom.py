"""Bone-scan phantom: determinism, realism numbers (bone-scan-appearance.md), lesion statistics, the malignancy model,
the on-disk layout and datalist, the CLI and its refusal to overwrite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bundle.data.datalist import check_entries, read_datalist
from bundle.phantom import (
    WRITERS,
    OutputDirectoryError,
    PhantomConfig,
    best_possible_auc,
    generate_dataset,
    generate_patient,
    patient_rng,
    scan_statistics,
)
from bundle.phantom.__main__ import get_args_parser, main
from bundle.phantom.anatomy import reference_skeleton
from bundle.phantom.lesions import TUMOR_TYPES, assign_labels, sample_lesions, sample_patient_profile
from bundle.phantom.scan import camera_blur

REPO = Path(__file__).resolve().parents[1]
H, W = 1024, 512


@pytest.fixture(scope="module")
def scans():
    """40 in-memory patients (seed 0): (scan, masks, records)."""
    return [generate_patient(patient_rng(0, k), PhantomConfig(), f"P{k + 1:05d}") for k in range(40)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 30-patient NIfTI data set on disk (seed 7): (root, datalist)."""
    root = tmp_path_factory.mktemp("phantom") / "nifti"
    return root, generate_dataset(root, patients=30, seed=7, num_folds=5)


def records_of(scans) -> list[dict]:
    return [r for _, _, records in scans for r in records]


# --- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_different_seed_differs():
    a = generate_patient(patient_rng(3, 2), PhantomConfig())
    b = generate_patient(patient_rng(3, 2), PhantomConfig())
    c = generate_patient(patient_rng(4, 2), PhantomConfig())
    assert a[0].image.tobytes() == b[0].image.tobytes()
    assert a[1].tobytes() == b[1].tobytes()
    assert a[2] == b[2]
    assert a[0].image.tobytes() != c[0].image.tobytes()


def test_dataset_is_reproducible_and_patient_k_does_not_depend_on_n(tmp_path):
    first = generate_dataset(tmp_path / "a", patients=6, seed=11, num_folds=2)
    again = generate_dataset(tmp_path / "b", patients=6, seed=11, num_folds=2, workers=2)
    other = generate_dataset(tmp_path / "c", patients=6, seed=12, num_folds=2)
    assert first == again
    assert first["training"] != other["training"]
    for e in first["training"]:
        for key in ("image", "mask"):
            assert (tmp_path / "a" / e[key]).read_bytes() == (tmp_path / "b" / e[key]).read_bytes()
    # patient 4 of a 6-patient data set is patient 4 of any data set with that seed
    scan, _, _ = generate_patient(patient_rng(11, 3), PhantomConfig(), "P00004")
    stored = np.asanyarray(nib.load(tmp_path / "a" / "images" / "P00004.nii.gz").dataobj)
    assert np.array_equal(stored, scan.image)


# --- realism: counts, layout, anatomy ----------------------------------------------------------------------------


def test_counts_hottest_pixel_zeros_and_body_size_match_a_real_scan(scans):
    stats = [scan_statistics(scan) for scan, _, _ in scans]
    for s in stats:
        assert 1e6 <= s["counts_anterior"] <= 4e6 and 1e6 <= s["counts_posterior"] <= 4e6, s
        assert 100 <= s["max_pixel"] <= 1000, s
        assert 0.3 <= s["zero_fraction"] <= 0.7, s
        assert 0.28 <= s["body_fraction"] <= 0.58, s
        assert 0.68 <= s["body_height_fraction"] <= 0.96, s
    assert 0.35 <= np.mean([s["body_fraction"] for s in stats]) <= 0.5  # real: ~41 % of a view
    assert 0.75 <= np.mean([s["body_height_fraction"] for s in stats]) <= 0.88  # real: ~80 % of the height
    assert 150 <= np.median([s["max_pixel"] for s in stats]) <= 450  # real: 278
    assert np.mean([s["hottest_is_bladder"] for s in stats]) >= 0.6  # the bladder is usually the hottest structure


def test_counts_are_integers_with_poisson_noise_and_air_is_zero(scans):
    scan = scans[0][0]
    assert scan.image.dtype == np.int16 and scan.image.shape == (H, W)
    assert scan.image.min() >= 0
    assert np.all(scan.image[~scan.body_mask & (scan.expected == 0)] == 0)
    # pixel-level noise: in a flat region of mean m the variance is about m (Poisson)
    sel = (scan.expected > 35) & (scan.expected < 45)
    residual = scan.image[sel] - scan.expected[sel]
    assert 0.7 < residual.var() / scan.expected[sel].mean() < 1.4


def test_camera_blur_spreads_edges_over_three_to_five_pixels(scans):
    step = np.zeros((1, 64, 64), np.float32)
    step[:, :, 32:] = 1.0
    profile = camera_blur(step, PhantomConfig())[0, 32]
    rise = np.interp(0.9, profile[20:44], np.arange(20, 44)) - np.interp(0.1, profile[20:44], np.arange(20, 44))
    assert 3.0 <= rise <= 5.5, rise
    # on a scan: counts spill a few pixels beyond the body outline, never far
    scan = scans[0][0]
    near = ndimage.binary_dilation(scan.body_mask, iterations=2) & ~scan.body_mask
    far = ndimage.distance_transform_edt(~scan.body_mask) > 12
    assert scan.expected[near].mean() > 0.5 and scan.expected[far].max() == 0


def test_posterior_half_is_the_mirrored_posterior_view(scans):
    for scan, masks, records in scans[:10]:
        assert np.array_equal(scan.image[:, : W // 2], scan.anterior)
        assert np.array_equal(scan.image[:, W // 2 :], scan.posterior[:, ::-1])
        # the spine column (hottest column near the middle of the thoracic rows) is centred in both halves
        rows = np.flatnonzero(scan.body_mask[:, : W // 2].any(axis=1))
        band = slice(rows[0] + int(0.22 * len(rows)), rows[0] + int(0.40 * len(rows)))
        trunk = np.flatnonzero(scan.body_mask[band, : W // 2].all(axis=0))
        midline = (trunk.min() + trunk.max()) / 2
        near = np.arange(int(midline) - 40, int(midline) + 41)
        spine = [np.median(near[np.argmax(half[band][:, near], axis=1)]) for half in np.split(scan.expected, 2, axis=1)]
        assert abs(spine[0] - spine[1]) <= 2 and abs(spine[0] - midline) <= 10, (scan.patient_id, spine, midline)
        # a lesion on the patient's left is on the image right of the midline in both halves
        for mask, record in zip(masks, records, strict=True):
            if record["side"] == "L" and record["site"] != "spine":
                cols = np.flatnonzero(mask.any(axis=0))
                left_half, right_half = cols[cols < W // 2], cols[cols >= W // 2] - W // 2
                assert left_half.mean() > midline and right_half.mean() > midline


def test_view_dependent_uptake_spine_posterior_bladder_anterior(scans):
    posterior_wins, anterior_bladder = 0, 0
    for scan, _, _ in scans[:20]:
        bladder = scan.bladder_mask[:, : W // 2]
        anterior_bladder += scan.expected[:, : W // 2][bladder].sum() > scan.expected[:, W // 2 :][bladder].sum()
        rows = np.flatnonzero(scan.body_mask[:, : W // 2].any(axis=1))
        band = slice(rows[0] + int(0.25 * len(rows)), rows[0] + int(0.45 * len(rows)))
        mid = int(np.flatnonzero(scan.body_mask[band.start, : W // 2]).mean())
        spine = (band, slice(mid - 6, mid + 7))
        posterior_wins += scan.expected[:, W // 2 :][spine].sum() > scan.expected[:, : W // 2][spine].sum()
    assert anterior_bladder >= 18 and posterior_wins >= 18


def test_other_image_sizes_keep_the_layout():
    scan, masks, _ = generate_patient(patient_rng(0, 1), PhantomConfig(height=512, width=256))
    assert scan.image.shape == (512, 256) and scan.anterior.shape == scan.posterior.shape == (512, 128)
    assert masks.shape[1:] == (512, 256)
    with pytest.raises(ValueError, match="even width"):
        PhantomConfig(width=511)


# --- lesions and labels ------------------------------------------------------------------------------------------


def test_lesion_statistics_follow_the_paper(scans):
    counts = np.array([len(records) for _, _, records in scans])
    assert counts.min() >= 1 and counts.max() > 6
    assert 3.0 <= counts.mean() <= 6.5  # paper: 4.5 (40 patients here)
    assert all(np.any((counts >= lo) & (counts <= hi)) for lo, hi in ((1, 3), (4, 6), (7, 99)))
    labels = [r["label"] for r in records_of(scans)]
    assert 0.35 <= np.mean(labels) <= 0.65  # 40 patients; the population share is tested on 1200 below
    assert {scan.info["tumor_type"] for scan, _, _ in scans} == set(TUMOR_TYPES)
    for scan, _, records in scans:
        assert all(r["lesions_in_image"] == len(records) for r in records)
        assert [r["lesion_id"] for r in records] == [f"{scan.patient_id}_L{k + 1:02d}" for k in range(len(records))]


def test_masks_are_binary_non_empty_inside_the_body_and_in_both_halves(scans):
    for scan, masks, records in scans:
        assert masks.dtype == np.uint8 and masks.shape == (len(records), H, W)
        assert set(np.unique(masks)) <= {0, 1}
        for mask, record in zip(masks, records, strict=True):
            left, right = mask[:, : W // 2], mask[:, W // 2 :]
            assert left.any() and right.any(), record["lesion_id"]
            assert np.array_equal(left, right)  # the same footprint on the anterior and the mirrored posterior view
            assert not np.any(mask.astype(bool) & ~scan.body_mask), record["lesion_id"]
        assert masks.sum(axis=0).max() <= 1 or any(r["whole_bone"] for r in records)  # lesions do not overlap


def test_lesions_have_a_realistic_size(scans):
    focal = [r["diameter_px"] for r in records_of(scans) if not r["whole_bone"]]
    assert min(focal) >= 4 and max(focal) <= 28
    assert 7 <= np.median(focal) <= 16


def test_malignant_cues_are_visible_features():
    """Malignant lesions are more often axial, irregular, hot, large and in crowded scans; benign ones symmetric."""
    template = reference_skeleton()
    lesions = []
    for k in range(400):
        rng = patient_rng(5, k)
        batch = sample_lesions(rng, sample_patient_profile(rng), template)
        assign_labels(rng, batch, difficulty=1.0)
        lesions += batch
    mal = [x for x in lesions if x.label == 1]
    ben = [x for x in lesions if x.label == 0]

    def mean(group, feature):
        return np.mean([feature(x) for x in group])

    assert mean(mal, lambda x: x.axial) > mean(ben, lambda x: x.axial) + 0.2
    assert mean(mal, lambda x: x.intensity) > mean(ben, lambda x: x.intensity) + 0.4
    assert mean(mal, lambda x: x.irregularity) > mean(ben, lambda x: x.irregularity) + 0.1
    assert mean(mal, lambda x: x.lesions_in_image) > mean(ben, lambda x: x.lesions_in_image) + 2
    assert mean(ben, lambda x: x.symmetric or x.rib_line) > mean(mal, lambda x: x.symmetric or x.rib_line) + 0.15
    # but the classes overlap: each site holds both
    for site in ("spine", "rib", "pelvis"):
        assert {x.label for x in lesions if x.site == site} == {0, 1}


def test_best_possible_auc_at_default_difficulty_and_lower_when_harder():
    template = reference_skeleton()
    scenes = []
    for k in range(1200):
        rng = patient_rng(9, k)
        scenes.append((rng, sample_lesions(rng, sample_patient_profile(rng), template)))

    def auc(difficulty):
        labels, probs = [], []
        for rng, lesions in scenes:
            assign_labels(rng, lesions, difficulty)
            labels += [x.label for x in lesions]
            probs += [x.p_malignant for x in lesions]
        return best_possible_auc(labels, probs), np.mean(labels)

    default_auc, share = auc(1.0)
    hard_auc, _ = auc(2.0)
    easy_auc, _ = auc(0.5)
    assert 0.89 <= default_auc <= 0.95, default_auc
    assert 0.46 <= share <= 0.56, share
    assert hard_auc < default_auc - 0.04 < easy_auc - 0.06, (hard_auc, default_auc, easy_auc)


# --- on disk: layout, datalist, formats --------------------------------------------------------------------------


def test_dataset_layout_and_datalist(dataset):
    root, datalist = dataset
    assert read_datalist(root / "datalist.json") == datalist
    assert datalist["name"] == "bone-scan-phantom" and datalist["num_folds"] == 5
    gen = datalist["generator"]
    assert (gen["seed"], gen["patients"], gen["difficulty"], gen["height"], gen["width"], gen["format"]) == (
        7,
        30,
        1.0,
        H,
        W,
        "nifti",
    )
    entries = datalist["training"]
    assert check_entries(entries, num_folds=5) == []  # patients grouped in folds, both classes per fold
    required = {"image", "mask", "label", "patient_id", "lesion_id", "tumor_type", "lesions_in_image", "p_malignant"}
    assert all(required <= e.keys() for e in entries)
    assert {e["patient_id"] for e in entries} == {f"P{k:05d}" for k in range(1, 31)}
    labels = [e["label"] for e in entries]
    assert datalist["best_possible_auc"] == pytest.approx(
        best_possible_auc(labels, [e["p_malignant"] for e in entries]), abs=1e-4
    )
    for e in entries:
        assert e["image"] == f"images/{e['patient_id']}.nii.gz" and e["mask"] == f"masks/{e['lesion_id']}.nii.gz"
        assert (root / e["image"]).is_file() and (root / e["mask"]).is_file()
    assert sorted(p.name for p in root.iterdir()) == ["datalist.json", "images", "lesions", "masks", "regions"]
    assert len(list((root / "masks").iterdir())) == len(entries)
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_nifti_files_load_as_h_by_w(dataset):
    root, datalist = dataset
    entry = datalist["training"][0]
    image = nib.load(root / entry["image"])
    assert image.get_data_dtype() == np.int16 and np.allclose(image.affine, np.eye(4))
    data = image.get_fdata()
    assert data.shape == (H, W) and np.array_equal(data, np.round(data))
    mask = nib.load(root / entry["mask"])
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(mask.get_fdata())) <= {0.0, 1.0}
    monai = pytest.importorskip("monai.transforms")
    loaded = monai.LoadImage(image_only=True)(str(root / entry["image"]))
    assert tuple(loaded.shape) == (H, W)
    assert np.array_equal(np.asarray(loaded), data)


def test_png_round_trips_to_the_nifti_arrays(tmp_path):
    nifti = generate_dataset(tmp_path / "n", patients=4, seed=3, num_folds=2, fmt="nifti")
    png = generate_dataset(tmp_path / "p", patients=4, seed=3, num_folds=2, fmt="png")
    assert [e["lesion_id"] for e in png["training"]] == [e["lesion_id"] for e in nifti["training"]]
    for a, b in zip(nifti["training"], png["training"], strict=True):
        assert b["image"].endswith(".png") and b["mask"].endswith(".png")
        image_png = np.asarray(Image.open(tmp_path / "p" / b["image"]))
        assert image_png.dtype == np.uint16
        assert np.array_equal(image_png, nib.load(tmp_path / "n" / a["image"]).get_fdata())
        mask_png = np.asarray(Image.open(tmp_path / "p" / b["mask"]))
        assert mask_png.dtype == np.uint8 and mask_png.shape == (H, W)
        assert np.array_equal(mask_png, np.asanyarray(nib.load(tmp_path / "n" / a["mask"]).dataobj))


def test_a_failure_leaves_no_half_written_output(tmp_path, monkeypatch):
    calls = []

    def failing_write(path, scan):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        path.write_bytes(b"x")

    monkeypatch.setitem(
        WRITERS, "nifti", WRITERS["nifti"].__class__(".nii.gz", failing_write, WRITERS["nifti"].write_mask)
    )
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(tmp_path / "out", patients=5, seed=0, num_folds=2)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_directory_and_overwrites_only_a_phantom_data_set(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputDirectoryError, match=str(target)):
        generate_dataset(target, patients=2, seed=0, num_folds=2)
    with pytest.raises(OutputDirectoryError, match="not a phantom data set"):
        generate_dataset(target, patients=2, seed=0, num_folds=2, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
    (target / "notes.txt").unlink()  # empty: usable without --overwrite
    generate_dataset(target, patients=2, seed=0, num_folds=2)
    assert main(["--out", str(target), "--patients", "3", "--seed", "1", "--num_folds", "2", "--overwrite"]) == 0
    assert json.loads((target / "datalist.json").read_text())["generator"]["patients"] == 3
    assert len(list((target / "images").iterdir())) == 3


def test_cli_writes_the_layout_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "bundle.phantom", "--out", str(out), "--patients", "4", "--seed", "2"]
    cmd += ["--num_folds", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, "--format", "png"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for word in ("patients: 4", "lesions:", "malignant share", "lesions per patient", "best-possible AUC"):
        assert word in done.stdout
    assert (out / "datalist.json").is_file() and (out / "images" / "P00001.png").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert again.returncode != 0 and str(out) in again.stderr and "--overwrite" in again.stderr


def test_cli_help_gives_every_default():
    parser = get_args_parser()
    # one block per option, its lines joined: "--flag METAVAR  help text (default: ...)"
    blocks = [" ".join(b.split()) for b in re.split(r"\n  (?=-)", parser.format_help())[1:]]
    shown = {b.split()[0].rstrip(","): b for b in blocks}
    assert list(shown) == [
        "-h", "--out", "--patients", "--seed", "--format", "--difficulty", "--num_folds", "--height", "--width",
        "--workers", "--overwrite", "--pairs",
    ]  # fmt: skip
    defaults = vars(parser.parse_args(["--out", "x"]))
    assert defaults == {
        "out": "x",
        "patients": 100,
        "seed": 0,
        "format": "nifti",
        "difficulty": 1.0,
        "num_folds": 5,
        "height": 1024,
        "width": 512,
        "workers": 1,
        "overwrite": False,
        "pairs": False,
    }
    for flag in shown:
        if flag in ("-h", "--out"):
            continue
        value = defaults[flag[2:]]
        assert f"(default: {'off' if value is False else value}" in shown[flag], (flag, shown[flag])
    for old_or_abbreviated in ("--folds", "--num"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--out", "x", old_or_abbreviated, "2"])
        assert exit_.value.code == 2
