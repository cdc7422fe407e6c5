"""Ground-truth skeletal-region maps of phantom scans, and the true Bone Scan Index of a scan.

Every template bone belongs to one region of :data:`bundle.data.regions.REGIONS` (:func:`bone_region`). A pixel is
labelled with the region whose template points fall most often in it, if enough points fall there; kidneys fill
pixels no bone takes; the bladder takes the pixels where its activity dominates (bone or not: the reader cannot see
bone through it); the injection site / urine contamination a disc of its blob's radius. The map is drawn in the
anterior layout and holds the same labels in both halves of the stored layout (anterior | mirrored posterior).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bundle.data.regions import REGION_BY_NAME, bone_mask, bone_scan_index, dominant_region, region_name

VERTEBRA_PREFIX = {"C": "cervical_spine", "T": "thoracic_spine", "L": "lumbar_spine"}
BONE_PREFIX_REGION = {
    "skull": "skull", "face": "skull", "mandible": "skull",
    "sacrum": "sacrum", "coccyx": "sacrum", "si_joint": "sacrum",
    "iliac": "pelvis", "acetabulum": "pelvis", "pubis": "pelvis", "ischium": "pelvis",
    "rib": "ribs", "sternum": "sternum",
    "scapula": "scapulae", "acromion": "scapulae", "glenoid": "scapulae",
    "clavicle": "clavicles", "sternoclavicular": "clavicles",
    "humerus": "humeri", "elbow": "humeri",
    "femur": "femora", "trochanter": "femora", "knee": "femora",
    "radius": "distal_limbs", "ulna": "distal_limbs", "wrist": "distal_limbs", "hand": "distal_limbs",
    "patella": "distal_limbs", "tibia": "distal_limbs", "fibula": "distal_limbs", "ankle": "distal_limbs",
    "foot": "distal_limbs",
    "kidney": "kidneys", "bladder": "bladder",
}  # fmt: skip
MIN_POINT_FRACTION = 0.25  # a pixel is bone when at least this share of the expected template points fall in it


def bone_region(bone_name: str) -> str:
    """Region name of a template bone (``"T7"`` → ``thoracic_spine``, ``"rib_L03"`` → ``ribs``)."""
    if bone_name[0] in VERTEBRA_PREFIX and bone_name[1:].isdigit():
        return VERTEBRA_PREFIX[bone_name[0]]
    for prefix, region in BONE_PREFIX_REGION.items():
        if bone_name == prefix or bone_name.startswith(prefix + "_"):
            return region
    raise KeyError(f"template bone {bone_name!r} has no region")


@lru_cache(maxsize=4)
def _bone_region_values(bone_names: tuple[str, ...]) -> np.ndarray:
    return np.array([REGION_BY_NAME[bone_region(n)].value for n in bone_names], np.int16)


def render_region_map(
    points_mm: np.ndarray,
    bone: np.ndarray,
    bone_names: tuple[str, ...],
    point_area_mm2: float,
    shape: tuple[int, int],
    pixel_mm: tuple[float, float],
    bladder_region: np.ndarray,
    hot_spot: dict | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Region labels of one view (anterior layout).

    Args:
        points_mm: image-mm positions of the template points, shape (N, 2) as (x, y).
        bone: bone index of every point, shape (N,); ``bone_names`` its names.
        point_area_mm2: body area one point stands for (so a pixel of bone holds ``pixel area / point_area``).
        shape: (H, W/2) of one view; ``pixel_mm``: (row, column) pixel size.
        bladder_region: pixels where the bladder dominates, bool (H, W/2).
        hot_spot: the injection site / contamination record (``row``, ``col``, ``radius_px``) or None.

    Returns:
        ``(anatomy, region_map)``, int16 (H, W/2) each: the bone and kidney labels alone (the true BSI is measured on
        it), and the written map with bladder and injection site on top.
    """
    h, w = shape
    values = _bone_region_values(bone_names)[bone]
    rows = (points_mm[:, 1] / pixel_mm[0]).astype(np.intp)
    cols = (points_mm[:, 0] / pixel_mm[1]).astype(np.intp)
    keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = rows[keep] * w + cols[keep]
    labels = values[keep].astype(np.intp)
    num = int(values.max()) + 1
    counts = np.zeros((num, h * w), np.float32)
    np.add.at(counts, (labels, flat), 1.0)
    expected = pixel_mm[0] * pixel_mm[1] / point_area_mm2
    kidney = REGION_BY_NAME["kidneys"].value
    bladder = REGION_BY_NAME["bladder"].value
    organs = counts[[kidney, bladder]].copy()
    counts[[kidney, bladder]] = 0.0
    best = counts.argmax(axis=0)
    enough = counts.max(axis=0) >= max(1.0, MIN_POINT_FRACTION * expected)
    anatomy = np.where(enough, best, 0).astype(np.int16)
    kidney_pixels = (organs[0] >= max(1.0, MIN_POINT_FRACTION * expected)) & (anatomy == 0)
    anatomy[kidney_pixels] = kidney
    anatomy = anatomy.reshape(h, w)
    region_map = anatomy.copy()
    region_map[bladder_region] = bladder
    if hot_spot is not None:
        rr, cc = np.ogrid[:h, :w]
        disc = (rr - hot_spot["row"]) ** 2 + (cc - hot_spot["col"]) ** 2 <= hot_spot["radius_px"] ** 2
        region_map[disc] = REGION_BY_NAME["injection_site"].value
    return anatomy, region_map


def true_bsi(masks: np.ndarray, labels: list[int], anatomy: np.ndarray) -> tuple[float, dict[str, float]]:
    """The true BSI of a scan: its malignant lesions' footprints over the anatomical region map.

    Args:
        masks: lesion masks (num_lesions, H, W), stored layout; ``labels``: 0/1 per lesion.
        anatomy: bone/kidney labels (H, W), stored layout.
    """
    involved = np.zeros(anatomy.shape, bool)
    for mask, label in zip(masks, labels, strict=True):
        if label == 1:
            involved |= mask.astype(bool)
    return bone_scan_index(involved & bone_mask(anatomy), anatomy)


def lesion_region(mask: np.ndarray, anatomy: np.ndarray) -> str:
    """Region name of a lesion: the bone region under most of its footprint (else the nearest one)."""
    return region_name(dominant_region(mask, anatomy))
