"""MONAI Label (docs/label.md): the stock ``monaibundle`` app serving the bundle, and the annotation app bundle/label.

Each test starts a real MONAI Label server from the Label environment (``bash scripts/setup_label.sh`` ->
``.venv-label``, built once or reused) on 127.0.0.1 and a free port, with phantom scans as its studies, and stops it
by its process group at the end, also when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, run_bundle, save_seeded_resnet50

requests = pytest.importorskip("requests")

LABEL_VENV = REPO_ROOT / ".venv-label"
STOCK_MODEL = "bone_scan_lesion_classification"
SERVER_START_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def label_env() -> Path:
    """The Label environment (.venv-label), created by scripts/setup_label.sh or reused when complete."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup_label.sh")], capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise AssertionError(f"scripts/setup_label.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return LABEL_VENV


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def label_server(venv: Path, app: Path, studies: Path, log: Path, *conf: str) -> Iterator[str]:
    """Start ``monailabel start_server`` (from ``venv``) on a free port; yields its base URL; stops it (SIGTERM, then
    SIGKILL, to its own process group) on leaving, whatever happened."""
    port = free_port()
    conf_args = [arg for pair in zip(conf[::2], conf[1::2], strict=True) for arg in ("--conf", *pair)]
    command = [
        str(venv / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port), *conf_args,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command, cwd=log.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer /info/:\n{log.read_text()[-4000:]}")
            time.sleep(1.0)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


def server_log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


@pytest.fixture(scope="module")
def studies(phantom_dir: Path, tmp_path_factory) -> Path:
    """MONAI Label's local datastore: three phantom scans (NIfTI) named by patient id."""
    folder = tmp_path_factory.mktemp("label_studies")
    for patient in ("P00001", "P00002", "P00003"):
        shutil.copy(phantom_dir / "images" / f"{patient}.nii.gz", folder / f"{patient}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory) -> Path:
    """A plain state_dict of the bundle's ResNet50 (models/model.pt layout): seeded BatchNorm statistics, and the last
    layer scaled down so that probabilities stay away from 0 and 1 (so 1e-5 agreement means the same weights)."""
    import torch

    path = tmp_path_factory.mktemp("label_model") / "model.pt"
    net = save_seeded_resnet50(path)
    state = net.state_dict()
    state["fc.weight"] = state["fc.weight"] * 0.02
    state["fc.bias"] = state["fc.bias"] * 0.0
    torch.save(state, path)
    return path


def bundle_inference(phantom_dir: Path, masks: list[str], checkpoint: Path, out: Path) -> list[float]:
    """P(malignant) of each mask (of scan P00001) from the bundle's own configs/inference.yaml, in the main Python."""
    datalist = out / "datalist.json"
    out.mkdir(parents=True, exist_ok=True)
    entries = [{"image": str(phantom_dir / "images" / "P00001.nii.gz"), "mask": m} for m in masks]
    datalist.write_text(json.dumps({"testing": entries}))
    run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--meta_file", "configs/metadata.json",
        "--dataset_dir", str(phantom_dir), "--datalist", str(datalist), "--checkpoint", str(checkpoint),
        "--output_dir", str(out / "result"),
    )  # fmt: skip
    lesions = json.loads((out / "result" / "predictions.json").read_text())["lesions"]
    return [float(lesion["probability"]) for lesion in lesions]


def test_stock_monaibundle_app_equals_inference_yaml(
    label_env: Path, studies: Path, phantom_dir: Path, classifier_checkpoint: Path, tmp_path: Path
) -> None:
    """The stock sample app serves the bundle copied into APP/model/<name>: /info/ lists a 2-D classification model
    with the bundle's labels, and /infer with an uploaded lesion mask returns inference.yaml's probabilities."""
    env = {**os.environ, "PATH": f"{label_env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [str(label_env / "bin" / "monailabel"), "apps", "--download", "--name", "monaibundle", "--output",
         str(tmp_path / "apps")],
        check=True, capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    app = tmp_path / "apps" / "monaibundle"
    model = app / "model" / STOCK_MODEL
    shutil.copytree(REPO_ROOT / "configs", model / "configs")
    shutil.copytree(REPO_ROOT / "bundle", model / "bundle", ignore=shutil.ignore_patterns("__pycache__"))
    (model / "models").mkdir()
    shutil.copy(classifier_checkpoint, model / "models" / "model.pt")

    masks = [str(p) for p in sorted((phantom_dir / "masks").glob("P00001_L*.nii.gz"))[:3]]
    assert masks, "the phantom scan P00001 has no lesion masks"
    expected = bundle_inference(phantom_dir, masks, classifier_checkpoint, tmp_path / "inference")
    assert all(0.01 < p < 0.99 for p in expected), expected  # a discriminating comparison

    log = tmp_path / "stock_server.log"
    conf = ("models", STOCK_MODEL, "zoo_source", "github", "skip_trainers", "true", "sam2", "false")
    with label_server(label_env, app, studies, log, *conf) as url:
        info = requests.get(f"{url}/info/", timeout=30).json()
        assert info["models"][STOCK_MODEL]["type"] == "classification"
        assert info["models"][STOCK_MODEL]["labels"] == {"benign": 0, "malignant": 1}
        assert info["models"][STOCK_MODEL]["dimension"] == 2
        served = []
        for mask in masks:
            with open(mask, "rb") as upload:
                response = requests.post(
                    f"{url}/infer/{STOCK_MODEL}", params={"image": "P00001", "output": "json"},
                    files={"label": (Path(mask).name, upload)}, data={"params": "{}"}, timeout=300,
                )  # fmt: skip
            assert response.status_code == 200, f"{response.status_code} {response.text}\n{server_log_tail(log)}"
            scores = {p["label"]: p["score"] for p in response.json()["prediction"]}
            assert scores["benign"] + scores["malignant"] == pytest.approx(1.0, abs=1e-5)
            served.append(scores["malignant"])
        assert "Checkpoint keys don't match" not in log.read_text()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
