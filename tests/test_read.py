"""The whole-scan read: region table and BSI, phantom ground truth, hot-spot detection and matching, the full read."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bundle.data.regions import (
    BONE_REGIONS,
    CLASS_VALUES,
    REGION_BY_NAME,
    REGIONS,
    TOTAL_WEIGHT,
    bone_scan_index,
    check_region_map,
    classes_to_labels,
    labels_to_classes,
    regions_table_markdown,
)
from bundle.read.detection_metrics import froc_point, match_scan
from bundle.read.hotspots import HotSpotDetector, pixel_size_mm
from bundle.read.reading import ScanError, check_scan
from tests.conftest import REPO_ROOT, bundle_path, run_bundle, run_python, save_nifti, save_seeded_resnet50

PELVIS, FEMORA, BLADDER = (REGION_BY_NAME[n].value for n in ("pelvis", "femora", "bladder"))


# ---- the region table and the BSI ------------------------------------------------------------------------------
def test_region_table_is_one_consistent_list():
    values = [r.value for r in REGIONS]
    assert len(set(values)) == len(values) and 0 not in values
    assert len(BONE_REGIONS) == 13 and {r.name for r in REGIONS} >= {"kidneys", "bladder", "injection_site"}
    # Spiers' shares sum to 100.1 (his rounding); the BSI normalises them
    assert pytest.approx(100.1) == TOTAL_WEIGHT
    table = regions_table_markdown()
    assert all(f"| {r.value} | {r.name} |" in table for r in REGIONS)
    region_map = np.array([[0, 1, 13], [20, 21, 22]])
    assert np.array_equal(classes_to_labels(labels_to_classes(region_map)), region_map)
    assert labels_to_classes(region_map).max() == len(CLASS_VALUES) - 1


def test_bsi_of_a_hand_made_case():
    """One lesion of 10 pixels in a pelvis of 100 pixels: 10 % of the pelvis' 7.5 % of the skeleton."""
    region_map = np.zeros((20, 20), np.int16)
    region_map[:10, :10] = PELVIS
    region_map[10:, 10:] = FEMORA  # 100 femur pixels, not involved
    involved = np.zeros((20, 20), bool)
    involved[0, :10] = True
    bsi, regional = bone_scan_index(involved, region_map)
    expected = 0.1 * 7.5 * 100 / 100.1
    assert bsi == pytest.approx(expected, rel=1e-9) and regional["pelvis"] == pytest.approx(expected)
    assert regional["femora"] == 0.0 and sum(regional.values()) == pytest.approx(bsi)
    # probability-weighted involvement, and pixels off the skeleton count nothing
    weighted = involved * 0.5
    weighted[15, 0] = 1.0  # background pixel
    assert bone_scan_index(weighted, region_map)[0] == pytest.approx(expected / 2)


def test_region_map_checks_name_the_source():
    with pytest.raises(ValueError, match=r"map\.nii\.gz: region map of shape \(4, 4\), the scan is \(8, 4\)"):
        check_region_map(np.zeros((4, 4)), (8, 4), "map.nii.gz")
    with pytest.raises(ValueError, match=r"unknown region label\(s\) \[17\]"):
        check_region_map(np.full((8, 4), 17), (8, 4), "map.nii.gz")


# ---- phantom ground truth ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_patient():
    from bundle.phantom import PhantomConfig, generate_patient, patient_rng

    for index in range(20):  # a patient with malignant lesions
        scan, masks, records = generate_patient(patient_rng(0, index), PhantomConfig(height=256, width=128))
        if sum(r["label"] for r in records) >= 2:
            return scan, masks, records
    raise AssertionError("no patient with two malignant lesions")


def test_phantom_region_map_and_true_bsi_by_hand(tiny_patient):
    scan, masks, records = tiny_patient
    half = scan.image.shape[1] // 2
    assert scan.regions.shape == scan.image.shape and scan.regions.dtype == np.int16
    assert np.array_equal(scan.regions[:, :half], scan.regions[:, half:])  # same anatomy in both halves
    present = set(np.unique(scan.regions).tolist()) - {0}
    assert {r.value for r in BONE_REGIONS} <= present and present <= {r.value for r in REGIONS}

    def mean_row(name: str) -> float:
        return float(np.argwhere(scan.anatomy == REGION_BY_NAME[name].value)[:, 0].mean())

    order = ["skull", "cervical_spine", "thoracic_spine", "lumbar_spine", "sacrum", "femora", "distal_limbs"]
    assert [mean_row(n) for n in order] == sorted(mean_row(n) for n in order)
    # the bladder is drawn over bone, the anatomy keeps the bone underneath
    assert (scan.regions == BLADDER).any() and not (scan.anatomy == BLADDER).any()

    # true BSI by hand: malignant footprint pixels per region / region pixels x weight, normalised to 100
    involved = np.zeros(scan.image.shape, bool)
    for mask, record in zip(masks, records, strict=True):
        if record["label"] == 1:
            involved |= mask.astype(bool)
    expected = 0.0
    for region in BONE_REGIONS:
        area = int((scan.anatomy == region.value).sum())
        hit = int((involved & (scan.anatomy == region.value)).sum())
        expected += hit / area * region.weight * 100 / 100.1 if area else 0.0
    assert expected > 0 and scan.info["bsi"] == pytest.approx(expected, abs=1e-4)
    assert sum(scan.info["bsi_regional"].values()) == pytest.approx(scan.info["bsi"], abs=1e-3)
    # every lesion's region is the bone region under most of its footprint
    for mask, record in zip(masks, records, strict=True):
        under = scan.anatomy[mask.astype(bool) & np.isin(scan.anatomy, [r.value for r in BONE_REGIONS])]
        if under.size:
            assert record["region"] == REGIONS[[r.value for r in REGIONS].index(np.bincount(under).argmax())].name


def test_phantom_dataset_lists_scans_with_regions_and_bsi(phantom_dir):
    datalist = json.loads((phantom_dir / "datalist.json").read_text())
    scans = datalist["scans"]
    assert len(scans) == 20 and {s["patient_id"] for s in scans} >= {e["patient_id"] for e in datalist["training"]}
    fold_of = {e["patient_id"]: e["fold"] for e in datalist["training"]}
    for entry in scans:
        region_map = nib.load(phantom_dir / entry["regions"]).get_fdata()
        image = nib.load(phantom_dir / entry["image"]).get_fdata()
        assert region_map.shape == image.shape
        assert entry["fold"] == fold_of.get(entry["patient_id"], entry["fold"])
        assert entry["bsi"] >= 0 and (entry["bsi"] > 0) == bool(entry["bsi_regional"])
        # the lesion label image: value k is the scan's k-th lesion mask
        lesion_labels = nib.load(phantom_dir / entry["lesions"]).get_fdata()
        lesions = [e for e in datalist["training"] if e["patient_id"] == entry["patient_id"]]
        assert lesion_labels.max() == len(lesions) == entry["num_lesions"]
        for k, lesion in enumerate(lesions, start=1):
            assert np.array_equal(lesion_labels == k, nib.load(phantom_dir / lesion["mask"]).get_fdata() > 0)
    assert all(e["region"] in {r.name for r in BONE_REGIONS} for e in datalist["training"])


# ---- hot-spot detection ----------------------------------------------------------------------------------------
def synthetic_scan(spots: list[tuple[int, int, int, float, int]]) -> tuple[np.ndarray, np.ndarray]:
    """A 256 x 128 noiseless scan: a femur-region band of 100 counts in both views, a bladder of 2000 counts, and
    hot discs ``(view, row, col, counts, radius)``; returns (scan, region map)."""
    scan = np.zeros((256, 128), np.float32)
    regions = np.zeros((256, 128), np.int16)
    for offset in (0, 64):
        scan[40:220, offset + 16 : offset + 48] = 100.0
        regions[40:220, offset + 16 : offset + 48] = FEMORA
        scan[100:112, offset + 20 : offset + 30] = 2000.0  # the bladder, hotter than any lesion
        regions[98:114, offset + 18 : offset + 32] = BLADDER
    rr, cc = np.ogrid[:256, :128]
    for view, row, col, counts, radius in spots:
        disc = (rr - row) ** 2 + (cc - (col + 64 * view)) ** 2 <= radius**2
        scan[disc] = counts
    return scan, regions


def test_detector_finds_an_isolated_hot_spot_exactly_and_ignores_the_bladder():
    scan, regions = synthetic_scan([(0, 170, 32, 400.0, 3), (1, 170, 32, 400.0, 3)])
    detector = HotSpotDetector(threshold=2.0, smooth_fwhm_mm=0.0)
    hotspots = detector(scan, regions, pixel_mm=(8.0, 8.0))
    assert len(hotspots.records) == 1, hotspots.records
    record = hotspots.records[0]
    assert record["views"] == "ANT+POST" and record["region"] == "femora"
    assert (record["centre_row"], record["centre_col"]) == (170.0, 32.0)
    disc = np.zeros((256, 64), bool)
    rr, cc = np.ogrid[:256, :64]
    disc[(rr - 170) ** 2 + (cc - 32) ** 2 <= 9] = True
    assert np.array_equal(hotspots.labels[:, :64] == 1, disc) and np.array_equal(hotspots.labels[:, 64:] == 1, disc)
    assert record["area_px"] == disc.sum() and record["area_mm2"] == pytest.approx(disc.sum() * 64.0)
    assert record["peak_ratio"] == pytest.approx(4.0, rel=1e-3)
    assert not hotspots.labels[100:112].any()  # the bladder is no hot spot


def test_anterior_and_posterior_components_are_matched():
    near = synthetic_scan([(0, 150, 30, 400.0, 2), (1, 151, 33, 400.0, 2)])  # 3 px apart: one lesion
    far = synthetic_scan([(0, 60, 30, 400.0, 2), (1, 190, 30, 400.0, 2)])  # 130 px apart: two
    detector = HotSpotDetector(threshold=2.0, smooth_fwhm_mm=0.0, match_distance_mm=20.0)
    one = detector(*near, pixel_mm=(8.0, 8.0))
    assert [r["views"] for r in one.records] == ["ANT+POST"]
    two = detector(*far, pixel_mm=(8.0, 8.0))
    assert [r["views"] for r in two.records] == ["ANT", "POST"]
    # a single-view scan: only the anterior view is read
    single = near[0].copy()
    single[:, 64:] = 0
    hotspots = detector(single, near[1], pixel_mm=(8.0, 8.0))
    assert hotspots.views == ("ANT",) and [r["views"] for r in hotspots.records] == ["ANT"]


def test_detector_rejects_bad_input():
    with pytest.raises(ValueError, match="even width"):
        HotSpotDetector()(np.ones((10, 11)), np.zeros((10, 11), np.int16))
    with pytest.raises(ValueError, match="no counts"):
        HotSpotDetector()(np.zeros((256, 128)), np.zeros((256, 128), np.int16))
    with pytest.raises(ValueError, match="threshold must be > 1"):
        HotSpotDetector(threshold=0.9)
    assert pixel_size_mm((1024, 512)) == pytest.approx((2100 / 1024, 525 / 256))
    assert pixel_size_mm((1024, 512), (2.4, 2.4)) == (2.4, 2.4)


def test_matching_rule_iou_or_centre():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1  # 16 px
    labels[10:12, 10:12] = 2  # 4 px, contains the centre of a big lesion
    labels[17:19, 0:2] = 3  # matches nothing
    small = np.zeros((20, 20), bool)
    small[2:5, 2:6] = True  # IoU 12/16 = 0.75
    big = np.zeros((20, 20), bool)
    big[6:17, 6:17] = True  # centre (11, 11) inside hot spot 2; IoU 4/121
    missed = np.zeros((20, 20), bool)
    missed[0, 19] = True
    match = match_scan(labels, [small, big, missed])
    assert match.found.tolist() == [True, True, False]
    assert match.true_positive.tolist() == [True, True, False]
    assert match.hotspot_of_lesion.tolist() == [1, 2, 0]
    sensitivity, fp = froc_point([match, match_scan(np.zeros((20, 20), np.int32), [small])])
    assert sensitivity == pytest.approx(2 / 4) and fp == pytest.approx(1 / 2)


def test_check_scan_refuses_what_is_not_a_whole_body_scan():
    check_scan(np.ones((256, 128)), "ok.nii.gz")
    with pytest.raises(ScanError, match=r"tiny\.png: 32 x 16 is not a whole-body scan"):
        check_scan(np.ones((32, 16)), "tiny.png")
    with pytest.raises(ScanError, match=r"empty\.nii\.gz: the scan holds no counts"):
        check_scan(np.zeros((256, 128)), "empty.nii.gz")
    with pytest.raises(ScanError, match="not a 2-D scan"):
        check_scan(np.ones((4, 256, 128)), "stack.nii.gz")


# ---- the full read ---------------------------------------------------------------------------------------------
READ_TINY = ["--spatial_size", "[64,32]", "--amp", "false", "--batch_size", "4"]


def same_up_to_float_noise(a: dict[str, str], b: dict[str, str], tolerance: float = 1e-5) -> bool:
    """Two CSV rows with the same keys and values, numbers equal to ``tolerance``."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if a[key] == b[key]:
            continue
        try:
            if abs(float(a[key]) - float(b[key])) > tolerance:
                return False
        except ValueError:
            return False
    return True


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_wrong_modality_dicom(path: Path) -> None:
    """A phantom DICOM scan relabelled as CT: not a nuclear-medicine scan."""
    import pydicom

    from bundle.phantom import PhantomConfig, generate_patient, patient_rng
    from bundle.phantom.dicom import write_phantom_image

    scan, _, _ = generate_patient(patient_rng(0, 0), PhantomConfig(height=256, width=128))
    write_phantom_image(path, scan)
    dataset = pydicom.dcmread(path)
    dataset.Modality = "CT"
    dataset.save_as(path)


@pytest.fixture(scope="module")
def read_run(tmp_path_factory, phantom_dir):
    """The read (atlas regions, classical detector) over 3 phantom scans, a single-view scan and 3 bad files."""
    work = tmp_path_factory.mktemp("read")
    checkpoint = work / "model.pt"
    save_seeded_resnet50(checkpoint)
    images = work / "scans" / "images"
    images.mkdir(parents=True)
    for name in ("P00001", "P00002", "P00003"):
        shutil.copy(phantom_dir / "images" / f"{name}.nii.gz", images)
    single = nib.load(phantom_dir / "images" / "P00004.nii.gz").get_fdata().astype(np.float32)
    single[:, single.shape[1] // 2 :] = 0
    save_nifti(images / "single.nii.gz", single)
    save_nifti(images / "empty.nii.gz", np.zeros((256, 128), np.float32))
    Image.fromarray(np.ones((32, 16), np.uint16)).save(images / "tiny.png")
    write_wrong_modality_dicom(images / "ct.dcm")
    out = work / "out"
    result = run_bundle(
        "run", "reading", "--config_file", "configs/read.yaml", "--dataset_dir", str(work / "scans"),
        "--output_dir", str(out), "--checkpoint", str(checkpoint), *READ_TINY, check=False,
    )  # fmt: skip
    return work, out, result


@pytest.mark.integration
def test_read_writes_every_output_and_reports_bad_scans(read_run):
    _, out, result = read_run
    assert result.returncode == 1, result.stderr[-3000:]  # three bad files: reported, the others read
    failed = {Path(r["scan"]).name: r["error"] for r in read_csv(out / "failed.csv")}
    assert set(failed) == {"empty.nii.gz", "tiny.png", "ct.dcm"}
    assert "holds no counts" in failed["empty.nii.gz"] and "is not a whole-body scan" in failed["tiny.png"]
    assert "Modality CT" in failed["ct.dcm"] and "ct.dcm" in failed["ct.dcm"]
    reads = {r["scan"]: r for r in read_csv(out / "reads.csv")}
    assert set(reads) == {"P00001", "P00002", "P00003", "single"}
    for name, row in reads.items():
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "hotspots.csv", "hotspots.nii.gz", "read.json", "read.png", "regions.nii.gz"
        ]  # fmt: skip
        result_json = json.loads((folder / "read.json").read_text())
        hot = read_csv(folder / "hotspots.csv")
        labels = nib.load(folder / "hotspots.nii.gz").get_fdata()
        assert labels.shape == (256, 128) and int(labels.max()) == len(hot) == int(row["hotspots"])
        assert result_json["regions_source"] == "atlas"
        probabilities = [float(h["p_malignant"]) for h in hot]
        assert float(row["patient_probability"]) == pytest.approx(max(probabilities, default=0.0), abs=1e-6)
        malignant = labels * 0
        for h in hot:
            assert h["predicted_class"] == str(int(float(h["p_malignant"]) >= 0.5))
            if h["predicted_class"] == "1":
                malignant += labels == int(h["hotspot_id"])
        regions = nib.load(folder / "regions.nii.gz").get_fdata().astype(np.int16)
        expected_bsi, _ = bone_scan_index((malignant > 0) & np.isin(regions, [r.value for r in BONE_REGIONS]), regions)
        assert float(row["bsi"]) == pytest.approx(expected_bsi, abs=1e-4)
    single = json.loads((out / "single" / "read.json").read_text())
    assert single["views"] == ["ANT"] and single["bsi_views"] == 1
    assert not nib.load(out / "single" / "regions.nii.gz").get_fdata()[:, 64:].any()
    assert len(read_csv(out / "hotspots.csv")) == sum(int(r["hotspots"]) for r in reads.values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.integration
def test_read_probabilities_equal_the_classifier_s_inference(read_run):
    """Each hot spot's P(malignant) is what inference.yaml gives for the same scan and mask (1e-5)."""
    work, out, _ = read_run
    entries, expected = [], {}
    for row in read_csv(out / "hotspots.csv"):
        lesion_id = f"{row['scan']}_{row['hotspot_id']}"
        image = str(work / "scans" / "images" / f"{row['scan']}.nii.gz")
        entries.append({"image": image, "mask": f"{out / row['scan'] / 'hotspots.nii.gz'}#{row['hotspot_id']}",
                        "lesion_id": lesion_id})  # fmt: skip
        expected[lesion_id] = float(row["p_malignant"])
    assert len(entries) >= 3
    datalist = work / "hotspots.json"
    datalist.write_text(json.dumps({"training": entries}))
    run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(work), "--datalist", str(datalist),
        "--checkpoint", str(work / "model.pt"), "--output_dir", str(work / "infer"), *READ_TINY,
    )  # fmt: skip
    inferred = {r["lesion_id"]: float(r["probability"]) for r in read_csv(work / "infer" / "lesions.csv")}
    assert set(inferred) == set(expected)
    for lesion_id, probability in expected.items():
        assert probability == pytest.approx(inferred[lesion_id], abs=1e-5), lesion_id
    assert len(set(expected.values())) > 1


@pytest.mark.integration
def test_read_data_parallel_equals_one_process(read_run, tmp_path):
    """torchrun with 2 gloo processes: each reads half the scans; the merged result set is the single process's."""
    work, out, _ = read_run
    scans = tmp_path / "scans" / "images"
    scans.mkdir(parents=True)
    for name in ("P00001", "P00002", "P00003"):
        shutil.copy(work / "scans" / "images" / f"{name}.nii.gz", scans)
    ddp_out = tmp_path / "out"
    run_python(
        "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle",
        "run", "reading", "--config_file", bundle_path("['configs/read.yaml','configs/read_multi_gpu.yaml']"),
        "--bundle_root", str(REPO_ROOT), "--dataset_dir", str(tmp_path / "scans"), "--output_dir", str(ddp_out),
        "--checkpoint", str(work / "model.pt"), *READ_TINY,
    )  # fmt: skip
    single = {r["scan"]: r for r in read_csv(out / "reads.csv")}
    merged = read_csv(ddp_out / "reads.csv")
    assert [r["scan"] for r in merged] == ["P00001", "P00002", "P00003"]
    for row in merged:  # fp32 sums in processes with other thread counts: probabilities equal to 1e-5
        assert same_up_to_float_noise(row, single[row["scan"]])
        ddp_hot, hot = read_csv(ddp_out / row["scan"] / "hotspots.csv"), read_csv(out / row["scan"] / "hotspots.csv")
        assert len(ddp_hot) == len(hot) and all(map(same_up_to_float_noise, ddp_hot, hot))
    assert read_csv(ddp_out / "failed.csv") == []


@pytest.mark.integration
def test_learned_hotspot_detector_trains_and_detects(phantom_dir, tmp_path):
    """configs/hotspots.yaml trains on the lesion label images; its detector gives hot spots on the scan's grid, and
    the read and the FROC tool accept its checkpoint."""
    from bundle.read.learned import LearnedHotSpotDetector

    out = tmp_path / "hotspots"
    run_bundle(
        "run", "training", "--config_file", "['configs/train.yaml','configs/regions.yaml','configs/hotspots.yaml']",
        "--dataset_dir", str(phantom_dir), "--output_dir", str(out), "--max_epochs", "1", "--spatial_size", "[64,32]",
        "--batch_size", "4", "--num_workers", "0",
    )  # fmt: skip
    checkpoint = out / "checkpoints" / "model.pt"
    assert checkpoint.is_file() and any((out / "tensorboard").iterdir())
    detector = LearnedHotSpotDetector(checkpoint, REPO_ROOT, threshold=0.5, spatial_size=[64, 32])
    scan = nib.load(phantom_dir / "images" / "P00001.nii.gz").get_fdata().astype(np.float32)
    regions = nib.load(phantom_dir / "regions" / "P00001.nii.gz").get_fdata().astype(np.int16)
    probability = detector.lesion_probability(scan)
    assert probability.shape == scan.shape and 0.0 <= probability.min() <= probability.max() <= 1.0
    low = detector.at_threshold(0.01)(scan, regions)
    assert low.labels.shape == scan.shape and detector.threshold == 0.5
    # a lower threshold never finds fewer hot-spot pixels
    assert (low.labels > 0).sum() >= (detector(scan, regions).labels > 0).sum()
    with pytest.raises(ValueError, match="threshold must lie in"):
        detector.at_threshold(1.5)
    froc_out = tmp_path / "froc"
    result = run_python(
        "-m", "bundle.read", "froc", "--dataset_dir", str(phantom_dir), "--out", str(froc_out), "--limit", "3",
        "--detector", str(checkpoint), "--bundle_root", str(REPO_ROOT), "--thresholds", "0.2,0.5",
        "--max_false_positives", "1000",
    )  # fmt: skip
    froc_json = json.loads((froc_out / "froc.json").read_text())
    assert [p["threshold"] for p in froc_json["points"]] == [0.2, 0.5] and (froc_out / "froc.png").is_file()
    assert froc_json["points"][0]["lesions"] == sum(
        1 for e in json.loads((phantom_dir / "datalist.json").read_text())["training"]
        if e["patient_id"] in {"P00001", "P00002", "P00003"}
    )  # fmt: skip
    assert "operating point" in result.stdout

    # the read with both learned stages: a (tiny) region network and this hot-spot network
    regions_out = tmp_path / "regions"
    run_bundle(
        "run", "training", "--config_file", "['configs/train.yaml','configs/regions.yaml']", "--dataset_dir",
        str(phantom_dir), "--output_dir", str(regions_out), "--max_epochs", "1", "--spatial_size", "[64,32]",
        "--batch_size", "4", "--num_workers", "0",
    )  # fmt: skip
    scans = tmp_path / "scans" / "images"
    scans.mkdir(parents=True)
    shutil.copy(phantom_dir / "images" / "P00001.nii.gz", scans)
    classifier = tmp_path / "model.pt"
    save_seeded_resnet50(classifier)
    read_out = tmp_path / "read"
    run_bundle(
        "run", "reading", "--config_file", "configs/read.yaml", "--dataset_dir", str(tmp_path / "scans"),
        "--output_dir", str(read_out), "--checkpoint", str(classifier), *READ_TINY,
        "--regions_checkpoint", str(regions_out / "checkpoints" / "model.pt"), "--regions_spatial_size", "[64,32]",
        "--hotspots_checkpoint", str(checkpoint), "--hotspots_spatial_size", "[64,32]", "--hotspots_threshold", "0.01",
    )  # fmt: skip
    result_json = json.loads((read_out / "P00001" / "read.json").read_text())
    assert result_json["regions_source"].startswith("learned: ") and result_json["regions_source"].endswith("model.pt")
    run_json = json.loads((read_out / "read.json").read_text())
    assert run_json["detector"].startswith("LearnedHotSpotDetector(threshold=0.01")
    labels = nib.load(read_out / "P00001" / "hotspots.nii.gz").get_fdata()
    expected = detector.at_threshold(0.01)(scan, nib.load(read_out / "P00001" / "regions.nii.gz").get_fdata())
    assert int(labels.max()) == len(expected.records) == result_json["hotspots_total"] >= 1
    assert np.array_equal(labels, expected.labels)


def test_truth_with_a_mask_of_the_wrong_size_names_the_file(tmp_path):
    from bundle.read.evaluation import truth_scans

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    save_nifti(images / "S1.nii.gz", np.ones((256, 128), np.float32))
    save_nifti(masks / "S1_L1.nii.gz", np.ones((128, 64), np.float32))
    datalist = {
        "training": [{"image": "images/S1.nii.gz", "mask": "masks/S1_L1.nii.gz", "label": 1, "patient_id": "S1",
                      "lesion_id": "S1_L1", "fold": 0}],
        "scans": [{"image": "images/S1.nii.gz", "patient_id": "S1", "fold": 0}],
    }  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(ValueError, match=r"S1_L1\.nii\.gz: mask of shape \(128, 64\)"):
        truth_scans(tmp_path)


def test_docs_print_the_region_table():
    """docs/read.md shows the table of bundle/data/regions.py as `python -m bundle.read regions` prints it."""
    printed = run_python("-m", "bundle.read", "regions").stdout.strip()
    assert printed == regions_table_markdown()
    assert printed in (REPO_ROOT / "docs" / "read.md").read_text()


@pytest.mark.integration
def test_read_evaluation_against_the_truth(read_run, phantom_dir, tmp_path):
    """`python -m bundle.read evaluate` matches the read's hot spots to the datalist's lesions and its BSI to the
    true BSI, over the scans that were read."""
    _, out, _ = read_run
    run_python("-m", "bundle.read", "evaluate", "--dataset_dir", str(phantom_dir), "--read_dir", str(out),
               "--out", str(tmp_path))  # fmt: skip
    result = json.loads((tmp_path / "read_evaluation.json").read_text())
    datalist = json.loads((phantom_dir / "datalist.json").read_text())
    read_ids = ("P00001", "P00002", "P00003")  # "single" is not a datalist scan
    assert result["detection"]["scans"] == result["bsi"]["scans"] == 3
    assert result["detection"]["lesions"] == sum(e["patient_id"] in read_ids for e in datalist["training"])
    reads = {r["scan"]: float(r["bsi"]) for r in read_csv(out / "reads.csv")}
    assert result["bsi"]["mean_read"] == pytest.approx(np.mean([reads[s] for s in read_ids]), abs=1e-4)
    truth = {s["patient_id"]: s["bsi"] for s in datalist["scans"]}
    assert result["bsi"]["mean_true"] == pytest.approx(np.mean([truth[s] for s in read_ids]), abs=1e-4)
    assert 0.0 <= result["detection"]["sensitivity"] <= 1.0
