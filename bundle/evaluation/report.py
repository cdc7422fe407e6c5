"""Evaluation report of Liu et al. 2021: Tables 2-5, Figures 3-4, patient-level results, published numbers beside ours.

Typical usage examples::

    python -m bundle.evaluation report outputs/cv/predictions.csv --datalist data/datalist.json \\
        --out outputs/report --selection_note "checkpoint chosen on an inner validation split of the training folds"
    python -m bundle.evaluation report resnet50.csv densenet169.csv --datalist data/datalist.json --out outputs/report

or from Python (the cross-validation runner)::

    from bundle.evaluation.report import build_report, read_predictions, write_report
    report = build_report(read_predictions("predictions.csv"), read_datalist("datalist.json")["training"])
    write_report(report, "outputs/report")

A predictions CSV has one row per out-of-fold lesion: ``lesion_id, patient_id, label, probability, prediction``
(P(malignant) and the 0/1 call), optionally ``fold`` and ``network``. Rows are joined to the datalist entries on
``lesion_id``. The report is ``report.md``, ``report.html``, ``report.json`` (every number, proportions as fractions,
``null`` where undefined) and PNG figures in ``figures/``. How to read it and why these statistics: docs/report.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.metrics import roc_curve

from bundle.data.datalist import (
    BURDEN_GROUPS,
    BURDEN_LABELS,
    burden_group,
    lesions_in_image_of,
    lesions_per_image,
    read_datalist,
    repeated_lesion_ids,
)
from bundle.errors import ProblemsError
from bundle.evaluation import paper_results
from bundle.evaluation.calibration import CALIBRATION_KINDS, logits_from_probabilities, reliability_diagram
from bundle.evaluation.metrics import (
    METRIC_NAMES,
    MIN_CASES_PER_CLASS,
    PROPORTION_NAMES,
    PROPORTIONS,
    chi_square_across_groups,
    group_status,
    metrics_with_ci,
    paired_delong_test,
    weighted_auc_matrix,
    youden_threshold,
)
from bundle.evaluation.predictions import PREDICTION_COLUMNS
from bundle.evaluation.render import TUMOR_LABELS, render_figures, render_html, render_markdown
from bundle.io import atomic_write_text

SCHEMA_VERSION = 1
CONFIDENCE = 0.95
DEFAULT_NETWORK = "resnet50"
NETWORK_ORDER = ("resnet50", "inception_v3", "vgg16", "densenet169")

TUMOR_GROUPS = (*paper_results.TUMOR_GROUPS, "other", "unknown")
UNKNOWN_TUMOR_VALUES = ("", "unknown", "none", "null", "nan")
BOOTSTRAP_CHUNK = 250
ROC_MAX_POINTS = 400  # vertices kept per ROC curve in report.json (drawing only; AUCs use every lesion)

METHODS = {
    "proportions": "95% Wilson score interval (no continuity correction).",
    "auc": "ROC AUC (ties count 1/2) with a 95% Wald interval on the DeLong standard error, clipped to [0, 1] "
    "(DeLong et al. 1988; fast midrank algorithm of Sun & Xu 2014).",
    "auc_comparison": "Paired two-sided DeLong test of equal AUC on the lesions both networks scored.",
    "subgroups": "Pearson chi-square test (scipy.stats.chi2_contingency, no continuity correction) of each "
    "proportion across groups on the 2 x k table of correct/incorrect calls among that metric's denominator.",
    "fold_summary": "Mean ± sample SD (ddof = 1) over the folds whose metric is defined.",
    "cluster_bootstrap": "Percentile interval from resampling patients with replacement (all lesions of a drawn "
    "patient enter together), to show the effect of lesions of one patient being correlated.",
    "patient_level": "Patient label = 1 if any lesion is malignant; patient score = highest lesion probability; "
    "patient called malignant when the score >= the threshold (equivalently, when any lesion is called malignant).",
    "youden": "Threshold maximising sensitivity + specificity - 1 on the pooled out-of-fold ROC of the reference "
    "network; computed on the reported data, so descriptive only and not to be used for model selection.",
    "calibration": "Expected calibration error over 10 equal-width bins, top-label (Guo et al. 2017) and of "
    "P(malignant); after temperature scaling each fold's probabilities are softmax(log p / T) with that fold's T, "
    "fitted on its inner validation split after training (never on the test fold). With two classes T leaves the "
    "calls at 0.5 and the AUC unchanged.",
    "inner_threshold": "Each fold's test lesions called at the Youden-optimal threshold of that fold's inner "
    "validation split (chosen without the test fold, so not optimistic), pooled; against the report threshold.",
    "phantom": "Bayes-optimal AUC = ROC AUC of the phantom's ground-truth P(malignant) on the same lesions; "
    "gap = model AUC - Bayes-optimal AUC (paired DeLong interval).",
}


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def tumor_group(tumor_type: Any) -> str:
    """Tumour group of a datalist ``tumor_type``: the paper's lung, prostate, breast; unknown (absent); else other."""
    value = "" if tumor_type is None else str(tumor_type).strip().lower()
    if value in UNKNOWN_TUMOR_VALUES:
        return "unknown"
    return value if value in paper_results.TUMOR_GROUPS else "other"


def _parse_int(text: str, allowed: tuple[int, ...] | None = None) -> int:
    value = float(text)
    if not value.is_integer() or (allowed is not None and int(value) not in allowed):
        raise ValueError(text)
    return int(value)


def read_predictions(path: str | os.PathLike, network: str | None = None) -> list[dict[str, Any]]:
    """Read a predictions CSV into rows for ``build_report``.

    Args:
        path: CSV with columns ``lesion_id, patient_id, label, probability, prediction`` and optionally ``fold``,
            ``network``.
        network: network name of rows without a ``network`` value (``build_report`` falls back to "resnet50").

    Returns:
        One dict per row: ``lesion_id``, ``patient_id`` (str), ``label``, ``prediction`` (int), ``probability``
        (float), ``fold`` (int or None), ``network`` (str or None), ``source`` (the path) and ``line``.

    Raises:
        ProblemsError: listing every unreadable row (file, line and lesion named).
    """
    path = Path(path)
    if not path.is_file():
        raise ProblemsError(path, ["predictions file not found"])
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in PREDICTION_COLUMNS if c not in columns]
        if missing:
            raise ProblemsError(path, [f"missing column(s) {', '.join(missing)}; found {columns}"])
        for line, raw in enumerate(reader, start=2):
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            where = f"{path} line {line} (lesion_id {raw.get('lesion_id')!r})"
            try:
                label = _parse_int(raw["label"], (0, 1))
            except ValueError:
                problems.append(f"{where}: label {raw['label']!r} is not 0 or 1")
                continue
            try:
                probability = float(raw["probability"])
                if not 0 <= probability <= 1:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: probability {raw['probability']!r} is not a number in [0, 1]")
                continue
            try:
                prediction = _parse_int(raw["prediction"], (0, 1)) if raw["prediction"] else None
            except ValueError:
                problems.append(f"{where}: prediction {raw['prediction']!r} is not 0 or 1")
                continue
            try:
                fold = _parse_int(raw["fold"]) if raw.get("fold") else None
            except ValueError:
                problems.append(f"{where}: fold {raw['fold']!r} is not an integer")
                continue
            if not raw["lesion_id"]:
                problems.append(f"{where}: empty lesion_id")
                continue
            rows.append(
                {
                    "lesion_id": raw["lesion_id"],
                    "patient_id": raw["patient_id"],
                    "label": label,
                    "probability": probability,
                    "prediction": prediction,
                    "fold": fold,
                    "network": raw.get("network") or network,
                    "source": str(path),
                    "line": line,
                }
            )
    if problems:
        raise ProblemsError(path, problems)
    if not rows:
        raise ProblemsError(path, ["no prediction rows"])
    return rows


@dataclass
class Lesions:
    """Out-of-fold lesions of one network, joined to the datalist; one array element per lesion."""

    lesion_id: np.ndarray
    patient_id: np.ndarray
    label: np.ndarray
    probability: np.ndarray
    fold: np.ndarray
    tumor: np.ndarray
    burden: np.ndarray  # "few"/"medium"/"extensive", or "" when the number of lesions per image is unknown
    p_malignant: np.ndarray  # NaN where the datalist has no phantom ground truth

    def __len__(self) -> int:
        return len(self.lesion_id)

    def subset(self, mask: np.ndarray) -> Lesions:
        """The lesions where ``mask`` is True (or at the given indices)."""
        return Lesions(**{k: v[mask] for k, v in self.__dict__.items()})


def _lesions_per_image(entries: Sequence[Mapping[str, Any]]) -> dict[str, int | None]:
    """``lesions_in_image`` of each lesion id, as given in the datalist, else counted on its image."""
    per_image = lesions_per_image(entries)
    return {str(e["lesion_id"]): lesions_in_image_of(e, per_image) for e in entries}


def join_predictions(
    predictions: Sequence[Mapping[str, Any]],
    datalist_entries: Sequence[Mapping[str, Any]],
    threshold: float = 0.5,
    default_network: str = DEFAULT_NETWORK,
) -> tuple[dict[str, Lesions], list[str]]:
    """Join prediction rows to datalist entries on ``lesion_id``, per network.

    ``fold`` comes from the prediction row when it has one, else from the datalist.

    Returns:
        The lesions of each network and warnings (datalist lesions without a prediction, ``prediction`` values that
        disagree with ``probability >= threshold``, folds that differ from the datalist's).

    Raises:
        ProblemsError: a lesion_id not in the datalist, a label or patient that disagrees with it, a lesion
            predicted more than once by one network (every copy listed), or a lesion without a fold; each problem
            names the CSV and the lesion.
    """
    by_id = {str(e["lesion_id"]): e for e in datalist_entries}
    n_in_image = _lesions_per_image(datalist_entries)
    problems: list[str] = []
    warnings: list[str] = []
    rows_by_net: dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = defaultdict(list)
    ids_by_net: dict[str, list[str]] = defaultdict(list)
    for row in predictions:
        ids_by_net[str(row.get("network") or default_network)].append(str(row["lesion_id"]))
    repeated = {net: repeated_lesion_ids(ids) for net, ids in ids_by_net.items()}
    fold_mismatch: list[str] = []
    call_mismatch: dict[str, list[str]] = defaultdict(list)
    bad_burden: list[str] = []
    for row in predictions:
        lesion_id = str(row["lesion_id"])
        source = str(row.get("source") or "predictions")
        where = f"{source}" + (f" line {row['line']}" if row.get("line") else "") + f": lesion_id {lesion_id!r}"
        network = str(row.get("network") or default_network)
        entry = by_id.get(lesion_id)
        if entry is None:
            problems.append(f"{where} is not in the datalist")
            continue
        if int(row["label"]) != int(entry["label"]):
            problems.append(f"{where} has label {int(row['label'])} but the datalist says {int(entry['label'])}")
            continue
        if str(row["patient_id"]) != str(entry["patient_id"]):
            problems.append(
                f"{where} has patient_id {row['patient_id']!r} but the datalist says {entry['patient_id']!r}"
            )
            continue
        if lesion_id in repeated[network]:
            problems.append(
                f"{where} is predicted {repeated[network][lesion_id]} times for network {network!r}; "
                "give each file a `network` column or pass one network per run"
            )
            continue
        fold = row.get("fold")
        if fold is None:
            fold = entry.get("fold")
        elif entry.get("fold") is not None and int(fold) != int(entry["fold"]):
            fold_mismatch.append(lesion_id)
        if fold is None:
            problems.append(f"{where} has no fold in the predictions nor in the datalist")
            continue
        prediction = row.get("prediction")
        if prediction is not None and int(prediction) != int(float(row["probability"]) >= threshold):
            call_mismatch[network].append(lesion_id)
        n = n_in_image.get(lesion_id)
        if n is not None and n < 1:
            problems.append(f"{where}: lesions_in_image {n} in the datalist is not a positive count")
            continue
        if n is None:
            bad_burden.append(lesion_id)
        rows_by_net[network].append((row, {**entry, "fold": int(fold), "_n_in_image": n}))
    if problems:
        sources = sorted({str(r.get("source") or "predictions") for r in predictions})
        raise ProblemsError(", ".join(sources), problems)
    if not rows_by_net:
        raise ProblemsError("predictions", ["no prediction rows"])

    out: dict[str, Lesions] = {}
    for network, pairs in rows_by_net.items():
        out[network] = Lesions(
            lesion_id=np.array([str(r["lesion_id"]) for r, _ in pairs], dtype=object),
            patient_id=np.array([str(e["patient_id"]) for _, e in pairs], dtype=object),
            label=np.array([int(e["label"]) for _, e in pairs], dtype=int),
            probability=np.array([float(r["probability"]) for r, _ in pairs], dtype=float),
            fold=np.array([e["fold"] for _, e in pairs], dtype=int),
            tumor=np.array([tumor_group(e.get("tumor_type")) for _, e in pairs], dtype=object),
            burden=np.array(
                [burden_group(e["_n_in_image"]) if e["_n_in_image"] is not None else "" for _, e in pairs],
                dtype=object,
            ),
            p_malignant=np.array(
                [float(e["p_malignant"]) if e.get("p_malignant") is not None else math.nan for _, e in pairs]
            ),
        )
        missing = len(by_id) - len(pairs)
        if missing:
            warnings.append(
                f"{network}: {missing} of {len(by_id)} datalist lesions have no prediction; "
                "the report covers the predicted lesions only"
            )
        if call_mismatch[network]:
            ids = call_mismatch[network]
            warnings.append(
                f"{network}: the `prediction` column disagrees with probability >= {threshold:g} for {len(ids)} "
                f"lesion(s) (e.g. {', '.join(ids[:3])}); the report calls lesions by probability >= threshold"
            )
    if fold_mismatch:
        warnings.append(
            f"{len(fold_mismatch)} prediction(s) carry a fold other than the datalist's (e.g. {fold_mismatch[0]}); "
            "the predictions' folds are used"
        )
    if bad_burden:
        warnings.append(
            f"{len(bad_burden)} lesion(s) have neither lesions_in_image nor an image to count lesions on "
            f"(e.g. {bad_burden[0]}); they are left out of the lesion-burden table"
        )
    other = sorted(
        {str(e.get("tumor_type")) for e in datalist_entries if tumor_group(e.get("tumor_type")) == "other"} - {"other"}
    )
    if other:
        warnings.append(f"tumour types {other} are reported in the group 'other'")
    return out, warnings


# ---------------------------------------------------------------------------------------------------------------------
# Computations
# ---------------------------------------------------------------------------------------------------------------------


def _order_networks(names: Sequence[str]) -> list[str]:
    known = [n for n in NETWORK_ORDER if n in names]
    return known + sorted(n for n in names if n not in NETWORK_ORDER)


def _metrics(lesions: Lesions, threshold: float) -> dict:
    return metrics_with_ci(lesions.label, lesions.probability, threshold, CONFIDENCE, MIN_CASES_PER_CLASS)


def _patient_counts(lesions: Lesions) -> dict[str, int]:
    malignant: dict[str, int] = defaultdict(int)
    for patient, label in zip(lesions.patient_id, lesions.label, strict=True):
        malignant[patient] = max(malignant[patient], int(label))
    n_malignant = sum(malignant.values())
    return {"total": len(malignant), "benign": len(malignant) - n_malignant, "malignant": n_malignant}


def _lesion_counts(lesions: Lesions) -> dict[str, int]:
    m = int(lesions.label.sum())
    return {"total": len(lesions), "benign": len(lesions) - m, "malignant": m}


def _mean_sd(blocks: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in METRIC_NAMES:
        values = [b[name]["value"] for b in blocks if b[name]["value"] is not None and not math.isnan(b[name]["value"])]
        out[name] = {
            "mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) >= 2 else None,
            "n_folds": len(values),
        }
    return out


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]] | None:
    if group_status(labels) is not None:
        return None
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=True)
    if len(fpr) > ROC_MAX_POINTS:  # for drawing only: evenly spaced vertices, both ends kept
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_MAX_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]}


def _table2(lesions: Lesions, threshold: float) -> dict[str, Any]:
    folds = []
    for fold in sorted(set(lesions.fold.tolist())):
        sub = lesions.subset(lesions.fold == fold)
        folds.append(
            {
                "fold": int(fold),
                "patients": _patient_counts(sub),
                "lesions": _lesion_counts(sub),
                "metrics": _metrics(sub, threshold),
            }
        )
    return {
        "folds": folds,
        "mean_sd": _mean_sd([f["metrics"] for f in folds]),
        "pooled": {
            "patients": _patient_counts(lesions),
            "lesions": _lesion_counts(lesions),
            "metrics": _metrics(lesions, threshold),
        },
    }


def _table3(by_net: Mapping[str, Lesions], reference: str, threshold: float) -> dict[str, Any]:
    ref = by_net[reference]
    rows = []
    for network in _order_networks(list(by_net)):
        lesions = by_net[network]
        fold_metrics = [_metrics(lesions.subset(lesions.fold == f), threshold) for f in sorted(set(lesions.fold))]
        row: dict[str, Any] = {
            "network": network,
            "lesions": _lesion_counts(lesions),
            "pooled": _metrics(lesions, threshold),
            "fold_mean_sd": _mean_sd(fold_metrics),
            "comparison": None,
        }
        if network != reference:
            row["comparison"] = _compare_auc(ref, lesions, reference, network)
        rows.append(row)
    return {"reference": reference, "networks": rows}


def _compare_auc(ref: Lesions, other: Lesions, ref_name: str, name: str) -> dict[str, Any]:
    common, i_ref, i_other = np.intersect1d(
        ref.lesion_id.astype(str), other.lesion_id.astype(str), assume_unique=True, return_indices=True
    )
    note = None
    if len(common) != len(ref) or len(common) != len(other):
        note = (
            f"lesion sets differ ({ref_name}: {len(ref)}, {name}: {len(other)}); compared on the {len(common)} "
            "lesions both scored"
        )
    out: dict[str, Any] = {"reference": ref_name, "n_common": len(common), "note": note, "reason": None}
    labels = ref.label[i_ref]
    reason = group_status(labels)
    if reason:
        out["reason"] = reason
        return out
    test = paired_delong_test(labels, other.probability[i_other], ref.probability[i_ref], CONFIDENCE)
    out.update(
        auc=test["auc_a"],
        auc_reference=test["auc_b"],
        difference=test["difference"],
        se=test["se"],
        ci_low=test["ci_low"],
        ci_high=test["ci_high"],
        z=test["z"],
        p=test["p"],
    )
    return out


def _subgroup_table(
    lesions: Lesions, attribute: str, groups: Sequence[str], labels: Mapping[str, str], threshold: float
) -> dict[str, Any]:
    values = getattr(lesions, attribute)
    present = [g for g in groups if np.any(values == g)]
    rows = []
    for g in present:
        sub = lesions.subset(values == g)
        rows.append(
            {
                "group": g,
                "label": labels[g],
                "patients": _patient_counts(sub),
                "lesions": _lesion_counts(sub),
                "metrics": _metrics(sub, threshold),
            }
        )
    tests: dict[str, Any] = {}
    for name in PROPORTION_NAMES:
        included, excluded = [], []
        for row in rows:
            m = row["metrics"]
            if row["group"] == "unknown":
                excluded.append({"group": "unknown", "reason": "tumour type unknown: not a group to compare"})
            elif m["reason"]:
                excluded.append({"group": row["group"], "reason": m["reason"]})
            elif m[name]["n"] == 0:
                excluded.append({"group": row["group"], "reason": m[name]["reason"]})
            else:
                included.append(row)
        result = chi_square_across_groups(
            [r["metrics"][name]["successes"] for r in included], [r["metrics"][name]["n"] for r in included]
        )
        tests[name] = {**result, "groups": [r["group"] for r in included], "excluded": excluded}
    n_unassigned = int(np.sum(~np.isin(values, list(groups))))
    return {
        "attribute": attribute,
        "groups": rows,
        "tests": tests,
        "unassigned_lesions": n_unassigned,
    }


def _burden_by_network(by_net: Mapping[str, Lesions], networks: Sequence[str]) -> dict[str, Any] | None:
    """Pooled AUC (95% CI) of every network in each lesion-burden group (Table 4's groups), so that options such as
    the context of the other lesions can be compared where they should matter; None with a single network."""
    if len(networks) < 2:
        return None
    rows = []
    for name in networks:
        lesions = by_net[name]
        groups = []
        for g in BURDEN_GROUPS:
            sub = lesions.subset(lesions.burden == g)
            if len(sub):
                groups.append({"group": g, "lesions": len(sub), "auc": _metrics(sub, 0.5)["auc"]})
        rows.append({"network": name, "overall_auc": _metrics(lesions, 0.5)["auc"], "groups": groups})
    return {"groups": {g: BURDEN_LABELS[g] for g in BURDEN_GROUPS}, "networks": rows}


def _explanations(
    lesions: Lesions, pictures: Mapping[str, str | os.PathLike] | None, threshold: float, per_outcome: int
) -> dict[str, Any] | None:
    """A sample of the reference network's Grad-CAM pictures: per outcome (TP, FP, TN, FN at ``threshold``) the
    ``per_outcome`` most confident lesions that have a picture (highest P(malignant) for TP/FP, lowest for TN/FN:
    the clearest hits and the most confident errors). None without pictures."""
    if not pictures:
        return None
    called = lesions.probability >= threshold
    kinds = {
        "tp": called & (lesions.label == 1), "fp": called & (lesions.label == 0),
        "tn": ~called & (lesions.label == 0), "fn": ~called & (lesions.label == 1),
    }  # fmt: skip
    sample = []
    for outcome, chosen in kinds.items():
        index = [i for i in np.flatnonzero(chosen) if str(lesions.lesion_id[i]) in pictures]
        index.sort(key=lambda i: -lesions.probability[i] if outcome in ("tp", "fp") else lesions.probability[i])
        for i in index[:per_outcome]:
            lesion_id = str(lesions.lesion_id[i])
            sample.append(
                {
                    "outcome": outcome,
                    "lesion_id": lesion_id,
                    "label": int(lesions.label[i]),
                    "probability": float(lesions.probability[i]),
                    "picture": str(pictures[lesion_id]),
                }
            )
    return {"threshold": threshold, "per_outcome": per_outcome, "available": len(pictures), "lesions": sample}


def _patient_level(lesions: Lesions, threshold: float) -> dict[str, Any]:
    patients = sorted(set(lesions.patient_id.tolist()))
    index = {p: i for i, p in enumerate(patients)}
    idx = np.array([index[p] for p in lesions.patient_id], dtype=int)
    label = np.zeros(len(patients), dtype=int)
    score = np.zeros(len(patients))
    np.maximum.at(label, idx, lesions.label)
    np.maximum.at(score, idx, lesions.probability)
    return {
        "rule": METHODS["patient_level"],
        "patients": {"total": len(patients), "benign": int((label == 0).sum()), "malignant": int(label.sum())},
        "lesions_per_patient": {
            "mean": float(np.bincount(idx).mean()),
            "max": int(np.bincount(idx).max()),
        },
        "metrics": metrics_with_ci(label, score, threshold, CONFIDENCE, MIN_CASES_PER_CLASS),
    }


def _youden(lesions: Lesions, threshold: float) -> dict[str, Any] | None:
    if group_status(lesions.label) is not None:
        return None
    best = youden_threshold(lesions.label, lesions.probability)
    at = metrics_with_ci(lesions.label, lesions.probability, best["threshold"], CONFIDENCE, MIN_CASES_PER_CLASS)
    return {
        **best,
        **{name: at[name]["value"] for name in PROPORTION_NAMES if name not in best},
        "report_threshold": threshold,
        "note": "computed on the reported out-of-fold data: descriptive only, not for model selection",
    }


def fold_calibration(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, dict[str, float | None]]]:
    """Each run's per-fold ``temperature`` and inner-split ``youden_threshold`` from fold summaries (the folds'
    ``metrics.json`` with ``network`` and ``fold``, as in ``cv_summary.json``); None where a fold has none."""
    out: dict[str, dict[int, dict[str, float | None]]] = defaultdict(dict)
    for summary in summaries:
        calibration = summary.get("calibration") or {}
        youden = calibration.get("inner_youden") or {}
        out[str(summary["network"])][int(summary["fold"])] = {
            "temperature": calibration.get("temperature"),
            "youden_threshold": youden.get("threshold"),
        }
    return dict(out)


def _per_lesion(lesions: Lesions, per_fold: Mapping[Any, Mapping[str, Any]], key: str) -> np.ndarray:
    """Each lesion's value of ``key`` from its fold's entry of ``per_fold`` (NaN where absent)."""
    by_fold = {int(f): v for f, v in per_fold.items()}
    values = [(by_fold.get(int(f)) or {}).get(key) for f in lesions.fold]
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _calibration(
    by_net: Mapping[str, Lesions], calibration: Mapping[str, Mapping[Any, Mapping[str, Any]]] | None, n_bins: int = 10
) -> dict[str, Any] | None:
    """Pooled out-of-fold ECE (both kinds) and reliability data of every network, before and after each fold's T."""
    if not calibration:
        return None
    rows, diagrams = [], {}
    for network in _order_networks(list(by_net)):
        lesions = by_net[network]
        per_fold = calibration.get(network) or {}
        logits = logits_from_probabilities(lesions.probability)
        before = softmax(logits, axis=1)
        temperatures = _per_lesion(lesions, per_fold, "temperature")
        row: dict[str, Any] = {
            "network": network,
            "lesions": len(lesions),
            "temperatures": {
                str(f): (per_fold.get(f) or per_fold.get(str(f)) or {}).get("temperature")
                for f in sorted(set(lesions.fold.tolist()))
            },
            "ece_before": {k: reliability_diagram(before, lesions.label, n_bins, k).ece for k in CALIBRATION_KINDS},
            "ece_after": None,
            "note": None,
        }
        diagrams[network] = {
            "before": {k: reliability_diagram(before, lesions.label, n_bins, k).to_dict() for k in CALIBRATION_KINDS},
            "after": None,
        }
        missing = sorted({int(f) for f, t in zip(lesions.fold, temperatures, strict=True) if not t > 0})
        if missing:
            row["note"] = f"no temperature for fold(s) {missing}: ECE after scaling not computed"
        else:
            after = softmax(logits / temperatures[:, None], axis=1)
            row["ece_after"] = {k: reliability_diagram(after, lesions.label, n_bins, k).ece for k in CALIBRATION_KINDS}
            diagrams[network]["after"] = {
                k: reliability_diagram(after, lesions.label, n_bins, k).to_dict() for k in CALIBRATION_KINDS
            }
        rows.append(row)
    return {
        "n_bins": n_bins,
        "networks": rows,
        "reliability": diagrams,
        "note": "probabilities as written in the predictions (6 decimals); ECE of each fold's own evaluation, from "
        "its logits, is in its metrics.json",
    }


def _inner_threshold(
    by_net: Mapping[str, Lesions],
    calibration: Mapping[str, Mapping[Any, Mapping[str, Any]]] | None,
    threshold: float,
) -> dict[str, Any] | None:
    """Pooled out-of-fold metrics at the report threshold and at each fold's inner-split Youden threshold."""
    if not calibration:
        return None
    rows = []
    for network in _order_networks(list(by_net)):
        lesions = by_net[network]
        per_fold = calibration.get(network) or {}
        thresholds = _per_lesion(lesions, per_fold, "youden_threshold")

        def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
            out = {name: metrics[name] for name in PROPORTION_NAMES}
            sens, spec = metrics["sensitivity"]["value"], metrics["specificity"]["value"]
            both = not (sens is None or spec is None or math.isnan(sens) or math.isnan(spec))
            return out | {"youden_j": sens + spec - 1 if both else None, "counts": metrics["counts"]}

        row: dict[str, Any] = {
            "network": network,
            "thresholds": {
                str(f): float(thresholds[lesions.fold == f][0])
                if np.isfinite(thresholds[lesions.fold == f][0])
                else None
                for f in sorted(set(lesions.fold.tolist()))
            },
            "report": summary(_metrics(lesions, threshold)),
            "inner": None,
            "note": None,
        }
        missing = sorted({int(f) for f, t in zip(lesions.fold, thresholds, strict=True) if not np.isfinite(t)})
        if missing:
            row["note"] = f"no inner-split Youden threshold for fold(s) {missing}"
        else:
            called = (lesions.probability >= thresholds).astype(float)  # each lesion at its fold's threshold
            row["inner"] = summary(metrics_with_ci(lesions.label, called, 0.5, CONFIDENCE, MIN_CASES_PER_CLASS))
        rows.append(row)
    return {"report_threshold": float(threshold), "networks": rows}


def _phantom(lesions: Lesions) -> dict[str, Any] | None:
    has = ~np.isnan(lesions.p_malignant)
    if not has.any():
        return None
    sub = lesions.subset(has)

    def block(part: Lesions) -> dict[str, Any]:
        reason = group_status(part.label)
        out: dict[str, Any] = {"lesions": len(part), "reason": reason}
        if reason:
            return out | {"model_auc": None, "bayes_auc": None, "gap": None}
        test = paired_delong_test(part.label, part.probability, part.p_malignant, CONFIDENCE)
        return out | {
            "model_auc": test["auc_a"],
            "bayes_auc": test["auc_b"],
            "gap": test["difference"],
            "gap_ci_low": test["ci_low"],
            "gap_ci_high": test["ci_high"],
        }

    note = None if has.all() else f"{int(has.sum())} of {len(lesions)} lesions have p_malignant; the rest are left out"
    return {
        "note": note,
        "pooled": block(sub),
        "folds": [{"fold": int(f)} | block(sub.subset(sub.fold == f)) for f in sorted(set(sub.fold.tolist()))],
    }


def _dataset_summary(lesions: Lesions) -> dict[str, Any]:
    """Table 1: patients and lesions by tumour type (a patient's type is the most common among its lesions)."""
    patient_types: dict[str, Counter] = defaultdict(Counter)
    for patient, tumor in zip(lesions.patient_id, lesions.tumor, strict=True):
        patient_types[patient][tumor] += 1
    patient_tumor = {p: c.most_common(1)[0][0] for p, c in patient_types.items()}
    mixed = sum(1 for c in patient_types.values() if len(c) > 1)
    per_lesion_patient_tumor = np.array([patient_tumor[p] for p in lesions.patient_id], dtype=object)
    rows = []
    for group in [g for g in TUMOR_GROUPS if np.any(lesions.tumor == g)] + ["total"]:
        les = lesions if group == "total" else lesions.subset(lesions.tumor == group)
        pat = lesions if group == "total" else lesions.subset(per_lesion_patient_tumor == group)
        p, lc = _patient_counts(pat), _lesion_counts(les)
        rows.append(
            {
                "group": group,
                "patients": p | {"rate": p["malignant"] / p["total"] if p["total"] else None},
                "lesions": lc | {"rate": lc["malignant"] / lc["total"] if lc["total"] else None},
            }
        )
    return {"rows": rows, "patients_with_mixed_tumor_types": mixed}


def _cluster_bootstrap(
    by_net: Mapping[str, Lesions], reference: str, threshold: float, resamples: int, seed: int
) -> dict[str, Any] | None:
    """Patient-cluster bootstrap percentile intervals of the pooled metrics of every network and of ΔAUC."""
    if resamples <= 0:
        return None
    patients = sorted({p for lesions in by_net.values() for p in lesions.patient_id.tolist()})
    index = {p: i for i, p in enumerate(patients)}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(patients), np.full(len(patients), 1 / len(patients)), size=resamples).astype(float)
    alpha = (1 - CONFIDENCE) / 2

    def interval(values: np.ndarray) -> dict[str, Any]:
        valid = values[~np.isnan(values)]
        if len(valid) == 0:
            return {"ci_low": None, "ci_high": None, "valid_resamples": 0}
        low, high = np.quantile(valid, [alpha, 1 - alpha])
        return {"ci_low": float(low), "ci_high": float(high), "valid_resamples": len(valid)}

    def aucs(lesions: Lesions) -> np.ndarray:
        idx = np.array([index[p] for p in lesions.patient_id], dtype=int)
        return np.concatenate(
            [
                weighted_auc_matrix(lesions.label, lesions.probability, draws[i : i + BOOTSTRAP_CHUNK], idx)
                for i in range(0, resamples, BOOTSTRAP_CHUNK)
            ]
        )

    out: dict[str, Any] = {"resamples": resamples, "seed": seed, "unit": "patient", "networks": {}}
    for network, lesions in by_net.items():
        idx = np.array([index[p] for p in lesions.patient_id], dtype=int)
        called = lesions.probability >= threshold
        y = lesions.label == 1
        cells = {
            "tp": y & called,
            "fn": y & ~called,
            "tn": ~y & ~called,
            "fp": ~y & called,
        }
        per_patient = {k: np.bincount(idx, weights=v, minlength=len(patients)) for k, v in cells.items()}
        counts = {k: draws @ v for k, v in per_patient.items()}
        result: dict[str, Any] = {}
        for name, rule in PROPORTIONS.items():
            num, den = rule.count(counts)
            with np.errstate(invalid="ignore", divide="ignore"):
                result[name] = interval(np.where(den > 0, num / np.where(den > 0, den, 1), np.nan))
        result["auc"] = interval(aucs(lesions))
        result["auc_difference"] = None
        if network != reference:
            ref = by_net[reference]
            _, i_ref, i_other = np.intersect1d(
                ref.lesion_id.astype(str), lesions.lesion_id.astype(str), assume_unique=True, return_indices=True
            )
            diff = aucs(lesions.subset(i_other)) - aucs(ref.subset(i_ref))
            result["auc_difference"] = interval(diff)
        out["networks"][network] = result
    return out


def _figure_plan(report: Mapping[str, Any]) -> list[dict[str, str]]:
    ref, threshold = report["reference_network"], report["settings"]["threshold"]
    plan = [
        {
            "file": "figures/overall.png",
            "caption": f"{ref}, all out-of-fold lesions: confusion matrix at threshold {threshold:g} and ROC curve "
            "with the operating point and the Youden-optimal point (descriptive).",
        }
    ]
    if report["table4"]["groups"]:
        burden = [label.lower() for label in BURDEN_LABELS.values()]  # "few (1–3)", ...
        plan.append(
            {
                "file": "figures/figure3_burden.png",
                "caption": f"Figure 3 analogue: confusion matrices of the {', '.join(burden[:-1])} and {burden[-1]} "
                "lesion-burden groups and their ROC curves.",
            }
        )
    if report["table5"]["groups"]:
        plan.append(
            {
                "file": "figures/figure4_tumor.png",
                "caption": "Figure 4 analogue: confusion matrices by primary tumour and their ROC curves.",
            }
        )
    if len(report["networks"]) > 1:
        plan.append({"file": "figures/networks_roc.png", "caption": "Pooled out-of-fold ROC curve of every network."})
    if report.get("calibration"):
        plan.append(
            {
                "file": "figures/calibration.png",
                "caption": f"{ref}: reliability diagrams of the pooled out-of-fold lesions (top-label confidence and "
                "P(malignant)), before and after each fold's temperature scaling; point size ∝ lesions in the bin.",
            }
        )
    if report.get("explanations") and report["explanations"]["lesions"]:
        plan.append(
            {
                "file": "figures/explanations.png",
                "caption": f"{ref}: Grad-CAM of P(malignant) for a sample of true/false positives/negatives (the most "
                "confident of each; lesion outlined in white), from evaluate.yaml's --explain true on each test fold.",
            }
        )
    return plan


def explanation_pictures(folders: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{lesion_id: picture path}`` of the Grad-CAM PNGs in ``folders`` (file name = the lesion id as
    :func:`bundle.engine.explanations.safe_name` writes it; ids of the phantom and of the builder keep their name)."""
    return {p.stem: str(p) for folder in folders for p in sorted(Path(folder).glob("*.png"))}


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays made plain Python and every NaN or infinity replaced by None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def build_report(
    predictions: Sequence[Mapping[str, Any]],
    datalist_entries: Sequence[Mapping[str, Any]],
    threshold: float = 0.5,
    bootstrap: int = 2000,
    seed: int = 0,
    reference_network: str | None = None,
    selection_note: str | None = None,
    default_network: str = DEFAULT_NETWORK,
    inputs: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Mapping[Any, Mapping[str, Any]]] | None = None,
    explanations: Mapping[str, str | os.PathLike] | None = None,
    explanations_per_outcome: int = 2,
) -> dict[str, Any]:
    """Compute every number of the report.

    Args:
        predictions: rows with ``lesion_id``, ``patient_id``, ``label``, ``probability``, optionally ``prediction``,
            ``fold``, ``network``, ``source`` and ``line`` (see ``read_predictions``).
        datalist_entries: ``read_datalist(path)["training"]``.
        threshold: a lesion (or patient) is called malignant when its probability is >= threshold.
        bootstrap: patient-cluster bootstrap resamples (0 to skip).
        seed: seed of the bootstrap.
        reference_network: network of Tables 2, 4, 5, the figures and the patient-level results, and the one the
            others' AUCs are compared with; None = "resnet50" if present, else the first network.
        selection_note: how the evaluated checkpoints were selected, shown at the top of the report.
        default_network: network name of rows without one.
        inputs: provenance (file names) recorded as is.
        calibration: per network and fold, ``temperature`` and ``youden_threshold`` fitted on that fold's inner
            validation split (:func:`fold_calibration`); None: no calibration and inner-threshold sections.
        explanations: the reference network's Grad-CAM pictures by lesion id (evaluate.yaml ``--explain true``,
            :func:`explanation_pictures`); a sample per outcome is shown (``explanations_per_outcome``).

    Returns:
        A JSON-ready dict (no NaN: undefined numbers are None) that ``write_report`` renders.

    Raises:
        ProblemsError: predictions that do not match the datalist (each problem names the file and lesion).
        ValueError: a threshold outside [0, 1] or an unknown ``reference_network``.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    by_net, warnings = join_predictions(predictions, datalist_entries, threshold, default_network)
    networks = _order_networks(list(by_net))
    if reference_network is None:
        reference = DEFAULT_NETWORK if DEFAULT_NETWORK in by_net else networks[0]
    elif reference_network in by_net:
        reference = reference_network
    else:
        raise ValueError(f"reference network {reference_network!r} is not in the predictions (found {networks})")
    if not selection_note:
        warnings.insert(0, "no model-selection statement was given: say how the evaluated checkpoints were chosen")
    lesions = by_net[reference]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "title": "Bone-lesion classification on whole-body bone scintigraphy: evaluation report",
        "selection_note": selection_note or None,
        "settings": {
            "threshold": float(threshold),
            "confidence": CONFIDENCE,
            "bootstrap_resamples": int(bootstrap),
            "seed": int(seed),
            "min_cases_per_class": MIN_CASES_PER_CLASS,
            "reference_network": reference,
            "units": "proportions as fractions in [0, 1]; AUC in [0, 1]; null = undefined",
        },
        "methods": METHODS,
        "inputs": dict(inputs or {}),
        "warnings": warnings,
        "networks": networks,
        "reference_network": reference,
        "published": paper_results.published(),
        "dataset": _dataset_summary(lesions),
        "table2": _table2(lesions, threshold),
        "table3": _table3(by_net, reference, threshold),
        "table4": _subgroup_table(lesions, "burden", tuple(BURDEN_GROUPS), BURDEN_LABELS, threshold),
        "burden_by_network": _burden_by_network(by_net, networks),
        "table5": _subgroup_table(lesions, "tumor", TUMOR_GROUPS, TUMOR_LABELS, threshold),
        "patient_level": _patient_level(lesions, threshold),
        "youden": _youden(lesions, threshold),
        "calibration": _calibration(by_net, calibration),
        "inner_threshold": _inner_threshold(by_net, calibration, threshold),
        "phantom": _phantom(lesions),
        "explanations": _explanations(lesions, explanations, threshold, explanations_per_outcome),
        "bootstrap": _cluster_bootstrap(by_net, reference, threshold, bootstrap, seed),
        "roc_curves": {
            "overall": _roc_points(lesions.label, lesions.probability),
            "burden": {
                g: _roc_points(lesions.label[lesions.burden == g], lesions.probability[lesions.burden == g])
                for g in BURDEN_GROUPS
                if np.any(lesions.burden == g)
            },
            "tumor": {
                g: _roc_points(lesions.label[lesions.tumor == g], lesions.probability[lesions.tumor == g])
                for g in TUMOR_GROUPS
                if np.any(lesions.tumor == g)
            },
            "networks": {n: _roc_points(by_net[n].label, by_net[n].probability) for n in networks},
        },
    }
    report["figures"] = _figure_plan(report)
    return to_jsonable(report)


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``, each atomically.

    Returns:
        The path of every file written, by name (``json``, ``markdown``, ``html`` and the figure files).
    """
    out_dir = Path(out_dir)
    report = to_jsonable(report)
    written = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    written |= {fig["file"]: out_dir / fig["file"] for fig in report["figures"]}
    render_figures(report, out_dir)
    atomic_write_text(written["json"], json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write_text(written["markdown"], render_markdown(report))
    atomic_write_text(written["html"], render_html(report))
    return written


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m bundle.evaluation report``."""
    parser = argparse.ArgumentParser(
        prog="python -m bundle.evaluation report", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("predictions", nargs="+", help="predictions CSV file(s), one row per out-of-fold lesion")
    parser.add_argument("--datalist", required=True, help="datalist JSON the predictions were made on")
    parser.add_argument("--out", required=True, help="output folder of report.md/.html/.json and figures/")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="malignant when probability >= this (default: 0.5)"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=2000, help="patient-cluster bootstrap resamples, 0 = off (default: 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--reference_network",
        default=None,
        help=f"network of Tables 2/4/5 and the AUC comparisons (default: {DEFAULT_NETWORK} when present, "
        "else the first network)",
    )
    parser.add_argument(
        "--network_name",
        default=DEFAULT_NETWORK,
        help=f"network of CSV rows without a `network` column (default: {DEFAULT_NETWORK})",
    )
    parser.add_argument(
        "--selection_note", default=None, help="how the evaluated checkpoints were selected (default: none)"
    )
    parser.add_argument(
        "--cv_summary",
        default=None,
        help="cv_summary.json of the cross-validation: each fold's temperature and inner-split Youden threshold, "
        "for the calibration and threshold sections (default: none, sections left out)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 on input errors, printed to stderr)."""
    args = get_args_parser().parse_args(argv)
    try:
        rows = [row for path in args.predictions for row in read_predictions(path, args.network_name)]
        entries = read_datalist(args.datalist)["training"]
        calibration = None
        if args.cv_summary:
            try:
                calibration = fold_calibration(json.loads(Path(args.cv_summary).read_text())["folds"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ProblemsError(args.cv_summary, [f"not a cv_summary.json with folds: {err}"]) from err
        report = build_report(
            rows,
            entries,
            threshold=args.threshold,
            bootstrap=args.bootstrap,
            seed=args.seed,
            reference_network=args.reference_network,
            selection_note=args.selection_note,
            default_network=args.network_name,
            inputs={"predictions": [str(p) for p in args.predictions], "datalist": str(args.datalist)},
            calibration=calibration,
        )
    except (ProblemsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = write_report(report, args.out)
    print(f"report written to {written['markdown']}, {written['html'].name}, {written['json'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
