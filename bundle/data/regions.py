"""Skeletal regions of a whole-body bone scan and the Bone Scan Index (BSI): the one table of region labels.

A *region map* is an integer label image on the scan's grid, shape (H, W) in the stored layout (anterior | mirrored
posterior), 0 = background/soft tissue, the values of :data:`REGIONS` elsewhere. The phantom writes one per scan
(``regions`` of each entry of the datalist's ``scans`` list); the read estimates one (atlas or network).

The **Bone Scan Index** (Imbriaco et al., Clin Cancer Res 1998;4:1765-72) is the percentage of the skeletal mass
involved by metastasis::

    BSI = sum over bone regions r of  (involved pixels in r / pixels of r) * weight_r

with ``weight_r`` the region's share (%) of the skeletal mass, from Spiers' reference-man table (1968) as used by
Imbriaco: skull 16.6 + jaw 1.8, clavicles 2 x 0.5, scapulae 2 x 1.5, sternum 0.3, humeri 2 x 3.3, ulnae 2 x 1.5,
radii 2 x 1.2, hands 2 x 1.5, ribs 4.4, spine and sacrum 8.3, pelvis 7.5, femora 2 x 8.9, tibiae 2 x 5.1, fibulae
2 x 1.3, feet 2 x 5.8. The spine-and-sacrum 8.3 % is split here over cervical / thoracic / lumbar spine and sacrum in
proportion to their projected area in the phantom's reference skeleton (0.9 / 2.8 / 2.2 / 2.4); forearms, hands,
tibiae, fibulae and feet form one ``distal_limbs`` region (32.8 %). The weights sum to 100.1 (Spiers' rounding);
:func:`bone_scan_index` normalises them to 100. Both views are combined: a region's area and its involved area are
counted over the views present (anterior and posterior halves), as automated BSI systems do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

BONE, ORGAN, OTHER = "bone", "organ", "other"


@dataclass(frozen=True)
class Region:
    """One label of a region map: integer ``value``, ``name``, ``kind`` (bone/organ/other), BSI ``weight`` (%)."""

    value: int
    name: str
    kind: str
    weight: float
    description: str


REGIONS: tuple[Region, ...] = (
    Region(1, "skull", BONE, 18.4, "skull and facial bones (16.6) + mandible (1.8)"),
    Region(2, "cervical_spine", BONE, 0.9, "C1-C7"),
    Region(3, "thoracic_spine", BONE, 2.8, "T1-T12"),
    Region(4, "lumbar_spine", BONE, 2.2, "L1-L5"),
    Region(5, "sacrum", BONE, 2.4, "sacrum, coccyx, sacro-iliac joints"),
    Region(6, "pelvis", BONE, 7.5, "iliac bones, acetabula, pubic and ischial bones"),
    Region(7, "ribs", BONE, 4.4, "all 24 ribs"),
    Region(8, "sternum", BONE, 0.3, "manubrium, body, xiphoid"),
    Region(9, "scapulae", BONE, 3.0, "both scapulae with acromion and glenoid"),
    Region(10, "clavicles", BONE, 1.0, "both clavicles with the sternoclavicular joints"),
    Region(11, "humeri", BONE, 6.6, "both humeri with the elbows"),
    Region(12, "femora", BONE, 17.8, "both femora with trochanters and knees"),
    Region(13, "distal_limbs", BONE, 32.8, "forearms, wrists, hands, patellae, tibiae, fibulae, ankles, feet"),
    Region(20, "kidneys", ORGAN, 0.0, "both kidneys (physiological renal activity)"),
    Region(21, "bladder", ORGAN, 0.0, "urinary bladder, where its activity dominates (overlies pelvis/sacrum)"),
    Region(22, "injection_site", OTHER, 0.0, "tracer injection site or urine contamination (not bone)"),
)
REGION_BY_NAME: dict[str, Region] = {r.name: r for r in REGIONS}
REGION_BY_VALUE: dict[int, Region] = {r.value: r for r in REGIONS}
BONE_REGIONS: tuple[Region, ...] = tuple(r for r in REGIONS if r.kind == BONE)
BONE_VALUES: tuple[int, ...] = tuple(r.value for r in BONE_REGIONS)
NON_BONE_VALUES: tuple[int, ...] = tuple(r.value for r in REGIONS if r.kind != BONE)
NUM_REGION_CLASSES = max(REGION_BY_VALUE) + 1  # label values 0..max (bincount length)
# a segmentation network's classes: channel k predicts label CLASS_VALUES[k] (0 = background), contiguous
CLASS_VALUES: tuple[int, ...] = (0, *(r.value for r in REGIONS))
NUM_CLASSES = len(CLASS_VALUES)
TOTAL_WEIGHT = sum(r.weight for r in BONE_REGIONS)


def labels_to_classes(region_map: np.ndarray) -> np.ndarray:
    """Region labels (H, W) → contiguous class indices 0..NUM_CLASSES-1 (unknown labels → 0), int64."""
    lookup = np.zeros(NUM_REGION_CLASSES, np.int64)
    lookup[list(CLASS_VALUES)] = np.arange(NUM_CLASSES)
    array = np.asarray(region_map).astype(np.int64)
    return np.where((array >= 0) & (array < NUM_REGION_CLASSES), lookup[array.clip(0, NUM_REGION_CLASSES - 1)], 0)


def classes_to_labels(classes: np.ndarray) -> np.ndarray:
    """Class indices (H, W) of a segmentation network → region labels, int16."""
    return np.asarray(CLASS_VALUES, np.int16)[np.asarray(classes, np.int64)]


def region_name(value: int) -> str:
    """Name of the label ``value`` (``"none"`` for 0 or an unknown value)."""
    region = REGION_BY_VALUE.get(int(value))
    return region.name if region else "none"


def bone_mask(region_map: np.ndarray) -> np.ndarray:
    """Pixels of any bone region, bool of the map's shape."""
    return np.isin(region_map, BONE_VALUES)


def check_region_map(region_map: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """The map as int16 after checking its shape and values; ValueError naming ``source`` otherwise."""
    array = np.asarray(region_map)
    if array.shape != tuple(shape):
        raise ValueError(f"{source}: region map of shape {array.shape}, the scan is {tuple(shape)}")
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise ValueError(f"{source}: a region map holds integer labels only")
    unknown = sorted(set(np.unique(array).astype(int).tolist()) - set(REGION_BY_VALUE) - {0})
    if unknown:
        raise ValueError(f"{source}: unknown region label(s) {unknown[:10]} (known: {sorted(REGION_BY_VALUE)})")
    return array.astype(np.int16)


def bone_scan_index(involved: np.ndarray, region_map: np.ndarray) -> tuple[float, dict[str, float]]:
    """BSI (%) and regional BSI of an involvement image.

    Args:
        involved: fraction of each pixel involved by metastasis, shape (H, W): a bool mask of malignant lesions or
            hot spots, or per-pixel weights in [0, 1] (e.g. P(malignant) of the hot spot covering the pixel).
        region_map: region labels, shape (H, W).

    Returns:
        ``(bsi, regional)``: the BSI in % of the skeletal mass and, per bone region name, its contribution (they
        sum to ``bsi``); a region absent from the map contributes 0.
    """
    involved = np.clip(np.asarray(involved, np.float64), 0.0, 1.0)
    if involved.shape != region_map.shape:
        raise ValueError(f"involvement {involved.shape} and region map {region_map.shape} differ in shape")
    labels = region_map.ravel()
    area = np.bincount(labels.clip(0), minlength=NUM_REGION_CLASSES)
    hit = np.bincount(labels.clip(0), weights=involved.ravel(), minlength=NUM_REGION_CLASSES)
    regional = {}
    for region in BONE_REGIONS:
        fraction = hit[region.value] / area[region.value] if area[region.value] else 0.0
        regional[region.name] = float(fraction * region.weight * 100.0 / TOTAL_WEIGHT)
    return float(sum(regional.values())), regional


def dominant_region(mask: np.ndarray, region_map: np.ndarray, values: Iterable[int] = BONE_VALUES) -> int:
    """The label (of ``values``) covering most pixels of ``mask``; else the label nearest its centre; 0 if none."""
    values = tuple(values)
    inside = region_map[mask.astype(bool)]
    inside = inside[np.isin(inside, values)]
    if inside.size:
        counts = np.bincount(inside.astype(np.intp))
        return int(np.argmax(counts))
    candidates = np.argwhere(np.isin(region_map, values))
    points = np.argwhere(mask.astype(bool))
    if not len(candidates) or not len(points):
        return 0
    centre = points.mean(axis=0)
    nearest = candidates[np.argmin(((candidates - centre) ** 2).sum(axis=1))]
    return int(region_map[tuple(nearest)])


def regions_table_markdown() -> str:
    """The region labels as a Markdown table (printed by ``python -m bundle.read regions`` and in docs/read.md)."""
    rows = ["| value | name | kind | BSI weight (% of skeletal mass) | contents |", "|---|---|---|---|---|"]
    rows += [
        f"| {r.value} | {r.name} | {r.kind} | {r.weight:g} | {r.description} |"
        if r.kind == BONE
        else f"| {r.value} | {r.name} | {r.kind} | – | {r.description} |"
        for r in REGIONS
    ]
    return "\n".join(rows)
