"""``lesion_mode: lesion | scan`` in train.yaml/evaluate.yaml, and temperature scaling after training: the configs
build the chosen mode only, a tiny one-pass run writes the per-lesion files of the paper's mode, T is fitted on the
inner validation split and the evaluation reports ECE before and after it."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from bundle.data.datalist import load_split, read_datalist
from bundle.data.lesion_groups import is_scan_mode, items_for_mode, pad_lesions_collate
from bundle.evaluation.calibration import expected_calibration_error, fit_temperature, logits_from_probabilities
from bundle.evaluation.predictions import PREDICTION_COLUMNS
from bundle.evaluation.temperature import TEMPERATURE_FILE, collect_logits
from bundle.nets.onepass import OnePassLesionClassifier

from .conftest import REPO_ROOT, evaluate_tiny, train_tiny

# metrics.json keys of the paper's mode before lesion_mode and calibration existed
METRICS_KEYS = {
    "sensitivity", "specificity", "accuracy", "ppv", "npv", "auc", "threshold", "n", "positives", "negatives",
    "tp", "fp", "tn", "fn", "checkpoint", "datalist", "fold", "part", "network", "model_selection",
}  # fmt: skip


def parser_of(phantom_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(REPO_ROOT), "dataset_dir": str(phantom_dir), **overrides})
    return parser


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_lesion_mode_is_validated(phantom_dir):
    assert (is_scan_mode("lesion"), is_scan_mode("scan")) == (False, True)
    with pytest.raises(ValueError, match=r"--lesion_mode must be 'lesion'.*or 'scan'.*got 'scans'"):
        is_scan_mode("scans")
    with pytest.raises(RuntimeError) as err:
        parser_of(phantom_dir, lesion_mode="pixel").get_parsed_content("network_def")
    assert "--lesion_mode must be" in repr(err.value.__cause__) or "--lesion_mode must be" in str(err.value)


def test_each_mode_builds_its_own_network_data_and_batching(phantom_dir):
    lesion = parser_of(phantom_dir)
    assert lesion.get_parsed_content("lesion_mode") == "lesion"
    assert lesion.get_parsed_content("scan_network_def") is None  # disabled: never built in the paper's mode
    assert lesion.get_parsed_content("collate_fn").__name__ == "list_data_collate"
    assert lesion.get_parsed_content("prepare_batch").__name__ == "default_prepare_batch"
    items = lesion.get_parsed_content("validate#dataset#data")
    assert all("mask" in item and "masks" not in item for item in items)

    scan = parser_of(phantom_dir, lesion_mode="scan", network_name="resnet10")
    assert scan.get_parsed_content("lesion_network_def") is None
    assert isinstance(scan.get_parsed_content("network_def"), OnePassLesionClassifier)
    assert scan.get_parsed_content("collate_fn") is pad_lesions_collate
    scans = scan.get_parsed_content("validate#dataset#data")
    expected = items_for_mode(items, "scan")
    assert [s["lesion_id"] for s in scans] == [s["lesion_id"] for s in expected]
    assert sum(len(s["masks"]) for s in scans) == len(items)  # every lesion once, grouped by its scan
    assert all(s["scan"] == s["image"] for s in scans)
    flip = scan.get_parsed_content("train#random_transforms")[0]
    assert list(flip.keys) == ["image", "masks"]


def test_unlabelled_inference_items_group_by_scan(phantom_dir):
    """Scan mode for inference: items without labels (bundle.engine.inference) grouped and batched per scan."""
    from bundle.data.lesion_groups import PrepareScanBatch
    from bundle.engine.inference import inference_items

    items = inference_items(phantom_dir, None)
    scans = items_for_mode(items, "scan")
    assert sum(len(s["masks"]) for s in scans) == len(items) and not any("labels" in s for s in scans)
    assert [s["scan"] for s in scans] == list(dict.fromkeys(i["scan"] for i in items))  # as the datalist writes it
    loaded = [{**s, "image": torch.zeros(1, 4, 2), "masks": torch.zeros(len(s["masks"]), 4, 2)} for s in scans[:2]]
    batch = pad_lesions_collate(loaded)
    _, targets, _, kwargs = PrepareScanBatch()(batch)
    assert targets is None and int(kwargs["lesion_valid"].sum()) == len(batch["lesion_id"]) == len(batch["scan"])


@pytest.fixture(scope="module")
def runs(phantom_dir, tmp_path_factory):
    """Two epochs of each mode (the one-pass network on resnet10) and their evaluations on fold 0."""
    out = tmp_path_factory.mktemp("modes")
    train_tiny(phantom_dir, out / "scan", "--max_epochs", "2", "--lesion_mode", "scan", "--network_name", "resnet10")
    evaluate_tiny(phantom_dir, out / "scan", "--lesion_mode", "scan", "--network_name", "resnet10")
    train_tiny(phantom_dir, out / "lesion", "--max_epochs", "1")
    evaluate_tiny(phantom_dir, out / "lesion")
    return out


def test_scan_mode_writes_one_row_per_test_lesion(runs, phantom_dir):
    entries = read_datalist(phantom_dir / "datalist.json")["training"]
    truth = {e["lesion_id"]: e for e in entries if e["fold"] == 0}
    columns, rows = read_rows(runs / "scan" / "eval" / "predictions.csv")
    assert columns == list(PREDICTION_COLUMNS)
    assert sorted(r["lesion_id"] for r in rows) == sorted(truth)
    assert all(int(r["label"]) == truth[r["lesion_id"]]["label"] for r in rows)
    assert all(r["patient_id"] == truth[r["lesion_id"]]["patient_id"] for r in rows)
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    metrics = json.loads((runs / "scan" / "eval" / "metrics.json").read_text())
    assert metrics["n"] == len(truth) and metrics["lesion_mode"] == "scan"
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-5)
    assert set(metrics) >= METRICS_KEYS
    state = torch.load(runs / "scan" / "checkpoints" / "model.pt", weights_only=True)
    assert state["backbone.body.conv1.weight"].shape[1] == 2 and state["head.4.weight"].shape[0] == 2


def test_both_modes_write_files_of_one_format(runs):
    columns = {mode: read_rows(runs / mode / "eval" / "predictions.csv")[0] for mode in ("lesion", "scan")}
    assert columns["lesion"] == columns["scan"] == list(PREDICTION_COLUMNS)
    keys = {mode: set(json.loads((runs / mode / "eval" / "metrics.json").read_text())) for mode in ("lesion", "scan")}
    assert keys["lesion"] == keys["scan"] == METRICS_KEYS | {"lesion_mode", "calibration"}
    state = torch.load(runs / "lesion" / "checkpoints" / "model.pt", weights_only=True)
    assert state["conv1.weight"].shape == (64, 2, 7, 7)  # the paper's ResNet50


@pytest.mark.parametrize("mode", ["lesion", "scan"])
def test_temperature_is_fitted_on_the_inner_validation_split(runs, phantom_dir, mode, monkeypatch):
    record = json.loads((runs / mode / "checkpoints" / TEMPERATURE_FILE).read_text())
    val = load_split(phantom_dir / "datalist.json", phantom_dir, 0, "val", 0.1, 0)
    assert record["lesions"] == len(val) and record["malignant"] == sum(e["label"] for e in val)
    assert (record["checkpoint"], record["fold"], record["lesion_mode"]) == ("model.pt", 0, mode)
    assert "test fold was not used" in record["fitted_on"]
    # the same T from the checkpoint's logits on the inner validation split, recomputed here
    monkeypatch.chdir(REPO_ROOT)
    extra = {"lesion_mode": "scan", "network_name": "resnet10"} if mode == "scan" else {}
    parser = parser_of(phantom_dir, spatial_size=[64, 32], batch_size=4, num_workers=0, **extra)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(runs / mode / "checkpoints" / "model.pt", weights_only=True))
    logits, labels = collect_logits(
        network,
        parser.get_parsed_content("validate#dataloader"),
        parser.get_parsed_content("validate#inferer"),
        parser.get_parsed_content("prepare_batch"),
        parser.get_parsed_content("device"),
    )
    assert len(labels) == len(val)
    assert fit_temperature(logits, labels) == pytest.approx(record["temperature"], rel=1e-3)
    ece = expected_calibration_error(softmax(logits, axis=1), labels, 10, "positive")
    assert record["ece_before"]["positive"] == pytest.approx(ece, abs=1e-4)


@pytest.mark.parametrize("mode", ["lesion", "scan"])
def test_evaluation_reports_ece_before_and_after_scaling(runs, mode):
    record = json.loads((runs / mode / "checkpoints" / TEMPERATURE_FILE).read_text())
    metrics = json.loads((runs / mode / "eval" / "metrics.json").read_text())
    calibration = metrics["calibration"]
    temperature = record["temperature"]
    assert calibration["temperature"] == pytest.approx(temperature)
    assert os.path.samefile(calibration["temperature_file"], runs / mode / "checkpoints" / TEMPERATURE_FILE)
    _, rows = read_rows(runs / mode / "eval" / "predictions.csv")
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    after = softmax(logits_from_probabilities(p) / temperature, axis=1)
    for kind in ("top_label", "positive"):
        # from the CSV's 6-decimal probabilities, so within rounding of the writer's logits
        assert calibration["ece_before"][kind] == pytest.approx(expected_calibration_error(p, y, 10, kind), abs=1e-4)
        assert calibration["ece_after"][kind] == pytest.approx(expected_calibration_error(after, y, 10, kind), abs=1e-4)
        assert sum(calibration["reliability_after"][kind]["count"]) == len(rows)
    youden = record["youden"]
    if youden is not None:
        inner = calibration["inner_youden"]
        threshold = youden["threshold"]
        assert inner["threshold"] == pytest.approx(threshold)
        # the CSV's probabilities are rounded to 6 decimals: a lesion that close to the threshold may go either way
        surely, maybe = p >= threshold + 1e-6, p >= threshold - 1e-6
        for cell, positive in (("tp", y == 1), ("fp", y == 0)):
            assert int((surely & positive).sum()) <= inner[cell] <= int((maybe & positive).sum()), cell


def test_a_temperature_for_another_checkpoint_is_not_applied(runs, phantom_dir, tmp_path):
    """Evaluating model_final.pt: the temperature (fitted for model.pt) is left out, ECE before still written."""
    evaluate_tiny(
        phantom_dir, runs / "lesion", "--checkpoint", str(runs / "lesion" / "checkpoints" / "model_final.pt"),
        "--eval_dir", str(tmp_path / "final"),
    )  # fmt: skip
    calibration = json.loads((tmp_path / "final" / "metrics.json").read_text())["calibration"]
    assert calibration["temperature"] is None and calibration["ece_after"] is None
    assert calibration["ece_before"]["top_label"] is not None


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["lesion", "scan"])
def test_inference_applies_the_temperature_in_both_modes(runs, phantom_dir, mode, tmp_path):
    """inference.yaml on the test fold with each mode's checkpoint: one row per lesion, P(malignant) equal to the
    evaluation's probability after temperature scaling, softmax(logit / T), to 1e-5; T recorded in predictions.json."""
    from .conftest import run_bundle

    entries = [e for e in read_datalist(phantom_dir / "datalist.json")["training"] if e["fold"] == 0]
    datalist = tmp_path / "fold0.json"
    datalist.write_text(json.dumps({"training": [{k: e[k] for k in ("image", "mask", "lesion_id")} for e in entries]}))
    extra = ["--lesion_mode", "scan", "--network_name", "resnet10"] if mode == "scan" else []
    run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(phantom_dir), "--datalist",
        str(datalist), "--checkpoint", str(runs / mode / "checkpoints" / "model.pt"), "--output_dir",
        str(tmp_path / "out"), "--spatial_size", "[64,32]", "--batch_size", "4", *extra,
    )  # fmt: skip
    temperature = json.loads((runs / mode / "checkpoints" / TEMPERATURE_FILE).read_text())["temperature"]
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["temperature"] == pytest.approx(temperature)
    evaluated = {
        r["lesion_id"]: float(r["probability"]) for r in read_rows(runs / mode / "eval" / "predictions.csv")[1]
    }
    inferred = {r["lesion_id"]: float(r["probability"]) for r in read_rows(tmp_path / "out" / "lesions.csv")[1]}
    assert set(inferred) == set(evaluated) == {e["lesion_id"] for e in entries}
    for lesion_id, p in evaluated.items():
        logit = np.log(p) - np.log1p(-p)
        assert inferred[lesion_id] == pytest.approx(1 / (1 + np.exp(-logit / temperature)), abs=1e-5), lesion_id


@pytest.mark.integration
def test_scan_mode_inference_skips_a_scan_that_fails_to_load(runs, phantom_dir, tmp_path):
    """One pass per scan: a truncated scan and a garbage mask (which spoils its whole scan, read in one item) are
    reported lesion by lesion in failed.csv with the file that failed; the third scan is classified; exit status 1."""
    from .conftest import copy_first_scans, run_bundle

    data = tmp_path / "data"
    entries, scans = copy_first_scans(phantom_dir, data)
    corrupt_scan = data / scans[1]
    corrupt_scan.write_bytes(corrupt_scan.read_bytes()[:300])  # truncated gzip
    corrupt_mask = data / [e for e in entries if e["image"] == scans[2]][-1]["mask"]
    corrupt_mask.write_text("not an image")
    listed = [{"image": e["image"], "mask": e["mask"], "lesion_id": e["lesion_id"]} for e in entries]
    (data / "lesions.json").write_text(json.dumps({"training": listed}))
    result = run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(data), "--datalist",
        str(data / "lesions.json"), "--checkpoint", str(runs / "scan" / "checkpoints" / "model.pt"), "--output_dir",
        str(tmp_path / "out"), "--spatial_size", "[64,32]", "--batch_size", "2", "--lesion_mode", "scan",
        "--network_name", "resnet10", check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    failed = read_rows(tmp_path / "out" / "failed.csv")[1]
    expected = {e["lesion_id"]: e for e in entries if e["image"] in scans[1:]}
    assert sorted(f["lesion_id"] for f in failed) == sorted(expected)
    for f in failed:
        assert f["failed_file"] == str(corrupt_scan if expected[f["lesion_id"]]["image"] == scans[1] else corrupt_mask)
        assert f["error"]
    classified = read_rows(tmp_path / "out" / "lesions.csv")[1]
    assert sorted(r["lesion_id"] for r in classified) == sorted(
        e["lesion_id"] for e in entries if e["image"] == scans[0]
    )
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in classified)
