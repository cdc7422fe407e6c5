"""A whole phantom data set on disk: scans, lesion masks and the datalist, written all-or-nothing."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from bundle.data.datalist import BURDEN_GROUPS, assign_folds, write_datalist
from bundle.io import current_umask
from bundle.phantom.lesions import TUMOR_TYPES
from bundle.phantom.scan import PhantomConfig, PhantomScan, generate_patient, patient_rng
from bundle.phantom.writers import WRITERS

# 1.1.0: region maps, lesion label images, the scans list with the true BSI (images as in 1.0.0)
GENERATOR_VERSION = "1.1.0"
DATASET_NAME = "bone-scan-phantom"


class OutputDirectoryError(FileExistsError):
    """The output directory cannot be used (not empty without ``overwrite``, or not a phantom data set)."""


def patient_id(index: int) -> str:
    """Id of the 0-based patient ``index``: ``P00001`` for index 0."""
    return f"P{index + 1:05d}"


@dataclass(frozen=True)
class PatientJob:
    """What a worker process needs to simulate and write patient ``index`` of a data set into ``root``."""

    index: int
    seed: int
    config: PhantomConfig
    fmt: str
    root: str


def scan_statistics(scan: PhantomScan) -> dict[str, Any]:
    """Counts and layout figures of one scan (per view), used by the summary and the tests."""
    image = scan.image
    half = image.shape[1] // 2
    body_rows = np.flatnonzero(scan.body_mask[:, :half].any(axis=1))
    return {
        "patient_id": scan.patient_id,
        "counts_anterior": int(scan.anterior.sum(dtype=np.int64)),
        "counts_posterior": int(scan.posterior.sum(dtype=np.int64)),
        "max_pixel": int(image.max()),
        "zero_fraction": float(np.mean(image == 0)),
        "body_fraction": float(scan.body_mask[:, :half].mean()),
        "body_height_fraction": float((body_rows[-1] - body_rows[0] + 1) / image.shape[0]),
        "hottest_is_bladder": bool(scan.bladder_mask.flat[int(np.argmax(scan.expected))]),
        "injection_site": (scan.info.get("injection_site") or {}).get("kind"),
        "tumor_type": scan.info["tumor_type"],
        "latent_metastatic": bool(scan.info["latent_metastatic"]),
    }


def _make_patient(job: PatientJob) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Simulate and write one patient; returns its lesion entries, its scan entry and its scan statistics."""
    pid = patient_id(job.index)
    scan, masks, records = generate_patient(patient_rng(job.seed, job.index), job.config, pid)
    writer = WRITERS[job.fmt]
    root = Path(job.root)
    image_rel = f"images/{pid}{writer.extension}"
    writer.write_image(root / image_rel, scan)
    regions_rel = f"regions/{pid}{writer.labels_extension}"
    writer.save_labels(root / regions_rel, scan.regions)
    # every lesion in one label image: value k = lesion k (the footprints do not overlap), 0 elsewhere
    lesions_rel = f"lesions/{pid}{writer.labels_extension}"
    writer.save_labels(root / lesions_rel, lesion_label_image(masks))
    scan_entry = {
        "image": image_rel,
        "regions": regions_rel,
        "lesions": lesions_rel,
        "patient_id": pid,
        "tumor_type": scan.info["tumor_type"],
        "num_lesions": len(records),
        "malignant_lesions": sum(r["label"] for r in records),
        "bsi": scan.info["bsi"],
        "bsi_regional": scan.info["bsi_regional"],
        "latent_metastatic": bool(scan.info["latent_metastatic"]),
        "injection_site": (scan.info.get("injection_site") or {}).get("kind"),
    }
    entries = []
    for mask, record in zip(masks, records, strict=True):
        mask_rel = f"masks/{record['lesion_id']}{writer.extension}"
        writer.write_mask(root / mask_rel, mask, scan)
        entry = {
            "image": image_rel,
            "mask": mask_rel,
            "label": record["label"],
            "patient_id": pid,
            "lesion_id": record["lesion_id"],
            "tumor_type": scan.info["tumor_type"],
            "lesions_in_image": record["lesions_in_image"],
            "p_malignant": record["p_malignant"],
        }
        entry.update({k: v for k, v in record.items() if k not in entry})
        entry["latent_metastatic"] = bool(scan.info["latent_metastatic"])
        entries.append(entry)
    return entries, scan_entry, scan_statistics(scan)


def run_patient_jobs(
    make: Callable[[PatientJob], Any], jobs: list[PatientJob], workers: int, chunksize: int = 4
) -> Iterator[Any]:
    """``make(job)`` for every job, in order: in this process (``workers`` ≤ 1) or a pool of forked processes."""
    if workers <= 1:
        yield from map(make, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers) as pool:
        yield from pool.imap(make, jobs, chunksize=chunksize)


def _is_data_set(path: Path, marker: str, name: str) -> bool:
    """``path/marker`` is a JSON file whose ``name`` is ``name`` (a data set this generator wrote)."""
    try:
        return json.loads((path / marker).read_text(encoding="utf-8")).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(
    out_dir: str | os.PathLike, overwrite: bool, marker: str = "datalist.json", name: str = DATASET_NAME
) -> Path:
    """Validate the target directory before any work is done.

    Args:
        marker, name: the JSON file and its ``name`` that make a folder one of this generator's data sets
            (``datalist.json`` / ``bone-scan-phantom``; the follow-up pairs: ``pairs.json`` /
            ``bone-scan-phantom-pairs``).

    Raises:
        OutputDirectoryError: ``out_dir`` is a file; or not empty and ``overwrite`` is false; or ``overwrite`` is
            true but the non-empty directory is not such a data set, so it is never deleted by mistake.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirectoryError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputDirectoryError(f"output directory {out} is not empty; pass --overwrite to replace it")
        if not _is_data_set(out, marker, name):
            raise OutputDirectoryError(
                f"refusing to overwrite {out}: it is not a phantom data set (no {marker} named {name!r}); remove it "
                "yourself or choose another --out"
            )
    return out


def check_generation_args(fmt: str, num_folds: int, patients: int) -> None:
    """Raise ValueError for an unknown format, fewer than 2 folds or fewer patients than folds."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(WRITERS)}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if patients < num_folds:
        raise ValueError(f"{patients} patient(s) cannot fill {num_folds} folds; use at least {num_folds} patients")


def move_into_place(
    tmp: Path, out: Path, overwrite: bool, marker: str = "datalist.json", name: str = DATASET_NAME
) -> None:
    """Rename the finished temporary folder to ``out`` (replacing an old data set only if ``overwrite``)."""
    check_output_dir(out, overwrite, marker, name)
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)


@contextlib.contextmanager
def staging_folder(
    out: Path, overwrite: bool, subfolders: Sequence[str], marker: str = "datalist.json", name: str = DATASET_NAME
) -> Iterator[Path]:
    """A temporary folder beside ``out`` (with ``subfolders``) to write a data set into; moved into place
    (:func:`move_into_place`) with the usual permissions when the block ends, removed if it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for sub in subfolders:
            (tmp / sub).mkdir()
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        move_into_place(tmp, out, overwrite, marker, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generator_metadata(config: PhantomConfig, seed: int, patients: int, fmt: str) -> dict[str, Any]:
    """The ``generator`` record of a data set: version, seed, size, format and the whole configuration."""
    return {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "patients": patients,
        "difficulty": config.difficulty,
        "height": config.height,
        "width": config.width,
        "format": fmt,
        "config": json.loads(json.dumps(asdict(config))),
    }


def generate_dataset(
    out_dir: str | os.PathLike,
    patients: int,
    seed: int = 0,
    *,
    config: PhantomConfig | None = None,
    fmt: str = "nifti",
    num_folds: int = 5,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> dict[str, Any]:
    """Simulate ``patients`` scans and write images, masks and ``datalist.json`` under ``out_dir``.

    Everything is written to a temporary folder beside ``out_dir`` that is renamed into place at the end, so
    ``out_dir`` either holds a complete data set or is untouched. Patient ``k`` is the same whatever ``patients``.

    Args:
        out_dir: target folder; must be absent or empty unless ``overwrite`` (which only replaces a phantom data set).
        patients: number of patients (one scan each).
        seed: data-set seed; the same seed gives byte-identical arrays and the same datalist.
        config: image size, difficulty, counts; :class:`PhantomConfig` defaults if None.
        fmt: a key of :data:`bundle.phantom.writers.WRITERS` (``nifti`` or ``png``).
        num_folds: cross-validation folds, assigned by patient with :func:`bundle.data.datalist.assign_folds`.
        overwrite: replace an existing phantom data set at ``out_dir``.
        workers: processes; 1 runs in this process.
        progress: wraps the per-patient iterator (e.g. ``tqdm``) to show progress.

    Returns:
        The datalist dict that was written (``training`` entries, ``generator``, ``best_possible_auc``, ...).

    Raises:
        OutputDirectoryError: see :func:`check_output_dir`.
        ValueError: bad ``patients``, ``num_folds`` or ``fmt``.
    """
    config = config or PhantomConfig()
    check_generation_args(fmt, num_folds, patients)
    out = check_output_dir(out_dir, overwrite)
    with staging_folder(out, overwrite, ("images", "masks", "regions", "lesions")) as tmp:
        jobs = [PatientJob(i, seed, config, fmt, str(tmp)) for i in range(patients)]
        results: Iterator = run_patient_jobs(_make_patient, jobs, workers)
        if progress is not None:
            results = progress(results)
        entries: list[dict[str, Any]] = []
        scans: list[dict[str, Any]] = []
        stats: list[dict[str, Any]] = []
        for patient_entries, scan_entry, patient_stats in results:
            entries.extend(patient_entries)
            scans.append(scan_entry)
            stats.append(patient_stats)
        entries = assign_folds(entries, num_folds, seed)
        scans = scan_folds(scans, entries, num_folds)
        statistics = summarize(entries, stats)
        datalist = {
            "name": DATASET_NAME,
            "description": (
                "Synthetic whole-body bone scans (99mTc-MDP, anterior | mirrored posterior) with one entry per lesion; "
                "label ~ Bernoulli(p_malignant), p_malignant a function of visible lesion features (docs/phantom.md)."
            ),
            "generator": generator_metadata(config, seed, patients, fmt),
            "num_folds": num_folds,
            "best_possible_auc": statistics["best_possible_auc"],
            "statistics": statistics,
            "training": entries,
            "scans": scans,
            "regions_table": "bundle.data.regions.REGIONS (docs/read.md)",
        }
        write_datalist(tmp / "datalist.json", datalist)
    return datalist


def lesion_label_image(masks: np.ndarray) -> np.ndarray:
    """The lesion masks (num_lesions, H, W) as one label image (H, W), uint8: lesion k (1-based) has value k."""
    if len(masks) > 255:
        raise ValueError(f"{len(masks)} lesions do not fit an 8-bit label image")
    labels = np.zeros(masks.shape[1:], np.uint8)
    for k, mask in enumerate(masks, start=1):
        labels[mask.astype(bool) & (labels == 0)] = k
    return labels


def scan_folds(scans: list[dict[str, Any]], entries: list[dict[str, Any]], num_folds: int) -> list[dict[str, Any]]:
    """Scan entries with ``fold``: their patient's lesion fold; a patient without lesions gets ``index % num_folds``."""
    fold_of = {e["patient_id"]: e["fold"] for e in entries}
    return [{**s, "fold": fold_of.get(s["patient_id"], i % num_folds)} for i, s in enumerate(scans)]


def best_possible_auc(labels: list[int] | np.ndarray, p_malignant: list[float] | np.ndarray) -> float:
    """``roc_auc_score(label, p_malignant)``: the AUC of the Bayes-optimal reader of the image (NaN with one class)."""
    y = np.asarray(labels)
    return float(roc_auc_score(y, p_malignant)) if len(np.unique(y)) == 2 else math.nan


def summarize(entries: list[dict[str, Any]], scan_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Data-set statistics: lesions, classes, burden groups, tumour types, counts, best-possible AUC (overall/fold)."""
    labels = np.array([e["label"] for e in entries])
    probs = np.array([e["p_malignant"] for e in entries])
    per_patient = Counter(e["patient_id"] for e in entries)
    malignant_patients = {e["patient_id"] for e in entries if e["label"] == 1}
    lesion_counts = np.array([per_patient[s["patient_id"]] for s in scan_stats])
    fold_auc = [
        best_possible_auc(labels[sel], probs[sel])
        for fold in sorted({e["fold"] for e in entries if "fold" in e})
        if (sel := np.array([e.get("fold") == fold for e in entries])).any()
    ]
    fold_auc = [a for a in fold_auc if not math.isnan(a)]
    tumor = {}
    for t in TUMOR_TYPES:
        sel = np.array([e["tumor_type"] == t for e in entries])
        n_patients = sum(s["tumor_type"] == t for s in scan_stats)
        tumor[t] = {
            "patients": n_patients,
            "lesions": int(sel.sum()),
            "malignant_share": round(float(labels[sel].mean()), 4) if sel.any() else None,
        }
    views = np.array([[s["counts_anterior"], s["counts_posterior"]] for s in scan_stats], float)
    return {
        "patients": len(scan_stats),
        "scans": len(scan_stats),
        "lesions": len(entries),
        "malignant_share": round(float(labels.mean()), 4),
        "lesions_per_patient": round(float(lesion_counts.mean()), 3),
        "lesions_per_patient_range": [int(lesion_counts.min()), int(lesion_counts.max())],
        "burden_groups_patients": {
            g: int(np.sum((lesion_counts >= lo) & (lesion_counts <= hi))) for g, (lo, hi) in BURDEN_GROUPS.items()
        },
        "patients_with_malignant_lesion": round(len(malignant_patients) / max(len(scan_stats), 1), 4),
        "patients_latent_metastatic": round(float(np.mean([s["latent_metastatic"] for s in scan_stats])), 4),
        "tumor_types": tumor,
        "best_possible_auc": round(best_possible_auc(labels, probs), 4),
        "best_possible_auc_per_fold_mean": round(float(np.mean(fold_auc)), 4) if fold_auc else None,
        "best_possible_auc_per_fold_sd": round(float(np.std(fold_auc)), 4) if fold_auc else None,
        "counts_per_view_mean": round(float(views.mean()), 1),
        "counts_per_view_range": [int(views.min()), int(views.max())],
        "max_pixel_median": float(np.median([s["max_pixel"] for s in scan_stats])),
        "max_pixel_range": [int(min(s["max_pixel"] for s in scan_stats)), int(max(s["max_pixel"] for s in scan_stats))],
        "zero_fraction_mean": round(float(np.mean([s["zero_fraction"] for s in scan_stats])), 4),
        "body_fraction_mean": round(float(np.mean([s["body_fraction"] for s in scan_stats])), 4),
        "body_height_fraction_mean": round(float(np.mean([s["body_height_fraction"] for s in scan_stats])), 4),
        "hottest_is_bladder_share": round(float(np.mean([s["hottest_is_bladder"] for s in scan_stats])), 4),
        "injection_sites": sum(s["injection_site"] == "injection_site" for s in scan_stats),
    }


def format_summary(statistics: dict[str, Any]) -> str:
    """Human-readable summary printed by the CLI."""
    s = statistics
    groups = ", ".join(f"{g}: {n}" for g, n in s["burden_groups_patients"].items())
    types = ", ".join(
        f"{t} {v['patients']} pt / {v['lesions']} les / {v['malignant_share']:.0%} malignant"
        for t, v in s["tumor_types"].items()
        if v["lesions"]
    )
    fold = ""
    if s["best_possible_auc_per_fold_mean"] is not None:
        fold = f" (per fold {s['best_possible_auc_per_fold_mean']:.3f} ± {s['best_possible_auc_per_fold_sd']:.3f})"
    lo, hi = s["lesions_per_patient_range"]
    return "\n".join(
        [
            f"patients: {s['patients']}   scans: {s['scans']}   lesions: {s['lesions']}",
            f"malignant share: {s['malignant_share']:.3f}   patients with a malignant lesion: "
            f"{s['patients_with_malignant_lesion']:.3f}",
            f"lesions per patient: {s['lesions_per_patient']:.2f} (range {lo}-{hi}; burden groups {groups})",
            f"tumour types: {types}",
            f"best-possible AUC, roc_auc_score(label, p_malignant): {s['best_possible_auc']:.4f}{fold}",
            f"counts per view: mean {s['counts_per_view_mean'] / 1e6:.2f} M, range "
            f"{s['counts_per_view_range'][0] / 1e6:.2f}-{s['counts_per_view_range'][1] / 1e6:.2f} M;   hottest pixel: "
            f"median {s['max_pixel_median']:.0f} (range {s['max_pixel_range'][0]}-{s['max_pixel_range'][1]});   "
            f"zero pixels: {s['zero_fraction_mean']:.1%};   body: {s['body_fraction_mean']:.1%} of a view",
        ]
    )
