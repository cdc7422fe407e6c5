"""DICOM SEG of lesion masks drawn on the pipeline's layout, built with highdicom: one writer for the phantom, the
tests and the MONAI Deploy app.

A lesion mask is an (H, 2 W) array in the layout :class:`bundle.data.readers.WholeBodyScanReader` reads (anterior |
mirrored posterior, :mod:`bundle.data.dicom_nm`). :func:`lesion_segmentation` cuts each mask back into the views
and undoes the reading flips, so the SEG's frames lie pixel for pixel on the stored frames of the NM file(s) and each
SEG frame references its source frame (``DerivationImageSequence`` → SOP instance and ``ReferencedFrameNumber``).

highdicom and planar NM: a whole-body NM file has no frame of reference or plane positions (its two frames are two
projections, not two planes of a volume), and highdicom 0.28 builds a SEG without a coordinate system for one source
frame only, reading pixel measures from a multi-frame source's shared functional groups (which NM lacks). So each
source frame gets its own highdicom build on a header-only copy of its dataset that highdicom can read (one frame,
``PixelMeasuresSequence`` from ``PixelSpacing``), and the builds' frames are joined into one SEG: highdicom makes every
module (segments, dimensions, equipment, references); this module only adds the frame numbers and joins the frames.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from bundle.data.dicom_nm import ANT, POST, frame_views, orientation_flips

__all__ = [
    "BONE_STRUCTURE",
    "LESION",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "StoredFrame",
    "lesion_segmentation",
    "stored_frames",
]

# segment codes: category CID 7150, type CID 7159 (Lesion Segmentation Types), anatomic region CID 4031
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
LESION = Code("52988006", "SCT", "Lesion")
BONE_STRUCTURE = Code("272673000", "SCT", "Bone structure")
ARTIFICIAL_INTELLIGENCE = Code("123109", "DCM", "Artificial Intelligence")  # CID 7162 algorithm family

# attributes of a source that highdicom would take for a 3D frame of reference (a planar projection has none), and
# its pixel data (a SEG needs the header only)
_NOT_FOR_HIGHDICOM = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
)

# type 2 attributes of the Patient and General Study modules, copied into the SEG (empty when the source lacks them)
_PATIENT_STUDY_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class StoredFrame:
    """One stored frame of an NM dataset and how it maps to the pipeline's layout."""

    dataset: Dataset
    frame_number: int  # 1-based
    view: str  # ANT or POST
    flip_lr: bool  # reading flips (stored -> layout); applying them again maps layout -> stored
    flip_ud: bool

    def from_layout(self, mask: np.ndarray) -> np.ndarray:
        """The part of an (H, 2 W) layout mask that lies on this frame, in the frame's stored orientation (H, W)."""
        cols = mask.shape[1] // 2
        half = mask[:, :cols] if self.view == ANT else mask[:, cols:]
        half = half[:, ::-1] if self.flip_lr else half
        return half[::-1] if self.flip_ud else half


def _name(ds: Dataset) -> str:
    return str(ds.get("filename", "") or f"SOP instance {ds.get('SOPInstanceUID', '?')}")


def stored_frames(sources: Dataset | Sequence[Dataset]) -> list[StoredFrame]:
    """Every stored frame of the scan's dataset(s) with its view and the flips that bring it to the layout.

    Raises:
        ValueError: a dataset without its UIDs or size, a frame whose view cannot be resolved, a view present twice,
            datasets of different studies or sizes.
    """
    datasets = [sources] if isinstance(sources, Dataset) else list(sources)
    if not datasets:
        raise ValueError("lesion_segmentation needs the scan's dataset(s)")
    for ds in datasets:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Rows", "Columns"):
            if not ds.get(keyword):
                raise ValueError(f"{_name(ds)}: no {keyword}; a SEG cannot reference this scan")
    frames = []
    for ds in datasets:
        views, source = frame_views(ds)
        for k, view in enumerate(views):
            if view is None:
                raise ValueError(f"{_name(ds)}: frame {k + 1} has no identifiable view (read from {source})")
            frames.append(StoredFrame(ds, k + 1, view, *orientation_flips(ds, view)))
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) != 1:
        raise ValueError(f"the scan's datasets belong to {len(studies)} studies; a SEG references one study")
    seen = [f.view for f in frames]
    if len(set(seen)) != len(seen):
        raise ValueError(f"the scan's datasets give the views {seen}; each view must appear once")
    shapes = {(int(f.dataset.Rows), int(f.dataset.Columns)) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"the scan's views differ in size: {sorted(shapes)}")
    return frames


def _highdicom_source(frame: StoredFrame) -> Dataset:
    """A header-only copy of the frame's dataset that highdicom accepts as a one-frame source without a frame of
    reference (same SOP class and instance UIDs, so highdicom's references point at the real file)."""
    proxy = Dataset()
    for element in frame.dataset:
        if element.keyword not in _NOT_FOR_HIGHDICOM:
            proxy.add(copy.deepcopy(element))
    for keyword in _PATIENT_STUDY_TYPE_2:  # highdicom reads these; exported or de-identified files may lack them
        if keyword not in proxy:
            setattr(proxy, keyword, None)
    proxy.NumberOfFrames = 1
    # highdicom reads a multi-frame source's pixel measures from its shared functional groups (NM has none)
    shared = Dataset()
    shared.PixelMeasuresSequence = hd.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in frame.dataset.get("PixelSpacing") or (1.0, 1.0)],
        slice_thickness=_slice_thickness(frame.dataset),
    )
    proxy.SharedFunctionalGroupsSequence = [shared]
    return proxy


def _slice_thickness(ds: Dataset) -> float | None:
    value = ds.get("SliceThickness")
    return float(value) if value not in (None, "") else None


def _segment_descriptions(labels: Sequence[str], algorithm: tuple[str, str] | None) -> list[hd.seg.SegmentDescription]:
    if algorithm is None:
        algorithm_type, identification = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
    else:
        name, version = algorithm
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        identification = hd.AlgorithmIdentificationSequence(
            name=str(name), family=ARTIFICIAL_INTELLIGENCE, version=str(version)
        )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label),
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=LESION,
            algorithm_type=algorithm_type,
            algorithm_identification=identification,
            anatomic_regions=[BONE_STRUCTURE],
        )
        for number, label in enumerate(labels, start=1)
    ]


def lesion_segmentation(
    sources: Dataset | Sequence[Dataset],
    masks: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    series_number: int,
    series_description: str,
    manufacturer: str,
    manufacturer_model_name: str,
    software_versions: str,
    device_serial_number: str,
    algorithm: tuple[str, str] | None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    content_label: str = "LESIONS",
    content_description: str | None = "bone scan lesions",
    content_datetime: datetime.datetime | None = None,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of lesion masks drawn on the pipeline's layout; segment ``k + 1`` is ``masks[k]``.

    Each SEG frame lies on one stored frame of the source(s) and references it, and names its segment in its own
    ``SegmentIdentificationSequence`` (also with one segment); frames where a segment is empty are left out.
    Segments are bone lesions: category "Morphologically Abnormal Structure", type "Lesion", anatomic region "Bone
    structure"; AUTOMATIC with the algorithm's name and version when ``algorithm`` is given, else MANUAL.

    Args:
        sources: the scan: one NM dataset with both views, or one dataset per view (pixel data not needed).
        masks: one boolean (H, 2 W) mask per lesion, in the layout ``WholeBodyScanReader`` reads from ``sources``.
        labels: one segment label per mask (e.g. ``"lesion 3 (malignant)"``; at most 64 characters).
        series_number, series_description: the SEG's series.
        manufacturer, manufacturer_model_name, software_versions, device_serial_number: the Enhanced General
            Equipment module (all required by the SEG IOD).
        algorithm: (name, version) of the algorithm that drew the masks, or ``None`` for manual outlines.
        series_instance_uid, sop_instance_uid: the SEG's UIDs (new ones when ``None``).
        instance_number, content_label, content_description: as in DICOM.
        content_datetime: the SEG's content and creation date/time (now when ``None``; fixed for reproducible files).

    Returns:
        the :class:`highdicom.seg.Segmentation` (a pydicom dataset; write it with
        :func:`bundle.data.dicom_nm.save_dicom`).

    Raises:
        ValueError: masks and labels differ in number, a mask has the wrong shape or is empty, a mask has pixels on a
            view the sources lack, or a source frame's view cannot be resolved.
    """
    frames = stored_frames(sources)
    if len(masks) != len(labels):
        raise ValueError(f"{len(masks)} masks but {len(labels)} labels")
    if not masks:
        raise ValueError("lesion_segmentation needs at least one mask")
    rows, cols = int(frames[0].dataset.Rows), int(frames[0].dataset.Columns)
    layouts = [np.asarray(m) > 0 for m in masks]
    views_present = {f.view for f in frames}
    for k, mask in enumerate(layouts, start=1):
        if mask.shape != (rows, 2 * cols):
            raise ValueError(f"mask {k} has shape {mask.shape}; the scan's layout is {(rows, 2 * cols)}")
        if not mask.any():
            raise ValueError(f"mask {k} ({labels[k - 1]!r}) is empty; a segment needs at least one pixel")
        for view, half in ((ANT, mask[:, :cols]), (POST, mask[:, cols:])):
            if view not in views_present and half.any():
                raise ValueError(f"mask {k} has pixels on the {view} view, which the scan's datasets do not contain")
    # (frames, H, W, segments): each mask cut onto each stored frame
    stacked = np.stack([np.stack([f.from_layout(m) for m in layouts], axis=-1) for f in frames]).astype(np.uint8)
    used = [i for i in range(len(frames)) if stacked[i].any()]

    series_instance_uid = series_instance_uid or generate_uid()
    sop_instance_uid = sop_instance_uid or generate_uid()
    when = content_datetime or datetime.datetime.now()
    descriptions = _segment_descriptions(labels, algorithm)
    builds = []
    for i in used:
        builds.append(
            hd.seg.Segmentation(
                source_images=[_highdicom_source(frames[i])],
                pixel_array=stacked[i][None],
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                sop_instance_uid=sop_instance_uid,
                instance_number=instance_number,
                manufacturer=manufacturer,
                manufacturer_model_name=manufacturer_model_name,
                software_versions=software_versions,
                device_serial_number=device_serial_number,
                series_description=series_description,
                content_label=content_label,
                content_description=content_description,
                omit_empty_frames=True,
            )
        )
    seg = builds[0]
    # join the builds: per-frame items (with their source frame numbers) and the frames they describe
    items: list[tuple[int, int, Dataset]] = []  # (segment number, stored frame index, per-frame item)
    for i, build in zip(used, builds, strict=True):
        for item in build.PerFrameFunctionalGroupsSequence:
            for source in item.DerivationImageSequence[0].SourceImageSequence:
                source.ReferencedFrameNumber = frames[i].frame_number
            # one segment: highdicom puts the segment identification in the shared functional groups
            identification = item.get("SegmentIdentificationSequence") or (
                build.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
            )
            items.append((int(identification[0].ReferencedSegmentNumber), i, item))
    items.sort(key=lambda entry: entry[:2])
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" in shared:  # one segment: per frame like every other SEG it writes
        del shared.SegmentIdentificationSequence
        for number, _, item in items:
            identification = Dataset()
            identification.ReferencedSegmentNumber = number
            item.SegmentIdentificationSequence = [identification]
    seg.PerFrameFunctionalGroupsSequence = [item for *_, item in items]
    seg.NumberOfFrames = len(items)
    bits = np.stack([stacked[i][:, :, number - 1] for number, i, _ in items]).astype(bool)
    packed = np.packbits(bits.ravel(), bitorder="little").tobytes()  # 1-bit pixels, least significant bit first
    seg.PixelData = packed + b"\x00" * (len(packed) % 2)
    if _slice_thickness(frames[0].dataset) is None or "PixelSpacing" not in frames[0].dataset:
        # a planar projection has no slice thickness, and highdicom reads Pixel Measures only with one: leave the
        # (optional) Pixel Measures out; the pixel spacing stays in the NM file the SEG references
        del seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    _reference_all_sources(seg, frames)
    _set_creation_datetime(seg, when)
    # highdicom draws a random dimension organization UID; derive it from the SEG's UID so equal inputs give equal files
    organization = generate_uid(entropy_srcs=[str(sop_instance_uid), "dimension organization"])
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        item.DimensionOrganizationUID = organization
    orientations = {tuple(str(v) for v in f.dataset.get("PatientOrientation") or ()) for f in frames}
    # General Image (type 2C): one value when all source frames share it, else empty (ANT and POST differ)
    seg.PatientOrientation = list(orientations.pop()) if len(orientations) == 1 else None
    return hd.seg.Segmentation.from_dataset(seg, copy=False)


def _reference_all_sources(seg: Dataset, frames: Sequence[StoredFrame]) -> None:
    """Common Instance Reference and top-level ``SourceImageSequence``: every source instance, once."""
    by_series: dict[str, dict[str, Dataset]] = {}
    for frame in frames:
        ds = frame.dataset
        by_series.setdefault(str(ds.SeriesInstanceUID), {})[str(ds.SOPInstanceUID)] = ds
    series_items, source_items = [], []
    for series_uid, instances in by_series.items():
        series = Dataset()
        series.ReferencedInstanceSequence = []
        for sop_uid, ds in instances.items():
            for items in (series.ReferencedInstanceSequence, source_items):
                item = Dataset()
                item.ReferencedSOPClassUID = UID(str(ds.SOPClassUID))
                item.ReferencedSOPInstanceUID = UID(sop_uid)
                items.append(item)
        series.SeriesInstanceUID = UID(series_uid)
        series_items.append(series)
    seg.ReferencedSeriesSequence = series_items
    seg.SourceImageSequence = source_items
    if "StudiesContainingOtherReferencedInstancesSequence" in seg:
        del seg.StudiesContainingOtherReferencedInstancesSequence


def _set_creation_datetime(seg: Dataset, when: datetime.datetime) -> None:
    """One date/time for series, content, creation and contribution: a fixed ``when`` gives a reproducible file."""
    seg.InstanceCreationDate = seg.ContentDate = seg.SeriesDate = when.strftime("%Y%m%d")
    seg.InstanceCreationTime = seg.ContentTime = seg.SeriesTime = when.strftime("%H%M%S")
    for item in seg.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
