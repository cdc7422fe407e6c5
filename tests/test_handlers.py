"""Handlers: the lesion prediction writer, atomic checkpoints, finding the checkpoint to resume from, and the
per-epoch re-seeding that makes resume exact."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, RandFlipd
from sklearn.metrics import confusion_matrix, roc_auc_score

from bundle.data.transforms import OneHotLabel, OneHotLabeld
from bundle.engine.checkpoints import EpochSeeder, epoch_checkpoint, latest_checkpoint, model_checkpoint
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


def test_best_model_checkpoint_keeps_the_best_and_resumes_its_record(tmp_path):
    model = torch.nn.Linear(2, 2)
    scores = iter(np.array([np.nan, 0.6, 0.8, 0.7]))  # numpy scalars, as MONAI's metrics give; NaN: AUC undefined
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def set_metric(engine):
        engine.state.metrics = {"val_auc": next(scores)}

    saver = model_checkpoint(tmp_path, model, "model.pt", metric_name="val_auc")
    saver.attach(evaluator)
    saved = []
    for epoch in range(4):
        with torch.no_grad():
            model.weight.fill_(epoch)
        evaluator.run([0], max_epochs=epoch + 1)
        saved.append(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0].item())
    assert saved == [0.0, 1.0, 2.0, 2.0]  # NaN replaced by 0.6; epoch 3 (0.7) did not replace the best (0.8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # a plain state_dict, no temporary files
    saver.save_handler.remove("model.pt")
    assert (tmp_path / "model.pt").is_file()  # replaced in one rename, never deleted first

    record = saver.state_dict()
    assert [tuple(item) for item in record["_saved"]] == [(0.8, "model.pt")]
    torch.save(record, tmp_path / "record.pt")  # part of the resume checkpoint: must load with weights_only
    fresh = model_checkpoint(tmp_path, model, "model.pt", metric_name="val_auc")
    fresh.load_state_dict(torch.load(tmp_path / "record.pt", weights_only=True))
    assert fresh.state_dict() == record
    resumed = Engine(lambda e, b: None)
    resumed.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: engine.state.metrics.update(val_auc=0.75))
    fresh.attach(resumed)
    with torch.no_grad():
        model.weight.fill_(9)
    resumed.run([0])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0].item() == 2.0  # 0.75 < restored 0.8


def test_final_model_checkpoint_is_written_on_completion_only(tmp_path):
    model = torch.nn.Linear(2, 2)
    trainer = Engine(lambda e, b: None)
    model_checkpoint(tmp_path, model, "model_final.pt").attach(trainer)

    @trainer.on(Events.EPOCH_COMPLETED(once=2))
    def fail(engine):
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        trainer.run([0], max_epochs=3)
    assert not (tmp_path / "model_final.pt").exists()  # its presence means a finished run (bundle/evaluation/cv.py)
    finished = Engine(lambda e, b: None)
    model_checkpoint(tmp_path, model, "model_final.pt").attach(finished)
    finished.run([0, 1], max_epochs=2)
    state = torch.load(tmp_path / "model_final.pt", weights_only=True)
    assert torch.equal(state["weight"], model.weight)


def _stopped_run(tmp_path, epochs, model, optimizer):
    """Per-epoch checkpoints as left by a stopped run."""
    for epoch in epochs:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            tmp_path / f"checkpoint_epoch={epoch}.pt",
        )


@pytest.mark.parametrize("adopt_existing", [True, False])
def test_resumed_saver_rotates_out_the_stopped_runs_checkpoints(tmp_path, adopt_existing):
    model = torch.nn.Linear(2, 2)
    to_save = {"model": model, "optimizer": torch.optim.Adam(model.parameters())}  # as train.yaml: checkpoint_*
    _stopped_run(tmp_path, (3, 4), model, to_save["optimizer"])  # left by a run stopped during epoch 5
    trainer = Engine(lambda e, b: None)
    epoch_checkpoint(tmp_path, to_save, n_saved=2, adopt_existing=adopt_existing).attach(trainer)

    @trainer.on(Events.STARTED)
    def resume_at_epoch_4(engine):
        engine.state.epoch = 4

    trainer.run([0], max_epochs=6)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt"))
    expected = ["checkpoint_epoch=5.pt", "checkpoint_epoch=6.pt"]
    assert kept == (expected if adopt_existing else ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt", *expected])
    assert set(torch.load(tmp_path / "checkpoint_epoch=6.pt", weights_only=True)) == {"model", "optimizer"}


def test_resumed_saver_overwrites_a_truncated_newer_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    to_save = {"model": model, "optimizer": torch.optim.Adam(model.parameters())}
    _stopped_run(tmp_path, (3, 4), model, to_save["optimizer"])
    (tmp_path / "checkpoint_epoch=5.pt").write_bytes(b"PK\x03\x04 truncated")  # not resumed from: epoch 4 is
    trainer = Engine(lambda e, b: None)
    epoch_checkpoint(tmp_path, to_save, n_saved=2, adopt_existing=True).attach(trainer)

    @trainer.on(Events.STARTED)
    def resume_at_epoch_4(engine):
        engine.state.epoch = 4

    trainer.run([0], max_epochs=6)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=5.pt",
        "checkpoint_epoch=6.pt",
    ]
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=6.pt")
    assert set(torch.load(tmp_path / "checkpoint_epoch=5.pt", weights_only=True)) == {"model", "optimizer"}


def test_latest_checkpoint_skips_truncated_files_without_loading_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint_epoch=N\.pt to resume from"):
        latest_checkpoint(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "checkpoint_epoch=3.pt")
    torch.save({"model": {"w": torch.ones(1000)}}, tmp_path / "checkpoint_epoch=10.pt")
    complete = (tmp_path / "checkpoint_epoch=10.pt").read_bytes()

    def no_load(*args, **kwargs):
        raise AssertionError("latest_checkpoint must not torch.load the candidates")

    monkeypatch.setattr(torch, "load", no_load)
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")  # numeric, not lexical order
    (tmp_path / "checkpoint_epoch=11.pt").write_bytes(b"PK\x03\x04 truncated")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")
    (tmp_path / "checkpoint_epoch=11.pt").write_bytes(complete[: len(complete) - 100])  # killed while writing
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")
    (tmp_path / "checkpoint_epoch=10.pt").write_bytes(complete[: len(complete) // 2])
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=3.pt")


def test_epoch_seeder_makes_each_epoch_draw_the_same_numbers_whatever_came_before():
    flip = Compose([RandFlipd(keys="image", prob=0.5, spatial_axis=1)])
    seeder = EpochSeeder(seed=7, transforms=flip)
    engine = Engine(lambda e, b: None)
    image = torch.arange(64.0).reshape(1, 1, 64)

    def draws(epoch):
        engine.state.epoch = epoch
        seeder(engine)
        flips = [bool(flip({"image": image})["image"][0, 0, 0] != 0) for _ in range(32)]
        return torch.rand(4), np.random.rand(), flips

    first = draws(3)
    torch.rand(100)  # whatever the previous epochs drew
    flip.set_random_state(seed=123)
    again = draws(3)
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and first[2] == again[2]
    assert any(first[2]) and not all(first[2])  # p = 0.5: some flipped, some not
    other = draws(4)
    assert not torch.equal(first[0], other[0]) and first[2] != other[2]
    engine.state.epoch = 4
    EpochSeeder(seed=8)(engine)
    assert not torch.equal(torch.rand(4), other[0])  # another seed, other numbers
    with pytest.raises(ValueError, match="seed must be >= 0"):
        EpochSeeder(seed=-1)


def test_one_hot_label():
    assert OneHotLabel(2)(1).tolist() == [0.0, 1.0]
    assert OneHotLabel(2)(torch.tensor([0])).tolist() == [1.0, 0.0]
    assert OneHotLabeld("label")({"label": 1, "x": 5})["label"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        OneHotLabel(2)(2)
    assert math.isclose(float(OneHotLabel(3)(2).sum()), 1.0)
