"""DICOM NM whole-body bone scans, read side: view codes, which frame shows which view, and the pipeline's layout.

A whole-body bone scan has two planar views, acquired at once by the two detectors of a gamma camera:

- the **anterior** view (``ANT``), seen from the front: the patient's right is on the image's left;
- the **posterior** view (``POST``), seen from the back: the patient's left is on the image's left.

The pipeline's layout (:func:`assemble_views`) puts them side by side in one (H, W) array, rows head → feet:
anterior in the left half, posterior **mirrored** in the right half, so that the patient's right is on the image's
left in both halves. :func:`split_views` undoes it.

The view of each frame comes from the DICOM view information (:func:`frame_views`): ``DetectorVector`` maps
frames to detectors, and each detector's ``ViewCodeSequence`` in ``DetectorInformationSequence`` holds a CID 26
code (SCT 399321004 "Anterior projection", SCT 399001007 "Posterior projection"; the retired SRT codes and the code
meaning text are matched too). For single-view files, ``ImageID``/``SeriesDescription``/``ImageComments``/
``ProtocolName`` saying ``ANT`` or ``POST`` are accepted as a fallback. Frame order alone is never trusted.

Every DICOM file the project writes goes through :func:`save_dicom` (atomic, DICOM File Format, pydicom 2.4 and 3).
The SEG builder is :mod:`bundle.data.dicom_seg`; the writers of synthetic NM files (the phantom and the tests) are in
:mod:`bundle.phantom.dicom`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID

from bundle.io import atomic_write

__all__ = [
    "ANTERIOR_CODE",
    "LOSSY_DERIVATION",
    "LOSSY_TRANSFER_SYNTAXES",
    "MULTIFRAME_WORD_SC_STORAGE",
    "NM_IMAGE_STORAGE",
    "POSTERIOR_CODE",
    "SECONDARY_CAPTURE_STORAGE",
    "SEG_STORAGE",
    "VIEWS",
    "VIEW_CODES",
    "assemble_views",
    "frame_views",
    "is_lossy",
    "orientation_flips",
    "save_dicom",
    "split_views",
    "view_from_code",
    "view_from_text",
]

ANT, POST = "ANT", "POST"
VIEWS = (ANT, POST)
ANTERIOR_CODE = Code("399321004", "SCT", "Anterior projection")
POSTERIOR_CODE = Code("399001007", "SCT", "Posterior projection")
VIEW_CODES = {ANT: ANTERIOR_CODE, POST: POSTERIOR_CODE}

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_WORD_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.3")
SEG_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.4")

# transfer syntaxes whose pixel data may have lost information (JPEG 2000 "Image Compression" may be either)
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.4.100",  # MPEG2 and later video syntaxes
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
    }
)
LOSSY_DERIVATION = Code("113040", "DCM", "Lossy Compression")
_TEXT_VIEW_KEYWORDS = ("ImageID", "SeriesDescription", "ImageComments", "ProtocolName")
_ANT_WORD = re.compile(r"(?<![A-Z])ANT(ERIOR)?(?![A-Z])", re.IGNORECASE)
_POST_WORD = re.compile(r"(?<![A-Z])POST(ERIOR)?(?![A-Z])", re.IGNORECASE)


# ---- views ------------------------------------------------------------------------------------------------------
def view_from_code(item: Dataset) -> str | None:
    """``ANT``/``POST`` for a code sequence item (SCT, retired SRT or code meaning text), else ``None``."""
    value, scheme = str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", ""))
    meaning = str(item.get("CodeMeaning", ""))
    if value and scheme:
        try:
            code = Code(value, scheme, meaning or value)
        except Exception:  # malformed code: fall back on its meaning
            code = None
        for view, known in VIEW_CODES.items():
            if code is not None and code == known:
                return view
    return view_from_text(meaning)


def view_from_text(text: str) -> str | None:
    """``ANT``/``POST`` when ``text`` names exactly one of the two views (``"WB ANT"``), else ``None``."""
    ant, post = bool(_ANT_WORD.search(text or "")), bool(_POST_WORD.search(text or ""))
    return ANT if ant and not post else POST if post and not ant else None


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def frame_views(ds: Dataset) -> tuple[list[str | None], str]:
    """The view (``ANT``/``POST``/``None``) of each frame of an NM dataset, and where it was read from.

    Frames map to detectors through ``DetectorVector``; each detector's view is the ``ViewCodeSequence`` of its
    ``DetectorInformationSequence`` item. Without ``DetectorVector``, item ``i`` is taken to describe frame ``i``
    when there is one item per frame. A single-frame file without a code may name its view in ``ImageID``,
    ``SeriesDescription``, ``ImageComments`` or ``ProtocolName``.

    Returns:
        (views per frame, a few words saying which DICOM attributes gave them).
    """
    n = _number_of_frames(ds)
    items = list(ds.get("DetectorInformationSequence") or [])
    detector_views = []
    for item in items:
        codes = list(item.get("ViewCodeSequence") or [])
        detector_views.append(view_from_code(codes[0]) if codes else None)
    detectors = [int(d) for d in _as_list(ds.get("DetectorVector"))]
    source = "DetectorVector and the detectors' ViewCodeSequence"
    if len(detectors) != n:
        if len(items) != n:
            detectors = []
        else:
            detectors = list(range(1, n + 1))
            source = "DetectorInformationSequence items in frame order (no DetectorVector)"
    views: list[str | None] = [detector_views[d - 1] if 1 <= d <= len(detector_views) else None for d in detectors] or [
        None
    ] * n
    if n == 1 and views[0] is None:
        top_codes = list(ds.get("ViewCodeSequence") or [])
        if top_codes and view_from_code(top_codes[0]):
            return [view_from_code(top_codes[0])], "ViewCodeSequence"
        for keyword in _TEXT_VIEW_KEYWORDS:
            view = view_from_text(str(ds.get(keyword, "") or ""))
            if view:
                return [view], f"{keyword} {str(ds.get(keyword))!r}"
        source = "nothing (no view code, no ANT/POST in ImageID, SeriesDescription, ImageComments, ProtocolName)"
    return views, source


def orientation_flips(ds: Dataset, view: str) -> tuple[bool, bool]:
    """(flip left-right, flip up-down) that bring a stored ``view`` frame to the pipeline's orientation.

    The pipeline wants rows head → feet and the patient's right on the image's left (the anterior view as seen
    from the front; the posterior view mirrored). ``PatientOrientation`` (row direction, column direction) is used
    when present: a row direction toward the patient's right (``R``) is mirrored, a column direction toward the head
    (``H``) is flipped upside down. In a multi-frame file one value cannot describe two views, so only its column
    direction is used there. Without it, a posterior view is mirrored and an anterior view kept.
    """
    flip_lr = view == POST
    flip_ud = False
    orientation = [str(v).upper() for v in _as_list(ds.get("PatientOrientation"))]
    if len(orientation) == 2:
        row_dir, col_dir = orientation
        if _number_of_frames(ds) == 1 and row_dir[:1] in ("L", "R"):
            flip_lr = row_dir.startswith("R")
        if col_dir[:1] in ("H", "F"):
            flip_ud = col_dir.startswith("H")
    return flip_lr, flip_ud


def is_lossy(ds: Dataset) -> bool:
    """True when the pixel data went through lossy compression (tag, transfer syntax or derivation code)."""
    if str(ds.get("LossyImageCompression", "")).strip() == "01":
        return True
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and str(ts) in LOSSY_TRANSFER_SYNTAXES:
        return True
    for item in ds.get("DerivationCodeSequence") or []:
        value, scheme = str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", ""))
        if (value, scheme) == (LOSSY_DERIVATION.value, LOSSY_DERIVATION.scheme_designator):
            return True
        if "lossy" in str(item.get("CodeMeaning", "")).lower():
            return True
    return False


# ---- layout -----------------------------------------------------------------------------------------------------
def assemble_views(anterior: np.ndarray | None, posterior: np.ndarray | None) -> np.ndarray:
    """Put the views side by side in the pipeline's layout.

    Args:
        anterior: anterior view (H, Wv) as seen from the front, or ``None`` (left half zero).
        posterior: posterior view (H, Wv) as seen from the back (as acquired), or ``None`` (right half zero).

    Returns:
        (H, 2 Wv): anterior | mirrored posterior.
    """
    if anterior is None and posterior is None:
        raise ValueError("assemble_views needs at least one view")
    like = anterior if anterior is not None else posterior
    ant = np.zeros_like(like) if anterior is None else anterior
    post = np.zeros_like(like) if posterior is None else posterior[:, ::-1]
    if ant.shape != post.shape:
        raise ValueError(f"views differ in shape: anterior {ant.shape}, posterior {post.shape}")
    return np.concatenate([ant, post], axis=1)


def split_views(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`assemble_views`: (H, W) → (anterior (H, W/2), posterior as acquired (H, W/2))."""
    if image.ndim != 2 or image.shape[1] % 2:
        raise ValueError(f"expected an (H, W) image with even W, got shape {image.shape}")
    half = image.shape[1] // 2
    return image[:, :half], image[:, half:][:, ::-1]


# ---- writing ----------------------------------------------------------------------------------------------------
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])


def save_dicom(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` (with ``file_meta``) as a DICOM file (128-byte preamble, ``DICM``, file meta), atomically.

    Works with pydicom 3 (``enforce_file_format=True``) and pydicom 2.4 (``write_like_original=False``, with the
    encoding taken from the transfer syntax); the file meta group is completed by pydicom in both.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise ValueError(f"{path}: the dataset has no file meta TransferSyntaxUID; cannot write a DICOM file")

    def write(tmp: str) -> None:
        if PYDICOM_MAJOR >= 3:
            ds.save_as(tmp, enforce_file_format=True)
        else:  # pydicom 2.4: encoding attributes must be set on the dataset
            syntax = UID(meta.TransferSyntaxUID)
            ds.is_little_endian = syntax.is_little_endian
            ds.is_implicit_VR = syntax.is_implicit_VR
            ds.save_as(tmp, write_like_original=False)

    atomic_write(path, write, suffix=".dcm")
    return path
