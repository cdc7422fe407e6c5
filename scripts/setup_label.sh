#!/usr/bin/env bash
# Create (or reuse) the MONAI Label environment of this bundle: .venv-label/ at the bundle root.
#
#   bash scripts/setup_label.sh            # then: .venv-label/bin/monailabel start_server --app ... --studies ...
#
# Idempotent: a complete environment is detected in about ten seconds and left as it is; an incomplete one is completed.
# Override the folder with LABEL_VENV=/path and the base interpreter with PYTHON=/path/to/python3.
#
# Why a separate environment, and what is in it:
# - `pip install monailabel` resolves `monai[...,torchvision]` and `sam2`, which pull a CUDA build of torch (~3 GB of
#   wheels with the NVIDIA libraries) in place of the CPU torch this bundle pins. Instead the venv is created with
#   --system-site-packages: torch (the base interpreter's, CPU or CUDA, whichever is installed there), monai, itk,
#   nibabel, ignite, scipy, scikit-learn and the bundle's other requirements are REUSED from the base interpreter, not
#   installed a second time. On top of them go monailabel 0.8.5 itself (--no-deps) and the light packages its server
#   imports (the list below, taken from the wheel's Requires-Dist minus what the base already has), about 470 MB on disk
#   (SimpleITK 264 MB, monailabel 53 MB, scikit-image 32 MB, pydicom 2.4 13 MB, pynetdicom 11 MB, the rest small), a
#   tenth of a CUDA torch.
# - pydicom 2.4 (inside the venv only; the base keeps pydicom 3): MONAI Label 0.8.5 imports
#   `pydicom._storage_sopclass_uids` (pydicom 2 only) and pynetdicom 2.1 requires pydicom < 3. The bundle's readers
#   work with both.
# - torchvision: monailabel/transform/post.py imports `torchvision.utils.make_grid, save_image` at module level (used
#   only by its debugging image-dump transform). The torchvision wheels on the registry are CUDA builds whose C
#   extension cannot load beside a CPU torch (`operator torchvision::nms does not exist`), and there is no CPU wheel
#   or source distribution there. When the base torch is a CPU build, a stand-in distribution named
#   `torchvision-stub-for-monailabel` (version 0.0.0+stub, a few lines written below) is installed into the venv: it
#   provides `torchvision.utils.make_grid/save_image`, which raise a clear error if ever called, and nothing else. The
#   annotation app and the stock monaibundle app never call them. When the base torch is a CUDA build (a GPU
#   workstation), the matching torchvision from the registry imports and is installed instead.
# - monai: the base's version again, inside the venv (see below: monai-deploy-app-sdk's monai/deploy needs pydicom 3).
# - pydicom-seg 0.4.1 (DICOM SEG conversion for MONAI Label's DICOMweb datastore) is imported by the server at start
#   but declares numpy < 2: it is installed with --no-deps (its import and MONAI Label's local datastore work with the
#   base's numpy 2; its DICOM SEG conversion, used only with a DICOMweb server as --studies, is untested here), with
#   SimpleITK, which it imports (264 MB installed, the largest part of the venv).
#   sam2 and numpymaxflow (scribbles) are left out: nothing imports them
#   unless those sample apps or datastores are used.
set -euo pipefail

BUNDLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LABEL_VENV:-$BUNDLE_ROOT/.venv-label}"
BASE_PYTHON="${PYTHON:-python3}"
MONAILABEL_VERSION="0.8.5"
# the light requirements of the monailabel 0.8.5 server that the base interpreter does not already provide
LIGHT_REQUIREMENTS=(
  "uvicorn>=0.29.0" "fastapi>=0.110.2" "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1"
  "timeloop>=1.0.2" "expiringdict>=1.2.2" "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0"
  "pydicom>=2.4.4,<3" "pynetdicom>=2.0.2,<3" "pynrrd>=1.0.0" "einops>=0.7.0" "passlib>=1.7.4" "pyjwt>=2.8.0"
  "bcrypt>=4.1.2" "shapely>=2.0.4" "requests-toolbelt>=1.0.0" "dicomweb-client>=0.59.1" "google-auth>=2.29.0"
  "python-dotenv>=1.0.1" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "scikit-image" "psutil" "SimpleITK" "jsonschema" "girder-client>=3.2.3"
)

# Everything that tells a complete environment, checked inside it in one interpreter start.
check_environment() {
  "$VENV/bin/python" - "$MONAILABEL_VERSION" <<'PYCHECK' >/dev/null 2>&1
import sys
import importlib.metadata as metadata

assert metadata.version("monailabel") == sys.argv[1]
import pydicom

assert pydicom.__version__.startswith("2.")
import skimage  # noqa: F401
import torchvision.utils  # noqa: F401  (the stub or a working torchvision)
import monailabel.transform.post  # noqa: F401  (the module that imports scikit-image, shapely and torchvision)
import monailabel.interfaces.app  # noqa: F401
import monailabel.app  # noqa: F401  (the FastAPI server)
import monailabel.tasks.infer.bundle  # noqa: F401
import bundle.engine.inference  # noqa: F401
PYCHECK
}

exec 9>"${TMPDIR:-/tmp}/setup_label.$(printf %s "$VENV" | md5sum | cut -c1-12).lock"
flock 9  # two test sessions or shells never build the same environment at once

if [ -x "$VENV/bin/python" ] && check_environment; then
  echo "MONAI Label environment ready: $VENV (monailabel $MONAILABEL_VERSION)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV from $BASE_PYTHON (--system-site-packages: reuses its torch, monai and the bundle's packages)"
  "$BASE_PYTHON" -m venv --system-site-packages "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
PIP_INSTALL_FLAGS=(--no-warn-conflicts)  # monailabel declares sam2, numpymaxflow, ninja, left out on purpose (above)

# Never replace the base interpreter's torch or numpy: pin them to the installed versions for every install below.
CONSTRAINTS="$VENV/label-constraints.txt"
"$VENV/bin/python" - >"$CONSTRAINTS" <<'PYPINS'
import importlib.metadata as metadata

for name in ("torch", "numpy", "monai", "scipy", "scikit-learn", "itk", "nibabel", "pytorch-ignite", "pillow"):
    try:
        print(f"{name}=={metadata.version(name).split('+')[0]}")
    except metadata.PackageNotFoundError:
        pass
PYPINS

"${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" --no-deps "monailabel==$MONAILABEL_VERSION"
# monai-deploy-app-sdk (a bundle requirement) installs into the base's monai/deploy/, which `import monai` loads and
# which needs pydicom 3; the same monai version installed into the venv (a ~3 MB wheel, no dependencies) shadows the
# base's monai folder, so `import monai` in the venv does not see monai/deploy.
if "$VENV/bin/python" -c "import importlib.util, os, sys
monai_folder = importlib.util.find_spec('monai').submodule_search_locations[0]  # found, not imported
sys.exit(0 if os.path.isdir(os.path.join(monai_folder, 'deploy')) else 1)"; then
  "${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" --no-deps --ignore-installed "$(grep '^monai==' "$CONSTRAINTS")"
fi
"${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" -c "$CONSTRAINTS" "${LIGHT_REQUIREMENTS[@]}"
"${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" --no-deps "pydicom-seg==0.4.1"

# torchvision: the registry's build when the base torch is a CUDA build, else the stub (see the header).
if ! "$VENV/bin/python" -c "import torchvision.utils" >/dev/null 2>&1; then
  if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    TORCH_VERSION="$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")"
    "${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION" torchvision
  else
    STUB_SRC="$(mktemp -d)"
    trap 'rm -rf "$STUB_SRC"' EXIT
    mkdir -p "$STUB_SRC/torchvision"
    cat >"$STUB_SRC/pyproject.toml" <<'TOML'
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "torchvision-stub-for-monailabel"
version = "0.0.0+stub"
description = "Stand-in for torchvision in the bone-scan bundle's MONAI Label venv (CPU torch): torchvision.utils.make_grid/save_image only, raising when called. Written by scripts/setup_label.sh."

[tool.setuptools]
packages = ["torchvision"]
TOML
    cat >"$STUB_SRC/torchvision/__init__.py" <<'PY'
"""Stand-in for torchvision written by the bone-scan bundle's scripts/setup_label.sh (not the real torchvision).

MONAI Label 0.8.5 imports torchvision.utils at module level for a debugging transform only; the registry's
torchvision builds need a CUDA torch. This package provides those two names, which raise when called.
"""

__version__ = "0.0.0+stub"
PY
    cat >"$STUB_SRC/torchvision/utils.py" <<'PY'
"""make_grid and save_image names for MONAI Label's imports; calling them raises (no real torchvision here)."""


def _unavailable(*args: object, **kwargs: object) -> None:
    raise RuntimeError(
        "torchvision is not installed in this MONAI Label environment (a CPU torch; the registry's torchvision is a "
        "CUDA build): this is the stand-in written by scripts/setup_label.sh"
    )


make_grid = _unavailable
save_image = _unavailable
PY
    "${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" --no-deps "$STUB_SRC"
  fi
fi

# The bundle itself: the base interpreter's editable install is visible through --system-site-packages; otherwise
# install it (editable, no dependencies: they come from the base interpreter).
if ! "$VENV/bin/python" -c "import bundle.engine.inference" >/dev/null 2>&1; then
  "${PIP[@]}" install "${PIP_INSTALL_FLAGS[@]}" --no-deps -e "$BUNDLE_ROOT"
fi

if ! check_environment; then
  echo "The MONAI Label environment in $VENV is incomplete; the failing import:" >&2
  "$VENV/bin/python" -c "import monailabel.transform.post, monailabel.app, monailabel.tasks.infer.bundle, \
bundle.engine.inference" >&2 || true
  exit 1
fi
echo "MONAI Label environment ready: $VENV (monailabel $MONAILABEL_VERSION, $(du -sh "$VENV" | cut -f1) on disk)"
