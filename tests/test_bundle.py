"""The bundle as users run it: the mission command, evaluate.yaml, resume, determinism, properties, metadata."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, create_workflow, verify_net_in_out
from sklearn.metrics import confusion_matrix, roc_auc_score

from bundle.data.datalist import read_datalist, write_datalist
from bundle.nets.pretrained import PretrainedWeightsError
from bundle.phantom import PhantomConfig, generate_dataset

from .conftest import REPO_ROOT, TINY_OVERRIDES, evaluate_tiny, train_tiny

META = REPO_ROOT / "configs" / "metadata.json"


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """Two epochs of the mission command on the phantom, then evaluate.yaml on its checkpoint."""
    out = tmp_path_factory.mktemp("run") / "fold0"
    train_log = train_tiny(phantom_dir, out, "--max_epochs", "2")
    eval_log = evaluate_tiny(phantom_dir, out)
    return out, train_log.stdout + train_log.stderr, eval_log.stdout + eval_log.stderr


def test_mission_command_writes_checkpoints_and_logs(trained):
    out, log, _ = trained
    ckpt = out / "checkpoints"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.pt", "model_final.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"} <= names
    assert not [n for n in names if n.startswith(".") or n.startswith("tmp")]  # no half-written files
    state = torch.load(ckpt / "model.pt", weights_only=True)  # a plain state_dict (Model Zoo models/model.pt)
    assert "conv1.weight" in state and state["conv1.weight"].shape == (64, 2, 7, 7)
    assert state["fc.weight"].shape == (2, 2048)
    resume = torch.load(ckpt / "checkpoint_epoch=2.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "best_model_saver"} <= set(resume)
    assert resume["trainer"]["iteration"] == 2 * resume["trainer"]["epoch_length"]  # ignite stores no epoch
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "val_auc" in log and "best validation val_auc" in log


def test_evaluate_writes_predictions_and_metrics_of_the_test_fold(trained, phantom_dir):
    out, _, log = trained
    entries = read_datalist(phantom_dir / "datalist.json")["training"]
    test_ids = {e["lesion_id"] for e in entries if e["fold"] == 0}
    with open(out / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["lesion_id"] for r in rows} == test_ids
    truth = {e["lesion_id"]: e["label"] for e in entries}
    assert all(int(r["label"]) == truth[r["lesion_id"]] for r in rows)

    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    assert all(int(r["prediction"]) == int(float(r["probability"]) >= 0.5) for r in rows)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.5, labels=[0, 1]).ravel()
    assert metrics["n"] == len(test_ids)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (tp, fp, tn, fn)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-5)  # probabilities rounded to 1e-6
    assert metrics["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert metrics["model_selection"].startswith("best AUC on the inner validation split")
    assert "predictions written to" in log


def test_same_seed_gives_same_metrics(trained, phantom_dir, tmp_path):
    out, _, _ = trained
    again = tmp_path / "again"
    train_tiny(phantom_dir, again, "--max_epochs", "2")
    evaluate_tiny(phantom_dir, again)
    first = json.loads((out / "eval" / "metrics.json").read_text())
    second = json.loads((again / "eval" / "metrics.json").read_text())
    for key in ("auc", "accuracy", "sensitivity", "specificity", "tp", "fp", "tn", "fn"):
        assert first[key] == second[key], key
    a = torch.load(out / "checkpoints" / "model_final.pt", weights_only=True)
    b = torch.load(again / "checkpoints" / "model_final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_from_the_last_checkpoint(phantom_dir, tmp_path):
    out = tmp_path / "resumed"
    train_tiny(phantom_dir, out, "--max_epochs", "1")
    first = torch.load(out / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    log = train_tiny(phantom_dir, out, "--max_epochs", "2", "--resume", "true")
    text = log.stdout + log.stderr
    assert "resuming from" in text and "checkpoint_epoch=1.pt" in text
    assert "Engine run resuming from iteration" in text and "epoch 1 until 2 epochs" in text
    second = torch.load(out / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert second["trainer"]["iteration"] == 2 * first["trainer"]["iteration"]


@pytest.fixture(scope="module")
def six_patients(tmp_path_factory) -> Path:
    """6 patients in 3 folds: with fold 0 held out and val_fraction 0.3, 14 training lesions (2 batches of 6, the
    last 2 dropped, so the shuffle decides which lesions each epoch trains on) and 8 validation lesions."""
    out = tmp_path_factory.mktemp("six_patients") / "data"
    generate_dataset(out, patients=6, seed=3, config=PhantomConfig(height=256, width=128), num_folds=3)
    return out


def train_in_process(dataset_dir: Path, output_dir: Path, **overrides) -> dict[str, dict[str, torch.Tensor]]:
    """train.yaml's `training` in this process through ConfigWorkflow at tiny size (64x32, 2 steps an epoch).

    Returns:
        the final and best weights: ``{"model_final.pt": state_dict, "model.pt": state_dict}``.
    """
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / "configs" / "train.yaml"), meta_file=str(META), logging_file=False,
        workflow_type="train", bundle_root=str(REPO_ROOT), dataset_dir=str(dataset_dir), output_dir=str(output_dir),
        spatial_size=[64, 32], batch_size=6, num_workers=0, val_fraction=0.3, **overrides,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    ckpt_dir = output_dir / "checkpoints"
    return {name: torch.load(ckpt_dir / name, weights_only=True) for name in ("model_final.pt", "model.pt")}


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(six_patients, tmp_path):
    """Train 3 epochs; stop after 1 and resume to 3: every parameter and buffer of the final model, and of the best
    model (the best-model record is restored), ends bit-identical (CPU, same thread count)."""
    uninterrupted = train_in_process(six_patients, tmp_path / "uninterrupted", max_epochs=3)
    train_in_process(six_patients, tmp_path / "resumed", max_epochs=1)
    resumed = train_in_process(six_patients, tmp_path / "resumed", max_epochs=3, resume=True)
    kept = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert kept == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]  # the stopped run's epoch 1 rotated out
    for name in ("model_final.pt", "model.pt"):
        expected, got = uninterrupted[name], resumed[name]
        assert list(got) == list(expected), name
        max_diff = {k: (got[k].double() - expected[k].double()).abs().max().item() for k in expected}
        assert all(torch.equal(got[k], expected[k]) for k in expected), (name, max(max_diff.values()))


def test_resume_without_checkpoint_is_a_clear_error(phantom_dir, tmp_path):
    log = train_tiny(phantom_dir, tmp_path / "empty", "--max_epochs", "1", "--resume", "true", check=False)
    assert log.returncode != 0
    assert "no checkpoint_epoch=N.pt to resume from" in log.stderr


@pytest.mark.slow
def test_killed_run_resumes_losing_at_most_one_epoch(phantom_dir, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
        "--dataset_dir", str(phantom_dir), "--output_dir", str(out), *TINY_OVERRIDES, "--max_epochs", "6",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "checkpoint_epoch=2.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = sorted(p.name for p in (out / "checkpoints").glob("checkpoint_epoch=*.pt"))
    assert saved, "no checkpoint before the kill"
    log = train_tiny(phantom_dir, out, "--max_epochs", "6", "--resume", "true")
    assert "resuming from" in log.stdout + log.stderr
    final = torch.load(out / "checkpoints" / "checkpoint_epoch=6.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6 * final["trainer"]["epoch_length"]


def test_datalist_with_a_patient_in_two_folds_is_refused(phantom_dir, tmp_path):
    content = read_datalist(phantom_dir / "datalist.json")
    entries = content["training"]
    patient = entries[0]["patient_id"]
    moved = next(e for e in entries if e["patient_id"] == patient)
    moved["fold"] = (moved["fold"] + 1) % 5
    bad = tmp_path / "bad.json"
    write_datalist(bad, content)
    log = train_tiny(phantom_dir, tmp_path / "out", "--datalist", str(bad), "--max_epochs", "1", check=False)
    assert log.returncode != 0
    assert f"patient_id '{patient}' is in folds" in log.stderr
    assert str(bad) in log.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def _workflow(monkeypatch, config_file, **override) -> ConfigWorkflow:
    monkeypatch.chdir(REPO_ROOT)
    return create_workflow(
        config_file=config_file, workflow_type="train", meta_file=str(META), logging_file=False, **override
    )


def test_check_properties_train_and_evaluate(monkeypatch, phantom_dir):
    assert _workflow(monkeypatch, "configs/train.yaml", dataset_dir=str(phantom_dir)).check_properties() == []
    both = ["configs/train.yaml", "configs/evaluate.yaml"]
    assert _workflow(monkeypatch, both, dataset_dir=str(phantom_dir)).check_properties() == []


def test_pretrained_torchvision_weights_are_adapted_and_checked(monkeypatch, tmp_path):
    from monai.networks.nets import resnet18, resnet50

    imagenet = resnet50(spatial_dims=2, n_input_channels=3, num_classes=1000, conv1_t_stride=2, bias_downsample=False)
    weights = tmp_path / "resnet50_imagenet.pth"
    torch.save(imagenet.state_dict(), weights)  # torchvision's parameter names
    wf = _workflow(monkeypatch, "configs/train.yaml", pretrained_weights=str(weights), channels_last=False)
    network = wf.parser.get_parsed_content("network")
    rgb = imagenet.conv1.weight
    assert torch.allclose(network.conv1.weight[:, 0], rgb.sum(1))
    assert torch.allclose(network.conv1.weight[:, 1], rgb.mean(1))
    assert torch.equal(network.layer3[2].conv2.weight, imagenet.layer3[2].conv2.weight)
    assert network.fc.weight.shape == (2, 2048)

    wrong = tmp_path / "resnet18.pth"
    torch.save(resnet18(spatial_dims=2, n_input_channels=3).state_dict(), wrong)
    wf = _workflow(monkeypatch, "configs/train.yaml", pretrained_weights=str(wrong))
    with pytest.raises(RuntimeError) as err:
        wf.parser.get_parsed_content("network")
    cause = err.value.__cause__
    assert isinstance(cause, PretrainedWeightsError)
    assert str(wrong) in str(cause) and "not a torchvision-format state_dict" in str(cause)


def test_metadata_has_the_model_zoo_fields():
    meta = json.loads(META.read_text())
    required = {
        "schema": str, "version": str, "monai_version": str, "pytorch_version": str, "numpy_version": str,
        "required_packages_version": dict, "task": str, "description": str, "authors": str, "copyright": str,
        "network_data_format": dict, "changelog": dict,
    }  # fmt: skip
    for key, kind in required.items():
        assert isinstance(meta.get(key), kind), key
    assert meta["version"] in meta["changelog"]
    assert "optional_packages_version" not in meta
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 2 and image["spatial_shape"] == [512, 256]
    assert set(image["channel_def"]) == {"0", "1"}
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 2 and pred["channel_def"] == {"0": "benign", "1": "malignant"}


def test_verify_net_in_out(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file="configs/train.yaml", n=1)
