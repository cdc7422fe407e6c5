"""The annotation app's infer tasks: hot-spot proposals (segmentation) and lesion classification.

Both read the scan with the bundle's reader (a whole-body scan: anterior | mirrored posterior, (H, W)) and answer a
label image in the scan's own geometry (a NIfTI scan's affine; identity for other formats) plus JSON records. Errors
the request can fix (no or empty mask, unknown lesion id, a file that is not a whole-body scan, malformed params) are
HTTP 4xx with a message (:class:`.engine.RequestError`); the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from scipy import ndimage

from .engine import LabelEngine, RequestError

CLASS_NAMES = ("benign", "malignant")
DEFAULT_CLICK_RADIUS_MM = 15.0
MAX_CLICK_RADIUS_MM = 100.0


# ---- request parsing ------------------------------------------------------------------------------------------
def number_param(request: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A finite number ``low < value <= high`` from the request (``default`` when absent); 422 otherwise."""
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(f"params: {key} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"params: {key} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and low < number <= high):
        raise RequestError(f"params: {key} must lie in ({low:g}, {high:g}], got {value!r}")
    return number


def click_point(request: Mapping[str, Any], shape: tuple[int, int]) -> tuple[int, int] | None:
    """(row, col) of a click in the stored layout: ``point: [row, col]``, or 3D Slicer's first ``foreground`` point
    (IJK voxel indices of the scan, I = row, J = column); None when neither is given."""
    point = request.get("point")
    if point is None and request.get("foreground"):
        foreground = request["foreground"]
        point = foreground[0] if isinstance(foreground, list) and foreground else foreground
    if point is None:
        return None
    if (
        not isinstance(point, list | tuple)
        or len(point) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in point[:2])
    ):
        raise RequestError(f"params: point must be [row, col] (numbers), got {point!r}")
    row, col = round(point[0]), round(point[1])
    if not (0 <= row < shape[0] and 0 <= col < shape[1]):
        raise RequestError(f"params: point {[row, col]} lies outside the scan of {shape[0]} x {shape[1]} pixels")
    return row, col


def lesion_id_param(request: Mapping[str, Any]) -> list[int] | None:
    """The ``lesion_ids`` asked for (positive integers), or None for all."""
    ids = request.get("lesion_ids")
    if ids is None:
        return None
    ids = ids if isinstance(ids, list) else [ids]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids):
        raise RequestError(f"params: lesion_ids must be positive integers, got {request.get('lesion_ids')!r}")
    return ids


# ---- images -----------------------------------------------------------------------------------------------------
def write_label(labels: np.ndarray, image: str) -> str:
    """A temporary NIfTI of an int16 (H, W) label image in ``image``'s geometry (its affine when it is a NIfTI: the
    bundle's reader takes a NIfTI's array as (H, W) as stored), for MONAI Label to send and remove."""
    affine = np.eye(4)
    if image.endswith((".nii", ".nii.gz")):
        affine = np.asarray(nib.load(image).affine)
    handle, path = tempfile.mkstemp(suffix=".nii.gz", prefix="bundle_label_")
    os.close(handle)
    nib.save(nib.Nifti1Image(np.asarray(labels, np.int16), affine), path)
    return path


def grow_from_click(
    counts: np.ndarray, point: tuple[int, int], radius_mm: float, pixel_mm: tuple[float, float]
) -> np.ndarray:
    """A lesion outline grown from a click: in the clicked view, within ``radius_mm`` of the click, the connected
    pixels at or above half-way between the local background (the median on the search circle's rim) and the peak
    of the lightly smoothed counts; drawn in both halves of the stored layout, like the training masks.

    Args:
        counts: (H, W) stored layout. point: (row, col). radius_mm: search radius. pixel_mm: (row, col) pixel size.

    Returns:
        bool (H, W); all False when there is no uptake above the background there.
    """
    half = counts.shape[1] // 2
    view = point[1] // half
    local = np.asarray(counts[:, view * half : (view + 1) * half], np.float32)
    smoothed = ndimage.gaussian_filter(local, 1.0)
    rows, cols = np.ogrid[: local.shape[0], : local.shape[1]]
    distance = np.hypot((rows - point[0]) * pixel_mm[0], (cols - point[1] % half) * pixel_mm[1])
    disk = distance <= radius_mm
    rim = disk & (distance > radius_mm - max(pixel_mm))
    background = float(np.median(smoothed[rim])) if rim.any() else 0.0
    peak_index = np.unravel_index(np.argmax(np.where(disk, smoothed, -np.inf)), smoothed.shape)
    peak = float(smoothed[peak_index])
    mask = np.zeros(counts.shape, bool)
    if not peak > background:
        return mask
    components, _ = ndimage.label(disk & (smoothed >= background + 0.5 * (peak - background)))
    grown = components == components[peak_index]
    mask[:, :half] |= grown
    mask[:, half : 2 * half] |= grown
    return mask


def records_json(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with numpy scalars as plain numbers (JSON)."""
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in r.items()} for r in records]


# ---- tasks ------------------------------------------------------------------------------------------------------
class HotSpotProposalTask(InferTask):
    """Proposes the suspicious hot spots of a whole-body scan: the full read's region atlas and classical hot-spot
    detector (bundle/read) at the proposal operating point. Result: a label image, hot spot ``k`` = value ``k`` in
    both halves, and one record per hot spot (``hotspots``: id, views, centre row/col, area, region, peak/mean ratio
    to normal bone). Params: ``proposal_threshold`` (x normal bone, > 1)."""

    def __init__(self, engine: LabelEngine) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={"hot spot": 1},
            dimension=2,
            description="Hot-spot proposals on a whole-body bone scan (the full read's detector); one value per "
            "proposed lesion",
            config={"proposal_threshold": engine.proposal_threshold},
        )
        self.engine = engine

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        request = {**self.config(), **request}
        threshold = number_param(request, "proposal_threshold", self.engine.proposal_threshold, 1.0, 100.0)
        image = str(request.get("image", ""))
        array, _, pixel_mm = self.engine.load_scan(image)
        with self.engine.lock:
            detector = self.engine.reader.detector
            if threshold != detector.threshold:
                detector = dataclasses.replace(detector, threshold=threshold)
            from bundle.data.regions import check_region_map

            regions = check_region_map(self.engine.reader.segmenter(array), array.shape, f"{image} (region map)")
            hotspots = detector(array, regions, pixel_mm)
        result = {
            "hotspots": records_json(hotspots.records),
            "count": len(hotspots.records),
            "proposal_threshold": threshold,
            "views": list(hotspots.views),
            "pixel_mm": list(pixel_mm),
        }
        return write_label(hotspots.labels, image), result


class LesionClassificationTask(InferTask):
    """Benign/malignant probability of each outlined lesion: the bundle's classifier (train.yaml's preprocessing and
    network, the app's current weights) on the scan + that lesion's mask.

    The lesions come from an uploaded ``label`` image (one value per lesion; ``lesion_ids`` in params selects some),
    or from a click: ``point`` [row, col] (or 3D Slicer's ``foreground`` IJK point) and ``radius_mm`` (default 15),
    from which the lesion is grown (:func:`grow_from_click`; the grown outline is the result label image).
    """

    def __init__(self, engine: LabelEngine) -> None:
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels={name: i for i, name in enumerate(CLASS_NAMES)},
            dimension=2,
            description="Benign/malignant probability per lesion (uploaded label image, or click point + radius)",
            config={"radius_mm": DEFAULT_CLICK_RADIUS_MM, "threshold": 0.5},
        )
        self.engine = engine

    def is_valid(self) -> bool:
        return True

    def lesions_from_label(
        self, label: str, shape: tuple[int, int], wanted: list[int] | None
    ) -> tuple[list[int], np.ndarray]:
        """(lesion ids, label image (H, W) int) of an uploaded label image, checked against the scan."""
        try:
            array, _ = self.engine.reader.image_reader.get_data(self.engine.reader.image_reader.read(label))
        except Exception as err:
            raise RequestError(f"label: cannot be read as a lesion label image ({err})") from None
        array = np.asarray(array)
        if array.shape != shape:
            raise RequestError(f"label: shape {list(array.shape)} differs from the scan's {list(shape)}")
        if (array < 0).any() or not np.array_equal(array, np.round(array)):
            raise RequestError("label: values must be non-negative integers (0 background, k = lesion k)")
        present = [int(v) for v in np.unique(array) if v > 0]
        if not present:
            raise RequestError("label: the mask is empty (no lesion: every value is 0)")
        if wanted is not None:
            unknown = sorted(set(wanted) - set(present))
            if unknown:
                raise RequestError(
                    f"params: lesion_ids {unknown} are not in the label image (lesions: {present})", status_code=404
                )
            present = [i for i in present if i in set(wanted)]
        return present, array.astype(np.int32)

    def __call__(self, request: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
        request = {**self.config(), **request}
        image = str(request.get("image", ""))
        threshold = number_param(request, "threshold", 0.5, 0.0, 1.0)
        wanted = lesion_id_param(request)
        array, _, pixel_mm = self.engine.load_scan(image)
        label = request.get("label")
        point = None if label else click_point(request, array.shape)
        result_file: str | None = None
        if label:
            ids, labels = self.lesions_from_label(str(label), array.shape, wanted)
            refs = [f"{label}#{k}" for k in ids]
            source = "label"
        elif point is not None:
            radius = number_param(request, "radius_mm", DEFAULT_CLICK_RADIUS_MM, 0.0, MAX_CLICK_RADIUS_MM)
            grown = grow_from_click(array, point, radius, pixel_mm)
            if not grown.any():
                raise RequestError(f"params: no uptake above the background within {radius:g} mm of {list(point)}")
            labels = grown.astype(np.int32)
            result_file = write_label(labels, image)
            ids, refs, source = [1], [f"{result_file}#1"], "click"
        else:
            raise RequestError(
                "no lesion given: upload a label image as `label` (one value per lesion), or give a click "
                "`point` [row, col] with `radius_mm` in params"
            )
        probabilities = self.engine.classify(image, refs)
        half = array.shape[1] // 2
        lesions = []
        for k, p in zip(ids, probabilities, strict=True):
            rows, cols = np.nonzero(labels[:, :half] == k)
            rows, cols = (rows, cols) if len(rows) else np.nonzero(labels == k)
            lesions.append(
                {
                    "lesion_id": k,
                    "p_malignant": p,
                    "p_benign": 1.0 - p,
                    "predicted_class": CLASS_NAMES[int(p >= threshold)],
                    "area_px": int((labels == k).sum()),
                    "centre_row": float(rows.mean()),
                    "centre_col": float(cols.mean() % half),
                }
            )
        result: dict[str, Any] = {
            "lesions": lesions,
            "source": source,
            "threshold": threshold,
            "checkpoint": str(self.engine.current_checkpoint()),
            "model_version": self.engine.version,
        }
        if len(lesions) == 1:  # MONAI Label's classification result (3D Slicer shows it)
            p = lesions[0]["p_malignant"]
            result["prediction"] = [
                {"idx": 0, "label": CLASS_NAMES[0], "score": 1.0 - p},
                {"idx": 1, "label": CLASS_NAMES[1], "score": p},
            ]
        return result_file, result
