"""Export: ckpt_export with inference.yaml alone (TorchScript equals eager), ONNX via MONAI with onnxruntime parity.

The Model Zoo's own checks (verify_net_in_out, export from the zoo's root) are in test_zoo.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from .conftest import REPO_ROOT, run_bundle, save_seeded_resnet50

META = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())
IMAGE_SPEC = META["network_data_format"]["inputs"]["image"]
SHAPE = (IMAGE_SPEC["num_channels"], *IMAGE_SPEC["spatial_shape"])  # (2, 512, 256)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python scripts/export_onnx.py ARGS`` from ``cwd`` (outside the bundle); output captured."""
    command = [sys.executable, str(REPO_ROOT / "scripts" / "export_onnx.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A seeded ResNet50 with BatchNorm statistics of real magnitude, and its plain state_dict file (model.pt)."""
    path = tmp_path_factory.mktemp("models") / "model.pt"
    net = save_seeded_resnet50(path)
    return net, path


def test_ckpt_export_with_inference_yaml_alone(trained, tmp_path):
    """The Model Zoo CI command (with tmp paths): TorchScript output equals the eager model's."""
    net, ckpt = trained
    ts_file = tmp_path / "model.ts"
    run_bundle(
        "ckpt_export", "network_def", "--filepath", str(ts_file), "--ckpt_file", str(ckpt),
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml",
    )  # fmt: skip
    scripted = torch.jit.load(ts_file)
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-6)
    names = zipfile.ZipFile(ts_file).namelist()
    meta_name = next(n for n in names if n.endswith("extra/metadata.json"))
    assert json.loads(zipfile.ZipFile(ts_file).read(meta_name))["version"] == META["version"]


def test_onnx_export_matches_pytorch(trained, tmp_path):
    """scripts/export_onnx.py (MONAI's onnx_export + an onnxruntime check) writes one ONNX file whose logits match
    PyTorch's within 1e-4 at a batch size other than the traced one."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="optional extra: pip install -e .[onnx]")
    pytest.importorskip("onnxscript", reason="optional extra: pip install -e .[onnx]")
    net, ckpt = trained
    onnx_file = tmp_path / "model.onnx"
    result = run_script("--ckpt_file", str(ckpt), "--filepath", str(onnx_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = re.search(r"max \|difference\| = (\S+) \(allowed 0.0001\)", result.stderr)
    assert printed is not None and 0 <= float(printed.group(1)) <= 1e-4, result.stderr[-2000:]
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch_size in (2,):  # the script checked batches 1 and 3 (dynamic batch)
        x = torch.rand(batch_size, *SHAPE, generator=torch.Generator().manual_seed(batch_size))
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(["logits"], {"image": x.numpy()})[0]
        assert got.shape == (batch_size, 2)
        assert abs(got - expected).max() < 1e-4


def test_onnx_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_script(
        "--ckpt_file", str(tmp_path / "absent.pt"), "--filepath", str(tmp_path / "m.onnx"), cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'absent.pt'}: checkpoint not found" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
