"""Published results of Liu et al., BMC Medical Imaging 2021;21:131 (doi:10.1186/s12880-021-00662-9).

Typed in by hand from the paper's text and Tables 1-5, **as printed**: proportions in percent (the paper's unit),
AUCs as fractions, P values as the strings printed. Nothing here is recomputed; the report shows these numbers beside
ours labelled "Liu et al. 2021 (published, not recomputed)". ``percent_to_fraction`` converts for report.json,
which holds every proportion as a fraction.

Known inconsistency in the paper: Table 1 prints 6812 benign lesions in total, but its three tumour columns
(2462 + 2396 + 2444), Table 2's folds (1505 + 1389 + 1468 + 1475 + 1465) and the text (14,972 lesions, 51.23%
malignant) all give 7302. Both are kept: ``TABLE1`` as printed, ``TABLE1_BENIGN_LESIONS_CONSISTENT`` = 7302.
"""

from __future__ import annotations

from typing import Any

from bundle.data.datalist import BURDEN_GROUPS
from bundle.evaluation.metrics import PROPORTION_NAMES

LABEL = "Liu et al. 2021 (published, not recomputed)"
CITATION = (
    "Liu Y, Yang P, Pi Y, et al. Automatic identification of suspicious bone metastatic lesions in bone scintigraphy "
    "using convolutional neural network. BMC Med Imaging. 2021;21:131. doi:10.1186/s12880-021-00662-9"
)


# Table 1: the summary of patient-based and lesion-based analysis in all WBS images (rates in percent).
TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "patients": {
        "lung": {"total": 1253, "malignant": 567, "benign": 686, "rate": 45.25},
        "prostate": {"total": 1017, "malignant": 466, "benign": 551, "rate": 45.82},
        "breast": {"total": 1082, "malignant": 437, "benign": 645, "rate": 40.39},
        "total": {"total": 3352, "malignant": 1470, "benign": 1882, "rate": 43.85},
    },
    "lesions": {
        "lung": {"total": 4937, "malignant": 2475, "benign": 2462, "rate": 50.13},
        "prostate": {"total": 5623, "malignant": 3227, "benign": 2396, "rate": 57.39},
        "breast": {"total": 4412, "malignant": 1968, "benign": 2444, "rate": 44.61},
        "total": {"total": 14972, "malignant": 7670, "benign": 6812, "rate": 51.23},  # 6812 sic: see module doc
    },
}
TABLE1_BENIGN_LESIONS_CONSISTENT = 7302

# Table 2: fivefold cross-validation results of the proposed (ResNet50-based) network; folds numbered 1-5.
TABLE2_FOLDS: list[dict[str, Any]] = [
    {
        "fold": 1,
        "patients": {"total": 669, "benign": 376, "malignant": 293},
        "lesions": {"total": 2986, "benign": 1505, "malignant": 1481},
        "sensitivity": 83.19,
        "specificity": 78.07,
        "accuracy": 80.61,
        "ppv": 78.87,
        "npv": 82.51,
    },
    {
        "fold": 2,
        "patients": {"total": 669, "benign": 376, "malignant": 293},
        "lesions": {"total": 2952, "benign": 1389, "malignant": 1563},
        "sensitivity": 83.11,
        "specificity": 82.58,
        "accuracy": 82.86,
        "ppv": 84.3,
        "npv": 81.29,
    },
    {
        "fold": 3,
        "patients": {"total": 671, "benign": 376, "malignant": 295},
        "lesions": {"total": 3084, "benign": 1468, "malignant": 1616},
        "sensitivity": 79.89,
        "specificity": 82.7,
        "accuracy": 81.23,
        "ppv": 83.56,
        "npv": 78.88,
    },
    {
        "fold": 4,
        "patients": {"total": 669, "benign": 376, "malignant": 293},
        "lesions": {"total": 2897, "benign": 1475, "malignant": 1422},
        "sensitivity": 76.79,
        "specificity": 82.78,
        "accuracy": 79.84,
        "ppv": 81.13,
        "npv": 78.72,
    },
    {
        "fold": 5,
        "patients": {"total": 674, "benign": 378, "malignant": 296},
        "lesions": {"total": 3053, "benign": 1465, "malignant": 1588},
        "sensitivity": 83.5,
        "specificity": 79.59,
        "accuracy": 81.62,
        "ppv": 81.6,
        "npv": 81.65,
    },
]

# The averages over the five folds stated in the Abstract/Results text (equal to Table 3's "Our model" row).
TABLE2_AVERAGE: dict[str, float] = {
    "sensitivity": 81.30,
    "specificity": 81.14,
    "accuracy": 81.23,
    "ppv": 81.89,
    "npv": 80.61,
}

# Table 3: comparison of the proposed network and three other networks (averages over the five folds).
# Keys are this project's network names; "display" is the paper's row label.
TABLE3: dict[str, dict[str, Any]] = {
    "resnet50": {
        "display": "Our model (ResNet50)",
        "sensitivity": 81.30,
        "specificity": 81.14,
        "accuracy": 81.23,
        "ppv": 81.89,
        "npv": 80.61,
    },
    "inception_v3": {
        "display": "InceptionV3",
        "sensitivity": 77.29,
        "specificity": 84.02,
        "accuracy": 80.61,
        "ppv": 83.53,
        "npv": 78.00,
    },
    "vgg16": {
        "display": "VGG16",
        "sensitivity": 78.73,
        "specificity": 83.51,
        "accuracy": 81.13,
        "ppv": 83.39,
        "npv": 79.14,
    },
    "densenet169": {
        "display": "DenseNet169",
        "sensitivity": 67.90,
        "specificity": 85.73,
        "accuracy": 76.71,
        "ppv": 83.17,
        "npv": 72.16,
    },
}

# Table 4: by number of lesions per image (few 1-3, medium 4-6, extensive > 6), Pearson chi-square across groups.
# AUCs from the Results text.
TABLE4: dict[str, dict[str, Any]] = {
    "sensitivity": {"few": 58.63, "medium": 64.34, "extensive": 89.56, "chi2": 163.41, "p": "<0.001"},
    "specificity": {"few": 89.41, "medium": 85.24, "extensive": 62.85, "chi2": 108.69, "p": "<0.001"},
    "accuracy": {"few": 81.78, "medium": 78.03, "extensive": 82.79, "chi2": 8.06, "p": "0.018"},
    "ppv": {"few": 64.89, "medium": 69.67, "extensive": 87.37, "chi2": 83.70, "p": "<0.001"},
    "npv": {"few": 86.76, "medium": 82.04, "extensive": 67.93, "chi2": 49.24, "p": "<0.001"},
    "auc": {"few": 0.847, "medium": 0.838, "extensive": 0.862},
}

# Table 5: by primary tumour type, Pearson chi-square across the three tumour types. AUCs from the Results text.
TABLE5: dict[str, dict[str, Any]] = {
    "sensitivity": {"lung": 76.16, "prostate": 84.66, "breast": 81.65, "chi2": 12.88, "p": "0.002"},
    "specificity": {"lung": 82.52, "prostate": 79.07, "breast": 81.78, "chi2": 2.08, "p": "0.354"},
    "accuracy": {"lung": 79.40, "prostate": 82.30, "breast": 81.82, "chi2": 3.13, "p": "0.209"},
    "ppv": {"lung": 81.12, "prostate": 84.43, "breast": 78.33, "chi2": 6.52, "p": "0.038"},
    "npv": {"lung": 77.70, "prostate": 79.52, "breast": 85.05, "chi2": 8.85, "p": "0.012"},
    "auc": {"lung": 0.870, "prostate": 0.900, "breast": 0.899},
}

TUMOR_GROUPS = ("lung", "prostate", "breast")


def percent_to_fraction(value: float | None) -> float | None:
    """A published percentage as a fraction (81.30 -> 0.813), rounded to stay as exact as printed."""
    return None if value is None else round(value / 100, 6)


def published() -> dict[str, Any]:
    """Every published number, proportions as fractions (AUCs, counts, chi-square and P strings unchanged)."""

    def conv(table: dict[str, dict[str, Any]], groups: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        out = {}
        for metric, row in table.items():
            scale = percent_to_fraction if metric in PROPORTION_NAMES else (lambda v: v)
            out[metric] = {g: scale(row[g]) for g in groups} | {k: row[k] for k in ("chi2", "p") if k in row}
        return out

    return {
        "label": LABEL,
        "citation": CITATION,
        "table1": TABLE1,
        "table1_benign_lesions_consistent": TABLE1_BENIGN_LESIONS_CONSISTENT,
        "table2_folds": [
            {k: (percent_to_fraction(v) if k in PROPORTION_NAMES else v) for k, v in fold.items()}
            for fold in TABLE2_FOLDS
        ],
        "table2_average": {k: percent_to_fraction(v) for k, v in TABLE2_AVERAGE.items()},
        "table3": {
            net: {k: (percent_to_fraction(v) if k in PROPORTION_NAMES else v) for k, v in row.items()}
            for net, row in TABLE3.items()
        },
        "table4": conv(TABLE4, tuple(BURDEN_GROUPS)),
        "table5": conv(TABLE5, TUMOR_GROUPS),
    }
