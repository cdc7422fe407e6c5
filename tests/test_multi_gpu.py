"""configs/multi_gpu_train.yaml: 2 CPU processes (gloo) under torchrun at tiny size.

Each rank records the lesions it trained on and its validation AUC through a small extra config; the test checks
that the ranks trained on disjoint lesions of the training split, agreed on the (gathered) validation metric, and
that only rank 0 wrote the checkpoints and TensorBoard logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bundle.data.datalist import check_entries, load_split

from .conftest import REPO_ROOT

pytestmark = pytest.mark.integration

RECORDER = '''
"""Test helper: each rank writes the lesion ids of its training batches and its final validation metrics."""
import json
import os

import torch.distributed as dist
from ignite.engine import Events


def attach(trainer, evaluator, out_dir):
    rank = dist.get_rank()

    @trainer.on(Events.ITERATION_STARTED)
    def _lesions(engine):
        with open(os.path.join(out_dir, f"lesions_rank{rank}.txt"), "a") as f:
            f.write("".join(f"{lesion_id}\\n" for lesion_id in engine.state.batch["lesion_id"]))

    @trainer.on(Events.COMPLETED)
    def _metrics(engine):
        content = {"pid": os.getpid(), "world_size": dist.get_world_size(), **evaluator.state.metrics}
        with open(os.path.join(out_dir, f"metrics_rank{rank}.json"), "w") as f:
            json.dump(content, f)
'''


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """8 phantom patients (256x128 scans), 2 folds with both classes each."""
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    for seed in range(20):
        out = tmp_path_factory.mktemp("phantom") / "data"
        content = generate_dataset(out, patients=8, seed=seed, config=PhantomConfig(height=256, width=128), num_folds=2)
        if not check_entries(content["training"], content["num_folds"]):
            return out
    raise AssertionError("no phantom seed gave usable folds")


def test_two_process_gloo_training(phantom, tmp_path):
    record_dir, output_dir = tmp_path / "record", tmp_path / "out"
    record_dir.mkdir()
    (tmp_path / "rank_recorder.py").write_text(RECORDER)
    (tmp_path / "record.yaml").write_text(
        textwrap.dedent(f"""\
        +imports:
        - $import rank_recorder
        +initialize:
        - $rank_recorder.attach(@train#trainer, @validate#evaluator, '{record_dir}')
        """)
    )
    configs = [str(REPO_ROOT / "configs/train.yaml"), str(REPO_ROOT / "configs/multi_gpu_train.yaml")]
    configs.append(str(tmp_path / "record.yaml"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai.bundle", "run", "training", "--config_file", str(configs),
            "--dataset_dir", str(phantom), "--output_dir", str(output_dir), "--val_fraction", "0.25",
            "--spatial_size", "[32,16]", "--batch_size", "2", "--num_workers", "0", "--max_epochs", "1",
            "--bundle_root", str(REPO_ROOT),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,  # outside the bundle
        env={**env, "CUDA_VISIBLE_DEVICES": ""},  # gloo on CPU even on a GPU machine
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    train_ids = [e["lesion_id"] for e in load_split(phantom / "datalist.json", phantom, 0, "train", 0.25, 0)]
    seen = [(record_dir / f"lesions_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert seen[0] and len(seen[0]) == len(seen[1])  # the same number of steps on both ranks
    assert set(seen[0]) | set(seen[1]) <= set(train_ids)
    # disjoint halves; DistributedSampler repeats at most one lesion to even out an odd count
    assert len(set(seen[0]) & set(seen[1])) <= len(train_ids) % 2
    assert len(seen[0]) + len(seen[1]) >= len(train_ids) - 2 * 2  # drop_last drops less than a batch per rank

    metrics = [json.loads((record_dir / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert metrics[0]["world_size"] == 2 and metrics[0]["pid"] != metrics[1]["pid"]
    assert metrics[0]["val_auc"] == metrics[1]["val_auc"]  # gathered over both ranks' validation halves
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]

    ckpt_dir = output_dir / "checkpoints"
    assert {"model.pt", "model_final.pt"} <= {p.name for p in ckpt_dir.iterdir()}
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    state_dict = torch.load(ckpt_dir / "model.pt", map_location="cpu", weights_only=True)
    assert "conv1.weight" in state_dict  # the unwrapped network, loadable without DDP
    events = list((output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and {p.name.split(".")[-2] for p in events} == {str(metrics[0]["pid"])}  # rank 0's only
