"""Evaluation report: joins, tables, subgroup tests, n/a handling, patient level, CLI outputs and input errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, chi2_contingency
from sklearn.metrics import confusion_matrix, roc_auc_score

from bundle.data.datalist import burden_group
from bundle.errors import ProblemsError
from bundle.evaluation.metrics import MIN_CASES_PER_CLASS, youden_threshold
from bundle.evaluation.report import (
    build_report,
    main,
    read_predictions,
    to_jsonable,
    tumor_group,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
TUMORS = ["lung", "prostate", "breast", "other", None]
BURDENS = [1, 2, 3, 4, 5, 7, 8]
COLUMNS = ["lesion_id", "patient_id", "label", "probability", "prediction", "fold", "network"]


def make_entries(n_patients: int = 80, seed: int = 0) -> list[dict]:
    """Datalist entries: 5 folds by patient, all tumour types, 1-8 lesions per image, phantom ``p_malignant``."""
    rng = np.random.default_rng(seed)
    entries = []
    for p in range(n_patients):
        k = BURDENS[p % len(BURDENS)]
        for j in range(k):
            pm = float(np.clip(rng.beta(2, 3) + (0.2 if k > 3 else 0.0), 0.01, 0.99))
            entry = {
                "image": f"images/P{p:03d}.nii.gz",
                "mask": f"masks/P{p:03d}_L{j}.nii.gz",
                "label": int(rng.random() < pm),
                "patient_id": f"P{p:03d}",
                "lesion_id": f"P{p:03d}_L{j}",
                "fold": p % 5,
                "p_malignant": pm,
            }
            if TUMORS[p % 5 if p % 7 else (p + 1) % 5]:
                entry["tumor_type"] = TUMORS[p % 5 if p % 7 else (p + 1) % 5]
            if p % 2 == 0:
                entry["lesions_in_image"] = k  # odd patients: counted from the entries sharing the image
            entries.append(entry)
    return entries


def make_rows(entries: list[dict], network: str, noise: float, seed: int, threshold: float = 0.5) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for e in entries:
        prob = float(np.clip(e["p_malignant"] + rng.normal(0, noise), 0, 1))
        rows.append(
            {
                "lesion_id": e["lesion_id"],
                "patient_id": e["patient_id"],
                "label": e["label"],
                "probability": prob,
                "prediction": int(prob >= threshold),
                "fold": e["fold"],
                "network": network,
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_datalist(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"name": "synthetic", "num_folds": 5, "training": entries}))
    return path


def no_nan(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"report.json contains {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return make_entries()


@pytest.fixture(scope="module")
def rows(entries: list[dict]) -> list[dict]:
    return make_rows(entries, "resnet50", 0.15, 1) + make_rows(entries, "densenet169", 0.3, 2)


@pytest.fixture(scope="module")
def report(rows: list[dict], entries: list[dict]) -> dict:
    return build_report(rows, entries, bootstrap=200, seed=0, selection_note="inner validation split")


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory: pytest.TempPathFactory, rows: list[dict], entries: list[dict]) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    write_csv(tmp / "resnet50.csv", [r for r in rows if r["network"] == "resnet50"])
    write_csv(tmp / "densenet169.csv", [r for r in rows if r["network"] == "densenet169"])
    write_datalist(tmp / "datalist.json", entries)
    out = tmp / "report"
    cmd = [sys.executable, "-m", "bundle.evaluation", "report", str(tmp / "resnet50.csv"), str(tmp / "densenet169.csv")]
    cmd += ["--datalist", str(tmp / "datalist.json"), "--out", str(out), "--bootstrap", "100", "--seed", "3"]
    cmd += ["--selection_note", "checkpoint chosen on an inner validation split of the training folds"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def _arrays(rows: list[dict], network: str = "resnet50") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sel = [r for r in rows if r["network"] == network]
    return (
        np.array([r["label"] for r in sel]),
        np.array([r["probability"] for r in sel]),
        np.array([r["fold"] for r in sel]),
    )


# --- group assignment -------------------------------------------------------------------------------------------------


def test_tumor_group() -> None:
    assert [tumor_group(t) for t in ("Lung", "prostate", " breast ", None, "", "unknown", "kidney", "other")] == [
        "lung",
        "prostate",
        "breast",
        "unknown",
        "unknown",
        "unknown",
        "other",
        "other",
    ]


def test_burden_counted_from_image_when_absent(report: dict, entries: list[dict]) -> None:
    # Patient P001 has 2 lesions and no lesions_in_image; P005 has 7 (extensive), P003 has 4 (medium).
    assert all("lesions_in_image" not in e for e in entries if e["patient_id"] in ("P001", "P003", "P005"))
    groups = {g["group"]: g for g in report["table4"]["groups"]}
    expected = {"few": 0, "medium": 0, "extensive": 0}
    for e in entries:
        n = sum(1 for o in entries if o["image"] == e["image"])
        expected[burden_group(n)] += 1
    assert {g: groups[g]["lesions"]["total"] for g in expected} == expected


# --- tables against independent computations --------------------------------------------------------------------------


def test_table2_per_fold_against_sklearn(report: dict, rows: list[dict], entries: list[dict]) -> None:
    y, p, folds = _arrays(rows)
    assert [f["fold"] for f in report["table2"]["folds"]] == [0, 1, 2, 3, 4]
    for block in report["table2"]["folds"]:
        sel = folds == block["fold"]
        tn, fp, fn, tp = confusion_matrix(y[sel], (p[sel] >= 0.5).astype(int), labels=[0, 1]).ravel()
        m = block["metrics"]
        assert m["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
        assert m["specificity"]["value"] == pytest.approx(tn / (tn + fp))
        assert m["accuracy"]["value"] == pytest.approx((tp + tn) / sel.sum())
        assert m["ppv"]["value"] == pytest.approx(tp / (tp + fp))
        assert m["npv"]["value"] == pytest.approx(tn / (tn + fn))
        assert m["auc"]["value"] == pytest.approx(roc_auc_score(y[sel], p[sel]))
        ci = binomtest(int(tp), int(tp + fn)).proportion_ci(method="wilson")
        assert (m["sensitivity"]["ci_low"], m["sensitivity"]["ci_high"]) == pytest.approx((ci.low, ci.high))
        fold_patients = {e["patient_id"] for e in entries if e["fold"] == block["fold"]}
        malignant = {e["patient_id"] for e in entries if e["fold"] == block["fold"] and e["label"] == 1}
        assert block["patients"] == {
            "total": len(fold_patients),
            "benign": len(fold_patients - malignant),
            "malignant": len(malignant),
        }
        assert block["lesions"]["malignant"] == int(y[sel].sum())
    accs = [f["metrics"]["accuracy"]["value"] for f in report["table2"]["folds"]]
    assert report["table2"]["mean_sd"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert report["table2"]["mean_sd"]["accuracy"]["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert report["table2"]["pooled"]["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score(y, p))


def test_table4_chi_square_against_scipy(report: dict, rows: list[dict], entries: list[dict]) -> None:
    y, p, _ = _arrays(rows)
    called = p >= 0.5
    per_image = {e["image"]: 0 for e in entries}
    for e in entries:
        per_image[e["image"]] += 1
    group = np.array([burden_group(per_image[e["image"]]) for e in entries])
    table = []
    for g in ("few", "medium", "extensive"):
        sel = (group == g) & (y == 1)  # sensitivity: among malignant lesions
        correct = int((called & sel).sum())
        table.append([correct, int(sel.sum()) - correct])
    expected = chi2_contingency(np.array(table).T, correction=False)
    test = report["table4"]["tests"]["sensitivity"]
    assert test["groups"] == ["few", "medium", "extensive"]
    assert test["chi2"] == pytest.approx(expected.statistic)
    assert test["p"] == pytest.approx(expected.pvalue)
    assert test["dof"] == 2
    # PPV uses the lesions called malignant.
    ppv_table = [
        [int((called & (group == g) & (y == 1)).sum()), int((called & (group == g) & (y == 0)).sum())]
        for g in ("few", "medium", "extensive")
    ]
    assert report["table4"]["tests"]["ppv"]["chi2"] == pytest.approx(
        chi2_contingency(np.array(ppv_table).T, correction=False).statistic
    )


def test_table5_excludes_unknown_from_tests(report: dict) -> None:
    groups = [g["group"] for g in report["table5"]["groups"]]
    assert groups == ["lung", "prostate", "breast", "other", "unknown"]
    test = report["table5"]["tests"]["accuracy"]
    assert test["groups"] == ["lung", "prostate", "breast", "other"]
    assert test["excluded"][0]["group"] == "unknown" and test["chi2"] is not None


def test_table3_paired_delong(report: dict, rows: list[dict]) -> None:
    nets = {r["network"]: r for r in report["table3"]["networks"]}
    assert list(nets) == ["resnet50", "densenet169"]
    assert nets["resnet50"]["comparison"] is None
    comp = nets["densenet169"]["comparison"]
    y, p_ref, _ = _arrays(rows, "resnet50")
    _, p_other, _ = _arrays(rows, "densenet169")
    assert comp["difference"] == pytest.approx(roc_auc_score(y, p_other) - roc_auc_score(y, p_ref))
    assert 0 <= comp["p"] <= 1 and comp["note"] is None


def test_identical_networks_p_is_one_and_subset_is_noted(entries: list[dict]) -> None:
    base = make_rows(entries, "resnet50", 0.15, 1)
    same = [{**r, "network": "vgg16"} for r in base[:-10]]  # 10 lesions fewer
    rep = build_report(base + same, entries, bootstrap=50)
    comp = rep["table3"]["networks"][1]["comparison"]
    assert comp["p"] == 1.0 and comp["difference"] == 0.0
    assert comp["n_common"] == len(base) - 10
    assert "compared on the" in comp["note"]
    assert rep["bootstrap"]["networks"]["vgg16"]["auc_difference"]["ci_low"] == pytest.approx(0.0)


def test_patient_level_on_hand_built_example() -> None:
    lesions = [  # (patient, label, probability)
        ("A", 0, 0.2),
        ("A", 1, 0.7),  # A: malignant, score 0.7 -> TP
        ("B", 0, 0.6),
        ("B", 0, 0.1),  # B: benign, score 0.6 -> FP
        ("C", 1, 0.3),  # C: malignant, score 0.3 -> FN
        ("D", 0, 0.1),  # D: benign, score 0.1 -> TN
        ("E", 1, 0.9),
        ("E", 1, 0.4),  # E: malignant, score 0.9 -> TP
    ]
    entries = [
        {"image": f"{p}.nii", "mask": f"{p}{i}.nii", "label": y, "patient_id": p, "lesion_id": f"{p}{i}", "fold": 0}
        for i, (p, y, _) in enumerate(lesions)
    ]
    preds = [
        {"lesion_id": f"{p}{i}", "patient_id": p, "label": y, "probability": q, "prediction": int(q >= 0.5)}
        for i, (p, y, q) in enumerate(lesions)
    ]
    rep = build_report(preds, entries, bootstrap=0)
    pl = rep["patient_level"]
    assert pl["patients"] == {"total": 5, "benign": 2, "malignant": 3}
    c = pl["metrics"]["counts"]
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 1, 1)
    assert pl["metrics"]["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert pl["metrics"]["ppv"]["value"] == pytest.approx(2 / 3)
    # 3 of 5 patients called right: Wilson 95% interval 0.2307 to 0.8824 (worked by hand from the closed form).
    assert (pl["metrics"]["accuracy"]["ci_low"], pl["metrics"]["accuracy"]["ci_high"]) == pytest.approx(
        (0.2307, 0.8824), abs=5e-5
    )
    # Scores 0.7, 0.6, 0.3, 0.1, 0.9 against labels 1, 0, 1, 0, 1.
    assert pl["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score([1, 0, 1, 0, 1], [0.7, 0.6, 0.3, 0.1, 0.9]))
    assert rep["bootstrap"] is None


def test_threshold_override(rows: list[dict], entries: list[dict]) -> None:
    rep = build_report(rows, entries, threshold=0.3, bootstrap=0)
    y, p, _ = _arrays(rows)
    _, _, fn, tp = confusion_matrix(y, (p >= 0.3).astype(int)).ravel()
    assert rep["table2"]["pooled"]["metrics"]["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert rep["settings"]["threshold"] == 0.3
    assert any("disagrees with probability >= 0.3" in w for w in rep["warnings"])


def test_youden_and_phantom(report: dict, rows: list[dict], entries: list[dict]) -> None:
    y, p, folds = _arrays(rows)
    expected = youden_threshold(y, p)
    assert report["youden"]["threshold"] == pytest.approx(expected["threshold"])
    assert "descriptive" in report["youden"]["note"]
    pm = np.array([e["p_malignant"] for e in entries])
    assert report["phantom"]["pooled"]["bayes_auc"] == pytest.approx(roc_auc_score(y, pm))
    assert report["phantom"]["pooled"]["gap"] == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, pm))
    fold1 = next(f for f in report["phantom"]["folds"] if f["fold"] == 1)
    assert fold1["bayes_auc"] == pytest.approx(roc_auc_score(y[folds == 1], pm[folds == 1]))


def test_bootstrap_is_seeded_and_brackets_estimate(rows: list[dict], entries: list[dict], report: dict) -> None:
    again = build_report(rows, entries, bootstrap=200, seed=0)
    assert again["bootstrap"] == report["bootstrap"]
    other = build_report(rows, entries, bootstrap=200, seed=1)
    assert other["bootstrap"] != report["bootstrap"]
    ref = report["bootstrap"]["networks"]["resnet50"]
    pooled = report["table2"]["pooled"]["metrics"]
    for name in ("sensitivity", "accuracy", "auc"):
        assert ref[name]["ci_low"] < pooled[name]["value"] < ref[name]["ci_high"]
        assert ref[name]["valid_resamples"] == 200


# --- robustness -------------------------------------------------------------------------------------------------------


def _skewed_entries() -> list[dict]:
    """Breast: only benign lesions; prostate: a single malignant lesion; lung and other: fine."""
    entries = make_entries(60, seed=4)
    for e in entries:
        if e.get("tumor_type") == "breast":
            e["label"] = 0
    seen = False
    for e in entries:
        if e.get("tumor_type") == "prostate":
            e["label"] = 0 if seen else 1
            seen = True
    return entries


def test_not_evaluable_groups_are_na_with_reason(tmp_path: Path) -> None:
    entries = _skewed_entries()
    rows = make_rows(entries, "resnet50", 0.2, 0)
    rep = build_report(rows, entries, bootstrap=20)
    groups = {g["group"]: g for g in rep["table5"]["groups"]}
    breast, prostate = groups["breast"]["metrics"], groups["prostate"]["metrics"]
    assert "only benign" in breast["reason"]
    assert "too few" in prostate["reason"] and f"at least {MIN_CASES_PER_CLASS}" in prostate["reason"]
    for name in ("sensitivity", "specificity", "accuracy", "ppv", "npv", "auc"):
        assert breast[name]["value"] is None and breast[name]["reason"] == breast["reason"]
        assert prostate[name]["value"] is None
    assert groups["breast"]["lesions"]["malignant"] == 0 and breast["counts"]["tn"] + breast["counts"]["fp"] > 0
    test = rep["table5"]["tests"]["sensitivity"]
    assert test["groups"] == ["lung", "other"]
    assert {e["group"] for e in test["excluded"]} == {"breast", "prostate", "unknown"}
    assert rep["roc_curves"]["tumor"]["breast"] is None
    written = write_report(rep, tmp_path)
    text = written["markdown"].read_text()
    assert "n/a (only benign lesions" in text and "is left out of the" in text
    no_nan(written["json"].read_text())


def test_chi_square_with_zero_expected_count_says_so(entries: list[dict]) -> None:
    rows = [{**r, "probability": 0.9 if r["label"] else 0.1} for r in make_rows(entries, "resnet50", 0.1, 0)]
    rep = build_report(rows, entries, bootstrap=0)
    test = rep["table4"]["tests"]["accuracy"]
    assert test["chi2"] is None and "expected count of zero" in test["reason"]
    assert rep["table2"]["pooled"]["metrics"]["auc"]["value"] == 1.0


def test_to_jsonable_replaces_nan() -> None:
    value = to_jsonable({"a": math.nan, "b": [np.float64("inf"), np.int64(3)], "c": (np.bool_(True),)})
    assert value == {"a": None, "b": [None, 3], "c": [True]}
    json.dumps(value, allow_nan=False)


# --- input errors -----------------------------------------------------------------------------------------------------


def test_label_mismatch_names_csv_and_lesion(tmp_path: Path, entries: list[dict]) -> None:
    rows = make_rows(entries, "resnet50", 0.2, 0)
    rows[5]["label"] = 1 - rows[5]["label"]
    csv_path = write_csv(tmp_path / "bad_preds.csv", rows)
    with pytest.raises(ProblemsError) as err:
        build_report(read_predictions(csv_path), entries, bootstrap=0)
    message = str(err.value)
    assert "bad_preds.csv" in message and rows[5]["lesion_id"] in message and "line 7" in message
    assert "label" in message and "datalist says" in message


def test_cli_reports_unknown_lesion_and_exits_2(tmp_path: Path, entries: list[dict], capsys) -> None:
    rows = make_rows(entries, "resnet50", 0.2, 0)
    rows[0]["lesion_id"] = "NOT_A_LESION"
    csv_path = write_csv(tmp_path / "preds.csv", rows)
    datalist = write_datalist(tmp_path / "datalist.json", entries)
    code = main([str(csv_path), "--datalist", str(datalist), "--out", str(tmp_path / "out"), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "NOT_A_LESION" in err and "preds.csv" in err and "not in the datalist" in err
    assert not (tmp_path / "out").exists()


def test_bad_csv_values_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("lesion_id,patient_id,label,probability,prediction\nL1,P1,2,0.5,1\nL2,P1,1,1.5,1\nL3,P1,1,x,1\n")
    with pytest.raises(ProblemsError) as err:
        read_predictions(path)
    assert len(err.value.problems) == 3 and "L1" in err.value.problems[0] and "line 3" in err.value.problems[1]
    (tmp_path / "q.csv").write_text("lesion_id,label\nL1,1\n")
    with pytest.raises(ProblemsError, match="missing column"):
        read_predictions(tmp_path / "q.csv")


def test_csv_without_fold_and_network_columns(tmp_path: Path, entries: list[dict]) -> None:
    rows = make_rows(entries, "resnet50", 0.2, 0)
    first = write_csv(tmp_path / "a.csv", rows, COLUMNS[:5])
    rep = build_report(read_predictions(first, network="vgg16"), entries, bootstrap=0)
    assert rep["networks"] == ["vgg16"] and rep["reference_network"] == "vgg16"
    assert [f["fold"] for f in rep["table2"]["folds"]] == [0, 1, 2, 3, 4]  # from the datalist
    second = write_csv(tmp_path / "b.csv", rows, COLUMNS[:5])
    with pytest.raises(ProblemsError, match="predicted 2 times for network 'resnet50'") as err:
        build_report(read_predictions(first) + read_predictions(second), entries, bootstrap=0)
    assert len(err.value.problems) == 2 * len(rows)  # every copy, with its file and line
    first_lesion = f"line 2: lesion_id {rows[0]['lesion_id']!r}"
    assert {str(f) for f in (first, second)} == {p.split(" line ")[0] for p in err.value.problems if first_lesion in p}
    with pytest.raises(ValueError, match="reference network"):
        build_report(read_predictions(first), entries, bootstrap=0, reference_network="vgg16")


# --- CLI outputs ------------------------------------------------------------------------------------------------------


def test_cli_writes_all_outputs(cli_out: Path) -> None:
    report = no_nan((cli_out / "report.json").read_text())
    figures = sorted(p.name for p in (cli_out / "figures").glob("*.png"))
    assert figures == ["figure3_burden.png", "figure4_tumor.png", "networks_roc.png", "overall.png"]
    for png in (cli_out / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size <= 200_000
    assert [f["file"] for f in report["figures"]] == [
        "figures/overall.png",
        "figures/figure3_burden.png",
        "figures/figure4_tumor.png",
        "figures/networks_roc.png",
    ]
    assert report["selection_note"] == "checkpoint chosen on an inner validation split of the training folds"
    assert report["networks"] == ["resnet50", "densenet169"] and report["bootstrap"]["resamples"] == 100
    assert report["published"]["table3"]["resnet50"]["accuracy"] == pytest.approx(0.8123)
    md = (cli_out / "report.md").read_text()
    html = (cli_out / "report.html").read_text()
    for text in (md, html):
        assert "checkpoint chosen on an inner validation split" in text
        assert "Liu et al. 2021 (published, not recomputed)" in text
        assert "Wilson" in text and "DeLong" in text
        assert "figures/figure3_burden.png" in text
    assert md.index("Model selection") < md.index("Table 2")
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "<style>" in html
    assert not list(cli_out.glob(".*"))  # no temporary files left behind


def test_report_renders_again_from_saved_json(cli_out: Path, tmp_path: Path) -> None:
    saved = json.loads((cli_out / "report.json").read_text())
    written = write_report(saved, tmp_path)
    assert written["markdown"].read_text() == (cli_out / "report.md").read_text()
    assert (tmp_path / "figures" / "overall.png").is_file()


# --- published numbers ----------------------------------------------------------------------------------------------


def test_published_numbers_are_internally_consistent() -> None:
    """Guards the hand-typed paper numbers: Table 2's fold means are the stated averages, counts add up."""
    from bundle.evaluation import paper_results as pr

    for name, average in pr.TABLE2_AVERAGE.items():
        assert np.mean([f[name] for f in pr.TABLE2_FOLDS]) == pytest.approx(average, abs=0.006)
        assert pr.TABLE3["resnet50"][name] == average
    for part in ("patients", "lesions"):
        assert sum(f[part]["total"] for f in pr.TABLE2_FOLDS) == pr.TABLE1[part]["total"]["total"]
        for f in pr.TABLE2_FOLDS:
            assert f[part]["benign"] + f[part]["malignant"] == f[part]["total"]
        for g in ("lung", "prostate", "breast"):
            row = pr.TABLE1[part][g]
            assert row["benign"] + row["malignant"] == row["total"]
            assert 100 * row["malignant"] / row["total"] == pytest.approx(row["rate"], abs=0.006)
    benign_sum = sum(pr.TABLE1["lesions"][g]["benign"] for g in ("lung", "prostate", "breast"))
    assert benign_sum == sum(f["lesions"]["benign"] for f in pr.TABLE2_FOLDS) == pr.TABLE1_BENIGN_LESIONS_CONSISTENT
    assert pr.TABLE1["lesions"]["total"]["benign"] == 6812  # as printed (sic)
    published = pr.published()
    assert published["table4"]["sensitivity"] == {
        "few": 0.5863,
        "medium": 0.6434,
        "extensive": 0.8956,
        "chi2": 163.41,
        "p": "<0.001",
    }
    assert published["table5"]["auc"] == {"lung": 0.870, "prostate": 0.900, "breast": 0.899}
    assert published["table4"]["auc"] == {"few": 0.847, "medium": 0.838, "extensive": 0.862}


# --- calibration and the inner-split threshold ------------------------------------------------------------------------


def fold_summaries(temperatures: dict[int, float], thresholds: dict[int, float], network: str = "resnet50") -> list:
    """Fold summaries as cv_summary.json holds them (each fold's metrics.json with its network and fold)."""
    return [
        {
            "network": network,
            "fold": fold,
            "auc": 0.8,
            "calibration": {"temperature": t, "inner_youden": {"threshold": thresholds[fold], "sensitivity": 0.7}},
        }
        for fold, t in temperatures.items()
    ]


def test_calibration_and_inner_threshold_against_hand_computation(rows: list[dict], entries: list[dict]) -> None:
    from scipy.special import softmax

    from bundle.evaluation.calibration import expected_calibration_error, logits_from_probabilities
    from bundle.evaluation.report import fold_calibration

    temperatures = {f: 1.5 + 0.25 * f for f in range(5)}
    thresholds = {f: 0.3 + 0.05 * f for f in range(5)}
    calibration = fold_calibration(fold_summaries(temperatures, thresholds))
    assert calibration == {"resnet50": {f: {"temperature": temperatures[f], "youden_threshold": thresholds[f]}
                                        for f in range(5)}}  # fmt: skip
    report = build_report(rows, entries, bootstrap=0, selection_note="inner", calibration=calibration)
    y, p, folds = _arrays(rows)
    t_lesion = np.array([temperatures[f] for f in folds])
    after = softmax(logits_from_probabilities(p) / t_lesion[:, None], axis=1)
    cal = {r["network"]: r for r in report["calibration"]["networks"]}
    assert set(cal) == {"resnet50", "densenet169"}
    mine = cal["resnet50"]
    assert mine["temperatures"] == {str(f): temperatures[f] for f in range(5)}
    for kind in ("top_label", "positive"):
        assert mine["ece_before"][kind] == pytest.approx(expected_calibration_error(p, y, 10, kind), abs=1e-6)
        assert mine["ece_after"][kind] == pytest.approx(expected_calibration_error(after, y, 10, kind), abs=1e-9)
        assert mine["ece_after"][kind] != pytest.approx(mine["ece_before"][kind], abs=1e-3)
    # a network without temperatures: before only, with the reason
    assert (
        cal["densenet169"]["ece_after"] is None
        and "no temperature for fold(s) [0, 1, 2, 3, 4]" in (cal["densenet169"]["note"])
    )
    diagram = report["calibration"]["reliability"]["resnet50"]["after"]["positive"]
    assert sum(diagram["count"]) == len(y)

    inner = {r["network"]: r for r in report["inner_threshold"]["networks"]}["resnet50"]
    called = p >= np.array([thresholds[f] for f in folds])
    tn, fp, fn, tp = confusion_matrix(y, called, labels=[0, 1]).ravel()
    counts = inner["inner"]["counts"]
    assert (counts["tp"], counts["fp"], counts["tn"], counts["fn"]) == (tp, fp, tn, fn)
    assert inner["inner"]["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert inner["inner"]["youden_j"] == pytest.approx(tp / (tp + fn) + tn / (tn + fp) - 1)
    tn0, fp0, fn0, tp0 = confusion_matrix(y, p >= 0.5, labels=[0, 1]).ravel()
    assert inner["report"]["youden_j"] == pytest.approx(tp0 / (tp0 + fn0) + tn0 / (tn0 + fp0) - 1)
    assert inner["thresholds"] == {str(f): pytest.approx(thresholds[f]) for f in range(5)}

    # shown: the calibration figure and both tables, with the answer to the threshold question
    assert "figures/calibration.png" in [f["file"] for f in report["figures"]]
    from bundle.evaluation.render import render_markdown

    md = render_markdown(report)
    assert "## Calibration" in md and "## Threshold chosen on the inner validation split" in md
    assert f"{mine['ece_before']['positive']:.3f} → {mine['ece_after']['positive']:.3f}" in md
    j_inner, j_report = inner["inner"]["youden_j"], inner["report"]["youden_j"]
    better = "the inner-split Youden threshold" if j_inner > j_report else "0.5"
    assert f"Youden J {j_inner:.3f} at the inner-split threshold vs {j_report:.3f} at 0.5" in md
    assert f"{better} balances sensitivity and specificity better on the test folds" in md


def test_report_without_fold_calibration_leaves_the_sections_out(report: dict) -> None:
    assert report["calibration"] is None and report["inner_threshold"] is None
    assert "figures/calibration.png" not in [f["file"] for f in report["figures"]]


def test_cli_reads_calibration_from_cv_summary(tmp_path: Path, rows: list[dict], entries: list[dict]) -> None:
    temperatures, thresholds = {f: 2.0 for f in range(5)}, {f: 0.4 for f in range(5)}
    write_csv(tmp_path / "resnet50.csv", [r for r in rows if r["network"] == "resnet50"])
    write_datalist(tmp_path / "datalist.json", entries)
    summary = tmp_path / "cv_summary.json"
    summary.write_text(json.dumps({"folds": fold_summaries(temperatures, thresholds)}))
    args = [str(tmp_path / "resnet50.csv"), "--datalist", str(tmp_path / "datalist.json"), "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "out"), "--cv_summary", str(summary)]) == 0
    report = no_nan((tmp_path / "out" / "report.json").read_text())
    assert report["calibration"]["networks"][0]["temperatures"] == {str(f): 2.0 for f in range(5)}
    png = tmp_path / "out" / "figures" / "calibration.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary.write_text("{}")
    assert main([*args, "--out", str(tmp_path / "bad"), "--cv_summary", str(summary)]) == 2
