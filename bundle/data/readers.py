"""Reading whole-body bone scans and lesion masks into the pipeline's (H, W) layout: one MONAI ImageReader for all.

Every array the pipeline loads is 2-D, shape (H, W) = (rows head → feet, columns), the anterior view in the left
half and the posterior view **mirrored** in the right half (the patient's right on the image's left in both).
:class:`WholeBodyScanReader` returns that layout for every supported input, chosen by the file's content:

- **DICOM NM** whole-body scans (``.dcm``, any or no extension): one multi-frame file with the anterior and
  posterior frames, two single-view files (a list of two paths, or a folder holding them), or a single-view file.
  Views come from the DICOM view information, never from frame order alone (:mod:`bundle.data.dicom_nm`); the counts
  are scaled with ``RescaleSlope``/``RescaleIntercept`` when present. Compressed transfer syntaxes are decoded by
  pydicom's plugins (pylibjpeg with libjpeg, openjpeg and RLE; pyjpegls). NM images re-encoded as Secondary Capture
  are read when they still say ``Modality`` NM and ``ImageType`` WHOLE BODY.
- **NIfTI** (``.nii``, ``.nii.gz``): the stored 2-D array, as MONAI's NIfTI reader returns it.
- **PNG/TIFF**: (H, W) as stored (MONAI's PIL reader would return it transposed).
- **DICOM SEG** masks: the selected segment, placed on the referenced scan's frames in the same layout.

A lesion mask may be one value of a label image: ``path#N`` selects label value ``N`` of a label PNG/TIFF/NIfTI,
palette index ``N`` of a palette PNG, segment ``N`` of a DICOM SEG, and ``path#R,G,B`` a colour of an RGB PNG.
The result is a binary (H, W) mask.

A single-view scan is read as one view and said so (a :class:`ScanWarning`, ``single_view`` in the metadata): the
view goes in its own half and the other half is zero; a view that the file does not name is placed as anterior.
Training refuses single-view scans; evaluation and inference accept them (see ``docs/data.md``).

Each problem raises its own :class:`DataError` subclass, whose message names the file and says how to fix it.
Because ``LoadImage`` silently falls back to MONAI's other readers when a reader raises in ``read``, this reader
by default returns the error from ``read`` and raises it from ``get_data``, where ``LoadImage`` does not catch it.

Config use (``configs/train.yaml``)::

    image_reader: $bundle.data.readers.WholeBodyScanReader()

Export a scan in the layout (to draw masks on it in 3D Slicer or MONAI Label)::

    python -m bundle.data export SCAN OUT.nii.gz
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.data import ImageReader
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset

from bundle.data.dicom_nm import (
    ANT,
    MULTIFRAME_WORD_SC_STORAGE,
    POST,
    SECONDARY_CAPTURE_STORAGE,
    SEG_STORAGE,
    frame_views,
    is_lossy,
    orientation_flips,
)
from bundle.data.paths import DICOM_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES, sniff_format, split_selector
from bundle.errors import (
    CountsError,
    DataError,
    DicomReadError,
    MaskSelectionError,
    MissingFileError,
    NotWholeBodyNMError,
    ScanWarning,
    UnreadableFileError,
    UnsupportedFormatError,
    ViewError,
)
from bundle.io import atomic_write

__all__ = ["LoadedImage", "WholeBodyScanReader", "check_counts"]

logger = logging.getLogger("bundle")

# LoadImaged also builds MONAI's default readers as fallbacks; the GPU DICOM decoder among them reports, on every run
# without nvImageCodec/CUDA, that it is unavailable. This bundle decodes DICOM with pydicom's plugins: silence it.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")

_SC_CLASSES = {str(SECONDARY_CAPTURE_STORAGE), str(MULTIFRAME_WORD_SC_STORAGE), "1.2.840.10008.5.1.4.1.1.7.2"}
_SPECT_TYPES = ("TOMO", "RECON TOMO", "GATED TOMO", "RECON GATED TOMO")
DECODER_FIX = (
    "install pydicom's decoder plugins (`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
    "pylibjpeg-rle pyjpegls`, all in this project's dependencies) or export the scan uncompressed"
)


# ---- results ----------------------------------------------------------------------------------------------------
@dataclass
class LoadedImage:
    """What :meth:`WholeBodyScanReader.read` returns: the (H, W) float32 array and its metadata."""

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Failed:
    error: Exception


@dataclass(frozen=True)
class _Placement:
    """Where one stored DICOM frame goes in the layout."""

    view: str  # ANT (left half) or POST (right half)
    flip_lr: bool
    flip_ud: bool
    view_shape: tuple[int, int]


def _affine(spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[0, 0], affine[1, 1] = spacing
    return affine


def _meta(array: np.ndarray, affine: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    affine = _affine() if affine is None else affine
    return {
        "affine": affine,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(array.shape),
        "original_channel_dim": float("nan"),
        **extra,
    }


def check_counts(values: np.ndarray, path: str, lossy: bool, what: str = "counts") -> np.ndarray:
    """NaN/Inf → error; negatives → clipped with a warning when lossy, else an error."""
    if not np.all(np.isfinite(values)):
        n = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise CountsError(
            path, f"{n} pixel(s) are NaN or infinite", "re-export the scan; a scan holds finite counts only"
        )
    negative = values < 0
    if negative.any():
        n, low = int(negative.sum()), float(values.min())
        if lossy:
            warnings.warn(
                f"{path}: {n} negative pixel(s) (min {low:g}) left by lossy compression clipped to 0",
                ScanWarning,
                stacklevel=3,
            )
            return np.maximum(values, 0)
        raise CountsError(
            path,
            f"{n} pixel(s) have negative {what} (min {low:g}) in losslessly stored data",
            "counts cannot be negative: check RescaleIntercept/the export settings, or re-export the original scan",
        )
    return values


def save_layout_nifti(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W) array in the pipeline's layout as NIfTI with an identity affine (read back as the same (H, W)
    by :class:`WholeBodyScanReader` and ``nibabel``), atomically; the array's dtype is kept."""
    image = nib.Nifti1Image(np.asarray(array), np.eye(4))
    atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=".nii.gz")


class WholeBodyScanReader(ImageReader):
    """MONAI ImageReader for whole-body bone scans and lesion masks: DICOM NM/SEG, NIfTI, PNG and TIFF.

    Every result is a float32 array of shape (H, W): anterior view | mirrored posterior view (see module docs).

    Args:
        view_order: views of the frames in file order (e.g. ``("ANT", "POST")``) used only for frames whose view
            the DICOM file does not give; the way to read exports that lack view codes. Default: none assumed.
        require_whole_body: refuse DICOM NM files whose ``ImageType`` does not say ``WHOLE BODY``. Defaults to True.
        defer_errors: return a failure from :meth:`read` and raise it in :meth:`get_data`, so that ``LoadImage``
            cannot fall back on another reader that reads a wrong file in a wrong layout. Defaults to True.
        search_sources: for a DICOM SEG whose scan was not read yet, look for the scan's DICOM files in the SEG's
            folder and up to two folders above it. Defaults to True.
    """

    def __init__(
        self,
        view_order: Sequence[str] | None = None,
        require_whole_body: bool = True,
        defer_errors: bool = True,
        search_sources: bool = True,
    ) -> None:
        super().__init__()
        if view_order is not None:
            view_order = tuple(str(v).upper() for v in view_order)
            if not set(view_order) <= {ANT, POST} or len(view_order) not in (1, 2):
                raise ValueError(f"view_order must be 1 or 2 of 'ANT'/'POST', got {view_order}")
        self.view_order = view_order
        self.require_whole_body = require_whole_body
        self.defer_errors = defer_errors
        self.search_sources = search_sources
        self._placements: dict[tuple[str, int], _Placement] = {}
        self._uid_index: dict[str, dict[str, str]] = {}
        self._label_cache: OrderedDict[tuple[str, float], tuple[np.ndarray, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(view_order={self.view_order}, require_whole_body={self.require_whole_body})"

    # ---- MONAI ImageReader API ----------------------------------------------------------------------------------
    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for DICOM (``.dcm``/``.dicom``/``.ima``/no extension/a folder), NIfTI, PNG and TIFF paths."""
        names = [filename] if isinstance(filename, str | os.PathLike) else list(filename)
        for name in names:
            base, _ = split_selector(name)
            lower = base.lower()
            suffix_ok = lower.endswith(DICOM_SUFFIXES + PIL_SUFFIXES + NIFTI_SUFFIXES)
            if not (suffix_ok or os.path.isdir(base) or "." not in os.path.basename(lower)):
                return False
        return bool(names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> LoadedImage | _Failed:
        """Read one scan or mask: a path (``#N`` selector allowed), a folder of two views, or two view files.

        Returns:
            a :class:`LoadedImage` (or, with ``defer_errors``, the failure that :meth:`get_data` raises).
        """
        try:
            array, meta = self.load(data)
            return LoadedImage(array, meta)
        except DataError as err:
            if self.defer_errors:
                return _Failed(err)
            raise

    def get_data(self, img: LoadedImage | _Failed) -> tuple[np.ndarray, dict]:
        """(array (H, W) float32, metadata) of what :meth:`read` returned; raises the deferred error if it failed."""
        if isinstance(img, _Failed):
            raise img.error
        return img.array, dict(img.meta)

    def mask_selectors(self, path: str | os.PathLike) -> list[str]:
        """The ``#`` selectors of the lesions in a mask file: ``[]`` for a plain binary mask (one lesion).

        A DICOM SEG with several segments gives its segment numbers; a label PNG/TIFF/NIfTI with several non-zero
        values gives those values; an RGB PNG gives its non-black colours as ``"R,G,B"``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise MissingFileError(path, "mask file not found", "check the path")
        kind = sniff_format(path)
        if kind == "dicom":
            ds = self._dcmread(path, stop_before_pixels=True)
            numbers = sorted(int(item.SegmentNumber) for item in ds.get("SegmentSequence") or [])
            return [str(n) for n in numbers] if len(numbers) > 1 else []
        if kind in ("png", "tiff"):
            with Image.open(path) as img:
                array = np.asarray(img)
            if array.ndim == 3 and array.shape[-1] >= 3:
                colours = np.unique(array[..., :3].reshape(-1, 3), axis=0)
                colours = [c for c in colours if c.any()]
                if all(c[0] == c[1] == c[2] for c in colours):
                    array = array[..., 0]
                else:
                    return [",".join(str(int(v)) for v in c) for c in colours]
        elif kind == "nifti":
            array, _ = self._read_nifti(path, None)
        else:
            return []
        values = np.unique(np.asarray(array))
        values = values[values != 0]
        if len(values) > 1 and np.all(values == np.round(values)) and values.min() > 0:
            return [str(int(v)) for v in values]
        return []

    # ---- reading ------------------------------------------------------------------------------------------------
    def load(self, data: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[np.ndarray, dict]:
        """Read and return (array of shape (H, W), float32; metadata); raises a :class:`DataError` subclass."""
        paths = [os.fspath(data)] if isinstance(data, str | os.PathLike) else [os.fspath(p) for p in data]
        if len(paths) == 2:
            return self._read_nm(paths)
        if len(paths) != 1:
            raise ViewError(
                ", ".join(paths) or "(no file)",
                f"{len(paths)} files given for one scan",
                "give one file, a folder, or the two single-view DICOM files of one scan",
            )
        path, selector = split_selector(paths[0])
        if os.path.isdir(path):
            return self._read_nm(self._dicom_files_in(path))
        if not os.path.isfile(path):
            raise MissingFileError(path, "file not found", "check the path (relative paths are joined to dataset_dir)")
        kind = sniff_format(path)
        if kind == "dicom":
            ds = self._dcmread(path)
            if str(ds.get("Modality", "")).upper() == "SEG" or str(ds.get("SOPClassUID", "")) == SEG_STORAGE:
                return self._read_seg(ds, path, selector)
            if selector is not None:
                raise MaskSelectionError(
                    path, f"selector #{selector} given, but this is not a DICOM SEG", "drop the '#...' suffix"
                )
            return self._read_nm([path], {path: ds})
        if kind in ("png", "tiff"):
            return self._read_pil(path, selector)
        if kind == "nifti":
            return self._read_nifti(path, selector)
        raise UnsupportedFormatError(
            path, "not a DICOM, NIfTI (.nii/.nii.gz), PNG or TIFF file", "convert it to one of these formats"
        )

    def _dicom_files_in(self, folder: str) -> list[str]:
        files = sorted(
            str(p)
            for p in Path(folder).iterdir()
            if p.is_file() and not p.name.startswith(".") and sniff_format(str(p))
        )
        files = [f for f in files if sniff_format(f) == "dicom"]
        if len(files) not in (1, 2):
            raise ViewError(
                folder,
                f"a scan folder must hold 1 or 2 DICOM files (the views of one scan), found {len(files)}",
                "put each scan's view files in a folder of their own",
            )
        return files

    @staticmethod
    def _dcmread(path: str, stop_before_pixels: bool = False) -> Dataset:
        fix = "re-export it from the camera or PACS (a DICOM Part 10 file); it may be truncated or corrupt"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about what the checks below report
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
                except pydicom.errors.InvalidDicomError:
                    ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
                    if "SOPClassUID" not in ds:
                        raise
        except Exception as err:
            raise DicomReadError(path, f"not a readable DICOM file ({type(err).__name__}: {err})", fix) from None
        if "SOPClassUID" not in ds:
            raise DicomReadError(path, "incomplete DICOM file (no SOPClassUID)", fix)
        pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
        if not stop_before_pixels and not any(k in ds for k in pixel_keywords):
            raise DicomReadError(path, "the file has no pixel data (truncated, or not an image)", fix)
        return ds

    def _check_nm(self, ds: Dataset, path: str) -> None:
        modality = str(ds.get("Modality", "")).upper()
        sop_class = str(ds.get("SOPClassUID", ""))
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        is_sc = sop_class in _SC_CLASSES
        fix_export = "export the original NM whole-body bone scan (Modality NM, ImageType ...\\WHOLE BODY\\...)"
        if modality != "NM":
            if is_sc or modality == "OT":
                raise NotWholeBodyNMError(
                    path,
                    f"a secondary-capture image with Modality {modality or '(none)'}: a screenshot, not counts",
                    fix_export,
                )
            name = getattr(pydicom.uid.UID(sop_class), "name", sop_class) if sop_class else "no SOP class"
            raise NotWholeBodyNMError(
                path, f"Modality {modality or '(none)'} ({name}), not a nuclear-medicine (NM) scan", fix_export
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise NotWholeBodyNMError(
                path, f"a colour ({ds.get('PhotometricInterpretation')}) image: a screenshot, not counts", fix_export
            )
        if any(t in image_type for t in _SPECT_TYPES):
            raise NotWholeBodyNMError(
                path,
                f"ImageType {'/'.join(image_type)}: a SPECT (tomographic) series, not a planar whole-body scan",
                fix_export,
            )
        if "WHOLE BODY" not in image_type:
            kind = image_type[2] if len(image_type) > 2 else "(no acquisition type)"
            if self.require_whole_body or is_sc:
                raise NotWholeBodyNMError(
                    path,
                    f"ImageType {'/'.join(image_type) or '(none)'} says a {kind} acquisition, not WHOLE BODY",
                    fix_export + "; if it is a whole-body scan whose ImageType was lost, read it with "
                    "WholeBodyScanReader(require_whole_body=False)",
                )
            warnings.warn(f"{path}: ImageType says {kind}, read as a whole-body scan", ScanWarning, stacklevel=4)

    def _pixels(self, ds: Dataset, path: str) -> np.ndarray:
        """Frames (n, rows, cols) in counts: decoded, rescaled, checked."""
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise DicomReadError(path, "the file has no pixel data", "re-export the scan with its image")
        try:
            pixels = ds.pixel_array
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            missing_plugin = "plugin" in text.lower() or "dependenc" in text.lower()
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            ts_name = getattr(ts, "name", str(ts))
            raise DicomReadError(
                path,
                f"pixel data ({ts_name}) cannot be decoded ({text.splitlines()[0]})",
                DECODER_FIX if missing_plugin else "the file is corrupt or truncated: re-export it",
            ) from None
        pixels = pixels.reshape(-1, *pixels.shape[-2:])
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        values = pixels.astype(np.float64) * slope + intercept
        return check_counts(values, path, is_lossy(ds)).astype(np.float32)

    def _read_nm(self, paths: list[str], parsed: dict[str, Dataset] | None = None) -> tuple[np.ndarray, dict]:
        parsed = parsed or {}
        datasets = []
        for path in paths:
            if not os.path.isfile(path):
                raise MissingFileError(
                    path, "file not found", "check the path (relative paths are joined to dataset_dir)"
                )
            ds = parsed.get(path) or self._dcmread(path)
            if str(ds.get("Modality", "")).upper() == "SEG":
                raise NotWholeBodyNMError(path, "a DICOM SEG (a mask), given as a scan", "list it as the mask")
            self._check_nm(ds, path)
            datasets.append(ds)
        where = paths[0] if len(paths) == 1 else " + ".join(paths)
        # frames: (path, dataset, frame number, view or None, evidence)
        frames: list[tuple[str, Dataset, int, str | None, str]] = []
        for path, ds in zip(paths, datasets, strict=True):
            views, source = frame_views(ds)
            if len(paths) == 2 and len(views) != 1:
                raise ViewError(
                    path,
                    f"{len(views)} frames in a file given as one of two single-view files",
                    "give the multi-frame file alone",
                )
            frames.extend((path, ds, k + 1, view, source) for k, view in enumerate(views))
        if len(frames) > 2:
            ds = datasets[0]
            detail = (
                f"EnergyWindowVector {list(ds.get('EnergyWindowVector') or [])}, "
                f"DetectorVector {list(ds.get('DetectorVector') or [])}"
            )
            raise ViewError(
                where,
                f"{len(frames)} frames ({detail}); a whole-body scan has 1 (single view) or 2 (anterior + posterior)",
                "export the photopeak energy window only, one frame per detector",
            )
        if self.view_order is not None and len(self.view_order) == len(frames):
            for i, (path, ds, number, view, source) in enumerate(frames):
                if view is None:
                    frames[i] = (path, ds, number, self.view_order[i], "view_order given to the reader")
                elif view != self.view_order[i]:
                    warnings.warn(
                        f"{path}: frame {number} is {view} by its {source}, not {self.view_order[i]} as view_order "
                        "says; the DICOM information is used",
                        ScanWarning,
                        stacklevel=3,
                    )
        pixels = {path: self._pixels(ds, path) for path, ds in zip(paths, datasets, strict=True)}
        views = [f[3] for f in frames]
        single = len(frames) == 1
        if not single:
            if None in views:
                raise ViewError(
                    where,
                    "cannot tell which frame is anterior and which posterior: views read from " + frames[0][4],
                    "export with the detectors' view codes (DetectorInformationSequence/ViewCodeSequence), or, if "
                    "you know the order of your exporter, read with WholeBodyScanReader(view_order=('ANT', 'POST'))",
                )
            if views[0] == views[1]:
                raise ViewError(
                    where,
                    f"both frames are {views[0]}; a whole-body scan has one anterior and one posterior view",
                    "check the export: both views of the same scan are needed",
                )
        elif views[0] is None:
            warnings.warn(
                f"{where}: single view without view information ({frames[0][4]}): read as one view, placed as "
                "anterior (left half), the posterior half left empty",
                ScanWarning,
                stacklevel=3,
            )
        elif single:
            warnings.warn(
                f"{where}: single {views[0]} view: read as one view, the other half left empty",
                ScanWarning,
                stacklevel=3,
            )
        halves: dict[str, np.ndarray] = {}
        placements: dict[tuple[str, int], _Placement] = {}
        for path, ds, number, view, _ in frames:
            placed = view or ANT
            flip_lr, flip_ud = orientation_flips(ds, placed)
            frame = pixels[path][number - 1]
            frame = frame[:, ::-1] if flip_lr else frame
            halves[placed] = frame[::-1] if flip_ud else frame
            placements[(str(ds.SOPInstanceUID), number)] = _Placement(placed, flip_lr, flip_ud, frame.shape)
        shapes = {v: h.shape for v, h in halves.items()}
        if len(set(shapes.values())) > 1:
            raise ViewError(where, f"the views differ in size: {shapes}", "export both views with the same matrix size")
        shape = next(iter(shapes.values()))
        array = np.concatenate(
            [halves.get(ANT, np.zeros(shape, np.float32)), halves.get(POST, np.zeros(shape, np.float32))], axis=1
        )
        with self._lock:
            self._placements.update(placements)
        first = datasets[0]
        spacing = [float(v) for v in (first.get("PixelSpacing") or [1.0, 1.0])]
        ids = {str(ds.get("PatientID", "")) for ds in datasets}
        if len(ids) > 1:
            raise ViewError(where, f"the two views belong to different patients {sorted(ids)}", "pair the right files")
        view_text = "+".join(v for v in (ANT, POST) if v in views) if None not in views else "UNKNOWN"
        meta = _meta(
            array,
            _affine((spacing[0], spacing[1])),
            modality="NM",
            patient_id=str(first.get("PatientID", "")),
            study_instance_uid=str(first.get("StudyInstanceUID", "")),
            series_instance_uid=str(first.get("SeriesInstanceUID", "")),
            sop_instance_uid=str(first.get("SOPInstanceUID", "")),
            views=view_text,
            single_view=single,
            lossy=any(is_lossy(ds) for ds in datasets),
            secondary_capture=any(str(ds.get("SOPClassUID", "")) in _SC_CLASSES for ds in datasets),
        )
        return np.ascontiguousarray(array, dtype=np.float32), meta

    # ---- DICOM SEG ----------------------------------------------------------------------------------------------
    def _read_seg(self, ds: Dataset, path: str, selector: str | None) -> tuple[np.ndarray, dict]:
        segments = {int(item.SegmentNumber): item for item in ds.get("SegmentSequence") or []}
        if selector is None:
            if len(segments) != 1:
                raise MaskSelectionError(
                    path,
                    f"a DICOM SEG with {len(segments)} segments {sorted(segments)} and no segment selected",
                    f"select one lesion's segment with '{os.path.basename(path)}#N' in the datalist",
                )
            number = next(iter(segments))
        else:
            number = int(selector) if selector.isdigit() else -1
            if number not in segments:
                raise MaskSelectionError(
                    path,
                    f"segment #{selector} is not in this SEG (segments: {sorted(segments)})",
                    "use one of the segment numbers",
                )
        try:
            pixels = ds.pixel_array
        except Exception as err:
            raise DicomReadError(path, f"SEG pixel data cannot be decoded ({err})", DECODER_FIX) from None
        pixels = pixels.reshape(-1, *pixels.shape[-2:])
        if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
            binary = pixels >= max(1, int(ds.get("MaximumFractionalValue", 255)) / 2)
        else:
            binary = pixels > 0
        refs = []
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        for i, group in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
            # a functional group is per frame or shared (highdicom shares the segment of a one-segment SEG)
            identification = group.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
            derivation = group.get("DerivationImageSequence") or shared.get("DerivationImageSequence")
            if not identification and len(segments) != 1:
                raise MaskSelectionError(
                    path,
                    f"SEG frame {i + 1} does not say which segment it shows (no SegmentIdentificationSequence)",
                    "save the SEG with a segment identification per frame",
                )
            segment = int(identification[0].ReferencedSegmentNumber) if identification else number
            try:
                source = derivation[0].SourceImageSequence[0]
            except (AttributeError, IndexError, TypeError):
                raise MaskSelectionError(
                    path,
                    f"SEG frame {i + 1} does not say which scan frame it lies on (no DerivationImageSequence)",
                    "save the SEG with references to the source NM frames (3D Slicer and highdicom do)",
                ) from None
            frame_number = int(source.get("ReferencedFrameNumber", 1) or 1)
            refs.append((i, segment, str(source.ReferencedSOPInstanceUID), frame_number))
        refs = [r for r in refs if r[1] == number]
        missing = {uid for _, _, uid, fn in refs if (uid, fn) not in self._placements}
        if missing and self.search_sources:
            self._read_sources(missing, path)
            missing = {uid for _, _, uid, fn in refs if (uid, fn) not in self._placements}
        if missing:
            raise MaskSelectionError(
                path,
                f"its frames lie on scan SOP instance(s) {sorted(missing)}, which were not found",
                "keep the SEG next to its scan (same folder, or up to two folders above) in the dataset",
            )
        placements = [self._placements[(uid, fn)] for _, _, uid, fn in refs]
        view_shape = placements[0].view_shape
        mask = np.zeros((view_shape[0], 2 * view_shape[1]), dtype=bool)
        for (i, *_), placement in zip(refs, placements, strict=True):
            frame = binary[i]
            if frame.shape != placement.view_shape:
                raise ViewError(
                    path,
                    f"SEG frame {i + 1} is {frame.shape}, its scan frame {placement.view_shape}",
                    "draw the SEG on the scan it references",
                )
            frame = frame[:, ::-1] if placement.flip_lr else frame
            frame = frame[::-1] if placement.flip_ud else frame
            cols = slice(0, view_shape[1]) if placement.view == ANT else slice(view_shape[1], None)
            mask[:, cols] |= frame
        label = str(segments[number].get("SegmentLabel", ""))
        return mask.astype(np.float32), _meta(mask, modality="SEG", segment_number=number, segment_label=label)

    def _read_sources(self, uids: set[str], seg_path: str) -> None:
        """Find the DICOM files with these SOP instance UIDs near the SEG and read them (registers their frames).

        Searched: the SEG's folder, then its parent, then its grandparent (each with sub-folders, at most
        :attr:`MAX_SEARCH_FILES` files each; never a filesystem root).
        """
        folder = Path(seg_path).resolve().parent
        roots = [folder, folder.parent, folder.parent.parent]
        found: dict[str, str] = {}
        for root in roots:
            if root == Path(root.anchor) or root.parent == Path(root.anchor):
                break
            index = self._index_uids(root)
            found.update({uid: index[uid] for uid in uids if uid in index})
            if set(found) >= uids:
                break
        files = sorted(set(found.values()))
        if files:
            try:
                self._read_nm(files)
            except DataError as err:
                raise MaskSelectionError(seg_path, f"its scan cannot be read: {err}", "fix the scan first") from None

    MAX_SEARCH_FILES = 20000

    def _index_uids(self, root: Path) -> dict[str, str]:
        key = str(root)
        if key in self._uid_index:
            return self._uid_index[key]
        index: dict[str, str] = {}
        seen = 0
        for folder, dirs, names in os.walk(root, onerror=lambda _: None):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                seen += 1
                if seen > self.MAX_SEARCH_FILES:
                    break
                candidate = os.path.join(folder, name)
                if name.startswith(".") or sniff_format(candidate) != "dicom":
                    continue
                try:
                    header = pydicom.dcmread(candidate, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                    index[str(header.SOPInstanceUID)] = candidate
                except Exception:
                    continue
            if seen > self.MAX_SEARCH_FILES:
                break
        with self._lock:
            self._uid_index[key] = index
        return index

    # ---- PNG/TIFF and NIfTI -------------------------------------------------------------------------------------
    def _cached(self, path: str, loader) -> tuple[np.ndarray, dict]:
        key = (path, os.path.getmtime(path))
        with self._lock:
            if key in self._label_cache:
                self._label_cache.move_to_end(key)
                return self._label_cache[key]
        value = loader()
        with self._lock:
            self._label_cache[key] = value
            while len(self._label_cache) > 8:
                self._label_cache.popitem(last=False)
        return value

    def _read_pil(self, path: str, selector: str | None) -> tuple[np.ndarray, dict]:
        def load() -> tuple[np.ndarray, dict]:
            try:
                with Image.open(path) as img:
                    img.load()
                    mode, array = img.mode, np.asarray(img)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
                raise UnreadableFileError(path, f"cannot be read as an image ({err})", "re-save the file") from None
            return array, {"mode": mode}

        array, info = self._cached(path, load)
        if array.ndim == 3:
            if selector is not None and "," in selector:
                colour = np.array([int(c) for c in selector.split(",")])
                mask = np.all(array[..., :3] == colour, axis=-1)
                if not mask.any():
                    raise MaskSelectionError(
                        path,
                        f"colour #{selector} does not occur in this image",
                        "use one of the lesion colours of the label image",
                    )
                return mask.astype(np.float32), _meta(mask, label_value=selector)
            if array.shape[-1] in (2, 4):  # gray + alpha or RGBA: drop alpha
                array = array[..., :-1]
            if array.shape[-1] == 3 and not (
                np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
            ):
                raise MaskSelectionError(
                    path, "a colour (RGB) image", "select one lesion colour with '#R,G,B', or save it as grayscale"
                )
            array = array[..., 0]
        if array.ndim != 2:
            raise UnsupportedFormatError(path, f"image of shape {array.shape}, not 2-D", "save a 2-D (H, W) image")
        return self._select(path, array.astype(np.float32), selector, info["mode"])

    def _read_nifti(self, path: str, selector: str | None) -> tuple[np.ndarray, dict]:
        def load() -> tuple[np.ndarray, dict]:
            try:
                img = nib.load(path)
                array = np.asanyarray(img.dataobj)
            except Exception as err:
                raise UnreadableFileError(path, f"cannot be read as NIfTI ({err})", "re-save the file") from None
            return array, {"affine": np.asarray(img.affine, dtype=np.float64)}

        array, info = self._cached(path, load)
        if array.ndim > 2 and all(s == 1 for s in array.shape[2:]):
            array = array.reshape(array.shape[:2])
        if array.ndim != 2:
            raise UnsupportedFormatError(
                path, f"NIfTI of shape {array.shape}, not 2-D", "save one 2-D (H, W) image per file"
            )
        array, meta = self._select(path, array.astype(np.float32), selector, "nifti")
        meta["affine"], meta["original_affine"] = info["affine"], info["affine"].copy()
        return array, meta

    @staticmethod
    def _select(path: str, array: np.ndarray, selector: str | None, mode: str) -> tuple[np.ndarray, dict]:
        if selector is None:
            return array, _meta(array)
        if not selector.isdigit():
            raise MaskSelectionError(path, f"colour selector #{selector} on a {mode} image", "use '#N' (a value)")
        mask = array == float(selector)
        if not mask.any():
            values = np.unique(array)
            shown = ", ".join(f"{v:g}" for v in values[:20]) + (" ..." if len(values) > 20 else "")
            raise MaskSelectionError(
                path, f"label value #{selector} does not occur (values: {shown})", "use one of the lesion label values"
            )
        return mask.astype(np.float32), _meta(mask, label_value=selector)
