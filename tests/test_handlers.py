"""Handlers: the lesion prediction writer, atomic checkpoints, and finding the checkpoint to resume from."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from sklearn.metrics import confusion_matrix, roc_auc_score

from bundle.data.transforms import OneHotLabel, OneHotLabeld
from bundle.engine.checkpoints import AtomicCheckpointSaver, latest_checkpoint
from bundle.evaluation.predictions import LesionPredictionWriter


def run_writer(tmp_path, probabilities, labels, batch_size=4, threshold=0.5):
    """Feed decollated (pred, label) items through an engine with the writer attached."""
    n = len(labels)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]

    def step(engine, indices):
        engine.state.batch = [{"lesion_id": f"L{i:03d}", "patient_id": f"P{i // 3}"} for i in indices]
        return [
            {
                "pred": torch.tensor([1 - probabilities[i], probabilities[i]]),
                "label": torch.nn.functional.one_hot(torch.tensor(labels[i]), 2).float(),
            }
            for i in indices
        ]

    engine = Engine(step)
    LesionPredictionWriter(tmp_path, threshold=threshold, extra_metadata={"fold": 3}).attach(engine)
    engine.run(batches, max_epochs=1)


def test_prediction_writer_matches_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 37).tolist()
    probabilities = np.clip(np.array(labels) * 0.3 + rng.random(37) * 0.7, 0, 1).tolist()
    run_writer(tmp_path, probabilities, labels, threshold=0.4)

    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["lesion_id", "patient_id", "label", "probability", "prediction"]
    assert len(rows) == 37
    assert rows[5] == {
        "lesion_id": "L005",
        "patient_id": "P1",
        "label": str(labels[5]),
        "probability": f"{probabilities[5]:.6f}",
        "prediction": str(int(probabilities[5] >= 0.4)),
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    y, p = np.array(labels), np.array(probabilities)
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.4).ravel()
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert metrics["specificity"] == pytest.approx(tn / (tn + fp))
    assert metrics["ppv"] == pytest.approx(tp / (tp + fp))
    assert metrics["npv"] == pytest.approx(tn / (tn + fn))
    assert metrics["accuracy"] == pytest.approx((tp + tn) / 37)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (tp, fp, tn, fn)
    assert metrics["fold"] == 3
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_prediction_writer_writes_null_for_undefined_metrics(tmp_path):
    run_writer(tmp_path, [0.9, 0.8, 0.7], [1, 1, 1])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["auc"] is None  # one class: AUC undefined
    assert metrics["specificity"] is None
    assert metrics["sensitivity"] == 1.0


def test_atomic_checkpoint_saver_keeps_best_and_resumes_its_record(tmp_path):
    model = torch.nn.Linear(2, 2)
    scores = iter(np.array([0.6, 0.8, 0.7]))  # numpy scalars, as MONAI's metrics give
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def set_metric(engine):
        engine.state.metrics = {"val_auc": next(scores)}

    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": model},
        save_key_metric=True,
        key_metric_name="val_auc",
        key_metric_filename="model.pt",
    )
    saver.attach(evaluator)
    saved = []
    for epoch in range(3):
        with torch.no_grad():
            model.weight.fill_(epoch)
        evaluator.run([0], max_epochs=epoch + 1)
        saved.append(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0].item())
    assert saved == [0.0, 1.0, 1.0]  # epoch 2 (0.7) did not replace the best (0.8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    record = saver.state_dict()
    fresh = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": model},
        save_key_metric=True,
        key_metric_name="val_auc",
        key_metric_filename="model.pt",
    )
    torch.save(record, tmp_path / "record.pt")  # part of the resume checkpoint: must load with weights_only
    fresh.load_state_dict(torch.load(tmp_path / "record.pt", weights_only=True))
    assert fresh.state_dict() == record


@pytest.mark.parametrize("adopt_existing", [True, False])
def test_resumed_saver_rotates_out_the_stopped_runs_checkpoints(tmp_path, adopt_existing):
    model = torch.nn.Linear(2, 2)
    save_dict = {"model": model, "optimizer": torch.optim.Adam(model.parameters())}  # as train.yaml: checkpoint_*
    for epoch in (3, 4):  # left by a run stopped during epoch 5
        torch.save({k: v.state_dict() for k, v in save_dict.items()}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    trainer = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict=save_dict, save_interval=1, n_saved=2, adopt_existing=adopt_existing
    )
    saver.attach(trainer)

    @trainer.on(Events.STARTED)
    def resume_at_epoch_4(engine):
        engine.state.epoch = 4

    trainer.run([0], max_epochs=6)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt"))
    expected = ["checkpoint_epoch=5.pt", "checkpoint_epoch=6.pt"]
    assert kept == (expected if adopt_existing else ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt", *expected])


def test_latest_checkpoint_skips_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint_epoch=N\.pt to resume from"):
        latest_checkpoint(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "checkpoint_epoch=3.pt")
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "checkpoint_epoch=10.pt")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")  # numeric, not lexical order
    (tmp_path / "checkpoint_epoch=11.pt").write_bytes(b"PK\x03\x04 truncated")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")


def test_one_hot_label():
    assert OneHotLabel(2)(1).tolist() == [0.0, 1.0]
    assert OneHotLabel(2)(torch.tensor([0])).tolist() == [1.0, 0.0]
    assert OneHotLabeld("label")({"label": 1, "x": 5})["label"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        OneHotLabel(2)(2)
    assert math.isclose(float(OneHotLabel(3)(2).sum()), 1.0)
