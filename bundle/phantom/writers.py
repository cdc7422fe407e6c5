"""Output formats of the phantom: one :class:`ScanWriter` per format, looked up by name in :data:`WRITERS`.

A writer receives the whole :class:`~bundle.phantom.scan.PhantomScan`, so a format that stores the two views as
acquired (e.g. a 2-frame DICOM NM image: ``scan.anterior`` and ``scan.posterior``) has everything it needs::

    from bundle.phantom.writers import ScanWriter, register_writer
    register_writer("dicom", ScanWriter(".dcm", write_dicom_image, write_dicom_mask, "2-frame DICOM NM"))

after which ``python -m bundle.phantom --format dicom`` works (the CLI offers every registered format).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from bundle.phantom.dicom import write_phantom_image, write_phantom_mask
from bundle.phantom.scan import PhantomScan

PNG_COMPRESS_LEVEL = 1
NIFTI_GZIP_LEVEL = 1
NIFTI_DATA_OFFSET = 352  # 348-byte header + 4-byte extension flag (no extensions)


@dataclass(frozen=True)
class ScanWriter:
    """How one output format stores a scan and its lesion masks.

    Args:
        extension: file-name ending including the dot, e.g. ``".nii.gz"``.
        write_image: ``write_image(path, scan)`` stores the scan (stored layout: ``scan.image``, shape (H, W)).
        write_mask: ``write_mask(path, mask, scan)`` stores one lesion mask, uint8 0/1 of shape (H, W).
        description: one line for ``--help`` and the docs.
        write_labels: ``write_labels(path, labels)`` stores a label image (H, W) of values 0-255: the skeletal-region
            map and the lesion label image of a scan; NIfTI unless given.
        labels_extension: file-name ending of the label images.
    """

    extension: str
    write_image: Callable[[Path, PhantomScan], None]
    write_mask: Callable[[Path, np.ndarray, PhantomScan], None]
    description: str = ""
    write_labels: Callable[[Path, np.ndarray], None] | None = None
    labels_extension: str = ".nii.gz"

    def save_labels(self, path: Path, labels: np.ndarray) -> None:
        """Store a label image (H, W) with ``write_labels`` (uint8 NIfTI when None)."""
        (self.write_labels or _nifti_labels)(path, np.asarray(labels, np.uint8))


def write_nifti(path: str | Path, array: np.ndarray) -> None:
    """Save a 2-D array as gzipped NIfTI-1 with an identity affine, so ``nibabel.load(path).get_fdata()`` is ``array``.

    Same header as ``nibabel.save(Nifti1Image(array, np.eye(4)), path)`` but written in one piece (nibabel writes a
    C-ordered array row by row) and with a zero gzip timestamp, so equal arrays give byte-identical files.
    """
    header = nib.Nifti1Image(array, np.eye(4)).header
    header["vox_offset"] = NIFTI_DATA_OFFSET
    payload = header.binaryblock + b"\0" * (NIFTI_DATA_OFFSET - len(header.binaryblock)) + array.tobytes(order="F")
    Path(path).write_bytes(gzip.compress(payload, compresslevel=NIFTI_GZIP_LEVEL, mtime=0))


def _nifti_image(path: Path, scan: PhantomScan) -> None:
    write_nifti(path, scan.image)


def _nifti_mask(path: Path, mask: np.ndarray, scan: PhantomScan) -> None:
    write_nifti(path, np.asarray(mask, np.uint8))


def _nifti_labels(path: Path, labels: np.ndarray) -> None:
    write_nifti(path, labels)


def _png_labels(path: Path, labels: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(labels, np.uint8)).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _png_image(path: Path, scan: PhantomScan) -> None:
    Image.fromarray(scan.image.astype(np.uint16)).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _png_mask(path: Path, mask: np.ndarray, scan: PhantomScan) -> None:
    Image.fromarray(np.ascontiguousarray(mask, np.uint8)).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


WRITERS: dict[str, ScanWriter] = {
    "nifti": ScanWriter(
        ".nii.gz", _nifti_image, _nifti_mask, "NIfTI-1, gzip: scan int16 counts, masks uint8 0/1, affine = identity"
    ),
    "png": ScanWriter(
        ".png", _png_image, _png_mask, "PNG: scan 16-bit grey counts, masks 8-bit 0/1", _png_labels, ".png"
    ),
    "dicom": ScanWriter(
        ".dcm",
        write_phantom_image,
        write_phantom_mask,
        "DICOM: 2-frame NM whole-body scan (ANT/POST view codes) + one DICOM SEG per lesion (label images: NIfTI)",
    ),
}


def register_writer(name: str, writer: ScanWriter) -> None:
    """Make ``name`` available as an output format (replaces a writer of the same name)."""
    if not writer.extension.startswith("."):
        raise ValueError(f"extension must start with a dot, got {writer.extension!r}")
    WRITERS[name] = writer
