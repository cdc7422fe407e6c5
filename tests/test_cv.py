"""Cross-validation runner: per-fold bundle runs, pooled out-of-fold predictions, report, skipping finished folds."""

from __future__ import annotations

import argparse
import csv
import json
import re

import pytest
import torch
from sklearn.metrics import roc_auc_score

from bundle.data import validation
from bundle.data.datalist import burden_group, read_datalist
from bundle.evaluation.__main__ import main as evaluation_main
from bundle.evaluation.cv import (
    Run,
    get_args_parser,
    main,
    parse_lesion_modes,
    parse_networks,
    parse_overrides,
    parse_run,
    parse_runs,
    parse_switches,
    plan_runs,
    run_name,
)

from .conftest import evaluate_tiny, train_tiny


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


def test_networks_are_a_list_of_known_distinct_names():
    assert parse_networks("resnet50, densenet169,vgg16") == ["resnet50", "densenet169", "vgg16"]
    assert parse_networks("resnet10") == ["resnet10"]  # a one-pass backbone (scan mode only)
    for bad in ("", "resnet51", "resnet50,resnet50"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected distinct comma-separated names"):
            parse_networks(bad)


def test_lesion_modes_and_the_runs_they_plan():
    assert parse_lesion_modes("lesion, scan") == ["lesion", "scan"]
    for bad in ("", "pixel", "scan,scan"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected distinct comma-separated lesion modes"):
            parse_lesion_modes(bad)
    assert plan_runs(["resnet50", "vgg16"], ["lesion", "scan"]) == [
        ("resnet50", "lesion", False, False), ("resnet50", "scan", False, False),
        ("vgg16", "lesion", False, False), ("vgg16", "scan", False, False),
    ]  # fmt: skip
    assert [r.name for r in plan_runs(["resnet50"], ["lesion", "scan"])] == ["resnet50", "resnet50_scan"]
    assert [run_name(n, m) for n, m in (("resnet50", "lesion"), ("resnet50", "scan"))] == ["resnet50", "resnet50_scan"]
    options = plan_runs(["resnet50"], ["lesion", "scan"], [False, True], [False, True])
    assert [r.name for r in options] == [
        "resnet50", "resnet50_context", "resnet50_patch", "resnet50_patch_context",
        "resnet50_scan", "resnet50_scan_context", "resnet50_scan_patch", "resnet50_scan_patch_context",
    ]  # fmt: skip
    assert [parse_run(r.name) for r in options] == options  # names and runs map one to one
    assert options[-1].overrides() == {
        "network_name": "resnet50", "lesion_mode": "scan", "local_patch": True, "context_masks": True,
    }  # fmt: skip
    assert parse_runs("densenet169_context, resnet18_scan") == [
        Run("densenet169", "lesion", False, True), Run("resnet18", "scan", False, False),
    ]  # fmt: skip
    for bad in ("", "resnet50_patch_scan", "resnet50_scan,resnet50_scan", "resnet50_local", "alexnet"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_runs(bad)
    assert parse_switches("false, true") == [False, True] and parse_switches("on") == [True]
    for bad in ("", "maybe", "true,true"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected false, true or false,true"):
            parse_switches(bad)
    with pytest.raises(ValueError, match="not available: inception_v3 in scan mode"):
        plan_runs(["inception_v3"], ["scan"])
    with pytest.raises(ValueError, match="not available: resnet10 in lesion mode"):
        plan_runs(["resnet10"], ["lesion", "scan"])


def test_cv_flags_and_their_defaults():
    parser = get_args_parser()
    args, rest = parser.parse_known_args(["--out", "o", "--fold", "1", "--max_epochs", "2"])
    assert (args.folds, args.networks, args.lesion_mode, args.threshold, args.bootstrap, args.no_report) == (
        None,
        ["resnet50"],
        ["lesion"],
        0.5,
        2000,
        False,
    )
    assert rest == ["--fold", "1", "--max_epochs", "2"]  # no abbreviation: --fold is not taken for --folds
    args, _ = parser.parse_known_args(
        ["--out", "o", "--folds", "2", "0", "--networks", "vgg16,resnet50", "--no_report"]
    )
    assert (args.folds, args.networks, args.no_report) == ([2, 0], ["vgg16", "resnet50"], True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--folds", "0", "7"], "fold(s) [7] not in"),
        (["--fold", "1"], "--fold (use --folds)"),
        (["--network_name", "vgg16"], "--network_name (use --networks)"),
        (["--compare", "resnet50,vgg16"], "--compare is now --networks"),
        (["--network", "vgg16"], "--network is now --networks"),
        (["--no-report"], "--no-report is now --no_report"),
        (["--max_epoch", "1"], "not an id of train.yaml or evaluate.yaml: --max_epoch"),
        (["--lesion_mode", "pixel"], "expected distinct comma-separated lesion modes"),
        (["--lesion_mode", "scan", "--networks", "inception_v3"], "not available: inception_v3 in scan mode"),
        (["--runs", "inception_v3_scan_patch"], "not available: inception_v3 in scan mode"),
        (["--local_patch", "true", "--runs", "resnet50"], "--runs names the runs"),
        (["--context_masks", "true"] * 1 + ["--local_patch", "maybe"], "expected false, true or false,true"),
    ],
)
def test_cv_refuses_runner_keys_old_flags_and_unknown_overrides(phantom_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "cv"), "--dataset_dir", str(phantom_dir), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()


def test_evaluation_help_lists_every_command_and_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluation_main(["--help"])
    assert exit_.value.code == 0
    listing = capsys.readouterr().out
    usages = dict(re.findall(r"usage: python -m bundle\.evaluation (cv|report) (.*?)\n\n", listing, flags=re.DOTALL))
    flags = {
        command: {t.strip("[]") for t in usage.split() if t.strip("[").startswith("--")}
        for command, usage in usages.items()
    }
    assert flags == {
        "cv": {
            "--out", "--folds", "--networks", "--lesion_mode", "--local_patch", "--context_masks", "--runs",
            "--explain", "--threshold", "--bootstrap", "--no_report",
        },
        "report": {
            "--datalist", "--out", "--threshold", "--bootstrap", "--seed", "--reference_network", "--network_name",
            "--selection_note", "--cv_summary",
        },
    }  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        evaluation_main(["validate"])
    assert exit_.value.code == 2 and "invalid choice: 'validate'" in capsys.readouterr().err


@pytest.mark.integration
def test_two_fold_cross_validation_end_to_end(phantom_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the bundle
    validations: list[validation.ValidationReport] = []
    real_validate = validation.validate

    def counting_validate(*args, **kwargs) -> validation.ValidationReport:
        validations.append(real_validate(*args, **kwargs))
        return validations[-1]

    monkeypatch.setattr(validation, "validate", counting_validate)
    out = tmp_path / "cv"
    argv = [
        "--out", str(out), "--folds", "0", "1", "--bootstrap", "50", "--networks", "resnet50,densenet169",
        "--dataset_dir", str(phantom_dir), "--spatial_size", "[64,32]", "--max_epochs", "1",
        "--batch_size", "4", "--num_workers", "0",
    ]  # fmt: skip
    assert main(argv) == 0
    # validated once for 2 folds x 2 networks x (training + evaluation): every entry, each fold trains on others
    entries = read_datalist(phantom_dir / "datalist.json")["training"]
    assert [(r.scope, r.checked, r.problems) for r in validations] == [("all", len(entries), [])]

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

    # a second call finds both folds finished and only re-pools and re-reports, without reading the data again
    mtime = (out / "resnet50" / "fold0" / "checkpoints" / "model.pt").stat().st_mtime
    assert main(argv) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert all(s["skipped"] for s in summary["folds"])
    assert len(validations) == 1
    assert (out / "resnet50" / "fold0" / "checkpoints" / "model.pt").stat().st_mtime == mtime


@pytest.mark.integration
def test_two_fold_cross_validation_in_scan_mode(phantom_dir, tmp_path, monkeypatch):
    """The one-pass mode through the runner, alone and with each option beyond the paper (local patch, context):
    every test lesion once per fold and run, each run's rows, temperatures and inner-split thresholds in the report."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cv"
    names = ["resnet10_scan", "resnet10_scan_patch", "resnet10_scan_context"]
    argv = [
        "--out", str(out), "--folds", "0", "1", "--bootstrap", "20", "--runs", ",".join(names),
        "--dataset_dir", str(phantom_dir), "--spatial_size", "[64,32]", "--max_epochs", "1", "--batch_size", "4",
        "--num_workers", "0", "--patch_size", "[32,32]", "--explain",
    ]  # fmt: skip
    assert main(argv) == 0
    entries = read_datalist(phantom_dir / "datalist.json")["training"]
    expected = {e["lesion_id"]: e for e in entries if e["fold"] in (0, 1)}
    with open(out / "predictions.csv", newline="") as f:
        every_row = list(csv.DictReader(f))
    assert [sorted(r["lesion_id"] for r in every_row if r["network"] == n) for n in names] == [sorted(expected)] * 3
    report = json.loads((out / "report" / "report.json").read_text())
    ordered = ["resnet10_scan", "resnet10_scan_context", "resnet10_scan_patch"]  # the paper's first, then by name
    assert report["networks"] == ordered and report["reference_network"] == "resnet10_scan"
    assert [n["network"] for n in report["table3"]["networks"]] == ordered
    for name, option in (("resnet10_scan_patch", "local_patch"), ("resnet10_scan_context", "context_masks")):
        state = torch.load(out / name / "fold0" / "checkpoints" / "model.pt", weights_only=True)
        assert ("local_stream.net.conv1.weight" in state) == (option == "local_patch"), name
        head_inputs = state["head.1.weight"].shape[1]  # own features (+ the other lesions' area) (+ the patch's)
        assert head_inputs == {"local_patch": 960 + 512, "context_masks": 2 * 960}[option], name  # resnet10: 960
        rows = [r for r in every_row if r["network"] == name]
        assert len({r["probability"] for r in rows}) > 1
    rows = [r for r in every_row if r["network"] == "resnet10_scan"]
    assert all(int(r["fold"]) == expected[r["lesion_id"]]["fold"] for r in rows)
    # --explain: a Grad-CAM picture of every test lesion of the reference run; the report shows the most confident
    # true/false positives/negatives, each of the outcome its label and probability give
    pictures = sorted(
        p.stem
        for fold in (0, 1)
        for p in (out / "resnet10_scan" / f"fold{fold}" / "eval" / "explanations").glob("*.png")
    )
    assert pictures == sorted(expected)
    explained = report["explanations"]
    assert explained["available"] == len(expected) and 0 < len(explained["lesions"]) <= 8
    by_id = {r["lesion_id"]: r for r in rows}
    for item in explained["lesions"]:
        called = float(by_id[item["lesion_id"]]["probability"]) >= 0.5
        label = int(by_id[item["lesion_id"]]["label"])
        assert item["outcome"] == ("t" if called == bool(label) else "f") + ("p" if called else "n")
        assert item["probability"] == pytest.approx(float(by_id[item["lesion_id"]]["probability"]))
    for outcome in ("tp", "fp", "tn", "fn"):
        chosen = [i["probability"] for i in explained["lesions"] if i["outcome"] == outcome]
        assert chosen == sorted(chosen, reverse=outcome in ("tp", "fp"))  # the most confident first
    assert (out / "report" / "figures" / "explanations.png").is_file()
    # every run by lesion burden (Table 4's groups): its lesions and its AUC there, against scikit-learn
    burden = report["burden_by_network"]
    assert [r["network"] for r in burden["networks"]] == ordered
    for row in burden["networks"]:
        mine = [r for r in every_row if r["network"] == row["network"]]
        assert sum(g["lesions"] for g in row["groups"]) == len(mine)
        for group in row["groups"]:
            chosen = [r for r in mine if burden_group(expected[r["lesion_id"]]["lesions_in_image"]) == group["group"]]
            assert group["lesions"] == len(chosen)
            labels = [int(r["label"]) for r in chosen]
            if group["auc"]["value"] is not None:
                probabilities = [float(r["probability"]) for r in chosen]
                assert group["auc"]["value"] == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-9)
            else:
                assert min(labels.count(0), labels.count(1)) < 2
    for fold in (0, 1):
        fold_dir = out / "resnet10_scan" / f"fold{fold}"
        metrics = json.loads((fold_dir / "eval" / "metrics.json").read_text())
        assert metrics["lesion_mode"] == "scan" and metrics["network"] == "resnet10"
        temperature = json.loads((fold_dir / "checkpoints" / "temperature.json").read_text())
        assert metrics["calibration"]["temperature"] == pytest.approx(temperature["temperature"])

    assert report["table3"]["networks"][0]["lesions"]["total"] == len(expected)
    assert [f["fold"] for f in report["table2"]["folds"]] == [0, 1]
    calibration = report["calibration"]["networks"][0]
    summary = json.loads((out / "cv_summary.json").read_text())
    identities = [
        (s["network"], s["lesion_mode"], s["local_patch"], s["context_masks"], s["fold"]) for s in summary["folds"]
    ]
    assert identities == [
        ("resnet10_scan", "scan", False, False, 0), ("resnet10_scan", "scan", False, False, 1),
        ("resnet10_scan_patch", "scan", True, False, 0), ("resnet10_scan_patch", "scan", True, False, 1),
        ("resnet10_scan_context", "scan", False, True, 0), ("resnet10_scan_context", "scan", False, True, 1),
    ]  # fmt: skip
    summary["folds"] = summary["folds"][:2]
    assert calibration["temperatures"] == {str(s["fold"]): s["calibration"]["temperature"] for s in summary["folds"]}
    assert calibration["ece_after"] is not None
    assert report["inner_threshold"]["networks"][0]["network"] == "resnet10_scan"
    assert (out / "report" / "figures" / "calibration.png").is_file()
    md = (out / "report" / "report.md").read_text()
    assert "resnet10_scan" in md and "## Calibration" in md
