"""The options beyond the paper through every entry point: train, evaluate, inference.yaml and the full read's
classifier (read.yaml) give one probability per lesion, the same in each, for a per-lesion model with the local patch
and the context masks and for a one-pass model with both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.data.datalist import read_datalist
from bundle.engine.configs import read_bundle_config

from .conftest import evaluate_tiny, run_bundle, train_tiny
from .test_lesion_mode import read_rows

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
# per-lesion: the paper's ResNet50 with the local stream and the context channel; one pass: resnet10 with both
OPTIONS = {
    "lesion": ["--local_patch", "true", "--context_masks", "true", "--patch_size", "[32,32]"],
    "scan": ["--lesion_mode", "scan", "--network_name", "resnet10", "--local_patch", "true", "--context_masks", "true",
             "--patch_size", "[32,32]"],
}  # fmt: skip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """One epoch of each option set, evaluated on fold 0."""
    out = tmp_path_factory.mktemp("options")
    for mode, options in OPTIONS.items():
        train_tiny(phantom_dir, out / mode, "--max_epochs", "1", *options)
        evaluate_tiny(phantom_dir, out / mode, *options)
    return out


def options_dict(mode: str) -> dict:
    tokens = OPTIONS[mode]
    return {tokens[i].lstrip("-"): json.loads(tokens[i + 1]) if tokens[i + 1][0] in "[t" else tokens[i + 1]
            for i in range(0, len(tokens), 2)}  # fmt: skip


@pytest.mark.parametrize("mode", ["lesion", "scan"])
def test_checkpoint_holds_both_streams(trained, mode):
    state = torch.load(trained / mode / "checkpoints" / "model.pt", weights_only=True)
    assert state["local_stream.net.conv1.weight"].shape[1] == 3  # scan, mask, other view
    if mode == "lesion":
        assert state["global_stream.conv1.weight"].shape[1] == 3  # scan, mask, the other lesions' masks
        assert state["head.weight"].shape == (2, 2048 + 512)
    else:
        assert state["head.1.weight"].shape[1] == 2 * 960 + 512  # own area, other lesions' area, patch


@pytest.mark.parametrize("mode", ["lesion", "scan"])
def test_inference_and_the_read_classify_like_the_evaluation(trained, phantom_dir, mode, tmp_path):
    entries = [e for e in read_datalist(phantom_dir / "datalist.json")["training"] if e["fold"] == 0]
    datalist = tmp_path / "fold0.json"
    datalist.write_text(json.dumps({"training": [{k: e[k] for k in ("image", "mask", "lesion_id")} for e in entries]}))
    checkpoint = trained / mode / "checkpoints" / "model.pt"
    run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(phantom_dir), "--datalist",
        str(datalist), "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out"),
        "--spatial_size", "[64,32]", "--batch_size", "4", *OPTIONS[mode],
        "--explain", "true",
    )  # fmt: skip
    temperature = json.loads((checkpoint.parent / "temperature.json").read_text())["temperature"]
    evaluated = {
        r["lesion_id"]: float(r["probability"]) for r in read_rows(trained / mode / "eval" / "predictions.csv")[1]
    }
    inferred = {r["lesion_id"]: float(r["probability"]) for r in read_rows(tmp_path / "out" / "lesions.csv")[1]}
    assert set(inferred) == set(evaluated) == {e["lesion_id"] for e in entries}
    for lesion_id, p in evaluated.items():
        logit = np.log(p) - np.log1p(-p)
        assert inferred[lesion_id] == pytest.approx(1 / (1 + np.exp(-logit / temperature)), abs=1e-5), lesion_id
    assert len(set(inferred.values())) > 1
    # Grad-CAM, the patch given beside the image (per lesion: through the global stream; one pass: each lesion's own
    # output row): one PNG per lesion
    pictures = sorted(p.stem for p in (tmp_path / "out" / "explanations").glob("*.png"))
    assert pictures == sorted(inferred)

    # the full read's classifier (read.yaml, the same options) on one scan's outlined lesions
    parser = read_bundle_config(
        BUNDLE_ROOT, "configs/read.yaml", checkpoint=str(checkpoint), output_dir=str(tmp_path / "read"),
        spatial_size=[64, 32], batch_size=4, **options_dict(mode),
    )  # fmt: skip
    parser.read_meta(str(BUNDLE_ROOT / "configs" / "metadata.json"))
    from bundle.read.reading import load_classifier

    reader = parser.get_parsed_content("reader")
    load_classifier(parser.get_parsed_content("network"), checkpoint)
    scan = entries[0]["image"]
    lesions = [e for e in entries if e["image"] == scan]
    probabilities = reader.classify(str(phantom_dir / scan), [str(phantom_dir / e["mask"]) for e in lesions])
    assert probabilities == pytest.approx([inferred[e["lesion_id"]] for e in lesions], abs=1e-5)
