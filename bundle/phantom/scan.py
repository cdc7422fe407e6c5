"""One patient's whole-body bone scan: anatomy + lesions → activity → camera blur → counts → Poisson noise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage

from bundle.phantom.anatomy import (
    KIND_BLADDER,
    KIND_BONE,
    KIND_KIDNEY,
    PART_INDEX,
    SAMPLE_SPACING_MM,
    SIDES,
    BodyGeometry,
    attenuation,
    map_angle,
    map_point,
    part_thickness,
    reference_skeleton,
    render_soft_tissue,
    sample_body_geometry,
    splat,
    transform_points,
)
from bundle.phantom.lesions import Lesion, PatientProfile, assign_labels, sample_lesions, sample_patient_profile
from bundle.phantom.regions import lesion_region, render_region_map, true_bsi

REFERENCE_PIXEL_MM = 2.05  # pixel size at 1024 rows x 256 columns per view (a 525 mm wide camera field of view)

# Relative activity: bone per unit area (template uptakes ~0.2-1.0), soft tissue per mm of effective thickness,
# kidneys and bladder per unit area at full thickness. Calibrated against the real scan in bone-scan-appearance.md.
SOFT_TISSUE_PER_MM = 0.0045
KIDNEY_UPTAKE = 0.32
BLADDER_UPTAKE = 3.4
BONE_VARIATION_SD = 0.08  # per-bone log-normal uptake variation between patients
# A lesion's ``intensity`` is its peak uptake relative to normal vertebral bone (the lesion-to-normal-bone ratio).
NORMAL_BONE_UPTAKE = 0.9
MIN_HOTTEST_COUNTS = 115.0  # expected counts of the hottest pixel are raised to at least this (a slower scan) ...
MAX_COUNTS_PER_VIEW = 3.9e6  # ... as long as no view exceeds this total


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the phantom that are the same for every patient of a data set.

    Args:
        height: image rows (head → feet), default 1024.
        width: image columns of the two views side by side, default 512 (must be even).
        difficulty: divides the malignancy logit; 1 is the calibrated default, larger is harder (p nearer 0.5).
        counts_per_view: range (min, max) of the total counts drawn for the anterior view, default 2.0–3.7 million.
        blur_fwhm_mm: gamma-camera resolution (Gaussian FWHM), default 9 mm (≈ 4.4 px at 1024 rows).
    """

    height: int = 1024
    width: int = 512
    difficulty: float = 1.0
    counts_per_view: tuple[float, float] = (2.0e6, 3.7e6)
    blur_fwhm_mm: float = 9.0

    def __post_init__(self) -> None:
        if self.height < 256 or self.width < 128 or self.width % 2:
            raise ValueError(f"image must be at least 256 x 128 with an even width, got {self.height} x {self.width}")
        if not self.difficulty > 0:
            raise ValueError(f"difficulty must be > 0, got {self.difficulty}")
        lo, hi = self.counts_per_view
        if not 0 < lo <= hi:
            raise ValueError(f"counts_per_view must be an increasing positive range, got {self.counts_per_view}")

    @property
    def view_shape(self) -> tuple[int, int]:
        """(H, W/2): the shape of one view."""
        return self.height, self.width // 2

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """(row, column) pixel size in mm; the field of view is the same whatever the matrix size."""
        return REFERENCE_PIXEL_MM * 1024 / self.height, REFERENCE_PIXEL_MM * 256 / (self.width // 2)


@dataclass(frozen=True)
class PhantomScan:
    """A simulated whole-body scan: the two views as acquired and what the simulation knows about them.

    Attributes:
        patient_id: e.g. ``"P00001"``.
        anterior: anterior view as acquired, int16 counts, shape (H, W/2), patient's right on the image left.
        posterior: posterior view as acquired (NOT mirrored: patient's right on the image right), shape (H, W/2).
        expected: noiseless expected counts in the stored layout, float32, shape (H, W).
        body_mask: pixels inside the body outline (the noiseless body model > 0), bool, shape (H, W).
        bladder_mask: pixels where the bladder dominates the expected counts, bool, shape (H, W).
        info: patient-level description (tumour type, pose, counts per view, injection site, true BSI, ...).
        regions: skeletal-region labels (:mod:`bundle.data.regions`), int16 shape (H, W), the same in both halves;
            bladder and injection site drawn over bone.
        anatomy: the bone and kidney labels alone, int16 (H, W): what the true BSI and each lesion's region use.
    """

    patient_id: str
    anterior: np.ndarray
    posterior: np.ndarray
    expected: np.ndarray
    body_mask: np.ndarray
    bladder_mask: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    regions: np.ndarray | None = None
    anatomy: np.ndarray | None = None

    @cached_property
    def image(self) -> np.ndarray:
        """The stored layout, int16 shape (H, W): anterior left, posterior mirrored into the right half."""
        return np.hstack([self.anterior, self.posterior[:, ::-1]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.image if dtype is None else self.image.astype(dtype)


def generate_patient(
    rng: np.random.Generator, config: PhantomConfig | None = None, patient_id: str = "P00001"
) -> tuple[PhantomScan, np.ndarray, list[dict[str, Any]]]:
    """Simulate one patient's scan, its lesion masks and its lesion records.

    Args:
        rng: the patient's own generator (see :func:`patient_rng`); the result is a pure function of its state.
        config: image size, difficulty, counts; defaults to :class:`PhantomConfig`.
        patient_id: used for the lesion ids ``f"{patient_id}_L{k:02d}"``.

    Returns:
        ``(scan, masks, records)``: the :class:`PhantomScan`; uint8 masks of shape (num_lesions, H, W) in the stored
        layout (each lesion's footprint in both halves); one dict per lesion (label, p_malignant, features).
    """
    config = config or PhantomConfig()
    state = sample_patient_state(rng, config)
    return render_patient(rng, config, state, patient_id)


@dataclass(frozen=True)
class Uptake:
    """A patient's tracer distribution apart from the lesions.

    Attributes:
        bone_scale: multiplies all bone uptake (> 1 in a superscan).
        kidney, bladder: activity of the kidneys and the bladder per unit area at full thickness.
        soft_level: soft-tissue activity per mm of effective thickness.
        bone_factor: per-bone log-normal uptake factor, float32 shape (num_template_bones,).
    """

    bone_scale: float
    kidney: float
    bladder: float
    soft_level: float
    bone_factor: np.ndarray


def sample_uptake(rng: np.random.Generator, profile: PatientProfile, num_bones: int) -> Uptake:
    """Draw a patient's :class:`Uptake` (``num_bones`` per-bone factors)."""
    bone_scale = float(rng.uniform(2.2, 3.0)) if profile.superscan else 1.0
    kidney = KIDNEY_UPTAKE * float(np.exp(rng.normal(0, 0.3))) * (0.15 if profile.superscan else 1.0)
    bladder = BLADDER_UPTAKE * float(np.exp(rng.normal(0, 0.35))) * (0.35 if profile.superscan else 1.0)
    if rng.random() < 0.08:  # just voided: a small faint bladder
        bladder *= 0.25
    soft_level = SOFT_TISSUE_PER_MM * float(np.exp(rng.normal(0, 0.15)))
    bone_factor = np.exp(rng.normal(0, BONE_VARIATION_SD, num_bones)).astype(np.float32)
    return Uptake(bone_scale, kidney, bladder, soft_level, bone_factor)


@dataclass
class PatientState:
    """What is drawn about a patient before rendering: profile, body geometry, labelled lesions, uptake."""

    profile: PatientProfile
    geometry: BodyGeometry
    lesions: list[Lesion]
    uptake: Uptake


def sample_patient_state(rng: np.random.Generator, config: PhantomConfig) -> PatientState:
    """The first stages of :func:`generate_patient`: profile, geometry, lesions and their labels, uptake."""
    template = reference_skeleton()
    profile = sample_patient_profile(rng)
    geometry = sample_body_geometry(rng, config.view_shape, config.pixel_mm)
    lesions = sample_lesions(rng, profile, template)
    assign_labels(rng, lesions, config.difficulty)
    uptake = sample_uptake(rng, profile, len(template.bone_names))
    return PatientState(profile, geometry, lesions, uptake)


def render_patient(
    rng: np.random.Generator,
    config: PhantomConfig,
    state: PatientState,
    patient_id: str,
    lesion_prefix: str | None = None,
) -> tuple[PhantomScan, np.ndarray, list[dict[str, Any]]]:
    """The last stages of :func:`generate_patient`: render ``state`` (hot spots, counts, noise), masks, records.

    Args:
        rng: draws the injection site, the total counts and the Poisson noise.
        lesion_prefix: lesion ids are ``f"{lesion_prefix}{k:02d}"``; default ``f"{patient_id}_L"``.

    Returns:
        ``(scan, masks, records)`` as :func:`generate_patient`; masks uint8 (num_lesions, H, W).
    """
    profile, geometry, lesions = state.profile, state.geometry, state.lesions
    prefix = f"{patient_id}_L" if lesion_prefix is None else lesion_prefix
    renderer = _Renderer(rng, config, geometry, profile, state.uptake)
    footprints = [renderer.add_lesion(les) for les in lesions]
    expected, injection = renderer.finish()
    counts = _poisson(rng, expected)

    h, wv = config.view_shape
    body = renderer.soft > 0
    masks = np.zeros((len(lesions), h, 2 * wv), np.uint8)
    records = []
    claimed = np.zeros((h, wv), bool)  # a pixel belongs to one lesion (the first drawn)
    for k, (les, fp) in enumerate(zip(lesions, footprints, strict=True)):
        fp &= body
        if (fp & ~claimed).any():
            fp &= ~claimed
        claimed |= fp
        masks[k, :, :wv] = fp
        masks[k, :, wv:] = fp
        records.append(_lesion_record(les, fp, f"{prefix}{k + 1:02d}", renderer.size_scale))
    anatomy, region_map = render_region_map(
        renderer.points,
        renderer.template.bone,
        renderer.template.bone_names,
        renderer.point_area,
        config.view_shape,
        config.pixel_mm,
        renderer.bladder_region,
        injection,
    )
    anatomy, region_map = np.hstack([anatomy, anatomy]), np.hstack([region_map, region_map])
    for record, mask in zip(records, masks, strict=True):
        record["region"] = lesion_region(mask, anatomy)
    bsi, regional = true_bsi(masks, [r["label"] for r in records], anatomy)
    info = {
        "tumor_type": profile.tumor_type,
        "latent_metastatic": profile.metastatic,
        "superscan": profile.superscan,
        "pose": geometry.pose,
        "height_mm": round(geometry.height_mm, 1),
        "counts_anterior": int(counts[0].sum()),
        "counts_posterior": int(counts[1].sum()),
        "injection_site": injection,
        "num_lesions": len(lesions),
        "bsi": round(bsi, 4),
        "bsi_regional": {name: round(value, 4) for name, value in regional.items() if value > 0},
    }
    scan = PhantomScan(
        patient_id=patient_id,
        anterior=counts[0],
        posterior=np.ascontiguousarray(counts[1][:, ::-1]),
        expected=np.hstack([expected[0], expected[1]]),
        body_mask=np.hstack([body, body]),
        bladder_mask=np.hstack([renderer.bladder_region, renderer.bladder_region]),
        info=info,
        regions=region_map,
        anatomy=anatomy,
    )
    return scan, masks, records


def camera_blur(activity: np.ndarray, config: PhantomConfig, bounds: np.ndarray | None = None) -> np.ndarray:
    """Gamma-camera resolution: a Gaussian of ``config.blur_fwhm_mm`` FWHM over each view.

    Args:
        activity: shape (C, H, W/2), one channel per view.
        config: gives the FWHM and the pixel size.
        bounds: optional (H, W/2) array whose non-zero pixels bound the activity (the body); the filter then runs
            only over their bounding box plus the kernel's reach, which gives the same result faster.

    Returns:
        float32 array of the same shape as ``activity``.
    """
    sigma_mm = config.blur_fwhm_mm / (2 * math.sqrt(2 * math.log(2)))
    px = config.pixel_mm
    sigma = (sigma_mm / px[0], sigma_mm / px[1])
    truncate = 3.5
    box: tuple[slice, slice] = (slice(None), slice(None))
    if bounds is not None and bounds.any():
        rows, cols = np.flatnonzero(bounds.any(axis=1)), np.flatnonzero(bounds.any(axis=0))
        reach_r, reach_c = int(truncate * sigma[0]) + 8, int(truncate * sigma[1]) + 8
        box = (
            slice(max(rows[0] - reach_r, 0), rows[-1] + reach_r + 1),
            slice(max(cols[0] - reach_c, 0), cols[-1] + reach_c + 1),
        )
    blurred = np.zeros(activity.shape, np.float32)
    blurred[:, box[0], box[1]] = ndimage.gaussian_filter(
        activity[:, box[0], box[1]].astype(np.float32, copy=False), (0, *sigma), truncate=truncate, mode="constant"
    )
    return blurred


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of patient ``index`` (0-based) of a data set seeded with ``seed``; independent of its size."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _poisson(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Poisson counts (int16) of the expected counts (C, H, W); pixels with zero expectation stay exactly 0."""
    counts = np.zeros(expected.shape, np.int16)
    live = expected > 0
    counts[live] = np.minimum(rng.poisson(expected[live]), np.iinfo(np.int16).max)
    return counts


class _Renderer:
    """Accumulates the pre-blur activity of both views (anterior layout) for one patient."""

    def __init__(
        self,
        rng: np.random.Generator,
        config: PhantomConfig,
        geometry: BodyGeometry,
        profile: PatientProfile,
        uptake: Uptake,
    ) -> None:
        self.rng, self.config, self.geometry = rng, config, geometry
        self.template = t = reference_skeleton()
        self.matrices = geometry.part_matrices()
        self.pixel_area = config.pixel_mm[0] * config.pixel_mm[1]
        sx, sy = geometry.scale
        self.size_scale = math.sqrt(sx * sy)

        self.bone_scale = uptake.bone_scale
        self.soft_level = uptake.soft_level
        self.bone_factor = uptake.bone_factor
        kind_scale = np.zeros(3, np.float32)
        kind_scale[[KIND_BONE, KIND_KIDNEY, KIND_BLADDER]] = (self.bone_scale, uptake.kidney, uptake.bladder)
        self.part_thickness = part_thickness(geometry)
        self.att = attenuation(t.depth, self.part_thickness[t.part])
        self.point_area = SAMPLE_SPACING_MM**2 * sx * sy  # mm^2 of body that one template point stands for
        self.weight = t.uptake * kind_scale[t.kind] * self.bone_factor[t.bone] * self.point_area
        self.points = transform_points(t, self.matrices)
        self.soft = render_soft_tissue(geometry, config.view_shape)
        self.lesion_activity = np.zeros((2, *config.view_shape), np.float32)
        self.cold_factor = np.ones((2, *config.view_shape), np.float32)

    def site_level(self, lesion: Lesion) -> tuple[float, float]:
        """Pre-blur per-pixel activity of normal vertebral bone at the lesion's depth, (anterior, posterior)."""
        ant, post = attenuation(np.float32(lesion.depth), self.part_thickness[lesion.part])
        level = NORMAL_BONE_UPTAKE * self.bone_scale * self.pixel_area
        return level * float(ant), level * float(post)

    def add_lesion(self, lesion: Lesion) -> np.ndarray:
        """Draw one lesion into the activity; returns its footprint, bool (H, W/2)."""
        shape = self.config.view_shape
        footprint = np.zeros(shape, bool)
        if lesion.whole_bone:
            # the whole bone uniformly hot: ``intensity`` times normal vertebral uptake
            idx = self.template.points_of(lesion.whole_bone)
            self.weight[idx] = lesion.intensity * NORMAL_BONE_UPTAKE * self.bone_scale * self.point_area
            px = self.config.pixel_mm
            rows = np.clip((self.points[idx, 1] / px[0]).astype(np.intp), 0, shape[0] - 1)
            cols = np.clip((self.points[idx, 0] / px[1]).astype(np.intp), 0, shape[1] - 1)
            footprint[rows, cols] = True
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            box = (slice(max(r0 - 2, 0), r1 + 2), slice(max(c0 - 2, 0), c1 + 2))
            footprint[box] = ndimage.binary_dilation(ndimage.binary_closing(footprint[box]), iterations=1)
            return footprint

        centre = map_point(self.matrices, lesion.part, lesion.centre)
        axis = map_angle(self.matrices, lesion.part, lesion.axis)
        radius = lesion.size_mm / 2 * self.size_scale
        a, b = radius * math.sqrt(lesion.aspect), radius / math.sqrt(lesion.aspect)
        reach = a * (1 + 0.5 * lesion.irregularity) * 1.6 + 2 * max(self.config.pixel_mm)
        where, xs, ys = _box(centre, reach, shape, self.config.pixel_mm)
        if where is None:
            return footprint
        c, s = math.cos(axis), math.sin(axis)
        u = (xs - centre[0]) * c + (ys - centre[1]) * s
        v = -(xs - centre[0]) * s + (ys - centre[1]) * c
        theta = np.arctan2(v / b, u / a)
        boundary = 1.0 + lesion.irregularity * _harmonics(theta, lesion.lobes)
        rho = np.hypot(u / a, v / b) / boundary
        profile = np.exp(-(rho**4)).astype(np.float32)
        level_ant, level_post = self.site_level(lesion)
        if lesion.cold:
            depth = 1.0 - lesion.intensity
            self.cold_factor[:, where[0], where[1]] *= 1.0 - depth * profile
            rim = np.exp(-(((rho - 1.15) / 0.18) ** 2)).astype(np.float32) * 0.5
            self.lesion_activity[0][where] += level_ant * rim
            self.lesion_activity[1][where] += level_post * rim
        else:
            excess = lesion.intensity - 1.0
            self.lesion_activity[0][where] += excess * level_ant * profile
            self.lesion_activity[1][where] += excess * level_post * profile
        inside = self.soft[where] > 0
        outline = (rho <= 1.0) & inside
        if not outline.any():  # smaller than a pixel (coarse matrices): the pixel nearest the centre
            outline.flat[int(np.argmin(np.where(inside, rho, np.inf)))] = True
        footprint[where] = outline
        return footprint

    def finish(self) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Blur, scale to the drawn total counts; returns the expected counts (2, H, W/2) and the injection site."""
        rng, shape, px = self.rng, self.config.view_shape, self.config.pixel_mm
        weights = np.stack([self.weight * self.att[0], self.weight * self.att[1]])
        activity = splat(self.points, weights, shape, px)
        activity *= self.cold_factor
        activity += self.lesion_activity
        activity += (self.soft_level * self.pixel_area) * self.soft
        self.bladder_region = self._bladder_region(weights[0], activity[0])
        injection = self._hot_spots(activity)

        blurred = camera_blur(activity, self.config, bounds=self.soft)
        np.maximum(blurred, 0, out=blurred)
        lo, hi = self.config.counts_per_view
        total_ant = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        total_post = total_ant * float(rng.uniform(0.92, 1.12))
        totals = np.array([total_ant, min(total_post, 1.05 * hi)], np.float32)
        blurred *= (totals / blurred.sum(axis=(1, 2)))[:, None, None]
        hottest = float(blurred.max())
        if hottest < MIN_HOTTEST_COUNTS:  # a slower scan: more counts, within the per-view ceiling
            blurred *= min(MIN_HOTTEST_COUNTS / hottest, MAX_COUNTS_PER_VIEW / float(totals.max()))
        blurred[blurred < 1e-3] = 0.0  # far tails of the blur: air stays exactly 0
        return blurred, injection

    def _bladder_region(self, anterior_weights: np.ndarray, anterior_activity: np.ndarray) -> np.ndarray:
        """Pixels where the bladder makes more than half the anterior activity (dilated 3 px), bool (H, W/2)."""
        sl = self.template.part_slices[PART_INDEX["bladder"]]
        px, shape = self.config.pixel_mm, self.config.view_shape
        bladder = splat(self.points[sl], anterior_weights[None, sl], shape, px)[0]
        region = np.zeros(shape, bool)
        pts = self.points[sl]
        r0, r1 = int(pts[:, 1].min() / px[0]) - 5, int(pts[:, 1].max() / px[0]) + 6
        c0, c1 = int(pts[:, 0].min() / px[1]) - 5, int(pts[:, 0].max() / px[1]) + 6
        box = (slice(max(r0, 0), min(r1, shape[0])), slice(max(c0, 0), min(c1, shape[1])))
        region[box] = ndimage.binary_dilation(bladder[box] > 0.5 * anterior_activity[box], iterations=3)
        return region

    def _hot_spots(self, activity: np.ndarray) -> dict[str, Any] | None:
        """Injection site (arm/hand) or urine contamination: hot, not a bone lesion, no mask. In place."""
        rng = self.rng
        u = rng.random()
        if u < 0.2:
            side = str(rng.choice(["R", "L"]))
            where_name = str(rng.choice(["antecubital", "wrist", "hand"], p=[0.5, 0.25, 0.25]))
            ref = {"antecubital": (197.0, 668.0), "wrist": (208.0, 880.0), "hand": (206.0, 950.0)}[where_name]
            part = PART_INDEX[f"forearm_{side}"]
            xy = (SIDES[side] * ref[0], ref[1])
            front, back = (1.0, 0.55) if where_name == "antecubital" else (0.6, 1.0)
            kind = "injection_site"
        elif u < 0.23:
            part, xy, where_name, side = PART_INDEX["trunk"], (float(rng.uniform(-40, 40)), 975.0), "perineum", "mid"
            front, back = 1.0, 0.7
            kind = "urine_contamination"
        else:
            return None
        centre = map_point(self.matrices, part, xy)
        sigma = float(rng.uniform(2.5, 5.0))
        peak = float(rng.uniform(2.0, 9.0)) * self.pixel_area
        where, xs, ys = _box(centre, 4 * sigma, self.config.view_shape, self.config.pixel_mm)
        if where is None:
            return None
        blob = peak * np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
        activity[0][where] += front * blob
        activity[1][where] += back * blob
        px = self.config.pixel_mm
        blur_sigma = self.config.blur_fwhm_mm / (2 * math.sqrt(2 * math.log(2)))
        return {
            "kind": kind,
            "where": where_name,
            "side": side,
            "row": int(centre[1] / px[0]),
            "col": int(centre[0] / px[1]),
            # where the blurred blob is above ~5 % of its peak (2.5 sigma of blob and camera blur combined)
            "radius_px": round(2.5 * math.hypot(sigma, blur_sigma) / min(px), 1),
        }


def _harmonics(theta: np.ndarray, lobes: tuple[float, ...]) -> np.ndarray:
    """Relative radius deviation of an irregular outline at polar angle ``theta``."""
    if not lobes:
        return np.zeros_like(theta)
    amps, phases = lobes[:3], lobes[3:]
    return sum(a * np.cos(k * theta + p) for a, k, p in zip(amps, (2, 3, 5), phases, strict=True))


def _box(centre: np.ndarray, reach_mm: float, shape: tuple[int, int], pixel_mm: tuple[float, float]):
    """Pixel window of half-size ``reach_mm`` around ``centre`` (image mm) and its pixel-centre coordinates."""
    r0 = max(int((centre[1] - reach_mm) / pixel_mm[0]), 0)
    r1 = min(int((centre[1] + reach_mm) / pixel_mm[0]) + 1, shape[0])
    c0 = max(int((centre[0] - reach_mm) / pixel_mm[1]), 0)
    c1 = min(int((centre[0] + reach_mm) / pixel_mm[1]) + 1, shape[1])
    if r1 <= r0 or c1 <= c0:
        return None, None, None
    ys = ((np.arange(r0, r1) + 0.5) * pixel_mm[0])[:, None]
    xs = ((np.arange(c0, c1) + 0.5) * pixel_mm[1])[None, :]
    return (slice(r0, r1), slice(c0, c1)), xs, ys


def _lesion_record(lesion: Lesion, footprint: np.ndarray, lesion_id: str, size_scale: float) -> dict[str, Any]:
    """The datalist fields of one lesion (visible features, p_malignant, label)."""
    rows_any, cols_any = np.flatnonzero(footprint.any(axis=1)), np.flatnonzero(footprint.any(axis=0))
    if len(rows_any):
        box = footprint[rows_any[0] : rows_any[-1] + 1, cols_any[0] : cols_any[-1] + 1]
        rr, cc = np.nonzero(box)
        rows, cols = rr + rows_any[0], cc + cols_any[0]
    else:
        rows = cols = np.zeros(0, int)
    area = len(rows)
    return {
        "lesion_id": lesion_id,
        "label": int(lesion.label),
        "p_malignant": round(float(lesion.p_malignant), 6),
        "logit": round(float(lesion.logit), 4),
        "pattern": lesion.pattern,
        "site": lesion.site,
        "site_detail": lesion.site_detail,
        "side": lesion.side,
        "axial": bool(lesion.axial),
        "shape": lesion.shape,
        "size_mm": round(lesion.size_mm * size_scale, 1),
        "diameter_px": round(2 * math.sqrt(area / math.pi), 1),
        "intensity": round(float(lesion.intensity), 3),
        "irregularity": round(float(lesion.irregularity), 3),
        "aspect": round(float(lesion.aspect), 3),
        "cold": bool(lesion.cold),
        "whole_bone": bool(lesion.whole_bone),
        "vertebral_margin": bool(lesion.vertebral_margin),
        "symmetric": bool(lesion.symmetric),
        "rib_line": bool(lesion.rib_line),
        "neighbours": int(lesion.neighbours),
        "lesions_in_image": int(lesion.lesions_in_image),
        "superscan": bool(lesion.superscan),
        "centre_row": round(float(rows.mean())) if area else -1,
        "centre_col": round(float(cols.mean())) if area else -1,
    }
