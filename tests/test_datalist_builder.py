"""``python -m bundle.data build``: folder and CSV sources, patient-level stratified folds, refusals, and the
end-to-end path phantom DICOM → builder → train → evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data.__main__ import main
from bundle.data.builder import build_datalist
from bundle.data.dicom_nm import split_views
from bundle.phantom.dicom import write_nm_whole_body, write_phantom_image, write_phantom_mask, write_seg

from .conftest import run_bundle, run_python, save_nifti

H, W = 32, 32


def scan(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(10, (H, W)).astype(np.float32)


def blob(k: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2 + 4 * k : 4 + 4 * k, 3:6] = 1
    return mask


def png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Four scans in four forms, each with a benign and a malignant lesion (10 lesions in all)."""
    root = tmp_path / "data"
    images, benign, malignant = root / "images", root / "masks" / "benign", root / "masks" / "malignant"
    write_nm_whole_body(images / "P1.dcm", *split_views(scan(1)), "PAT1", seed=1)  # multi-frame
    ant, post = split_views(scan(2))
    a = write_nm_whole_body(images / "P2" / "ant.dcm", ant, None, "PAT2", seed=2)  # two single-view files
    p = write_nm_whole_body(images / "P2" / "post.dcm", None, post, "PAT2", seed=2)
    save_nifti(images / "P3.nii.gz", scan(3).astype(np.int16))
    png(images / "P4.png", scan(4).astype(np.uint16))
    save_nifti(benign / "P1_L1.nii.gz", blob(0))
    save_nifti(malignant / "P1_L2.nii.gz", blob(1))
    write_seg(malignant / "P2_seg.dcm", [a, p], {1: blob(2), 2: blob(3)})  # two lesions in one SEG
    save_nifti(benign / "P2_L3.nii.gz", blob(4))
    png(benign / "P3_labels.png", (blob(0) * 4 + blob(2) * 9).astype(np.uint8))  # label values 4 and 9
    save_nifti(malignant / "P3_L9.nii.gz", blob(5))
    png(benign / "P4_a.png", blob(1) * 255)
    png(malignant / "P4" / "b.png", blob(6) * 255)  # in a sub-folder named after its scan
    (root / "patients.csv").write_text("scan,patient_id,tumor_type\nP3,X3,lung\n")
    return root


def test_build_from_a_folder_of_mixed_formats(mixed_folder, capsys):
    root = mixed_folder
    assert main(["build", str(root), "--num_folds", "2"]) == 0
    out = capsys.readouterr().out
    content = json.loads((root / "datalist.json").read_text())
    entries = {e["lesion_id"]: e for e in content["training"]}
    assert content["num_folds"] == 2 and len(entries) == 10
    assert entries["P1_L1"] == {
        "image": "images/P1.dcm",
        "mask": "masks/benign/P1_L1.nii.gz",
        "label": 0,
        "patient_id": "PAT1",  # from the DICOM PatientID
        "lesion_id": "P1_L1",
        "fold": entries["P1_L1"]["fold"],
        "tumor_type": "unknown",
        "lesions_in_image": 2,
    }
    assert entries["P2_seg_2"]["mask"] == "masks/malignant/P2_seg.dcm#2" and entries["P2_seg_2"]["label"] == 1
    assert entries["P2_seg_1"]["image"] == "images/P2" and entries["P2_L3"]["lesions_in_image"] == 3
    assert entries["P3_labels_9"]["mask"] == "masks/benign/P3_labels.png#9"
    assert entries["P3_labels_4"]["patient_id"] == "X3" and entries["P3_labels_4"]["tumor_type"] == "lung"
    assert entries["P4_b"]["patient_id"] == "P4" and entries["P4_b"]["image"] == "images/P4.png"
    # summary: patients, scans, lesions and the class balance of each fold
    assert "4 patients, 4 scans, 10 lesions, 2 folds (seed 0)" in out
    assert "malignant %" in out and "all" in out
    assert "take their patient id from the scan name" in out


def test_build_refuses_to_overwrite_unless_asked(mixed_folder, capsys):
    root = mixed_folder
    (root / "datalist.json").write_text("{}")
    assert main(["build", str(root), "--num_folds", "2"]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().out
    assert (root / "datalist.json").read_text() == "{}"
    assert main(["build", str(root), "--num_folds", "2", "--overwrite"]) == 0
    assert len(json.loads((root / "datalist.json").read_text())["training"]) == 10


def test_build_lists_every_problem_and_writes_nothing(mixed_folder, capsys):
    root = mixed_folder
    save_nifti(root / "masks" / "benign" / "Q9_L1.nii.gz", blob(0))  # belongs to no scan
    save_nifti(root / "masks" / "malignant" / "P1_L7.nii.gz", np.zeros((H, W), np.uint8))  # empty
    (root / "masks" / "unsure").mkdir()  # unknown label folder
    assert main(["build", str(root), "--num_folds", "2"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s) found" in out
    assert f"{root / 'masks' / 'benign' / 'Q9_L1.nii.gz'}: belongs to no scan" in out
    assert "mask is empty" in out and str(root / "masks" / "malignant" / "P1_L7.nii.gz") in out
    assert f"{root / 'masks' / 'unsure'}: unknown label folder" in out
    assert "nothing written" in out
    assert not (root / "datalist.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_build_from_a_csv(tmp_path):
    root = tmp_path
    ant, post = split_views(scan(1))
    a = write_nm_whole_body(root / "scans" / "a1.dcm", ant, None, "P1", seed=1)
    p = write_nm_whole_body(root / "scans" / "p1.dcm", None, post, "P1", seed=1)
    save_nifti(root / "scans" / "s2.nii.gz", scan(2).astype(np.int16))
    png(root / "masks" / "s1_labels.png", (blob(0) + 2 * blob(1) + 3 * blob(2)).astype(np.uint8))
    save_nifti(root / "masks" / "s2_a.nii.gz", blob(3))
    save_nifti(root / "masks" / "s2_b.nii.gz", blob(4))
    rows = [
        ("image", "mask", "label", "patient_id", "tumor_type", "lesion_id"),
        (f"scans/{a.name};scans/{p.name}", "masks/s1_labels.png#1", "benign", "P1", "prostate", "P1_first"),
        (f"scans/{a.name};scans/{p.name}", "masks/s1_labels.png#2", "malignant", "P1", "prostate", ""),
        (f"scans/{a.name};scans/{p.name}", "masks/s1_labels.png#3", "1", "P1", "prostate", ""),
        ("scans/s2.nii.gz", "masks/s2_a.nii.gz", "0", "P2", "", ""),
        ("scans/s2.nii.gz", "masks/s2_b.nii.gz", "malignant", "P2", "", ""),
    ]
    with open(root / "lesions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    content, problems, _ = build_datalist(root / "lesions.csv", num_folds=2)
    assert problems == []
    entries = {e["lesion_id"]: e for e in content["training"]}
    assert set(entries) == {"P1_first", "s1_labels_2", "s1_labels_3", "s2_a", "s2_b"}
    assert entries["P1_first"]["image"] == ["scans/a1.dcm", "scans/p1.dcm"]
    assert entries["s1_labels_3"]["label"] == 1 and entries["s1_labels_3"]["lesions_in_image"] == 3
    assert entries["s2_a"]["tumor_type"] == "unknown" and entries["s2_b"]["label"] == 1
    assert {e["fold"] for e in entries.values() if e["patient_id"] == "P1"} != {
        e["fold"] for e in entries.values() if e["patient_id"] == "P2"
    }


def test_csv_with_an_unknown_label_is_refused(tmp_path):
    save_nifti(tmp_path / "s.nii.gz", scan(1).astype(np.int16))
    save_nifti(tmp_path / "m.nii.gz", blob(0))
    (tmp_path / "l.csv").write_text("image,mask,label,patient_id\ns.nii.gz,m.nii.gz,probably,P1\n")
    content, problems, _ = build_datalist(tmp_path / "l.csv", num_folds=2)
    assert content is None
    assert any(f"{tmp_path / 'l.csv'}, line 2: label 'probably'" in str(p) for p in problems)


def test_folds_group_patients_and_are_stratified(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["image,mask,label,patient_id"]
    for p in range(40):
        save_nifti(tmp_path / "s" / f"P{p}.nii.gz", scan(p).astype(np.int16))
        metastatic = rng.random() < 0.5
        for k in range(int(rng.integers(1, 6))):
            save_nifti(tmp_path / "m" / f"P{p}_{k}.nii.gz", blob(k))
            label = int(rng.random() < (0.8 if metastatic else 0.2))
            rows.append(f"s/P{p}.nii.gz,m/P{p}_{k}.nii.gz,{label},P{p}")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    content, problems, _ = build_datalist(tmp_path / "l.csv", num_folds=5, seed=3)
    assert problems == []
    entries = content["training"]
    folds_of: dict[str, set[int]] = {}
    for e in entries:
        folds_of.setdefault(e["patient_id"], set()).add(e["fold"])
    assert all(len(f) == 1 for f in folds_of.values())  # no patient in two folds
    assert {e["fold"] for e in entries} == set(range(5))
    overall = np.mean([e["label"] for e in entries])
    for fold in range(5):
        share = np.mean([e["label"] for e in entries if e["fold"] == fold])
        assert abs(share - overall) < 0.15, (fold, share, overall)
    again, _, _ = build_datalist(tmp_path / "l.csv", num_folds=5, seed=3)
    assert again == content  # the seed fixes the folds


# ---- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_training_run_from_phantom_dicom(tmp_path):
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig
    from bundle.phantom.writers import WRITERS, ScanWriter, register_writer

    if "dicom" not in WRITERS:
        register_writer("dicom", ScanWriter(".dcm", write_phantom_image, write_phantom_mask, "DICOM NM + SEG"))
    data = tmp_path / "data"
    phantom = generate_dataset(data, patients=8, seed=1, config=PhantomConfig(height=256, width=128), fmt="dicom")
    with open(data / "lesions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "label", "patient_id", "tumor_type"])
        for e in phantom["training"]:
            writer.writerow([e["image"], e["mask"], e["label"], e["patient_id"], e["tumor_type"]])
    run_python("-m", "bundle.data", "build", str(data / "lesions.csv"), "--num_folds", "2", "--overwrite")
    built = json.loads((data / "datalist.json").read_text())
    assert len(built["training"]) == len(phantom["training"])
    assert built["training"][0]["image"].endswith(".dcm") and built["training"][0]["mask"].endswith(".dcm")
    test_lesions = sum(e["fold"] == 0 for e in built["training"])

    tiny = ["--spatial_size", "[64,32]", "--batch_size", "4", "--num_workers", "0", "--val_fraction", "0.5"]
    out = tmp_path / "out"
    common = ["--dataset_dir", str(data), "--output_dir", str(out), *tiny]
    run_bundle("run", "training", "--config_file", "configs/train.yaml", "--max_epochs", "1", *common, timeout=900)
    assert (out / "checkpoints" / "model.pt").is_file()
    configs = "['configs/train.yaml','configs/evaluate.yaml']"
    run_bundle("run", "evaluating", "--config_file", configs, *common, timeout=900)
    predictions = (out / "eval" / "predictions.csv").read_text().strip().splitlines()
    assert len(predictions) == 1 + test_lesions
    assert (out / "eval" / "metrics.json").is_file()
