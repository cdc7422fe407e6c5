"""Writing whole-body bone scans as DICOM NM Image Storage files and lesion masks as DICOM SEG: the phantom's
``dicom`` format and the test suite's DICOM inputs (every transfer syntax and layout the reader must handle).

:func:`write_nm_whole_body` writes a proper NM Image Storage file (one frame per view, with the detectors' view codes);
:func:`write_seg` writes a DICOM SEG lesion mask that references such a file's frames. pydicom has no JPEG Lossless
encoder, so a small first-order-prediction one is here (:func:`jpeg_lossless_frame`, decoded by pylibjpeg-libjpeg).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sr.coding import Code
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from bundle import __version__
from bundle.data.dicom_nm import (
    ANT,
    LOSSY_TRANSFER_SYNTAXES,
    NM_IMAGE_STORAGE,
    POST,
    VIEW_CODES,
    VIEWS,
    save_dicom,
)
from bundle.phantom.scan import REFERENCE_PIXEL_MM

# JPEG Lossless process 14 (pydicom 2.4 gives this UID another name; spelled out so both versions agree)
JPEGLossless = UID("1.2.840.10008.1.2.4.57")


# ---- writing ----------------------------------------------------------------------------------------------------
def _uid(seed: object | None, *parts: object) -> UID:
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)]) if seed is not None else generate_uid()


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _stored_values(frames: np.ndarray, signed: bool, rescale: tuple[float, float] | None):
    """Stored integer frames and the (slope, intercept) that map them back to ``frames``."""
    values = np.asarray(frames, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("pixel values must be finite to be stored as DICOM integers")
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    if rescale is None:
        integral = np.array_equal(values, np.round(values))
        if integral and values.min(initial=0) >= lo and values.max(initial=0) <= hi:
            rescale = (1.0, 0.0)
        else:
            rescale = (max(float(np.abs(values).max(initial=0)), 1e-12) / hi, 0.0)
    slope, intercept = rescale
    stored = np.round((values - intercept) / slope)
    if stored.min(initial=0) < lo or stored.max(initial=0) > hi:
        raise ValueError(f"pixel values do not fit {'int16' if signed else 'uint16'} with rescale {rescale}")
    return stored.astype(np.int16 if signed else np.uint16), (slope, intercept)


def jpeg_lossless_frame(frame: np.ndarray) -> bytes:
    """One 16-bit frame as a JPEG Lossless (process 14, first-order prediction) code stream."""
    x = frame.astype(np.uint16).astype(np.int64)
    rows, cols = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 1 << 15
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = ((x - pred + 32768) % 65536 - 32768).ravel()
    magnitude = np.abs(diff)
    ssss = np.zeros(diff.shape, dtype=np.int64)
    nz = magnitude > 0
    ssss[nz] = np.floor(np.log2(magnitude[nz])).astype(np.int64) + 1
    extra_len = np.where(ssss == 16, 0, ssss)
    extra = np.where(diff >= 0, diff, diff + (1 << extra_len) - 1) & ((1 << extra_len) - 1)
    # Huffman table: the 17 categories get the 5-bit codes 0..16 (never all ones)
    value = (ssss << extra_len) | extra
    length = 5 + extra_len
    width = 21
    bits = ((value[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8)
    keep = np.arange(width)[None, :] >= (width - length)[:, None]
    stream = bits[keep]
    stream = np.concatenate([stream, np.ones((-len(stream)) % 8, dtype=np.uint8)])
    data = np.packbits(stream)
    data = np.insert(data, np.flatnonzero(data == 0xFF) + 1, 0)  # byte stuffing

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + data.tobytes() + b"\xff\xd9"


def _set_pixel_data(ds: Dataset, stored: np.ndarray, transfer_syntax: UID, lossy_error: int | None) -> None:
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = stored.tobytes()
    if transfer_syntax == ExplicitVRLittleEndian:
        return
    if transfer_syntax in (JPEGLossless, JPEGLosslessSV1):
        # pydicom has no JPEG Lossless encoder: a small first-order-prediction one (decoded by pylibjpeg-libjpeg)
        frames = stored.reshape(-1, *stored.shape[-2:])
        ds.PixelData = encapsulate([jpeg_lossless_frame(f) for f in frames])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        return
    kwargs: dict[str, object] = {}
    if transfer_syntax == "1.2.840.10008.1.2.4.81":
        kwargs["jls_error"] = lossy_error or 2
    elif transfer_syntax == "1.2.840.10008.1.2.4.91":
        kwargs["j2k_cr"] = [lossy_error or 20]
    ds.compress(transfer_syntax, stored, generate_instance_uid=False, **kwargs)


# row direction, column direction of each view's stored frame in patient coordinates (LPS, rows head -> feet):
# the anterior view is seen from the front (rows run to the patient's left), the posterior from the back
_DETECTOR_ORIENTATION = {ANT: (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), POST: (-1.0, 0.0, 0.0, 0.0, 0.0, -1.0)}
_LOSSY_METHODS = {"1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1"}
RECUMBENT = Code("102538003", "SCT", "recumbent")  # CID 19
SUPINE = Code("40199007", "SCT", "supine")  # CID 20
HEADFIRST = Code("102540008", "SCT", "headfirst")  # CID 21
TECHNETIUM_99M = Code("72454006", "SCT", "^99m^Technetium")  # CID 18
TC99M_MEDRONATE = Code("96390006", "SCT", "Technetium Tc^99m^ medronate")  # CID 25
INTRAVENOUS_ROUTE = Code("47625008", "SCT", "Intravenous route")  # CID 11


def _add_patient_orientation(ds: Dataset) -> None:
    """NM/PET Patient Orientation module: the patient lies supine, head first (a whole-body bone scan)."""
    orientation = _code_item(RECUMBENT)
    orientation.PatientOrientationModifierCodeSequence = [_code_item(SUPINE)]
    ds.PatientOrientationCodeSequence = [orientation]
    ds.PatientGantryRelationshipCodeSequence = [_code_item(HEADFIRST)]


def _add_radiopharmaceutical(ds: Dataset) -> None:
    """NM Isotope module: Tc-99m medronate (MDP) injected intravenously, 740 MBq three hours before the scan."""
    item = Dataset()
    item.RadionuclideCodeSequence = [_code_item(TECHNETIUM_99M)]
    item.RadiopharmaceuticalRoute = "IV"
    item.AdministrationRouteCodeSequence = [_code_item(INTRAVENOUS_ROUTE)]
    item.RadiopharmaceuticalStartTime = "060000"
    item.RadionuclideTotalDose = "740"  # MBq
    item.Radiopharmaceutical = "Tc-99m MDP"
    item.RadiopharmaceuticalCodeSequence = [_code_item(TC99M_MEDRONATE)]
    ds.RadiopharmaceuticalInformationSequence = [item]


def nm_dataset(
    anterior: np.ndarray | None,
    posterior: np.ndarray | None,
    patient_id: str,
    *,
    patient_name: str | None = None,
    pixel_spacing: tuple[float, float] = (2.4, 2.4),
    seed: object | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: str = "20210101",
    series_description: str = "WB BONE",
    frame_order: Sequence[str] = (ANT, POST),
    view_codes: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
    lossy_error: int | None = None,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    modality: str = "NM",
    sop_class: str = NM_IMAGE_STORAGE,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"),
    scan_velocity: float = 2.0,
    edit: Callable[[Dataset], None] | None = None,
) -> Dataset:
    """A whole-body bone scan as one DICOM NM Image Storage dataset (one frame per given view).

    Each view becomes one frame acquired by its own detector: ``DetectorVector`` maps frames to detectors and
    ``DetectorInformationSequence`` gives each detector's ``ViewCodeSequence`` (SCT 399321004 Anterior projection,
    SCT 399001007 Posterior projection); ``FrameIncrementPointer`` lists the energy window and detector vectors.
    Give one view only (the other ``None``) for a single-view file (then ``PatientOrientation`` is written too).

    The modules of the NM Image IOD are filled so that ``dciodvfy`` finds no errors: NM/PET Patient Orientation
    (recumbent, supine, head first), NM Image (counts accumulated, scan velocity and length, frame duration), NM
    Isotope (Tc-99m medronate, intravenous, in ``RadiopharmaceuticalInformationSequence``), NM Detector (parallel
    collimator, each detector's ``ImageOrientationPatient``; the position is unknown and left empty) and NM
    Multi-frame; lossy transfer syntaxes record their compression ratio and method.

    Args:
        anterior: anterior view (H, Wv) as seen from the front (patient's right on image left), counts >= 0.
        posterior: posterior view (H, Wv) as acquired, seen from the back (patient's left on image left).
            :func:`split_views` turns the pipeline's (H, 2 Wv) layout into these two arrays.
        patient_id: ``PatientID``.
        patient_name: ``PatientName``; defaults to ``patient_id`` as the family name (``"P1^"``).
        pixel_spacing: (row, column) spacing in mm.
        seed: makes the study/series/SOP instance UIDs deterministic (derived from seed and patient id);
            ``None`` draws random ones. Explicit ``study_uid``/``series_uid``/``sop_uid`` win.
        study_date: ``StudyDate`` (YYYYMMDD).
        series_description: ``SeriesDescription``.
        frame_order: order of the views' frames in the file, e.g. ``("POST", "ANT")``.
        view_codes: write the ``ViewCodeSequence``s (``False`` writes files that readers cannot resolve).
        transfer_syntax: Explicit VR Little Endian (default), JPEG Lossless (SV1), JPEG-LS (lossless or
            near-lossless), JPEG 2000 (lossless or lossy) or RLE Lossless UID.
        lossy_error: JPEG-LS near-lossless error bound, or JPEG 2000 compression ratio, for the lossy syntaxes.
        signed: store int16 (``PixelRepresentation`` 1) instead of uint16.
        rescale: (slope, intercept) to store; ``None``: 1/0 for integer counts that fit, else a slope that fits.
        modality: ``Modality`` (tests write ``CT``/``OT`` files with it).
        sop_class: SOP Class UID (tests write Secondary Capture NM files with it).
        image_type: ``ImageType`` values.
        scan_velocity: table speed of the whole-body pass in mm/s (``ScanVelocity``; 2 mm/s = 12 cm/min).
        edit: called with the finished dataset (tests use it to break files in specific ways).

    Returns:
        the dataset, with ``file_meta``, ready for :func:`bundle.data.dicom_nm.save_dicom`.
    """
    given = {ANT: anterior, POST: posterior}
    views = [v for v in frame_order if given.get(v) is not None]
    if not views:
        raise ValueError("write_nm_whole_body needs the anterior or the posterior view")
    if sorted(frame_order) != sorted(VIEWS):
        raise ValueError(f"frame_order must order 'ANT' and 'POST', got {tuple(frame_order)}")
    frames = np.stack([np.asarray(given[v], dtype=np.float64) for v in views])
    stored, (slope, intercept) = _stored_values(frames, signed, rescale)
    transfer_syntax = UID(transfer_syntax)
    sop_uid = sop_uid or _uid(seed, "sop", patient_id, *views)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or _uid(seed, "study", patient_id)
    ds.SeriesInstanceUID = series_uid or _uid(seed, "series", patient_id)
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.PatientID = str(patient_id)
    ds.PatientName = patient_name or f"{patient_id}^"  # family name only (a one-component name is the retired form)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "bone-scan-lesion-classifier"
    ds.ManufacturerModelName = "bone scan phantom"
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "WHOLEBODY"
    ds.ImageLaterality = "B"  # both sides of the body (General Image; makes the series' Laterality unnecessary)
    _add_patient_orientation(ds)
    _add_radiopharmaceutical(ds)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
    ds.NumberOfFrames = len(views)
    # NM Image module for a whole-body pass: the table moves the rows' length at scan_velocity
    scan_length = float(stored.shape[1]) * float(pixel_spacing[0])
    ds.CountsAccumulated = int(min(max(round(float(frames.clip(min=0).sum())), 0), 2**31 - 1))
    ds.ScanVelocity = f"{scan_velocity:.6g}"
    ds.ScanLength = round(scan_length)
    ds.ActualFrameDuration = round(1000 * scan_length / scan_velocity)  # ms
    ds.WholeBodyTechnique = ["1PS"]  # one pass
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # EnergyWindowVector, DetectorVector
    ds.EnergyWindowVector = [1] * len(views)
    ds.NumberOfEnergyWindows = 1
    window = Dataset()
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit = "126"
    window_range.EnergyWindowUpperLimit = "154"
    window.EnergyWindowRangeSequence = [window_range]
    window.EnergyWindowName = "TC99M"
    ds.EnergyWindowInformationSequence = [window]
    # detector k (1-based) acquired VIEWS[k-1]: frames may come in any order, DetectorVector says which is which
    ds.NumberOfDetectors = len(views)
    detector_of = {v: i + 1 for i, v in enumerate(v for v in VIEWS if v in views)}
    ds.DetectorVector = [detector_of[v] for v in views]
    items = []
    for v in (v for v in VIEWS if v in views):
        item = Dataset()
        item.CollimatorGridName = "LEHR"
        item.CollimatorType = "PARA"
        item.ImageOrientationPatient = list(_DETECTOR_ORIENTATION[v])
        item.ImagePositionPatient = None  # type 2: a planar projection has no known plane position
        if view_codes:
            item.ViewCodeSequence = [_code_item(VIEW_CODES[v])]
        items.append(item)
    ds.DetectorInformationSequence = items
    if len(views) == 1:
        ds.PatientOrientation = ["L", "F"] if views[0] == ANT else ["R", "F"]
    _set_pixel_data(ds, stored[0] if len(views) == 1 else stored, transfer_syntax, lossy_error)
    if transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
        ds.LossyImageCompression = "01"
        ratio = stored.nbytes / max(len(ds.PixelData), 1)
        ds.LossyImageCompressionRatio = f"{ratio:.4g}"
        ds.LossyImageCompressionMethod = _LOSSY_METHODS.get(str(transfer_syntax), "")
    if edit is not None:
        edit(ds)
    return ds


def write_nm_whole_body(
    path: str | os.PathLike,
    anterior: np.ndarray | None,
    posterior: np.ndarray | None,
    patient_id: str,
    **kwargs: Any,
) -> Path:
    """Write a whole-body bone scan as one DICOM NM Image Storage file (one frame per given view), atomically.

    Args:
        path: output file.
        anterior: anterior view (H, Wv) as seen from the front (patient's right on image left), or ``None``.
        posterior: posterior view (H, Wv) as acquired, seen from the back, or ``None``.
        patient_id: ``PatientID``.
        kwargs: the keyword arguments of :func:`nm_dataset` (``seed``, ``frame_order``, ``transfer_syntax``, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return save_dicom(nm_dataset(anterior, posterior, patient_id, **kwargs), path)


def write_seg(
    path: str | os.PathLike,
    source: str | os.PathLike | Dataset | Sequence[str | os.PathLike | Dataset],
    masks: Mapping[int, np.ndarray],
    *,
    labels: Mapping[int, str] | None = None,
    seed: object | None = None,
) -> Path:
    """Write lesion masks drawn on the pipeline's layout as a DICOM SEG referencing the scan's frames, atomically.

    The SEG is built with highdicom by :func:`bundle.data.dicom_seg.lesion_segmentation` (manual bone-lesion
    segments): each mask is split back into the source's views and frames (undoing the mirroring), so the SEG's
    frames lie on the stored frames of the NM file(s) they reference (``DerivationImageSequence`` → SOP instance and
    frame number).

    Args:
        path: output file.
        source: the scan: one NM file, or the two single-view files (paths, or their datasets).
        masks: segment number (1, 2, ... n) → non-empty binary mask of shape (H, W) in the pipeline's layout.
        labels: segment number → label (default ``lesion N``).
        seed: makes the SEG's UIDs deterministic (its dates are fixed, so equal inputs give equal files).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    # imported here: highdicom needs pydicom 3, and the NM writers above must also work where only pydicom 2.4 is
    from bundle.data.dicom_seg import lesion_segmentation

    sources = [source] if isinstance(source, str | os.PathLike | Dataset) else list(source)
    datasets = [s if isinstance(s, Dataset) else pydicom.dcmread(s, stop_before_pixels=True) for s in sources]
    numbers = sorted(masks)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"segment numbers must be 1..{len(numbers)}, got {numbers}")
    first = datasets[0].SOPInstanceUID
    seg = lesion_segmentation(
        datasets,
        [masks[n] for n in numbers],
        [(labels or {}).get(n, f"lesion {n}") for n in numbers],
        series_number=100,
        series_description="lesion masks",
        manufacturer="bone-scan-lesion-classifier",
        manufacturer_model_name="bone scan phantom",
        software_versions=__version__,
        device_serial_number="phantom",
        algorithm=None,
        series_instance_uid=_uid(seed, "seg-series", first),
        sop_instance_uid=_uid(seed, "seg", first),
        content_datetime=datetime.datetime(2021, 1, 1, 9, 0, 0),
    )
    return save_dicom(seg, path)


# ---- the phantom's DICOM format ---------------------------------------------------------------------------------
def _phantom_nm(scan: Any) -> Dataset:
    """The NM dataset of a phantom scan (``bundle.phantom.scan.PhantomScan``); UIDs derive from its content."""
    seed = ("bone-scan-phantom", int(np.asarray(scan.anterior).sum()), int(np.asarray(scan.posterior).sum()))
    spacing = (scan.info or {}).get("pixel_mm")
    if spacing is None:  # the phantom's field of view: REFERENCE_PIXEL_MM at 1024 rows x 256 columns per view
        rows, cols = np.shape(scan.anterior)
        spacing = (REFERENCE_PIXEL_MM * 1024 / rows, REFERENCE_PIXEL_MM * 256 / cols)
    return nm_dataset(scan.anterior, scan.posterior, scan.patient_id, seed=seed, pixel_spacing=tuple(spacing))


def write_phantom_image(path: Path, scan: Any) -> None:
    """Phantom ``dicom`` format, scans: a 2-frame NM whole-body file (ANT, POST frames with view codes)."""
    save_dicom(_phantom_nm(scan), path)


def write_phantom_mask(path: Path, mask: np.ndarray, scan: Any) -> None:
    """Phantom ``dicom`` format, lesion masks: a 1-segment DICOM SEG on the scan's frames (mask (H, W) layout)."""
    write_seg(path, _phantom_nm(scan), {1: mask}, seed=("bone-scan-phantom", str(path.name)))
