"""The bundle's error types: one problem of one input (:class:`DataError` and its kinds), and every problem found in
one input at once (:class:`ProblemsError`).

Every message names the file (or the datalist entry, or the predictions row) and says how to fix the problem. This
module needs nothing but the standard library, so reading a datalist or a predictions file never imports MONAI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = [
    "BuildError",
    "CountsError",
    "DataError",
    "DicomReadError",
    "DuplicateLesionError",
    "EmptyMaskError",
    "EntryKeyError",
    "FoldClassError",
    "FoldValueError",
    "MalformedDatalistError",
    "MaskSelectionError",
    "MissingFileError",
    "NonBinaryMaskError",
    "NotWholeBodyNMError",
    "PatientFoldError",
    "ProblemsError",
    "ScanWarning",
    "ShapeMismatchError",
    "SingleViewError",
    "UnknownLabelError",
    "UnreadableFileError",
    "UnsupportedFormatError",
    "ViewError",
    "describe",
]

# a ProblemsError message lists this many problems, then says how many more there are
MAX_LISTED_PROBLEMS = 20


class DataError(ValueError):
    """One problem with one input; the message names the file (or datalist entry) and says how to fix it.

    Args:
        path: the file or entry the problem is about (empty for a problem of the datalist as a whole).
        problem: what is wrong.
        fix: what to do about it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str = ""):
        self.path, self.problem, self.fix = str(path or ""), problem, fix
        super().__init__((f"{self.path}: " if self.path else "") + problem + (f". Fix: {fix}" if fix else ""))

    def for_users(self, users: Sequence[str]) -> DataError:
        """The same error, its problem naming the lesions that use the file (at most five shown)."""
        shown = ", ".join(repr(u) for u in users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        what = "lesion_id" if len(users) == 1 else "lesion_ids"
        new = type(self)(self.path, f"{self.problem} (used by {what} {shown})", self.fix)
        new.__cause__ = self.__cause__
        return new


# ---- files ------------------------------------------------------------------------------------------------------
class MissingFileError(DataError):
    """A scan or mask file (or folder) does not exist."""


class UnsupportedFormatError(DataError):
    """A file is neither DICOM, NIfTI, PNG nor TIFF, or not a 2-D image."""


class UnreadableFileError(DataError):
    """A file of a supported format cannot be read (corrupt, truncated)."""


class DicomReadError(UnreadableFileError):
    """A DICOM file cannot be parsed or its pixel data cannot be decoded."""


class NotWholeBodyNMError(DataError):
    """A DICOM file is not a nuclear-medicine whole-body scan (CT, SPECT, a screenshot, a static spot view...)."""


class ViewError(DataError):
    """Wrong number of frames, or the anterior/posterior views cannot be identified or put together."""


class CountsError(DataError):
    """Counts are NaN/Inf, or negative in losslessly stored data."""


class MaskSelectionError(DataError):
    """A ``path#N`` selector names no label value/segment of the file, or a multi-label file has no selector."""


# ---- a scan and its mask ----------------------------------------------------------------------------------------
class ShapeMismatchError(DataError):
    """A mask's shape differs from its scan's shape after the views are put side by side."""


class EmptyMaskError(DataError):
    """A mask has no lesion pixel."""


class NonBinaryMaskError(DataError):
    """A mask has more than one non-zero value (a label image), negative or fractional values."""


class SingleViewError(DataError):
    """A scan has one view only, and training needs anterior and posterior views."""


# ---- datalists --------------------------------------------------------------------------------------------------
class MalformedDatalistError(DataError):
    """The datalist file is missing, is not valid JSON, or has no ``training`` list."""


class EntryKeyError(DataError):
    """A datalist entry is not an object or lacks a required key."""


class UnknownLabelError(DataError):
    """A label is not 0 (benign) or 1 (malignant)."""


class FoldValueError(DataError):
    """A fold is not a non-negative integer, or is outside 0..num_folds-1."""


class DuplicateLesionError(DataError):
    """Two entries share a lesion id."""


class PatientFoldError(DataError):
    """A patient's lesions are in more than one fold."""


class FoldClassError(DataError):
    """A fold has no benign or no malignant lesion."""


class BuildError(DataError):
    """A file of the source folder or CSV cannot be turned into datalist entries."""


class ScanWarning(UserWarning):
    """Something was read with an assumption the user should know about (single view, lossy negatives clipped)."""


# ---- every problem of one input ---------------------------------------------------------------------------------
def describe(error: Exception | str) -> str:
    """One line for a problem; a :class:`ProblemsError` as ``source: its problems``."""
    if isinstance(error, ProblemsError):
        return f"{error.source}: " + "; ".join(error.problems)
    return str(error)


class ProblemsError(ValueError):
    """Every problem found in one input (a datalist and its files, a predictions file...), raised at once.

    Args:
        source: the input (a file path, or a short name such as ``"datalist"``).
        problems: the problems, each an exception (a :class:`DataError` names its file and fix) or a message.

    Attributes:
        errors: the problems that are exceptions; ``problems``: every problem as one line.
    """

    def __init__(self, source: str | os.PathLike, problems: Sequence[Exception | str]):
        self.source = str(source)
        self.errors = [p for p in problems if isinstance(p, Exception)]
        self.problems = [describe(p) for p in problems]
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        listing = "\n".join(f"  - {p}" for p in shown)
        more = len(self.problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{self.source}: {len(self.problems)} problem(s) found:\n{listing}{tail}")
