"""Hot-spot detection on a whole-body bone scan with no lesion outlines: candidate lesions for the classifier.

A classical detector, as the first stage of EXINI boneBSI and BONENAVI (docs/read.md):

1. each view is smoothed lightly (``smooth_fwhm_mm``) and divided by the **local normal-bone level**: a Gaussian-
   weighted mean of the counts over the bone pixels of the region map within ``background_mm``, recomputed once
   without the pixels already above ``threshold`` times it (so a lesion does not raise its own reference);
2. a pixel is hot when that ratio is at least ``threshold``, it lies within ``skeleton_margin_mm`` of bone, and not
   within ``exclusion_margin_mm`` of the kidneys, the bladder or the injection site;
3. connected hot pixels of one view form a component (at least ``min_area_mm2``); a component of the anterior and
   one of the posterior view that overlap, or whose centres lie within ``match_distance_mm``, are one hot spot
   (the stored layout mirrors the posterior view, so both views share the anatomy's coordinates).

A hot spot's mask is the union of its components, drawn in both halves of the stored layout like the lesion masks
the classifier was trained on. Cold (photopenic) lesions and whole-bone involvement are not hot spots: the detector
does not find them (docs/read.md lists what it misses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from bundle.data.regions import NON_BONE_VALUES, bone_mask, dominant_region, region_name

# whole-body field of view of a gamma camera (mm, rows x one view's columns): the pixel size of a file without one
DEFAULT_FIELD_OF_VIEW_MM = (2100.0, 525.0)
VIEW_NAMES = ("ANT", "POST")


def pixel_size_mm(shape: tuple[int, int], spacing: tuple[float, float] | None = None) -> tuple[float, float]:
    """(row, column) pixel size: ``spacing`` when the file gives one (≠ 1 × 1), else the whole-body field of view
    (:data:`DEFAULT_FIELD_OF_VIEW_MM`) over the matrix (``shape`` = (H, W) of both views side by side)."""
    if spacing is not None and tuple(float(s) for s in spacing) != (1.0, 1.0) and min(spacing) > 0:
        return float(spacing[0]), float(spacing[1])
    return DEFAULT_FIELD_OF_VIEW_MM[0] / shape[0], DEFAULT_FIELD_OF_VIEW_MM[1] / (shape[1] // 2)


@dataclass
class HotSpots:
    """The hot spots of one scan.

    Attributes:
        labels: int32 (H, W), stored layout: hot spot ``k`` (1-based) is ``labels == k`` in both halves, 0 elsewhere.
        records: one dict per hot spot (``hotspot_id``, ``views``, ``centre_row``, ``centre_col``, ``area_px``,
            ``area_mm2``, ``region``, ``peak_ratio``, ``mean_ratio``), in label order.
        views: the views that were read (``("ANT", "POST")``, or one of them for a single-view scan).
        pixel_mm: (row, column) pixel size used.
    """

    labels: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)
    views: tuple[str, ...] = VIEW_NAMES
    pixel_mm: tuple[float, float] = (1.0, 1.0)

    def mask(self, hotspot_id: int) -> np.ndarray:
        """uint8 (H, W) mask of one hot spot (both halves)."""
        return (self.labels == hotspot_id).astype(np.uint8)


@dataclass(frozen=True)
class HotSpotDetector:
    """Classical hot-spot detector (see the module docstring); all sizes in mm, so it works at any matrix size.

    Args:
        threshold: a pixel is hot at ``threshold`` times the local normal-bone level; 2.2, the lowest threshold with
            at most 5 false positives per scan on phantom scans of other patients than those reported (docs/read.md).
        smooth_fwhm_mm: Gaussian smoothing of the counts before the ratio (noise).
        background_mm: size of the window of the local normal-bone level (a median per bone region).
        skeleton_margin_mm: hot pixels must lie within this distance of a bone region.
        exclusion_margin_mm: and farther than this from kidneys, bladder and injection site.
        min_area_mm2: smallest component kept (per view).
        match_distance_mm: anterior and posterior components with centres this close are one hot spot.
    """

    threshold: float = 2.2
    smooth_fwhm_mm: float = 6.0
    background_mm: float = 60.0
    skeleton_margin_mm: float = 6.0
    exclusion_margin_mm: float = 8.0
    min_area_mm2: float = 30.0
    match_distance_mm: float = 20.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"HotSpotDetector: {name} must be a finite number >= 0, got {value!r}")
        if self.threshold <= 1:
            raise ValueError(f"HotSpotDetector: threshold must be > 1 (times normal bone), got {self.threshold}")

    def ratio_image(self, view: np.ndarray, regions: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
        """Smoothed counts over the local normal-bone level, float32 (H, W/2) for one view; 0 far from bone."""
        px = np.asarray(pixel_mm, np.float64)
        smooth_sigma = self.smooth_fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / px
        counts = ndimage.gaussian_filter(view.astype(np.float32), smooth_sigma, mode="constant")
        level = local_bone_level(counts, regions, pixel_mm, self.background_mm)
        near = dilate(bone_mask(regions), self.skeleton_margin_mm, pixel_mm)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(near & (level > 0), counts / np.where(level > 0, level, 1.0), 0.0).astype(np.float32)

    def candidate_pixels(self, ratio: np.ndarray, regions: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
        """Hot pixels of one view, bool (H, W/2): ratio ≥ threshold (which :meth:`ratio_image` gives only within
        ``skeleton_margin_mm`` of bone), away from organs/injection."""
        excluded = dilate(np.isin(regions, NON_BONE_VALUES), self.exclusion_margin_mm, pixel_mm)
        return (ratio >= self.threshold) & ~excluded

    def view_candidates(
        self, scan: np.ndarray, regions: np.ndarray, pixel_mm: tuple[float, float], view: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(hot pixels bool, ratio to normal bone float32) of view ``view`` (0 anterior, 1 posterior), (H, W/2)."""
        half = scan.shape[1] // 2
        counts, view_regions = scan[:, view * half : (view + 1) * half], regions[:, view * half : (view + 1) * half]
        ratio = self.ratio_image(counts, view_regions, pixel_mm)
        return self.candidate_pixels(ratio, view_regions, pixel_mm), ratio

    def __call__(self, scan: np.ndarray, regions: np.ndarray, pixel_mm: tuple[float, float] | None = None) -> HotSpots:
        """Detect the hot spots of one scan.

        Args:
            scan: counts, float (H, W), stored layout (anterior | mirrored posterior); an all-zero half is a view
                that was not acquired (single-view scan).
            regions: region labels (H, W) (:mod:`bundle.data.regions`).
            pixel_mm: (row, column) pixel size; default from the whole-body field of view (:func:`pixel_size_mm`).
        """
        return assemble_hotspots(self, scan, regions, pixel_mm, self.view_candidates)


def assemble_hotspots(
    detector: Any,
    scan: np.ndarray,
    regions: np.ndarray,
    pixel_mm: tuple[float, float] | None,
    view_candidates: Callable[[np.ndarray, np.ndarray, tuple[float, float], int], tuple[np.ndarray, np.ndarray]],
) -> HotSpots:
    """Hot spots from per-view candidate pixels: components of at least ``detector.min_area_mm2``, anterior and
    posterior components matched (``detector.match_distance_mm``), one record per hot spot.

    Args:
        detector: gives ``min_area_mm2`` and ``match_distance_mm`` (a :class:`HotSpotDetector` or a learned one).
        view_candidates: ``(scan, regions, pixel_mm, view) -> (candidate pixels, ratio to normal bone)`` of one view,
            each (H, W/2): the classical detector's or a network's candidates.
    """
    scan = np.asarray(scan, np.float32)
    if scan.ndim != 2 or scan.shape[1] % 2:
        raise ValueError(f"a scan is 2-D (H, W) with an even width (two views), got shape {scan.shape}")
    if regions.shape != scan.shape:
        raise ValueError(f"region map {regions.shape} and scan {scan.shape} differ in shape")
    pixel_mm = pixel_mm or pixel_size_mm(scan.shape)
    half = scan.shape[1] // 2
    present = [v for v in range(2) if scan[:, v * half : (v + 1) * half].any()]
    if not present:
        raise ValueError("the scan holds no counts in either view")
    pixel_area = pixel_mm[0] * pixel_mm[1]
    min_pixels = max(1, math.ceil(detector.min_area_mm2 / pixel_area))
    components: list[dict[str, Any]] = []  # one per component of one view
    ratios: dict[int, np.ndarray] = {}
    for v in present:
        candidates, ratios[v] = view_candidates(scan, regions, pixel_mm, v)
        labelled, _ = ndimage.label(candidates)
        for k, where in enumerate(ndimage.find_objects(labelled), start=1):
            pixels = labelled[where] == k
            if pixels.sum() < min_pixels:
                continue
            rows, cols = np.nonzero(pixels)
            components.append({"view": v, "rows": rows + where[0].start, "cols": cols + where[1].start})
    groups = _match_views(components, half, pixel_mm, detector.match_distance_mm, scan.shape[0])
    labels = np.zeros(scan.shape, np.int32)
    records = []
    one_view = np.zeros((scan.shape[0], half), bool)
    for hotspot_id, members in enumerate(groups, start=1):
        one_view[:] = False
        peak, ratio_values = 0.0, []
        for c in members:
            one_view[c["rows"], c["cols"]] = True
            values = ratios[c["view"]][c["rows"], c["cols"]]
            peak = max(peak, float(values.max()))
            ratio_values.append(values)
        labels[:, :half][one_view] = hotspot_id
        labels[:, half:][one_view] = hotspot_id
        rows, cols = np.nonzero(one_view)
        region_half = regions[:, :half] if 0 in present else regions[:, half:]
        records.append(
            {
                "hotspot_id": hotspot_id,
                "views": "+".join(VIEW_NAMES[v] for v in sorted({c["view"] for c in members})),
                "centre_row": round(float(rows.mean()), 1),
                "centre_col": round(float(cols.mean()), 1),
                "area_px": int(one_view.sum()),
                "area_mm2": round(float(one_view.sum()) * pixel_area, 1),
                "region": region_name(dominant_region(one_view, region_half)),
                "peak_ratio": round(peak, 3),
                "mean_ratio": round(float(np.concatenate(ratio_values).mean()), 3),
            }
        )
    return HotSpots(labels, records, tuple(VIEW_NAMES[v] for v in present), tuple(pixel_mm))


def local_bone_level(
    counts: np.ndarray, regions: np.ndarray, pixel_mm: tuple[float, float], window_mm: float
) -> np.ndarray:
    """Normal-bone counts around every pixel, float32 (H, W/2): for each bone region, the median of that region's
    pixels in a ``window_mm`` square around points ``window_mm / 4`` apart (robust to lesions covering less than
    half of it), held constant between the points; a pixel outside bone takes its nearest bone pixel's level."""
    level = np.zeros(counts.shape, np.float32)
    rows_step = max(1, round(window_mm / 4 / pixel_mm[0]))
    cols_step = max(1, round(window_mm / 4 / pixel_mm[1]))
    reach_r = max(1, round(window_mm / 2 / pixel_mm[0]))
    reach_c = max(1, round(window_mm / 2 / pixel_mm[1]))
    for value in np.unique(regions[bone_mask(regions)]):
        member = regions == value
        where = ndimage.find_objects(member.astype(np.int8))[0]
        for r0 in range(where[0].start, where[0].stop, rows_step):
            for c0 in range(where[1].start, where[1].stop, cols_step):
                block = (slice(r0, r0 + rows_step), slice(c0, c0 + cols_step))
                inside = member[block]
                if not inside.any():
                    continue
                window = (
                    slice(max(r0 - reach_r, 0), r0 + rows_step + reach_r),
                    slice(max(c0 - reach_c, 0), c0 + cols_step + reach_c),
                )
                values = counts[window][member[window]]
                level[block][inside] = np.median(values)
    bone = level > 0
    if bone.any() and not bone.all():
        _, (nr, nc) = ndimage.distance_transform_edt(~bone, return_indices=True)
        level = level[nr, nc]
    return level


def dilate(mask: np.ndarray, radius_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Binary dilation by an ellipse of ``radius_mm`` (in pixels per axis)."""
    rr, rc = radius_mm / pixel_mm[0], radius_mm / pixel_mm[1]
    if rr < 0.5 and rc < 0.5:
        return mask.copy()
    r0, c0 = int(rr), int(rc)
    y, x = np.ogrid[-r0 : r0 + 1, -c0 : c0 + 1]
    disc = (y / max(rr, 1e-6)) ** 2 + (x / max(rc, 1e-6)) ** 2 <= 1
    return ndimage.binary_dilation(mask, structure=disc)


def _match_views(
    components: list[dict[str, Any]], half: int, pixel_mm: tuple[float, float], distance_mm: float, height: int
) -> list[list[dict[str, Any]]]:
    """Group the components into hot spots: an anterior and a posterior component that overlap or lie close."""
    parent = list(range(len(components)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    flat = [set((c["rows"] * half + c["cols"]).tolist()) for c in components]
    centres = [(c["rows"].mean() * pixel_mm[0], c["cols"].mean() * pixel_mm[1]) for c in components]
    for i, a in enumerate(components):
        for j in range(i + 1, len(components)):
            b = components[j]
            if a["view"] == b["view"]:
                continue
            close = math.dist(centres[i], centres[j]) <= distance_mm
            if close or not flat[i].isdisjoint(flat[j]):
                parent[find(j)] = find(i)
    groups: dict[int, list[dict[str, Any]]] = {}
    for i, c in enumerate(components):
        groups.setdefault(find(i), []).append(c)
    # order hot spots head to feet, then image left to right
    ordered = sorted(groups.values(), key=lambda g: (min(int(c["rows"].min()) for c in g), g[0]["cols"].min()))
    return ordered


def hotspots_from_masks(
    masks: Sequence[np.ndarray],
    scan: np.ndarray,
    regions: np.ndarray,
    pixel_mm: tuple[float, float] | None = None,
    sources: Sequence[str] | None = None,
) -> HotSpots:
    """Outlined lesions (a DICOM SEG's segments, a datalist's masks) as :class:`HotSpots`, with the records the
    detector gives its hot spots, so that they are classified, counted and reported the same way.

    Args:
        masks: one bool (H, W) mask per lesion in the stored layout (in one view, or both); lesion ``k`` =
            ``masks[k - 1]``. Where masks overlap, ``labels`` holds the later lesion.
        scan: counts (H, W), stored layout; the uptake ratios are the classical detector's ratio to normal bone.
        regions: region map (H, W).
        pixel_mm: (row, column) pixel size; default from the whole-body field of view.
        sources: one name per lesion (e.g. ``seg.dcm#2``), recorded as ``source``.

    Raises:
        ValueError: a mask of another shape than the scan, or an empty mask (naming the lesion).
    """
    scan = np.asarray(scan, np.float32)
    pixel_mm = pixel_mm or pixel_size_mm(scan.shape)
    half = scan.shape[1] // 2
    present = [v for v in range(2) if scan[:, v * half : (v + 1) * half].any()]
    ratio_detector = HotSpotDetector()
    ratios = {v: ratio_detector.view_candidates(scan, regions, pixel_mm, v)[1] for v in present}
    labels = np.zeros(scan.shape, np.int32)
    records = []
    pixel_area = pixel_mm[0] * pixel_mm[1]
    for k, mask in enumerate(masks, start=1):
        name = sources[k - 1] if sources is not None else f"lesion {k}"
        mask = np.asarray(mask) > 0
        if mask.shape != scan.shape:
            raise ValueError(f"{name}: mask shape {mask.shape} differs from the scan's {scan.shape}")
        if not mask.any():
            raise ValueError(f"{name}: the mask is empty")
        labels[mask] = k
        halves = [v for v in range(2) if mask[:, v * half : (v + 1) * half].any()]
        one_view = mask[:, :half] | mask[:, half:]
        values = np.concatenate([ratios[v][mask[:, v * half : (v + 1) * half]] for v in halves if v in ratios] or [[]])
        rows, cols = np.nonzero(one_view)
        region_half = regions[:, :half] if 0 in present else regions[:, half:]
        records.append(
            {
                "hotspot_id": k,
                "views": "+".join(VIEW_NAMES[v] for v in halves),
                "centre_row": round(float(rows.mean()), 1),
                "centre_col": round(float(cols.mean()), 1),
                "area_px": int(one_view.sum()),
                "area_mm2": round(float(one_view.sum()) * pixel_area, 1),
                "region": region_name(dominant_region(one_view, region_half)),
                "peak_ratio": round(float(values.max()), 3) if values.size else 0.0,
                "mean_ratio": round(float(values.mean()), 3) if values.size else 0.0,
                **({"source": sources[k - 1]} if sources is not None else {}),
            }
        )
    return HotSpots(labels, records, tuple(VIEW_NAMES[v] for v in present), tuple(pixel_mm))
