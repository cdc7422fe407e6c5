"""Follow-up pairs: the same phantom patient scanned twice, months apart, with every lesion's fate known.

The baseline is :func:`bundle.phantom.scan.generate_patient` for the patient's generator (the same arrays; only the
lesion ids are scan-qualified, ``P00001_baseline_L01``). The follow-up scan keeps the body (tumour type, height, bone
uptake factors, superscan) and draws a new pose, a slightly different build, a new bladder/kidney activity, injection
site, total counts and Poisson noise. Each baseline lesion persists (grown or shrunk) or resolves; new metastases may
appear; a fraction of responding patients scanned early show a flare. The rates and their sources are in
docs/phantom.md ("Follow-up pairs"); the on-disk format in docs/data.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bundle.io import atomic_write_text
from bundle.phantom.anatomy import BodyGeometry, draw_arm_pose, draw_posture, reference_skeleton, render_soft_tissue
from bundle.phantom.dataset import (
    PatientJob,
    check_generation_args,
    check_output_dir,
    generator_metadata,
    patient_id,
    run_patient_jobs,
    staging_folder,
)
from bundle.phantom.lesions import (
    MIN_GAP_MM,
    Lesion,
    PatientProfile,
    assign_labels,
    describe_scene,
    malignancy_logit,
    sample_new_metastases,
)
from bundle.phantom.scan import (
    PatientState,
    PhantomConfig,
    PhantomScan,
    Uptake,
    patient_rng,
    render_patient,
    sample_patient_state,
    sample_uptake,
)
from bundle.phantom.writers import WRITERS

PAIRS_NAME = "bone-scan-phantom-pairs"
FOLLOWUP_VERSION = "1.0.0"

# Months between the scans (re-staging every 8-12 weeks under therapy, PCWG2/3; else about 6-monthly).
FOLLOWUP_MONTHS = {3: 0.40, 4: 0.15, 5: 0.10, 6: 0.35}
# Course of a patient with bone metastases at baseline: "progressing" = new metastases appear (about a third of
# patients under therapy); "responding" (lesions shrink/fade, some resolve); "stable" otherwise.
PROGRESSING_RATE = {"lung": 0.40, "prostate": 0.33, "breast": 0.30, "other": 0.35}
RESPONDING_RATE = 0.35
# Flare: a responding patient scanned within 3 months of starting therapy; persisting metastases brighter, nothing new.
FLARE_RATE = 0.15
FLARE_MAX_MONTHS = 3
# A patient without bone metastases at baseline who develops them by the follow-up scan.
NEW_METASTASES_RATE = {"lung": 0.08, "prostate": 0.04, "breast": 0.05, "other": 0.06}
# Number of new lesions: 1 + negative binomial (mean, dispersion), at most NEW_LESIONS_MAX.
NEW_LESIONS_PROGRESSING = (2.0, 1.5)
NEW_LESIONS_FIRST_METASTASES = (1.0, 1.5)
NEW_LESIONS_MAX = 15
PROGRESSION_MIN_NEW_LESIONS = 2  # PCWG2: "two or more new lesions" on the follow-up bone scan

METASTASIS_PATTERNS = frozenset({"metastasis", "lytic_metastasis"})
TRAUMA_PATTERNS = frozenset({"rib_fracture", "rib_fracture_line", "post_traumatic"})
# Change of a lesion by course: (P(resolve), median area factor, log-SD, median intensity factor, log-SD).
METASTASIS_CHANGE = {
    "responding": (0.25, 0.60, 0.25, 0.70, 0.20),
    "stable": (0.05, 1.00, 0.15, 1.00, 0.12),
    "progressing": (0.03, 1.35, 0.20, 1.15, 0.15),
    "flare": (0.00, 1.10, 0.10, 1.40, 0.12),
}
TRAUMA_CHANGE = (0.35, 0.85, 0.15, 0.75, 0.15)  # fractures and post-traumatic foci heal and fade
BENIGN_CHANGE = (0.00, 1.00, 0.08, 1.00, 0.08)  # degenerative change, bone islands, Paget: stable

BUILD_CHANGE_SD = 0.015  # log-SD of the lateral build between the scans (weight change)
SAME_POSE_RATE = 0.85  # the patient lies with the arms as at baseline (at the sides / on the abdomen)


@dataclass(frozen=True)
class FollowupPair:
    """A baseline and a follow-up scan of one patient and the fate of every lesion.

    Attributes:
        baseline, followup: the two :class:`PhantomScan` (each with ``regions``, ``anatomy``, ``info["bsi"]``).
        baseline_masks, followup_masks: uint8 (num_lesions, H, W) of each scan, stored layout.
        baseline_records, followup_records: one dict per lesion of each scan (ids ``P00001_baseline_L01``, ...).
        lesions: one dict per lesion of the pair: ``fate`` (persistent/resolved/new), ``baseline_index`` and
            ``followup_index`` (row in the masks, or None), the ids, ``label``, ``pattern``, ``area_change`` and
            ``intensity_change`` (simulated follow-up / baseline, persistent lesions only), ``region``.
        months: months between the scans; ``flare``: the flare mode; ``course``: responding, stable, progressing,
            new_metastases (a patient without bone metastases at baseline who has them now) or unchanged.
        baseline_date, followup_date: acquisition dates, ``YYYYMMDD``.
        baseline_state, followup_state: what was drawn for each scan (profile, geometry, lesions, uptake); the
            lesions are in the order of the masks.
    """

    patient_id: str
    baseline: PhantomScan
    followup: PhantomScan
    baseline_masks: np.ndarray
    followup_masks: np.ndarray
    baseline_records: list[dict[str, Any]]
    followup_records: list[dict[str, Any]]
    lesions: list[dict[str, Any]]
    months: int
    flare: bool
    course: str
    baseline_date: str
    followup_date: str
    baseline_state: PatientState | None = None
    followup_state: PatientState | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def new_lesions(self) -> int:
        """Number of lesions with fate ``new``."""
        return sum(les["fate"] == "new" for les in self.lesions)

    @property
    def progression(self) -> bool:
        """PCWG2 bone progression: at least :data:`PROGRESSION_MIN_NEW_LESIONS` new lesions."""
        return self.new_lesions >= PROGRESSION_MIN_NEW_LESIONS


def generate_followup_pair(
    rng: np.random.Generator,
    config: PhantomConfig | None = None,
    patient_id: str = "P00001",
    months: int | None = None,
    flare: bool | None = None,
) -> FollowupPair:
    """Simulate a patient's baseline scan and a follow-up scan ``months`` later.

    Args:
        rng: the patient's generator; the baseline uses it exactly as :func:`generate_patient` does, so the baseline
            arrays equal ``generate_patient(rng, config, patient_id)`` for the same generator state.
        config: image size, difficulty, counts; :class:`PhantomConfig` defaults if None.
        patient_id: e.g. ``"P00001"``; lesion ids are ``f"{patient_id}_baseline_L01"`` / ``..._followup_L01``.
        months: months between the scans; drawn from :data:`FOLLOWUP_MONTHS` if None.
        flare: force the flare mode on/off (a flare patient's course is "responding", no new lesions); drawn if None.
            The draws are made whatever the overrides, so overriding one leaves the others unchanged.

    Returns:
        The :class:`FollowupPair`.
    """
    config = config or PhantomConfig()
    # the follow-up's own generator, spawned before the baseline draws (spawning leaves ``rng``'s stream as it is), so
    # the course, the fates and the follow-up pose do not depend on how many numbers the baseline's noise took
    rng_followup = rng.spawn(1)[0]
    state = sample_patient_state(rng, config)
    baseline, base_masks, base_records = render_patient(
        rng, config, state, patient_id, lesion_prefix=f"{patient_id}_baseline_L"
    )
    profile = state.profile

    # patient-level draws, always in this order
    month_keys = list(FOLLOWUP_MONTHS)
    drawn_months = month_keys[int(rng_followup.choice(len(month_keys), p=list(FOLLOWUP_MONTHS.values())))]
    u_course, u_flare, u_new = rng_followup.random(3)
    base_day = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng_followup.integers(0, 3650)))
    day_jitter = int(rng_followup.integers(-7, 8))
    months = drawn_months if months is None else int(months)
    if months < 1:
        raise ValueError(f"months must be at least 1, got {months}")
    course = _course(profile, u_course, u_new)
    if flare is None:
        flare = course == "responding" and months <= FLARE_MAX_MONTHS and u_flare < FLARE_RATE
    elif flare:
        course = "responding"
    flare = bool(flare)
    followup_day = base_day + dt.timedelta(days=max(round(months * 30.44) + day_jitter, 1))

    template = reference_skeleton()
    geometry = followup_geometry(rng_followup, state.geometry, config.view_shape, config.pixel_mm)
    fresh = sample_uptake(rng_followup, profile, len(template.bone_names))
    uptake = Uptake(
        state.uptake.bone_scale, fresh.kidney, fresh.bladder, state.uptake.soft_level, state.uptake.bone_factor
    )

    # baseline lesions: persist (changed) or resolve
    persisting: list[Lesion] = []
    kept: list[int] = []  # baseline index of each persisting lesion
    for k, les in enumerate(state.lesions):
        resolve, area_median, area_sd, int_median, int_sd = _change_model(les, "flare" if flare else course)
        u_resolve = rng_followup.random()
        z = rng_followup.standard_normal(2)
        if u_resolve < resolve:
            continue
        area = 1.0 if les.whole_bone else area_median * math.exp(area_sd * z[0])
        new = replace(les, size_mm=float(np.clip(les.size_mm * math.sqrt(area), 6.0, 60.0)))
        intensity = les.intensity * int_median * math.exp(int_sd * z[1])
        new.intensity = float(np.clip(intensity, 0.1, 0.9) if les.cold else np.clip(intensity, 1.3, 12.0))
        persisting.append(new)
        kept.append(k)
    _keep_apart(persisting, [state.lesions[k] for k in kept], template)

    # new metastases
    count = 0
    if course in ("progressing", "new_metastases") and not flare:
        mean, dispersion = NEW_LESIONS_PROGRESSING if course == "progressing" else NEW_LESIONS_FIRST_METASTASES
        count = 1 + min(
            int(rng_followup.negative_binomial(dispersion, dispersion / (dispersion + mean))), NEW_LESIONS_MAX - 1
        )
    new_lesions = sample_new_metastases(rng_followup, profile, template, persisting, count) if count else []
    if course == "new_metastases" and not new_lesions:
        course = "unchanged"
    lesions = persisting + new_lesions
    followup_profile = replace(profile, metastatic=profile.metastatic or bool(new_lesions))
    describe_scene(lesions, followup_profile.superscan)
    for les in persisting:  # a lesion keeps its label; what an image-only reader could know is recomputed
        les.logit = malignancy_logit(les)
        les.p_malignant = float(1.0 / (1.0 + math.exp(-les.logit / config.difficulty)))
    assign_labels(rng_followup, new_lesions, config.difficulty)

    fu_state = PatientState(followup_profile, geometry, lesions, uptake)
    followup, fu_masks, fu_records = render_patient(
        rng_followup, config, fu_state, patient_id, lesion_prefix=f"{patient_id}_followup_L"
    )

    table: list[dict[str, Any]] = []
    persisted = {k: j for j, k in enumerate(kept)}
    for k, les in enumerate(state.lesions):
        j = persisted.get(k)
        table.append(_fate(les, base_records, k, None if j is None else lesions[j], fu_records, j))
    for j in range(len(persisting), len(lesions)):
        table.append(_fate(lesions[j], base_records, None, lesions[j], fu_records, j))

    return FollowupPair(
        patient_id=patient_id,
        baseline=baseline,
        followup=followup,
        baseline_masks=base_masks,
        followup_masks=fu_masks,
        baseline_records=base_records,
        followup_records=fu_records,
        lesions=table,
        months=months,
        flare=flare,
        course=course,
        baseline_date=base_day.strftime("%Y%m%d"),
        followup_date=followup_day.strftime("%Y%m%d"),
        baseline_state=state,
        followup_state=fu_state,
        info={"tumor_type": profile.tumor_type, "latent_metastatic": profile.metastatic},
    )


def _course(profile: PatientProfile, u_course: float, u_new: float) -> str:
    """The patient's course between the scans from two uniform draws."""
    if profile.metastatic:
        progressing = PROGRESSING_RATE[profile.tumor_type]
        if u_course < progressing:
            return "progressing"
        return "responding" if u_course < progressing + RESPONDING_RATE else "stable"
    return "new_metastases" if u_new < NEW_METASTASES_RATE[profile.tumor_type] else "unchanged"


def _change_model(lesion: Lesion, course: str) -> tuple[float, float, float, float, float]:
    """(P(resolve), area median, area log-SD, intensity median, intensity log-SD) of one baseline lesion."""
    if lesion.pattern in METASTASIS_PATTERNS:
        return METASTASIS_CHANGE.get(course, METASTASIS_CHANGE["stable"])
    if lesion.pattern in TRAUMA_PATTERNS:
        return TRAUMA_CHANGE
    return BENIGN_CHANGE


def _keep_apart(lesions: list[Lesion], baseline: list[Lesion], template: Any) -> None:
    """Undo the growth of persisting lesions that would come closer than ``MIN_GAP_MM`` to another (in place).

    ``baseline[i]`` is ``lesions[i]`` at baseline, where every pair fitted; a lesion that clashes goes back to at most
    its baseline size, so the loop ends with every pair apart.
    """
    blocked = [template.points[template.points_of(les.whole_bone)] for les in lesions if les.whole_bone]
    blocked_points = np.vstack(blocked) if blocked else np.zeros((0, 2), np.float32)
    for _ in range(len(lesions) + 1):
        clash = set()
        for i, a in enumerate(lesions):
            if a.whole_bone:
                continue
            if len(blocked_points):
                d = np.hypot(*(blocked_points - np.asarray(a.centre, np.float32)).T)
                if d.min() < a.reach_mm + MIN_GAP_MM:
                    clash.add(i)
            for j in range(i + 1, len(lesions)):
                b = lesions[j]
                if not b.whole_bone and math.dist(a.centre, b.centre) - a.reach_mm - b.reach_mm < MIN_GAP_MM:
                    clash.update((i, j))
        if not clash:
            return
        for i in clash:
            lesions[i].size_mm = min(lesions[i].size_mm, baseline[i].size_mm)


def _fate(
    lesion: Lesion,
    base_records: list[dict[str, Any]],
    base_index: int | None,
    followup_lesion: Lesion | None,
    fu_records: list[dict[str, Any]],
    fu_index: int | None,
) -> dict[str, Any]:
    """One lesion of the pair: fate, indices, ids, label, region and (persistent) the simulated changes."""
    base = base_records[base_index] if base_index is not None else None
    fu = fu_records[fu_index] if fu_index is not None else None
    persistent = base is not None and fu is not None and followup_lesion is not None
    fate = "persistent" if persistent else "resolved" if fu is None else "new"
    source = base if base is not None else fu
    assert source is not None
    return {
        "fate": fate,
        "baseline_index": base_index,
        "followup_index": fu_index,
        "baseline_lesion_id": base["lesion_id"] if base else None,
        "followup_lesion_id": fu["lesion_id"] if fu else None,
        "label": int(source["label"]),
        "pattern": lesion.pattern,
        "area_change": round((followup_lesion.size_mm / lesion.size_mm) ** 2, 3) if persistent else None,
        "intensity_change": round(followup_lesion.intensity / lesion.intensity, 3) if persistent else None,
        "region": (fu or base or {})["region"],
    }


def followup_geometry(
    rng: np.random.Generator, base: BodyGeometry, view_shape: tuple[int, int], pixel_mm: tuple[float, float]
) -> BodyGeometry:
    """The patient's body at the follow-up: same height, build within a few %, a new pose and place on the table.

    Arms and legs are drawn afresh in the ranges of :func:`bundle.phantom.anatomy.sample_body_geometry` (the same arm
    pose, at the sides or on the abdomen, with probability :data:`SAME_POSE_RATE`); the arms are brought in until the
    body's soft tissue stays off the left and right edges of a view of shape ``view_shape`` (H, W/2).
    """
    fov_h, fov_w = view_shape[0] * pixel_mm[0], view_shape[1] * pixel_mm[1]
    build = base.build * float(np.exp(rng.normal(0.0, BUILD_CHANGE_SD)))
    same = rng.random() < SAME_POSE_RATE
    hands_on_abdomen = (base.pose == "hands_on_abdomen") == same
    abduction, flexion = draw_arm_pose(rng, hands_on_abdomen)
    top_max = fov_h - base.height_mm - 4 * pixel_mm[0]
    top = float(np.clip(fov_h * rng.uniform(0.035, 0.075), 2 * pixel_mm[0], top_max))
    fill = min(float(np.exp(rng.normal(0.0, 0.3))), 1.7)
    geometry = replace(
        base,
        build=build,
        thickness_factor=base.thickness_factor * (build / base.build) ** 1.5,
        arm_abduction=(float(abduction[0]), float(abduction[1])),
        elbow_flexion=(float(flexion[0]), float(flexion[1])),
        **draw_posture(rng, fov_w),
        top_mm=top,
        bladder_fill=(fill**0.4, fill**0.6),
        pose="hands_on_abdomen" if hands_on_abdomen else "arms_at_sides",
    )
    for _ in range(30):
        columns = (render_soft_tissue(geometry, view_shape) > 0).any(axis=0)
        if not (columns[:2].any() or columns[-2:].any()):
            break
        abd = geometry.arm_abduction
        if min(abd) > -6:
            geometry = replace(geometry, arm_abduction=(abd[0] - 1.5, abd[1] - 1.5))
        else:
            geometry = replace(geometry, build=geometry.build * 0.98, centre_x_mm=fov_w / 2)
    return geometry


# ----------------------------------------------------------------------------------------------------------------
# Writing pairs
# ----------------------------------------------------------------------------------------------------------------


def _make_pair(job: PatientJob) -> dict[str, Any]:
    """Simulate and write one patient's pair; returns its ``pairs.json`` entry (without the fold)."""
    pid = patient_id(job.index)
    pair = generate_followup_pair(patient_rng(job.seed, job.index), job.config, pid)
    writer = WRITERS[job.fmt]
    root = Path(job.root)
    paths: dict[str, Any] = {}
    for name, scan, masks, records in (
        ("baseline", pair.baseline, pair.baseline_masks, pair.baseline_records),
        ("followup", pair.followup, pair.followup_masks, pair.followup_records),
    ):
        image_rel = f"images/{pid}_{name}{writer.extension}"
        writer.write_image(root / image_rel, scan)
        regions_rel = f"regions/{pid}_{name}{writer.labels_extension}"
        writer.save_labels(root / regions_rel, scan.regions)
        mask_rels = []
        for mask, record in zip(masks, records, strict=True):
            mask_rel = f"masks/{record['lesion_id']}{writer.extension}"
            writer.write_mask(root / mask_rel, mask, scan)
            mask_rels.append(mask_rel)
        paths[name] = (image_rel, regions_rel, mask_rels)
    lesions = []
    for les in pair.lesions:
        entry = {k: v for k, v in les.items() if k not in ("baseline_index", "followup_index")}
        b, f = les["baseline_index"], les["followup_index"]
        entry["baseline_mask"] = paths["baseline"][2][b] if b is not None else None
        entry["followup_mask"] = paths["followup"][2][f] if f is not None else None
        lesions.append(entry)
    return {
        "patient_id": pid,
        "baseline": paths["baseline"][0],
        "followup": paths["followup"][0],
        "baseline_regions": paths["baseline"][1],
        "followup_regions": paths["followup"][1],
        "baseline_date": pair.baseline_date,
        "followup_date": pair.followup_date,
        "months": pair.months,
        "flare": pair.flare,
        "course": pair.course,
        "tumor_type": pair.info["tumor_type"],
        "bsi_baseline": pair.baseline.info["bsi"],
        "bsi_followup": pair.followup.info["bsi"],
        "counts_baseline": pair.baseline.info["counts_anterior"] + pair.baseline.info["counts_posterior"],
        "counts_followup": pair.followup.info["counts_anterior"] + pair.followup.info["counts_posterior"],
        "new_lesions": pair.new_lesions,
        "progression": pair.progression,
        "lesions": lesions,
    }


def check_pairs_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Validate the target folder of :func:`generate_pairs` before any work is done (a non-empty folder is replaced
    only with ``overwrite`` and only when it is a pairs data set: ``pairs.json`` named :data:`PAIRS_NAME`).

    Raises:
        OutputDirectoryError: see :func:`bundle.phantom.dataset.check_output_dir`.
    """
    return check_output_dir(out_dir, overwrite, "pairs.json", PAIRS_NAME)


def pair_folds(num_pairs: int, num_folds: int, seed: int) -> list[int]:
    """Fold of each pair (one pair per patient): a seeded permutation of the patients dealt round-robin."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31 - 1,))).permutation(num_pairs)
    folds = np.empty(num_pairs, int)
    folds[order] = np.arange(num_pairs) % num_folds
    return [int(f) for f in folds]


def generate_pairs(
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
    """Simulate ``patients`` follow-up pairs and write images, masks, region maps and ``pairs.json`` under ``out_dir``.

    All-or-nothing like :func:`bundle.phantom.dataset.generate_dataset`: written to a temporary folder beside
    ``out_dir``, renamed into place at the end. Patient ``k``'s baseline is the scan ``k`` of
    ``generate_dataset(..., seed)`` (same generator), with scan-qualified lesion ids.

    Returns:
        The ``pairs.json`` content (docs/data.md, "Follow-up pairs").

    Raises:
        OutputDirectoryError: see :func:`check_pairs_dir`.
        ValueError: bad ``patients``, ``num_folds`` or ``fmt``.
    """
    config = config or PhantomConfig()
    check_generation_args(fmt, num_folds, patients)
    out = check_pairs_dir(out_dir, overwrite)
    with staging_folder(out, overwrite, ("images", "masks", "regions"), "pairs.json", PAIRS_NAME) as tmp:
        jobs = [PatientJob(i, seed, config, fmt, str(tmp)) for i in range(patients)]
        results: Iterator = run_patient_jobs(_make_pair, jobs, workers, chunksize=2)
        if progress is not None:
            results = progress(results)
        pairs = list(results)
        for pair, fold in zip(pairs, pair_folds(len(pairs), num_folds, seed), strict=True):
            pair["fold"] = fold
        pairs = [{"patient_id": p["patient_id"], "fold": p["fold"], **p} for p in pairs]
        content = {
            "name": PAIRS_NAME,
            "description": (
                "Synthetic baseline and follow-up whole-body bone scans of the same patients (anterior | mirrored "
                "posterior), every lesion's fate (persistent / resolved / new) and each scan's true BSI "
                "(docs/phantom.md, Follow-up pairs)."
            ),
            "generator": {**generator_metadata(config, seed, patients, fmt), "followup_version": FOLLOWUP_VERSION},
            "num_folds": num_folds,
            "progression_rule": f"new_lesions >= {PROGRESSION_MIN_NEW_LESIONS} (PCWG2)",
            "statistics": pairs_statistics(pairs),
            "pairs": pairs,
        }
        atomic_write_text(tmp / "pairs.json", json.dumps(content, indent=1) + "\n")
    return content


def pairs_statistics(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over the pairs: courses, flare, progression, lesion fates."""
    fates = [les["fate"] for p in pairs for les in p["lesions"]]
    courses = [p["course"] for p in pairs]
    return {
        "pairs": len(pairs),
        "courses": {c: courses.count(c) for c in sorted(set(courses))},
        "flare": sum(p["flare"] for p in pairs),
        "progression": sum(p["progression"] for p in pairs),
        "with_new_lesions": sum(p["new_lesions"] > 0 for p in pairs),
        "lesions": {f: fates.count(f) for f in ("persistent", "resolved", "new")},
        "months": {str(m): sum(p["months"] == m for p in pairs) for m in sorted({p["months"] for p in pairs})},
    }


def format_pairs_summary(statistics: dict[str, Any]) -> str:
    """One line per figure, printed by the CLI."""
    s = statistics
    courses = ", ".join(f"{c} {n}" for c, n in s["courses"].items())
    fates = ", ".join(f"{f} {n}" for f, n in s["lesions"].items())
    return "\n".join(
        [
            f"pairs: {s['pairs']}   courses: {courses}",
            f"flare: {s['flare']}   with new lesions: {s['with_new_lesions']}   progression (>= 2 new): "
            f"{s['progression']}",
            f"lesions: {fates}   months: {s['months']}",
        ]
    )


PAIR_KEYS = {
    "patient_id": str, "fold": int, "baseline": str, "followup": str, "baseline_regions": str,
    "followup_regions": str, "baseline_date": str, "followup_date": str, "months": int, "flare": bool,
    "course": str, "tumor_type": str, "bsi_baseline": float, "bsi_followup": float, "new_lesions": int,
    "progression": bool, "lesions": list,
}  # fmt: skip


def check_pairs(root: str | os.PathLike) -> list[str]:
    """Problems of a written pairs data set (``root/pairs.json`` and the files it names); empty when valid."""
    root = Path(root)
    try:
        content = json.loads((root / "pairs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [f"pairs.json cannot be read: {err}"]
    problems: list[str] = []
    if content.get("name") != PAIRS_NAME:
        problems.append(f"name is {content.get('name')!r}, not {PAIRS_NAME!r}")
    for n, pair in enumerate(content.get("pairs", [])):
        where = f"pair {n} ({pair.get('patient_id')})"
        for key, kind in PAIR_KEYS.items():
            value = pair.get(key)
            if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
                problems.append(f"{where}: {key} is {value!r}, expected {kind.__name__}")
        if problems:
            continue
        for key in ("baseline", "followup", "baseline_regions", "followup_regions"):
            if not (root / pair[key]).is_file():
                problems.append(f"{where}: {key} file {pair[key]} missing")
        if not pair["followup_date"] > pair["baseline_date"]:
            problems.append(f"{where}: follow-up date {pair['followup_date']} not after {pair['baseline_date']}")
        new = 0
        for les in pair["lesions"]:
            fate = les.get("fate")
            has = (les.get("baseline_mask") is not None, les.get("followup_mask") is not None)
            expected = {"persistent": (True, True), "resolved": (True, False), "new": (False, True)}.get(fate)
            if expected is None or has != expected:
                problems.append(f"{where}: lesion {les} has fate {fate!r} and masks {has}")
            for mask in les.get("baseline_mask"), les.get("followup_mask"):
                if mask is not None and not (root / mask).is_file():
                    problems.append(f"{where}: mask {mask} missing")
            new += fate == "new"
        if pair["new_lesions"] != new:
            problems.append(f"{where}: new_lesions {pair['new_lesions']} but {new} lesions are new")
        if pair["progression"] != (new >= PROGRESSION_MIN_NEW_LESIONS):
            problems.append(f"{where}: progression {pair['progression']} with {new} new lesions")
        if pair["flare"] and new:
            problems.append(f"{where}: a flare pair has {new} new lesions")
    return problems
