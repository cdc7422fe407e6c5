"""dciodvfy (dicom3tools), the standard independent checker of DICOM objects, for tests of every DICOM writer.

``dciodvfy FILE`` checks a file against its IOD's modules and prints ``Error - ...`` and ``Warning - ...`` lines;
tests assert that the project's files draw no errors. CI installs it (Debian package ``dicom3tools``); where it is
missing, tests marked :data:`requires_dciodvfy` are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

requires_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed"
)


def dciodvfy_lines(path: str | os.PathLike) -> list[str]:
    """Every line dciodvfy prints for ``path`` (it reports on stderr)."""
    result = subprocess.run(["dciodvfy", os.fspath(path)], capture_output=True, text=True, timeout=120, check=False)
    return (result.stdout + result.stderr).splitlines()


def dciodvfy_errors(path: str | os.PathLike) -> list[str]:
    """dciodvfy's ``Error`` lines for ``path`` (empty for a conformant object)."""
    return [line for line in dciodvfy_lines(path) if line.startswith("Error")]


def dciodvfy_warnings(path: str | os.PathLike) -> list[str]:
    """dciodvfy's ``Warning`` lines for ``path``."""
    return [line for line in dciodvfy_lines(path) if line.startswith("Warning")]
