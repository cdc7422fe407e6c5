"""File paths of a dataset: relative paths resolved against ``dataset_dir``, ``path#N`` mask selectors, and the
kind of a file told from its first bytes. Standard library only (a datalist is read without MONAI)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = [
    "DICOM_SUFFIXES",
    "EXTENSIONS",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
    "image_key",
    "resolve",
    "sniff_format",
    "split_selector",
    "stem",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PIL_SUFFIXES = (".png", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# every suffix a scan or mask may have, longest first where one ends another
EXTENSIONS = (".nii.gz", ".nii", *DICOM_SUFFIXES, *PIL_SUFFIXES)
_SELECTOR = re.compile(r"^(\d+|\d+,\d+,\d+)$")


def resolve(path: str | Sequence[str], dataset_dir: str | os.PathLike) -> str | list[str]:
    """``path`` joined to ``dataset_dir`` unless absolute; a list (a scan's two single-view files) element-wise."""
    if not isinstance(path, str):
        return [str(resolve(p, dataset_dir)) for p in path]
    return path if os.path.isabs(path) else os.path.join(dataset_dir, path)


def image_key(image: str | Sequence[str]) -> str:
    """A hashable key for an entry's ``image`` (a path, or the list of a scan's two single-view files)."""
    return image if isinstance(image, str) else "|".join(map(str, image))


def stem(name: str) -> str:
    """A file name without its scan/mask extension (``P1.nii.gz`` → ``P1``)."""
    lower = name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def split_selector(path: str | os.PathLike) -> tuple[str, str | None]:
    """Split ``"masks/P1.png#3"`` into ``("masks/P1.png", "3")``; a path without a selector gives ``(path, None)``.

    A ``#`` suffix is a selector only when it is a number (label value, palette index, segment number) or an
    ``R,G,B`` colour, and the full path is not itself an existing file.
    """
    text = os.fspath(path)
    base, sep, suffix = text.rpartition("#")
    if sep and base and _SELECTOR.match(suffix) and not os.path.isfile(text):
        return base, suffix
    return text, None


def sniff_format(path: str | os.PathLike) -> str | None:
    """File kind from its first bytes, else from its suffix: ``dicom``, ``png``, ``tiff``, ``nifti`` or None."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(348)
    except OSError:
        return None
    lower = path.lower()
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if lower.endswith(NIFTI_SUFFIXES) or (len(head) >= 348 and head[344:347] in (b"n+1", b"ni1")):
        return "nifti"
    if lower.endswith(DICOM_SUFFIXES) or "." not in os.path.basename(lower):
        return "dicom"  # DICOM without preamble, or not DICOM at all: pydicom decides
    if lower.endswith(PIL_SUFFIXES):
        return "png" if lower.endswith(".png") else "tiff"
    return None
