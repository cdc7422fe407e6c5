"""Rendering of the evaluation report dict (:func:`bundle.evaluation.report.build_report`) as Markdown, HTML and
PNG figures.

Everything here reads only the report dict, so a saved ``report.json`` renders again unchanged. Tables are built once
as a small document model (headings, paragraphs, tables with "ours" and "published" rows, figures) and written out
by a Markdown and an HTML writer.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bundle.data.datalist import BURDEN_GROUPS, BURDEN_LABELS
from bundle.evaluation.metrics import METRIC_NAMES, PROPORTION_NAMES
from bundle.evaluation.paper_results import LABEL as PUBLISHED
from bundle.io import atomic_write

PUB_ROW = "↳ " + PUBLISHED
METRIC_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "ppv": "PPV",
    "npv": "NPV",
    "auc": "AUC",
}
TUMOR_LABELS = {"lung": "Lung", "prostate": "Prostate", "breast": "Breast", "other": "Other", "unknown": "Unknown"}
GROUP_LABELS = {**BURDEN_LABELS, **TUMOR_LABELS}
METHOD_LABELS = {
    "calibration": "Calibration",
    "inner_threshold": "Threshold of the inner split",
    "proportions": "Proportions",
    "auc": "AUC",
    "auc_comparison": "AUC comparison",
    "subgroups": "Subgroup comparison",
    "fold_summary": "Fold summary",
    "cluster_bootstrap": "Patient-cluster bootstrap",
    "patient_level": "Patient level",
    "youden": "Youden threshold",
    "phantom": "Phantom data",
}
NA = "n/a"
DASH = "—"
FIGURE_DPI = 100
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #e5e7eb; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #d0d7de; padding: .3em .55em; text-align: right; vertical-align: top; }
th { background: #f3f4f6; text-align: center; }
td:first-child { text-align: left; white-space: nowrap; }
tr.published td { background: #fafafa; color: #57606a; font-style: italic; }
tr.group td { background: #eef2f7; font-weight: 600; text-align: left; }
.note { font-size: .85em; color: #57606a; margin: .2em 0; }
.selection { background: #fff8e6; border-left: 4px solid #e3a008; padding: .5em .8em; }
.warnings { background: #fdecea; border-left: 4px solid #d93025; padding: .5em .8em; }
.warnings ul { margin: .3em 0 0 0; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #e5e7eb; }
figcaption { font-size: .9em; color: #57606a; }
code { background: #f3f4f6; padding: 0 .25em; border-radius: 3px; }
"""


# ---------------------------------------------------------------------------------------------------------------------
# Cell formatting
# ---------------------------------------------------------------------------------------------------------------------


OUTCOME_LABELS = {"tp": "true positive", "fp": "false positive", "tn": "true negative", "fn": "false negative"}


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with 2 decimals (the paper's style), or "n/a"."""
    return NA if value is None else f"{100 * value:.2f}"


def fmt_auc(value: float | None) -> str:
    """An AUC with 3 decimals, or "n/a"."""
    return NA if value is None else f"{value:.3f}"


def fmt_p(p: float | None) -> str:
    """A P value as the paper prints it: "<0.001" or 3 decimals."""
    if p is None:
        return NA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _na(reason: str | None) -> str:
    return f"{NA} ({reason})" if reason else NA


def prop_cell(block: Mapping[str, Any]) -> str:
    """A proportion with its 95% CI, "81.30 (79.91–82.62)", or "n/a (reason)"."""
    if block.get("value") is None:
        return _na(block.get("reason"))
    return f"{fmt_pct(block['value'])} ({fmt_pct(block['ci_low'])}–{fmt_pct(block['ci_high'])})"


def auc_cell(block: Mapping[str, Any] | None) -> str:
    """An AUC with its 95% DeLong CI, "0.862 (0.851–0.873)", or "n/a (reason)"."""
    if block is None or block.get("value") is None:
        return _na(None if block is None else block.get("reason"))
    return f"{fmt_auc(block['value'])} ({fmt_auc(block['ci_low'])}–{fmt_auc(block['ci_high'])})"


def metric_cell(name: str, block: Mapping[str, Any]) -> str:
    """``prop_cell`` or ``auc_cell`` by metric name."""
    return auc_cell(block) if name == "auc" else prop_cell(block)


def counts_cell(counts: Mapping[str, Any] | None) -> str:
    """ "total (benign/malignant)", as in the paper's Table 2."""
    if not counts:
        return DASH
    return f"{counts['total']} ({counts['benign']}/{counts['malignant']})"


def mean_sd_cell(name: str, block: Mapping[str, Any]) -> str:
    """ "mean ± SD" of a metric over folds (percent for proportions)."""
    if block.get("mean") is None:
        return NA
    scale = (lambda v: f"{v:.3f}") if name == "auc" else fmt_pct
    sd = f" ± {scale(block['sd'])}" if block.get("sd") is not None else ""
    return scale(block["mean"]) + sd


def published_cell(name: str, value: Any) -> str:
    """A published number in its printed form (percent or AUC), "—" when the paper does not report it."""
    if value is None:
        return DASH
    return f"{value:.3f}" if name == "auc" else f"{100 * value:.2f}"


# ---------------------------------------------------------------------------------------------------------------------
# Document model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A table: column headers, rows of (kind, cells) where kind is "ours", "published" or "group", and notes."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, cells: Sequence[str], kind: str = "ours") -> None:
        """Append a row; it must have one cell per column."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row of {len(cells)} cells in a table of {len(self.columns)} columns: {cells}")
        self.rows.append((kind, list(cells)))


Block = tuple[str, Any]  # ("h1" | "h2" | "p" | "note" | "selection" | "warnings" | "ul" | "table" | "figure", payload)


def _table1(report: Mapping[str, Any]) -> Table:
    pub = report["published"]["table1"]
    table = Table(
        "Table 1 — patients and lesions by primary tumour (reference network's out-of-fold lesions)",
        ["", "Patients", "Malignant patients (rate)", "Lesions", "Malignant lesions (rate)"],
    )
    for row in report["dataset"]["rows"]:
        p, les = row["patients"], row["lesions"]
        label = GROUP_LABELS.get(row["group"], row["group"].capitalize())
        table.add(
            [
                label,
                str(p["total"]),
                f"{p['malignant']} ({fmt_pct(p['rate'])})",
                str(les["total"]),
                f"{les['malignant']} ({fmt_pct(les['rate'])})",
            ]
        )
        if row["group"] in pub["patients"]:
            pp, pl = pub["patients"][row["group"]], pub["lesions"][row["group"]]
            table.add(
                [
                    PUB_ROW,
                    str(pp["total"]),
                    f"{pp['malignant']} ({pp['rate']:.2f})",
                    str(pl["total"]),
                    f"{pl['malignant']} ({pl['rate']:.2f})",
                ],
                "published",
            )
    table.notes.append(
        "A patient is malignant if any of its lesions is; a patient's tumour type is the most common among its "
        "lesions. The paper prints 6812 benign lesions in total, but its tumour columns and Table 2 sum to "
        f"{report['published']['table1_benign_lesions_consistent']}."
    )
    if report["dataset"]["patients_with_mixed_tumor_types"]:
        table.notes.append(
            f"{report['dataset']['patients_with_mixed_tumor_types']} patient(s) have lesions of several tumour types."
        )
    return table


def _table2(report: Mapping[str, Any]) -> list[Table]:
    t2 = report["table2"]
    folds = t2["folds"]
    pub_folds = report["published"]["table2_folds"]
    pub_avg = report["published"]["table2_average"]
    interleave = len(folds) == len(pub_folds)
    ref = report["reference_network"]
    table = Table(
        f"Table 2 — cross-validation results of {ref} per fold (95% CI)",
        ["", *[f"Fold {f['fold']}" for f in folds], "Mean ± SD", "Pooled (95% CI)"],
    )
    pooled = t2["pooled"]
    for key, label in (("patients", "Patients (benign/malignant)"), ("lesions", "Lesions (benign/malignant)")):
        table.add([label, *[counts_cell(f[key]) for f in folds], DASH, counts_cell(pooled[key])])
        if interleave:
            total = report["published"]["table1"][key]["total"]
            table.add([PUB_ROW, *[counts_cell(f[key]) for f in pub_folds], DASH, counts_cell(total)], "published")
    for name in METRIC_NAMES:
        table.add(
            [
                METRIC_LABELS[name],
                *[metric_cell(name, f["metrics"][name]) for f in folds],
                mean_sd_cell(name, t2["mean_sd"][name]),
                metric_cell(name, pooled["metrics"][name]),
            ]
        )
        if interleave:
            table.add(
                [
                    PUB_ROW,
                    *[published_cell(name, f.get(name)) for f in pub_folds],
                    published_cell(name, pub_avg.get(name)),
                    DASH,
                ],
                "published",
            )
    table.notes.append(
        "Proportions in percent with 95% Wilson intervals; AUC with 95% DeLong intervals. Mean ± SD over folds "
        "(sample SD); pooled = all out-of-fold lesions together."
    )
    tables = [table]
    if interleave:
        table.notes += [
            "Published folds 1–5 are placed beside ours by position only; the patients in each fold differ.",
            "The paper reports no AUC per fold (—). The published mean is the paper's stated average; the published "
            "pooled counts are Table 1's totals as printed.",
        ]
    else:
        pub = Table(
            "Table 2 (published) — " + PUBLISHED,
            ["", *[f"Fold {f['fold']}" for f in pub_folds], "Mean"],
        )
        pub.add(["Patients (benign/malignant)", *[counts_cell(f["patients"]) for f in pub_folds], DASH], "published")
        pub.add(["Lesions (benign/malignant)", *[counts_cell(f["lesions"]) for f in pub_folds], DASH], "published")
        for name in PROPORTION_NAMES:
            pub.add(
                [
                    METRIC_LABELS[name],
                    *[published_cell(name, f.get(name)) for f in pub_folds],
                    published_cell(name, pub_avg.get(name)),
                ],
                "published",
            )
        pub.notes.append(f"We have {len(folds)} fold(s), the paper 5: the published table is shown separately.")
        tables.append(pub)
    failed = [f"fold {f['fold']}: {f['metrics']['reason']}" for f in folds if f["metrics"]["reason"]]
    if failed:
        table.notes.append("Not evaluable, left out of mean ± SD: " + "; ".join(failed) + ".")
    return tables


def _table3(report: Mapping[str, Any]) -> list[Table]:
    t3 = report["table3"]
    pub = report["published"]["table3"]
    ref = t3["reference"]
    pooled = Table(
        "Table 3 — networks compared: pooled out-of-fold metrics (95% CI) and AUC difference vs " + ref,
        [
            "Network",
            "Lesions",
            *[METRIC_LABELS[n] for n in PROPORTION_NAMES],
            "AUC (95% CI)",
            f"ΔAUC vs {ref} (95% CI)",
            "P (paired DeLong)",
        ],
    )
    means = Table(
        "Table 3b — networks compared: mean ± SD over folds (the paper's averaging)",
        ["Network", *[METRIC_LABELS[n] for n in PROPORTION_NAMES], "AUC"],
    )
    for row in t3["networks"]:
        net = row["network"]
        comp = row["comparison"]
        if comp is None:
            diff, p = "(reference)", DASH
        elif comp.get("difference") is None:
            diff, p = _na(comp["reason"]), NA
        else:
            diff = f"{comp['difference']:+.3f} ({comp['ci_low']:+.3f} to {comp['ci_high']:+.3f})"
            p = fmt_p(comp["p"])
        pooled.add(
            [
                net,
                str(row["lesions"]["total"]),
                *[prop_cell(row["pooled"][n]) for n in PROPORTION_NAMES],
                auc_cell(row["pooled"]["auc"]),
                diff,
                p,
            ]
        )
        means.add([net, *[mean_sd_cell(n, row["fold_mean_sd"][n]) for n in METRIC_NAMES]])
        if net in pub:
            values = [published_cell(n, pub[net][n]) for n in PROPORTION_NAMES]
            pooled.add(
                [f"{PUB_ROW}: {pub[net]['display']}, fold average", DASH, *values, DASH, DASH, DASH], "published"
            )
            means.add([f"{PUB_ROW}: {pub[net]['display']}", *values, DASH], "published")
        if comp and comp.get("note"):
            pooled.notes.append(f"{net}: {comp['note']}.")
    pooled.notes.append(
        "ΔAUC = network − reference on the same lesions; its interval and P value come from the paired DeLong test. "
        "The paper gives no AUC per network (—) and compares networks without a test."
    )
    return [pooled, means]


def _subgroup_tables(report: Mapping[str, Any], key: str, title: str, pub_key: str) -> Table:
    data = report[key]
    pub = report["published"][pub_key]
    groups = data["groups"]
    table = Table(title, ["", *[GROUP_LABELS.get(g["group"], g["group"]) for g in groups], "χ²", "P"])
    table.add(["Patients (benign/malignant)", *[counts_cell(g["patients"]) for g in groups], "", ""])
    table.add(["Lesions (benign/malignant)", *[counts_cell(g["lesions"]) for g in groups], "", ""])
    excluded: dict[tuple[str, str], list[str]] = {}
    for name in METRIC_NAMES:
        test = data["tests"].get(name)
        if test is None:
            chi2, p = DASH, DASH
        elif test["chi2"] is None:
            chi2, p = _na(test["reason"]), NA
        else:
            marks = "†" if test["excluded"] else ""
            chi2, p = f"{test['chi2']:.2f}{marks}", fmt_p(test["p"])
        table.add([METRIC_LABELS[name], *[metric_cell(name, g["metrics"][name]) for g in groups], chi2, p])
        pub_row = pub.get(name, {})
        table.add(
            [
                PUB_ROW,
                *[published_cell(name, pub_row.get(g["group"])) for g in groups],
                f"{pub_row['chi2']:.2f}" if "chi2" in pub_row else DASH,
                pub_row.get("p", DASH),
            ],
            "published",
        )
        if test is not None:
            for ex in test["excluded"]:
                excluded.setdefault((ex["group"], ex["reason"]), []).append(METRIC_LABELS[name])
            if test.get("cells_expected_below_5"):
                table.notes.append(
                    f"{METRIC_LABELS[name]} test: {test['cells_expected_below_5']} cell(s) with an expected count "
                    f"below 5 (smallest {test['min_expected']:.2f}); the chi-square approximation may be poor."
                )
    for (group, reason), names in excluded.items():
        table.notes.insert(
            0, f"† Group {GROUP_LABELS.get(group, group)} is left out of the {', '.join(names)} test(s): {reason}."
        )
    table.notes.append(
        "Pearson χ² (no continuity correction) on the correct/incorrect counts of each group among the metric's "
        "denominator (sensitivity: malignant lesions; specificity: benign lesions; accuracy: all; PPV: lesions "
        "called malignant; NPV: lesions called benign). AUCs have 95% DeLong intervals and no χ² test."
    )
    if data["unassigned_lesions"]:
        table.notes.append(f"{data['unassigned_lesions']} lesion(s) without a group are not in this table.")
    return table


def _patient_table(report: Mapping[str, Any]) -> Table:
    pl = report["patient_level"]
    m = pl["metrics"]
    table = Table(
        f"Patient-level results of {report['reference_network']} (95% CI)",
        ["Metric", "Value (95% CI)", "Correct / denominator"],
    )
    for name in PROPORTION_NAMES:
        table.add([METRIC_LABELS[name], prop_cell(m[name]), f"{m[name]['successes']} / {m[name]['n']}"])
    table.add(["AUC (patient score)", auc_cell(m["auc"]), DASH])
    c = m["counts"]
    table.notes.append(f"TP {c['tp']}, FP {c['fp']}, TN {c['tn']}, FN {c['fn']}. Rule: {pl['rule']}")
    return table


def _youden_table(report: Mapping[str, Any]) -> Table | None:
    y = report["youden"]
    if y is None:
        return None
    pooled = report["table2"]["pooled"]["metrics"]
    table = Table(
        "Threshold — report threshold vs Youden-optimal threshold (computed on the reported data, descriptive only)",
        ["Threshold", *[METRIC_LABELS[n] for n in PROPORTION_NAMES], "Youden J"],
    )
    j = None
    if pooled["sensitivity"]["value"] is not None and pooled["specificity"]["value"] is not None:
        j = pooled["sensitivity"]["value"] + pooled["specificity"]["value"] - 1
    table.add(
        [
            f"{report['settings']['threshold']:g} (report)",
            *[fmt_pct(pooled[n]["value"]) for n in PROPORTION_NAMES],
            NA if j is None else f"{j:.3f}",
        ]
    )
    table.add(
        [
            f"{y['threshold']:.4f} (Youden, pooled ROC)",
            *[fmt_pct(y[n]) for n in PROPORTION_NAMES],
            f"{y['youden_j']:.3f}",
        ]
    )
    table.notes.append(
        "The Youden threshold is chosen on the very lesions it is evaluated on, so its metrics are optimistic: it "
        "describes the ROC curve and must not be used to select or tune a model."
    )
    return table


def _burden_by_network_table(report: Mapping[str, Any]) -> Table | None:
    burden = report.get("burden_by_network")
    if not burden:
        return None
    groups = list(burden["groups"])
    table = Table(
        "AUC of every network by lesion burden (95% CI)",
        ["Network", "All lesions", *[f"{burden['groups'][g]}" for g in groups]],
    )
    for row in burden["networks"]:
        by_group = {g["group"]: g for g in row["groups"]}
        cells = [
            f"{auc_cell(by_group[g]['auc'])} (n = {by_group[g]['lesions']})" if g in by_group else NA for g in groups
        ]
        table.add([row["network"], auc_cell(row["overall_auc"]), *cells])
    table.notes.append(
        "The same lesions for every network; a network's gain from the scan's other lesions (…_context) should show "
        "most where there are several."
    )
    return table


def _calibration_table(report: Mapping[str, Any]) -> Table | None:
    cal = report.get("calibration")
    if not cal:
        return None
    table = Table(
        f"Calibration — expected calibration error ({cal['n_bins']} equal-width bins), before and after temperature "
        "scaling fitted on each fold's inner validation split",
        ["Network", "Lesions", "Temperature per fold", "ECE top-label", "ECE P(malignant)"],
    )

    def change(name: str, row: Mapping[str, Any]) -> str:
        before = row["ece_before"][name]
        if row["ece_after"] is None:
            return f"{before:.3f} → {NA}"
        return f"{before:.3f} → {row['ece_after'][name]:.3f}"

    for row in cal["networks"]:
        temps = ", ".join(f"{fold}: {NA if t is None else f'{t:.2f}'}" for fold, t in row["temperatures"].items())
        table.add([row["network"], str(row["lesions"]), temps, change("top_label", row), change("positive", row)])
        if row.get("note"):
            table.notes.append(f"{row['network']}: {row['note']}")
    table.notes.append(
        "ECE = Σ over bins of (lesions in bin / all) × |observed frequency − mean predicted probability|; 0 = a "
        "written probability means what it says. T > 1 softens over-confident probabilities. With two classes, "
        "scaling leaves every call at 0.5 and the AUC unchanged."
    )
    if cal.get("note"):
        table.notes.append(cal["note"])
    return table


def _inner_threshold_table(report: Mapping[str, Any]) -> Table | None:
    inner = report.get("inner_threshold")
    if not inner:
        return None
    table = Table(
        f"Threshold question — {inner['report_threshold']:g} vs the Youden threshold of each fold's inner validation "
        "split (95% CI)",
        ["Network", "Threshold", *[METRIC_LABELS[n] for n in PROPORTION_NAMES], "Youden J"],
    )
    answers = []
    for row in inner["networks"]:

        def j_cell(block: Mapping[str, Any] | None) -> str:
            return NA if block is None or block["youden_j"] is None else f"{block['youden_j']:.3f}"

        table.add(
            [
                row["network"],
                f"{inner['report_threshold']:g}",
                *[prop_cell(row["report"][n]) for n in PROPORTION_NAMES],
                j_cell(row["report"]),
            ]
        )
        thresholds = ", ".join(f"{f}: {NA if t is None else f'{t:.3f}'}" for f, t in row["thresholds"].items())
        if row["inner"] is None:
            table.add([row["network"], f"inner Youden ({thresholds})", *[NA] * len(PROPORTION_NAMES), NA])
            table.notes.append(f"{row['network']}: {row['note']}")
            continue
        table.add(
            [
                row["network"],
                f"inner Youden ({thresholds})",
                *[prop_cell(row["inner"][n]) for n in PROPORTION_NAMES],
                j_cell(row["inner"]),
            ]
        )
        j_report, j_inner = row["report"]["youden_j"], row["inner"]["youden_j"]
        if j_report is not None and j_inner is not None:
            report_threshold = f"{inner['report_threshold']:g}"
            better = "the inner-split Youden threshold" if j_inner > j_report else report_threshold
            answers.append(
                f"{row['network']}: Youden J {j_inner:.3f} at the inner-split threshold vs {j_report:.3f} at "
                f"{report_threshold} (accuracy {fmt_pct(row['inner']['accuracy']['value'])}% vs "
                f"{fmt_pct(row['report']['accuracy']['value'])}%): {better} balances sensitivity and specificity "
                "better on the test folds."
            )
    table.notes += answers
    table.notes.append(
        "Each fold's threshold is chosen on its inner validation split (patients of the training folds), never on "
        "the lesions it is applied to, so these metrics are not optimistic (unlike the descriptive pooled Youden "
        "threshold above); it maximises sensitivity + specificity − 1, not accuracy."
    )
    return table


def _phantom_table(report: Mapping[str, Any]) -> Table | None:
    ph = report["phantom"]
    if ph is None:
        return None
    table = Table(
        "Phantom data — model AUC vs Bayes-optimal AUC of the ground-truth P(malignant)",
        ["", "Lesions", "Model AUC", "Bayes-optimal AUC", "Gap (model − best, 95% CI)"],
    )
    for label, block in [*[(f"Fold {f['fold']}", f) for f in ph["folds"]], ("Pooled", ph["pooled"])]:
        if block["model_auc"] is None:
            table.add([label, str(block["lesions"]), _na(block["reason"]), NA, NA])
            continue
        table.add(
            [
                label,
                str(block["lesions"]),
                fmt_auc(block["model_auc"]),
                fmt_auc(block["bayes_auc"]),
                f"{block['gap']:+.3f} ({block['gap_ci_low']:+.3f} to {block['gap_ci_high']:+.3f})",
            ]
        )
    if ph.get("note"):
        table.notes.append(ph["note"])
    table.notes.append(
        "No classifier can beat the Bayes-optimal AUC on average; the gap measures what the model leaves on the table."
    )
    return table


def _bootstrap_table(report: Mapping[str, Any]) -> Table | None:
    bs = report["bootstrap"]
    if bs is None:
        return None
    ref = report["reference_network"]
    table = Table(
        f"Patient-cluster bootstrap 95% intervals ({bs['resamples']} resamples of patients, seed {bs['seed']})",
        ["Network", *[METRIC_LABELS[n] for n in PROPORTION_NAMES], "AUC", f"ΔAUC vs {ref}"],
    )

    def interval(name: str, block: Mapping[str, Any] | None) -> str:
        if block is None or block.get("ci_low") is None:
            return DASH if block is None else NA
        if name == "auc":
            return f"{block['ci_low']:.3f}–{block['ci_high']:.3f}"
        if name == "auc_difference":
            return f"{block['ci_low']:+.3f} to {block['ci_high']:+.3f}"
        return f"{fmt_pct(block['ci_low'])}–{fmt_pct(block['ci_high'])}"

    for net in report["networks"]:
        r = bs["networks"][net]
        table.add([net, *[interval(n, r[n]) for n in (*METRIC_NAMES, "auc_difference")]])
    table.notes.append(
        "Wilson and DeLong intervals treat lesions as independent; lesions of one patient are not. These percentile "
        "intervals resample whole patients: where they are much wider, trust them over the lesion-level ones."
    )
    return table


def build_document(report: Mapping[str, Any]) -> list[Block]:
    """The report as a list of blocks, in reading order."""
    doc: list[Block] = [("h1", report["title"])]
    note = report.get("selection_note")
    doc.append(("selection", f"Model selection: {note}" if note else "Model selection: not stated by the caller."))
    if report["warnings"]:
        doc.append(("warnings", report["warnings"]))
    t2 = report["table2"]["pooled"]
    s = report["settings"]
    doc.append(
        (
            "p",
            f"Reference network: {report['reference_network']} (networks: {', '.join(report['networks'])}). "
            f"{t2['lesions']['total']} out-of-fold lesions of {t2['patients']['total']} patients in "
            f"{len(report['table2']['folds'])} folds. A lesion is called malignant when P(malignant) ≥ "
            f"{s['threshold']:g}. Groups with fewer than {s['min_cases_per_class']} lesions of either class are "
            "n/a. Rows marked “" + PUBLISHED + "” are the paper's numbers as printed, for comparison.",
        )
    )
    doc.append(("h2", "Dataset"))
    doc.append(("table", _table1(report)))
    doc.append(("h2", "Cross-validation (Table 2)"))
    doc += [("table", t) for t in _table2(report)]
    doc.append(("h2", "Network comparison (Table 3)"))
    doc += [("table", t) for t in _table3(report)]
    doc.append(("h2", "Lesion burden (Table 4)"))
    doc.append(
        (
            "table",
            _subgroup_tables(
                report, "table4", "Table 4 — by number of lesions per image (95% CI), χ² across groups", "table4"
            ),
        )
    )
    by_network = _burden_by_network_table(report)
    if by_network is not None:
        doc.append(("table", by_network))
    doc.append(("h2", "Primary tumour (Table 5)"))
    t5 = _subgroup_tables(report, "table5", "Table 5 — by primary tumour (95% CI), χ² across groups", "table5")
    doc.append(("table", t5))
    doc.append(("h2", "Figures"))
    for fig in report["figures"]:
        doc.append(("figure", fig))
    doc.append(("h2", "Patient level"))
    doc.append(("table", _patient_table(report)))
    sections = (
        ("Threshold", _youden_table(report)),
        ("Threshold chosen on the inner validation split", _inner_threshold_table(report)),
        ("Calibration", _calibration_table(report)),
        ("Phantom ground truth", _phantom_table(report)),
    )
    for title, table in sections:
        if table is not None:
            doc += [("h2", title), ("table", table)]
    bs = _bootstrap_table(report)
    if bs is not None:
        doc += [("h2", "Lesions within patients"), ("table", bs)]
    doc.append(("h2", "Methods"))
    doc.append(("ul", [f"{METHOD_LABELS.get(k, k)}: {v}" for k, v in report["methods"].items()]))
    doc.append(
        ("note", f"Published numbers: {report['published']['citation']}. How to read this report: docs/report.md.")
    )
    return doc


# ---------------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as GitHub-flavoured Markdown (figures linked relative to the report)."""
    out: list[str] = []
    for kind, payload in build_document(report):
        if kind == "h1":
            out.append(f"# {payload}\n")
        elif kind == "h2":
            out.append(f"## {payload}\n")
        elif kind == "p":
            out.append(f"{payload}\n")
        elif kind == "note":
            out.append(f"_{payload}_\n")
        elif kind == "selection":
            out.append(f"> **{payload}**\n")
        elif kind == "warnings":
            out.append("**Warnings**\n\n" + "\n".join(f"- {w}" for w in payload) + "\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in payload) + "\n")
        elif kind == "figure":
            out.append(f"![{payload['caption']}]({payload['file']})\n\n_{payload['caption']}_\n")
        elif kind == "table":
            table: Table = payload
            lines = [f"**{table.title}**", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "|".join([":---"] + ["---:"] * (len(table.columns) - 1)) + "|")
            for _, cells in table.rows:
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            lines += [""] + [f"_{n}_  " for n in table.notes]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS; the PNG figures are linked)."""
    e = html.escape
    body: list[str] = []
    for kind, payload in build_document(report):
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(payload)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(payload)}</p>")
        elif kind == "note":
            body.append(f'<p class="note">{e(payload)}</p>')
        elif kind == "selection":
            body.append(f'<p class="selection"><strong>{e(payload)}</strong></p>')
        elif kind == "warnings":
            items = "".join(f"<li>{e(w)}</li>" for w in payload)
            body.append(f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in payload) + "</ul>")
        elif kind == "figure":
            body.append(
                f'<figure><img src="{e(payload["file"])}" alt="{e(payload["caption"])}">'
                f"<figcaption>{e(payload['caption'])}</figcaption></figure>"
            )
        elif kind == "table":
            table: Table = payload
            head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
            rows = "".join(
                f'<tr class="{k}">' + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for k, cells in table.rows
            )
            notes = "".join(f'<p class="note">{e(n)}</p>' for n in table.notes)
            body.append(
                f"<table><caption><strong>{e(table.title)}</strong></caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{rows}</tbody></table>{notes}"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(report['title'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------


def _confusion_panel(ax: Any, counts: Mapping[str, int], title: str) -> None:
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    frac = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{int(matrix[i, j])}\n{100 * frac[i, j]:.1f}%",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if frac[i, j] > 0.55 else "black",
            )
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title, fontsize=10)


def _roc_panel(
    ax: Any,
    curves: Sequence[tuple[str, Mapping[str, Sequence[float]] | None, float | None]],
    title: str,
    points: Sequence[tuple[str, float, float, str]] = (),
) -> None:
    ax.plot([0, 1], [0, 1], color="#9aa5b1", lw=0.8, ls="--")
    for label, curve, auc in curves:
        if curve is None:
            ax.plot([], [], label=f"{label}: n/a", color="none")
            continue
        ax.plot(curve["fpr"], curve["tpr"], lw=1.5, label=f"{label} (AUC {fmt_auc(auc)})")
    for label, fpr, tpr, marker in points:
        ax.plot([fpr], [tpr], marker, ms=7, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7, frameon=False)


def _save(fig: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")

    atomic_write(path, write, suffix=".png")


def _group_figure(report: Mapping[str, Any], key: str, curves_key: str, title: str, path: Path) -> None:
    groups = report[key]["groups"]
    n = len(groups) + 1
    rows = 1 if n <= 4 else 2
    cols = -(-n // rows)
    fig = Figure(figsize=(3.1 * cols, 3.3 * rows + 0.3), layout="constrained")
    grid = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in grid[n:]:
        ax.set_axis_off()
    axes = grid[:n]
    letters = "ABCDEFGHIJ"
    for i, (ax, g) in enumerate(zip(axes[:-1], groups, strict=True)):
        label = GROUP_LABELS.get(g["group"], g["group"])
        _confusion_panel(ax, g["metrics"]["counts"], f"{letters[i]}  {label}, n={g['lesions']['total']}")
    curves = [
        (
            GROUP_LABELS.get(g["group"], g["group"]),
            report["roc_curves"][curves_key].get(g["group"]),
            g["metrics"]["auc"]["value"],
        )
        for g in groups
    ]
    _roc_panel(axes[-1], curves, f"{letters[n - 1]}  ROC")
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def _overall_figure(report: Mapping[str, Any], path: Path) -> None:
    pooled = report["table2"]["pooled"]["metrics"]
    fig = Figure(figsize=(7.0, 3.5), layout="constrained")
    ax_cm, ax_roc = fig.subplots(1, 2)
    thr = report["settings"]["threshold"]
    _confusion_panel(ax_cm, pooled["counts"], f"A  All lesions, n={pooled['counts']['n']}, threshold {thr:g}")
    points = []
    if pooled["sensitivity"]["value"] is not None and pooled["specificity"]["value"] is not None:
        points.append((f"threshold {thr:g}", 1 - pooled["specificity"]["value"], pooled["sensitivity"]["value"], "ko"))
    youden = report["youden"]
    if youden is not None:
        points.append(
            (f"Youden {youden['threshold']:.3f} (descriptive)", 1 - youden["specificity"], youden["sensitivity"], "r*")
        )
    _roc_panel(ax_roc, [("all lesions", report["roc_curves"]["overall"], pooled["auc"]["value"])], "B  ROC", points)
    fig.suptitle(f"{report['reference_network']}: pooled out-of-fold results", fontsize=11)
    _save(fig, path)


def _networks_figure(report: Mapping[str, Any], path: Path) -> None:
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.subplots()
    rows = {r["network"]: r for r in report["table3"]["networks"]}
    curves = [
        (n, report["roc_curves"]["networks"].get(n), rows[n]["pooled"]["auc"]["value"]) for n in report["networks"]
    ]
    _roc_panel(ax, curves, "Pooled out-of-fold ROC per network")
    _save(fig, path)


def _reliability_panel(ax: Any, diagrams: Mapping[str, Mapping[str, Any] | None], kind: str, title: str) -> None:
    ax.plot([0, 1], [0, 1], color="#9aa5b1", lw=0.8, ls="--", label="perfect calibration")
    for (label, diagram), style in zip(diagrams.items(), ("o-", "s-"), strict=False):
        if diagram is None:
            continue
        bins = diagram[kind]
        points = [
            (c, a, n)
            for c, a, n in zip(bins["mean_confidence"], bins["accuracy"], bins["count"], strict=True)
            if n > 0 and c is not None and a is not None
        ]
        if not points:
            continue
        conf, acc, count = (np.array(v, dtype=float) for v in zip(*points, strict=True))
        line = ax.plot(conf, acc, style, lw=1.2, ms=3, label=f"{label} (ECE {bins['ece']:.3f})")[0]
        ax.scatter(conf, acc, s=8 + 120 * count / count.max(), color=line.get_color(), alpha=0.35)
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("Mean predicted probability in bin")
    ax.set_ylabel("Observed frequency")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=7, frameon=False)


def _calibration_figure(report: Mapping[str, Any], path: Path) -> None:
    ref = report["reference_network"]
    diagrams = report["calibration"]["reliability"][ref]
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax_top, ax_pos = fig.subplots(1, 2)
    series = {"before scaling": diagrams["before"], "after scaling": diagrams["after"]}
    _reliability_panel(ax_top, series, "top_label", "A  Top-label confidence")
    _reliability_panel(ax_pos, series, "positive", "B  P(malignant)")
    fig.suptitle(f"{ref}: reliability of the pooled out-of-fold probabilities", fontsize=11)
    _save(fig, path)


def _explanations_figure(report: Mapping[str, Any], path: Path) -> None:
    """The sampled Grad-CAM pictures side by side, one column per outcome (TP, FP, TN, FN)."""
    import matplotlib.image

    sample = report["explanations"]["lesions"]
    outcomes = list(dict.fromkeys(item["outcome"] for item in sample))
    rows = max(sum(item["outcome"] == o for item in sample) for o in outcomes)
    fig = Figure(figsize=(2.2 * len(outcomes), 3.4 * rows), layout="constrained")
    axes = np.array(fig.subplots(rows, len(outcomes), squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for column, outcome in enumerate(outcomes):
        items = [item for item in sample if item["outcome"] == outcome]
        for row, item in enumerate(items):
            ax = axes[row, column]
            ax.imshow(matplotlib.image.imread(item["picture"]))
            ax.set_title(f"{OUTCOME_LABELS[outcome]}\n{item['lesion_id']}  P = {item['probability']:.2f}", fontsize=7)
    fig.suptitle(f"{report['reference_network']}: Grad-CAM of P(malignant)", fontsize=10)
    _save(fig, path)


def render_figures(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Draw the figures listed in ``report["figures"]`` into ``out_dir`` (matplotlib, Agg canvas, no pyplot state)."""
    out_dir = Path(out_dir)
    written = []
    for fig in report["figures"]:
        path = out_dir / fig["file"]
        name = Path(fig["file"]).name
        if name == "overall.png":
            _overall_figure(report, path)
        elif name == "figure3_burden.png":
            _group_figure(report, "table4", "burden", "Lesion burden: " + " / ".join(BURDEN_GROUPS), path)
        elif name == "figure4_tumor.png":
            _group_figure(report, "table5", "tumor", "Primary tumour", path)
        elif name == "networks_roc.png":
            _networks_figure(report, path)
        elif name == "calibration.png":
            _calibration_figure(report, path)
        elif name == "explanations.png":
            _explanations_figure(report, path)
        else:
            raise ValueError(f"unknown figure {fig['file']!r}")
        written.append(path)
    return written
