"""Shared fixtures: a small phantom data set (made once per session) and helpers to run the bundle CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# small and fast: 256x128 scans, trained at 64x32
TINY_OVERRIDES = ["--spatial_size", "[64,32]", "--batch_size", "4", "--num_workers", "0"]


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A 20-patient phantom (256x128 scans, 5 folds) with its datalist.json."""
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    out = tmp_path_factory.mktemp("phantom") / "data"
    generate_dataset(out, patients=20, seed=3, config=PhantomConfig(height=256, width=128), num_folds=5)
    return out


def bundle_path(arg: str) -> str:
    """A config path given relative to the bundle root (``configs/x.yaml`` or ``"['configs/a.yaml','configs/b.yaml']"``)
    made absolute; any other argument unchanged."""
    if arg.startswith("configs/"):
        return str(REPO_ROOT / arg)
    return arg.replace("'configs/", f"'{REPO_ROOT}/configs/") if arg.startswith("['configs/") else arg


def run_python(
    *args: str, check: bool = True, timeout: int = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from ``cwd`` (default: a folder outside the bundle); output captured, exit status checked
    unless ``check`` is false."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workdir = cwd if cwd is not None else Path(tempfile.gettempdir())
    result = subprocess.run(
        [sys.executable, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:3])} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def run_bundle(
    *args: str, check: bool = True, timeout: int = 600, cwd: Path | None = None, bundle_root: Path = REPO_ROOT
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS --bundle_root BUNDLE_ROOT`` from a folder outside the bundle, as MONAI Label,
    MONAI Deploy and the Model Zoo's CI do (config paths in ARGS may be relative to the bundle root); output captured.
    """
    bundle_args = [*map(bundle_path, args), "--bundle_root", str(bundle_root)]
    return run_python("-m", "monai.bundle", *bundle_args, check=check, timeout=timeout, cwd=cwd)


def train_tiny(dataset_dir: Path, output_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """The mission command at tiny size: ``run training --config_file configs/train.yaml`` with overrides."""
    return run_bundle(
        "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(dataset_dir),
        "--output_dir", str(output_dir), *TINY_OVERRIDES, *extra, check=check,
    )  # fmt: skip


def evaluate_tiny(dataset_dir: Path, output_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """``run evaluating`` with train.yaml + evaluate.yaml at tiny size."""
    return run_bundle(
        "run", "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir), *TINY_OVERRIDES, *extra, check=check,
    )  # fmt: skip


def save_seeded_resnet50(path: Path):
    """Save (and return, in eval mode) a seeded ResNet50 whose BatchNorm statistics are away from (0, 1), as after
    training, as a plain state_dict (Model Zoo ``models/model.pt``)."""
    import torch

    from bundle.nets import build_network

    torch.manual_seed(0)
    net = build_network("resnet50")
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), path)
    return net.eval()


def save_nifti(path: Path, array) -> str:
    """Save a 2-D (H, W) array as NIfTI with an identity affine (the layout the bundle reads); returns the name."""
    import nibabel as nib
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path.name


def copy_first_scans(source: Path, destination: Path, count: int = 3) -> tuple[list[dict], list[str]]:
    """Copy the first ``count`` scans of ``source``'s datalist with their masks to ``destination`` (same relative
    paths); returns their datalist entries and scan paths, for tests that then spoil some of the copies."""
    import json
    import shutil

    entries = json.loads((source / "datalist.json").read_text())["training"]
    scans = list(dict.fromkeys(e["image"] for e in entries))[:count]
    entries = [e for e in entries if e["image"] in scans]
    for entry in entries:
        for key in ("image", "mask"):
            (destination / entry[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / entry[key], destination / entry[key])
    return entries, scans
