"""Cross-validation runner: per-fold bundle runs, pooled out-of-fold predictions, report, skipping finished folds."""

from __future__ import annotations

import csv
import json

import pytest

from bundle.data.datalist import read_datalist
from bundle.evaluation.cv import main, parse_overrides

from .conftest import REPO_ROOT, evaluate_tiny, train_tiny


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["--max_epochs", "3", "--spatial_size", "[64,32]", "--device=cpu"]) == {
        "max_epochs": 3,
        "spatial_size": [64, 32],
        "device": "cpu",
    }
    with pytest.raises(SystemExit, match="needs a value"):
        parse_overrides(["--max_epochs"])
    with pytest.raises(SystemExit, match="unexpected argument"):
        parse_overrides(["3"])


def test_two_fold_cross_validation_end_to_end(phantom_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "cv"
    argv = [
        "--out", str(out), "--folds", "2", "--bootstrap", "50", "--compare", "resnet50,densenet169",
        "--dataset_dir", str(phantom_dir), "--spatial_size", "[64,32]", "--max_epochs", "1",
        "--batch_size", "4", "--num_workers", "0",
    ]  # fmt: skip
    assert main(argv) == 0

    entries = read_datalist(phantom_dir / "datalist.json")["training"]
    expected = {e["lesion_id"]: e for e in entries if e["fold"] in (0, 1)}
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for network in ("resnet50", "densenet169"):
        mine = [r for r in rows if r["network"] == network]
        assert sorted(r["lesion_id"] for r in mine) == sorted(expected)  # every lesion once, out of fold
        assert all(int(r["fold"]) == expected[r["lesion_id"]]["fold"] for r in mine)
        for fold in (0, 1):
            assert (out / network / f"fold{fold}" / "checkpoints" / "model.pt").is_file()
    assert len(rows) == 2 * len(expected)

    report = json.loads((out / "report" / "report.json").read_text())
    for table in ("table2", "table3", "table4", "table5", "patient_level", "phantom"):
        assert report[table], table
    assert report["reference_network"] == "resnet50"
    assert set(report["networks"]) == {"resnet50", "densenet169"}
    compared = {n["network"]: n for n in report["table3"]["networks"]}
    assert compared["densenet169"]["lesions"]["total"] == len(expected)
    assert compared["densenet169"]["comparison"]  # paired DeLong test against resnet50
    assert "inner validation" in report["selection_note"]
    assert (out / "report" / "report.html").is_file() and (out / "report" / "report.md").is_file()
    figures = {p.name for p in (out / "report" / "figures").glob("*.png")}
    assert {"overall.png", "figure3_burden.png", "figure4_tumor.png"} <= figures
    summary = json.loads((out / "cv_summary.json").read_text())
    assert [(s["network"], s["fold"]) for s in summary["folds"]] == [
        ("resnet50", 0), ("resnet50", 1), ("densenet169", 0), ("densenet169", 1),
    ]  # fmt: skip
    assert not any(s["skipped"] for s in summary["folds"])

    # a fold trained by the runner is the bundle CLI's run of that fold: same seed, same predictions
    train_tiny(phantom_dir, tmp_path / "cli", "--fold", "0", "--max_epochs", "1")
    evaluate_tiny(phantom_dir, tmp_path / "cli", "--fold", "0")
    with open(tmp_path / "cli" / "eval" / "predictions.csv", newline="") as f:
        by_cli = {r["lesion_id"]: r["probability"] for r in csv.DictReader(f)}
    by_cv = {r["lesion_id"]: r["probability"] for r in rows if r["network"] == "resnet50" and r["fold"] == "0"}
    assert by_cv == by_cli

    # a second call finds both folds finished and only re-pools and re-reports
    mtime = (out / "resnet50" / "fold0" / "checkpoints" / "model.pt").stat().st_mtime
    assert main(argv) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert all(s["skipped"] for s in summary["folds"])
    assert (out / "resnet50" / "fold0" / "checkpoints" / "model.pt").stat().st_mtime == mtime
