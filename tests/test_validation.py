"""Deep datalist validation: each bad input gets its own error naming the file/entry and the fix; all are listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle.data.__main__ import get_args_parser, main
from bundle.data.datalist import load_split, write_datalist
from bundle.data.dicom_nm import split_views
from bundle.data.readers import WholeBodyScanReader
from bundle.data.validation import (
    ValidationReport,
    check_datalist,
    check_pretrained,
    validate,
    validate_datalist,
)
from bundle.errors import (
    CountsError,
    DicomReadError,
    DuplicateLesionError,
    EmptyMaskError,
    EntryKeyError,
    FoldClassError,
    FoldValueError,
    MalformedDatalistError,
    MissingFileError,
    NonBinaryMaskError,
    NotWholeBodyNMError,
    PatientFoldError,
    ProblemsError,
    ShapeMismatchError,
    SingleViewError,
    UnknownLabelError,
    ViewError,
)
from bundle.nets.pretrained import PretrainedWeightsError
from bundle.phantom.dicom import write_nm_whole_body

from .conftest import REPO_ROOT, save_nifti

H, W = 64, 64  # assembled (two 64x32 views)
PATIENTS = 6


def scan_image(p: int) -> np.ndarray:
    return np.random.default_rng(p).poisson(20, (H, W)).astype(np.float32)


def lesion_mask(k: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[4 + 8 * k : 8 + 8 * k, 10:14] = 1
    return mask


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, dict]:
    """A valid 6-patient data set: DICOM NM scans, NIfTI masks, a benign and a malignant lesion each, 2 folds."""
    entries = []
    for p in range(PATIENTS):
        pid = f"P{p}"
        write_nm_whole_body(tmp_path / "images" / f"{pid}.dcm", *split_views(scan_image(p)), pid, seed=p)
        for k, label in enumerate((0, 1)):
            save_nifti(tmp_path / "masks" / f"{pid}_L{k}.nii.gz", lesion_mask(k))
            entries.append(
                {
                    "image": f"images/{pid}.dcm",
                    "mask": f"masks/{pid}_L{k}.nii.gz",
                    "label": label,
                    "patient_id": pid,
                    "lesion_id": f"{pid}_L{k}",
                    "fold": p % 2,
                }
            )
    content = {"name": "test", "num_folds": 2, "training": entries}
    write_datalist(tmp_path / "datalist.json", content)
    return tmp_path, content


def problems_of(root: Path, content: dict, **kwargs) -> list[Exception]:
    write_datalist(root / "datalist.json", content)
    return validate(root / "datalist.json", **kwargs).problems


def only(problems: list[Exception], kind: type) -> Exception:
    found = [p for p in problems if isinstance(p, kind)]
    assert len(found) == 1, problems
    return found[0]


def test_a_valid_dataset_has_no_problem(dataset):
    root, _ = dataset
    assert validate_datalist(root / "datalist.json") == []
    report = check_datalist(str(root / "datalist.json"), str(root))
    assert (report.entries, report.checked, report.scans, report.masks) == (12, 12, PATIENTS, 2 * PATIENTS)
    assert report.scope == "all"


# ---- files ------------------------------------------------------------------------------------------------------
def test_missing_scan_file(dataset):
    root, content = dataset
    (root / "images" / "P2.dcm").unlink()
    error = only(problems_of(root, content), MissingFileError)
    assert str(root / "images" / "P2.dcm") in str(error) and "scan file not found" in str(error)
    assert "P2_L0" in str(error) and "P2_L1" in str(error)  # the lesions that use it


def test_missing_mask_file(dataset):
    root, content = dataset
    (root / "masks" / "P1_L1.nii.gz").unlink()
    error = only(problems_of(root, content), MissingFileError)
    assert str(root / "masks" / "P1_L1.nii.gz") in str(error) and "mask file not found" in str(error)


def test_unreadable_dicom(dataset):
    root, content = dataset
    path = root / "images" / "P3.dcm"
    path.write_bytes(path.read_bytes()[:400])
    error = only(problems_of(root, content), DicomReadError)
    assert str(path) in str(error) and "Fix:" in str(error)


def test_dicom_that_is_not_nm(dataset):
    root, content = dataset
    path = write_nm_whole_body(root / "images" / "P0.dcm", *split_views(scan_image(0)), "P0", modality="CT")
    error = only(problems_of(root, content), NotWholeBodyNMError)
    assert str(path) in str(error) and "Modality CT" in str(error)


def test_dicom_that_is_not_whole_body(dataset):
    root, content = dataset
    image_type = ("ORIGINAL", "PRIMARY", "STATIC", "EMISSION")
    path = write_nm_whole_body(root / "images" / "P0.dcm", *split_views(scan_image(0)), "P0", image_type=image_type)
    error = only(problems_of(root, content), NotWholeBodyNMError)
    assert str(path) in str(error) and "not WHOLE BODY" in str(error)


def test_views_not_identifiable(dataset):
    root, content = dataset
    path = write_nm_whole_body(root / "images" / "P4.dcm", *split_views(scan_image(4)), "P4", view_codes=False)
    error = only(problems_of(root, content), ViewError)
    assert str(path) in str(error) and "cannot tell which frame is anterior" in str(error)


def test_wrong_number_of_frames(dataset):
    root, content = dataset
    ant, post = split_views(scan_image(4))

    def three_frames(ds):
        ds.NumberOfFrames = 3
        ds.DetectorVector = [1, 2, 1]
        ds.EnergyWindowVector = [1, 1, 1]
        ds.PixelData = np.stack([ant, post, ant]).astype(np.uint16).tobytes()

    path = write_nm_whole_body(root / "images" / "P4.dcm", ant, post, "P4", edit=three_frames)
    error = only(problems_of(root, content), ViewError)
    assert str(path) in str(error) and "3 frames" in str(error)


def test_image_and_mask_shapes_differ(dataset):
    root, content = dataset
    save_nifti(root / "masks" / "P5_L0.nii.gz", np.ones((H, W // 2), dtype=np.uint8))  # drawn on one view only
    error = only(problems_of(root, content), ShapeMismatchError)
    assert str(root / "masks" / "P5_L0.nii.gz") in str(error)
    assert "64x32" in str(error) and "64x64" in str(error) and "python -m bundle.data export" in str(error)


def test_empty_mask(dataset):
    root, content = dataset
    save_nifti(root / "masks" / "P5_L1.nii.gz", np.zeros((H, W), dtype=np.uint8))
    error = only(problems_of(root, content), EmptyMaskError)
    assert str(root / "masks" / "P5_L1.nii.gz") in str(error) and "P5_L1" in str(error)


def test_non_binary_mask(dataset):
    root, content = dataset
    labels = lesion_mask(0) + 2 * lesion_mask(1)
    save_nifti(root / "masks" / "P5_L1.nii.gz", labels)
    error = only(problems_of(root, content), NonBinaryMaskError)
    assert str(root / "masks" / "P5_L1.nii.gz") in str(error) and "P5_L1.nii.gz#N" in str(error)


def test_nan_or_inf_counts(dataset):
    root, content = dataset
    image = scan_image(1)
    image[3, 3] = np.nan
    save_nifti(root / "images" / "P1.nii.gz", image)
    for e in content["training"]:
        if e["patient_id"] == "P1":
            e["image"] = "images/P1.nii.gz"
    error = only(problems_of(root, content), CountsError)
    assert str(root / "images" / "P1.nii.gz") in str(error) and "NaN or infinite" in str(error)


def test_negative_counts(dataset):
    root, content = dataset
    ant, post = split_views(scan_image(2))
    ant[0, 0] = -4
    path = write_nm_whole_body(root / "images" / "P2.dcm", ant, post, "P2", signed=True)
    error = only(problems_of(root, content), CountsError)
    assert str(path) in str(error) and "negative counts" in str(error)


def test_single_view_scan_is_refused_for_training_but_accepted_for_evaluation(dataset):
    root, content = dataset
    ant, _ = split_views(scan_image(3))
    path = write_nm_whole_body(root / "images" / "P3.dcm", ant, None, "P3")
    error = only(problems_of(root, content), SingleViewError)
    assert str(path) in str(error) and "training needs anterior and posterior" in str(error)
    report = validate(root / "datalist.json", allow_single_view=True)
    assert report.problems == [] and any("single ANT view" in n for n in report.notes)


# ---- datalist ---------------------------------------------------------------------------------------------------
def test_unknown_label_value(dataset):
    root, content = dataset
    content["training"][3]["label"] = "maybe"
    error = only(problems_of(root, content), UnknownLabelError)
    assert "entry 3 (lesion_id 'P1_L1')" in str(error) and "'maybe'" in str(error)


def test_patient_in_two_folds(dataset):
    root, content = dataset
    content["training"][0]["fold"] = 1
    error = only(problems_of(root, content), PatientFoldError)
    assert "patient_id 'P0' is in folds [0, 1]" in str(error)


def test_duplicated_lesion_id(dataset):
    root, content = dataset
    content["training"][5]["lesion_id"] = content["training"][4]["lesion_id"]
    error = only(problems_of(root, content), DuplicateLesionError)
    assert "lesion_id 'P2_L0' appears 2 times" in str(error)


def test_fold_value_out_of_range(dataset):
    root, content = dataset
    content["training"][2]["fold"] = 4
    error = only(problems_of(root, content), FoldValueError)
    assert "entry 2 (lesion_id 'P1_L0')" in str(error) and "out of range 0..1" in str(error)


def test_fold_without_a_malignant_lesion(dataset):
    root, content = dataset
    for e in content["training"]:
        if e["fold"] == 1:
            e["label"] = 0
    error = only(problems_of(root, content), FoldClassError)
    assert "fold 1 has no malignant lesion" in str(error)


def test_malformed_datalist_json(dataset):
    root, _ = dataset
    (root / "datalist.json").write_text('{"training": [')
    error = only(validate(root / "datalist.json").problems, MalformedDatalistError)
    assert str(root / "datalist.json") in str(error) and "not valid JSON" in str(error)


def test_datalist_entry_missing_keys(dataset):
    root, content = dataset
    del content["training"][1]["patient_id"]
    error = only(problems_of(root, content), EntryKeyError)
    assert "entry 1 (lesion_id 'P0_L1'): missing key(s) patient_id" in str(error)


def test_pretrained_weights_of_the_wrong_architecture(tmp_path):
    from monai.networks.nets import densenet121

    weights = tmp_path / "densenet.pth"
    torch.save(densenet121(spatial_dims=2, in_channels=3, out_channels=1000).state_dict(), weights)
    error = only(check_pretrained(weights, "resnet50"), PretrainedWeightsError)
    assert str(weights) in str(error) and "not a torchvision-format state_dict" in str(error)


# ---- scope: the lesions a run uses ------------------------------------------------------------------------------
def config_check(root: Path, run_id: str, **overrides: object) -> ValidationReport:
    """The first step of a config's run (``check_datalist``), parsed from train.yaml (+ evaluate.yaml) and run."""
    configs = ["train.yaml"] if run_id == "training" else ["train.yaml", "evaluate.yaml"]
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(REPO_ROOT), "dataset_dir": str(root), **overrides})
    return parser.get_parsed_content(f"{run_id}#0")


def test_runs_validate_only_their_lesions_and_single_view_in_the_test_fold_stops_nothing(dataset):
    root, _ = dataset
    ant, _ = split_views(scan_image(3))
    path = write_nm_whole_body(root / "images" / "P3.dcm", ant, None, "P3")  # P3 is in fold 1
    # fold 1 held out: training reads fold 0 (P0, P2, P4) only
    report = config_check(root, "training", fold=1)
    assert (report.entries, report.checked, report.scans, report.masks) == (12, 6, 3, 6)
    assert report.scope == "fold 1 trainval" and report.notes == []
    # evaluation of fold 1 reads fold 1 and accepts the single-view scan
    report = config_check(root, "evaluating", fold=1)
    assert (report.checked, report.scans, report.masks) == (6, 3, 6) and report.scope == "fold 1 test"
    assert any("single ANT view" in n for n in report.notes)
    # fold 0 held out: P3 is a training scan
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the expression's error
        config_check(root, "training", fold=0)
    problems = err.value.__cause__
    assert isinstance(problems, ProblemsError) and len(problems.errors) == 1
    error = only(problems.errors, SingleViewError)
    assert str(path) in str(error) and "P3_L0" in str(error)
    # evaluating every lesion (an external test set) reads all of them
    report = config_check(root, "evaluating", fold=0, eval_part="all")
    assert (report.checked, report.scans) == (12, PATIENTS) and report.scope == "all"


def test_train_and_val_parts_are_load_splits_selection(dataset):
    root, _ = dataset
    datalist = str(root / "datalist.json")
    split = {"fold": 1, "val_fraction": 0.5, "seed": 0}
    val = load_split(datalist, root, part="val", check_files=False, **split)
    train = load_split(datalist, root, part="train", check_files=False, **split)
    assert val and train
    lost = Path(val[0]["mask"])
    lost.unlink()
    report = check_datalist(datalist, root, part="train", **split)
    assert report.checked == len(train) and report.masks == len(train)
    with pytest.raises(ProblemsError) as err:
        check_datalist(datalist, root, part="val", **split)
    error = only(err.value.errors, MissingFileError)
    assert str(lost) in str(error) and val[0]["lesion_id"] in str(error)


def test_datalist_wide_checks_cover_unused_parts_and_unused_files_are_not_read(dataset):
    root, content = dataset
    (root / "masks" / "P1_L0.nii.gz").unlink()  # fold 1
    write_datalist(root / "datalist.json", content)
    datalist = str(root / "datalist.json")
    assert check_datalist(datalist, root, fold=1, part="trainval").checked == 6
    with pytest.raises(ProblemsError, match="mask file not found"):
        check_datalist(datalist, root, fold=0, part="trainval")
    content["training"][3]["fold"] = 0  # P1 (fold 1) now also in fold 0
    write_datalist(root / "datalist.json", content)
    with pytest.raises(ProblemsError) as err:
        check_datalist(datalist, root, fold=1, part="trainval")
    assert "patient_id 'P1' is in folds [0, 1]" in str(only(err.value.errors, PatientFoldError))
    # the split is undefined then: every entry's files are read and listed too
    assert any(isinstance(e, MissingFileError) for e in err.value.errors)


def test_a_fold_that_is_not_in_the_datalist_or_an_in_memory_split_is_refused(dataset):
    root, content = dataset
    with pytest.raises(ProblemsError, match=r"fold 3 is not in the datalist \(folds present: \[0, 1\]\)"):
        check_datalist(str(root / "datalist.json"), root, fold=3, part="test")
    with pytest.raises(ValueError, match="needs the datalist as a file path and a fold"):
        validate(content, root, fold=0, part="test")
    with pytest.raises(ValueError, match="needs the datalist as a file path and a fold"):
        validate(root / "datalist.json", part="trainval")
    with pytest.raises(ValueError, match="part must be one of"):
        validate(root / "datalist.json", fold=0, part="training")


# ---- all at once ------------------------------------------------------------------------------------------------
def test_every_problem_is_listed_and_check_datalist_raises(dataset):
    root, content = dataset
    (root / "images" / "P2.dcm").unlink()
    save_nifti(root / "masks" / "P5_L1.nii.gz", np.zeros((H, W), dtype=np.uint8))
    content["training"][0]["fold"] = 1
    content["training"][3]["label"] = 7
    write_datalist(root / "datalist.json", content)
    with pytest.raises(ProblemsError) as err:
        check_datalist(str(root / "datalist.json"), str(root))
    kinds = {type(e) for e in err.value.errors}
    assert {MissingFileError, EmptyMaskError, PatientFoldError, UnknownLabelError} <= kinds
    assert str(root / "datalist.json") in str(err.value) and "4 problem(s)" in str(err.value)


def test_validate_command_prints_all_problems_and_fails(dataset, capsys):
    root, content = dataset
    save_nifti(root / "masks" / "P5_L1.nii.gz", np.zeros((H, W), dtype=np.uint8))
    content["training"][5]["lesion_id"] = content["training"][4]["lesion_id"]
    write_datalist(root / "datalist.json", content)
    weights = root / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    before = sorted(p.name for p in root.rglob("*"))
    code = main(
        ["validate", str(root / "datalist.json"), "--pretrained_weights", str(weights), "--network_name", "resnet50"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "3 problem(s) found" in out and "mask is empty" in out and "appears 2 times" in out and "bad.pth" in out
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written


def test_validate_command_accepts_a_good_datalist(dataset, capsys):
    root, _ = dataset
    assert main(["validate", str(root / "datalist.json"), "--dataset_dir", str(root)]) == 0
    assert "OK (12 lesions, 6 scans, 12 masks checked)" in capsys.readouterr().out


def test_validate_command_flags():
    parser = get_args_parser()
    args = parser.parse_args(["validate", "d.json", "--network_name", "vgg16", "--allow_single_view"])
    assert (args.network_name, args.allow_single_view, args.num_folds) == ("vgg16", True, None)
    assert parser.parse_args(["validate", "d.json"]).network_name == "resnet50"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["validate", "d.json", "--network", "vgg16"])  # the old name is no abbreviation
    assert exit_.value.code == 2
    args = parser.parse_args(["build", "DATA"])
    assert (args.num_folds, args.seed, args.overwrite, args.csv, args.dataset_dir, args.output) == (
        5,
        0,
        False,
        None,
        None,
        None,
    )


class CountingReader(WholeBodyScanReader):
    """Records every path it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    def load(self, data: str | list[str]) -> tuple[np.ndarray, dict]:
        self.loaded.append(str(data))  # list.append is thread-safe
        return super().load(data)


def test_validation_reads_each_scan_and_each_mask_once(tmp_path):
    """100 lesions on 10 scans, each scan's lesions in one label image: 10 scan reads, one per mask selector."""
    entries = []
    for p in range(10):
        image = np.random.default_rng(p).poisson(5, (128, 64)).astype(np.int16)
        save_nifti(tmp_path / "images" / f"P{p}.nii.gz", image)
        labels = np.zeros((128, 64), dtype=np.uint8)
        for k in range(10):
            labels[4 + 12 * k : 10 + 12 * k, 20:26] = k + 1
        save_nifti(tmp_path / "masks" / f"P{p}.nii.gz", labels)
        for k in range(10):
            entries.append(
                {
                    "image": f"images/P{p}.nii.gz",
                    "mask": f"masks/P{p}.nii.gz#{k + 1}",
                    "label": k % 2,
                    "patient_id": f"P{p}",
                    "lesion_id": f"P{p}_{k}",
                    "fold": p % 5,
                }
            )
    (tmp_path / "datalist.json").write_text(json.dumps({"num_folds": 5, "training": entries}))
    reader = CountingReader()
    report = validate(tmp_path / "datalist.json", reader=reader)
    assert report.problems == [] and report.scans == 10 and report.masks == 100
    scans = [str(tmp_path / "images" / f"P{p}.nii.gz") for p in range(10)]
    masks = [str(tmp_path / "masks" / f"P{p}.nii.gz#{k + 1}") for p in range(10) for k in range(10)]
    assert sorted(reader.loaded) == sorted(scans + masks)
