"""scripts/benchmark.py at tiny size: a smoke test that it produces every row (timings are not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.integration

EXPECTED = {
    ("data", "preprocess one lesion (uncached)"),
    ("data", "preprocess one lesion (inference)"),
    ("data", "training data pipeline"),
    ("train", "plain PyTorch loop"),
    ("train", "bundle SupervisedTrainer"),
    ("ratio", "SupervisedTrainer overhead vs plain loop"),
    ("ratio", "data pipeline / training images/s"),
    ("inference", "raw network forward"),
    ("inference", "bundle inference.yaml end to end"),
    ("ratio", "bundle inference / raw forward"),
    ("accuracy", "|AUC bf16 - AUC fp32|"),
    ("estimate", "paper protocol (15k x 300 x 5)"),
}


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "scripts/benchmark.py"), "--spatial_size", "64", "32", "--batch_size", "2",
            "--patients", "6", "--guard_patients", "6", "--steps", "1", "--repeats", "1", "--threads", "1",
            "--device", "cpu", "--out", str(out),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,  # outside the bundle
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    content = json.loads(out.read_text())
    rows = content["rows"]
    assert {(r["group"], r["name"]) for r in rows} == EXPECTED
    precisions = {r["setting"] for r in rows if r["name"] in ("plain PyTorch loop", "raw network forward")}
    assert precisions == {"fp32", "fp32+channels_last", "bf16+channels_last"}
    assert all(math.isfinite(r["value"]) for r in rows)
    assert all(r["ok"] is not None for r in rows if r["group"] in ("ratio", "accuracy"))
    guard = next(r for r in rows if r["group"] == "accuracy")
    assert {"auc_fp32", "auc_bf16", "max_probability_difference"} <= set(guard["extra"])
    assert content["machine"]["cpu"] and content["machine"]["torch"] == __import__("torch").__version__
    assert "scripts/benchmark.py" in content["command"]
    assert "paper protocol" in result.stdout  # the printed table
