"""The learned region segmentation: configs/regions.yaml (over train.yaml), its scan split, a tiny training run and
bundle.read.learned.LearnedRegionSegmenter on the checkpoint it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.data.datalist import load_scan_split, load_split
from bundle.data.readers import WholeBodyScanReader
from bundle.data.regions import CLASS_VALUES, NUM_CLASSES, REGION_BY_VALUE, labels_to_classes
from bundle.engine.configs import read_bundle_config
from bundle.errors import ProblemsError
from bundle.read.learned import REGIONS_CONFIGS, LearnedRegionSegmenter, scaling_transforms
from tests.conftest import REPO_ROOT, run_bundle

REGIONS_PAIR = "['configs/train.yaml','configs/regions.yaml']"
# 8 patients: about 3 training, 2 validation and 3 test scans in fold 0
TINY = ["--spatial_size", "[64,32]", "--batch_size", "2", "--num_workers", "0", "--val_fraction", "0.34"]


@pytest.fixture(scope="module")
def region_phantom(tmp_path_factory) -> Path:
    """An 8-patient phantom (256x128 scans) with region maps and the datalist's ``scans`` list."""
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    out = tmp_path_factory.mktemp("regions") / "data"
    generate_dataset(out, patients=8, seed=5, config=PhantomConfig(height=256, width=128), num_folds=5)
    return out


@pytest.fixture(scope="module")
def trained(region_phantom, tmp_path_factory) -> Path:
    """Output folder of a 2-epoch regions training run (64x32) on fold 0, run from outside the bundle."""
    out = tmp_path_factory.mktemp("regions_run") / "fold0"
    run_bundle(
        "run", "training", "--config_file", REGIONS_PAIR, "--dataset_dir", str(region_phantom),
        "--output_dir", str(out), "--max_epochs", "2", *TINY,
    )  # fmt: skip
    return out


def test_scan_split_by_patient(region_phantom):
    datalist = region_phantom / "datalist.json"
    parts = {p: load_scan_split(datalist, region_phantom, 0, p, 0.34) for p in ("train", "val", "test")}
    patients = {p: {e["patient_id"] for e in entries} for p, entries in parts.items()}
    assert all(patients.values())
    assert not (patients["train"] & patients["val"]) and not (patients["test"] & (patients["train"] | patients["val"]))
    assert {e["fold"] for e in parts["test"]} == {0} and 0 not in {e["fold"] for e in parts["train"] + parts["val"]}
    assert sum(map(len, parts.values())) == 8
    assert all(Path(e["label"]).is_file() and "regions" in e["label"] for e in parts["train"])
    # the test fold's patients are the classifier's test patients
    assert patients["test"] >= {e["patient_id"] for e in load_split(datalist, region_phantom, 0, "test")}
    no_scans = region_phantom.parent / "no_scans.json"
    no_scans.write_text('{"training": []}')
    with pytest.raises(ProblemsError, match="scans"):
        load_scan_split(no_scans, region_phantom)


def test_configs_parse_from_another_folder(region_phantom, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = read_bundle_config(
        REPO_ROOT, list(REGIONS_CONFIGS), dataset_dir=str(region_phantom), spatial_size=[64, 32], val_fraction=0.34
    )
    assert parser.get_parsed_content("output_dir") == f"{REPO_ROOT}/outputs/regions/fold0"
    network = parser.get_parsed_content("network_def")
    assert type(network).__name__ == "BasicUNet"
    assert network(torch.zeros(1, 1, 64, 32)).shape == (1, NUM_CLASSES, 64, 32)
    loss = parser.get_parsed_content("loss")
    assert type(loss).__name__ == "DiceCELoss" and loss.dice.to_onehot_y and loss.dice.softmax
    # train.yaml's own scaling objects, not copies
    image_transforms = parser.get_parsed_content("image_transforms")
    scaling = parser.get_parsed_content("regions_scaling")
    assert len(scaling) == 3 and all(any(t is s for t in image_transforms) for s in scaling)
    dataset = parser.get_parsed_content("train#dataset")
    sample = dataset[0]
    assert sample["image"].shape == (1, 64, 32) and sample["image"].dtype == torch.float32
    assert 0 < float(sample["image"].max()) <= 10.0
    assert sample["label"].shape == (1, 64, 32) and sample["label"].dtype == torch.int64
    classes = set(np.unique(sample["label"].numpy()).tolist())
    assert classes <= set(range(NUM_CLASSES)) and len(classes) > 8
    # nearest-neighbour resizing keeps the labels: the classes are those of the map itself
    truth = WholeBodyScanReader().get_data(WholeBodyScanReader().read(dataset.data[0]["label"]))[0]
    assert classes <= set(np.unique(labels_to_classes(truth)).tolist())
    assert len(parser.get_parsed_content("validate#dataset")) > 0
    assert parser.get_parsed_content("validate#checkpoint_saver")  # selects by val_mean_dice
    # the classifier's train.yaml alone is unchanged by the override
    classifier = read_bundle_config(REPO_ROOT, "configs/train.yaml")
    assert type(classifier.get_parsed_content("loss")).__name__ == "CrossEntropyLoss"
    assert classifier.get_parsed_content("output_dir").endswith("/outputs/fold0")


def test_scaling_transforms_refuses_other_pipelines():
    with pytest.raises(ValueError, match="image_transforms"):
        scaling_transforms([])


def test_training_run_writes_model_and_logs(trained):
    assert (trained / "checkpoints" / "model.pt").is_file()
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    state = torch.load(trained / "checkpoints" / "model.pt", map_location="cpu", weights_only=True)
    assert state["final_conv.weight"].shape[0] == NUM_CLASSES


def test_segmenter_on_the_checkpoint(trained, region_phantom):
    segmenter = LearnedRegionSegmenter(
        str(trained / "checkpoints" / "model.pt"), str(REPO_ROOT), spatial_size=[64, 32], device="cpu"
    )
    reader = WholeBodyScanReader()
    scan = reader.get_data(reader.read(str(region_phantom / "images" / "P00001.nii.gz")))[0]
    labels = segmenter(scan)
    assert labels.shape == scan.shape == (256, 128) and labels.dtype == np.int16
    assert set(np.unique(labels).tolist()) <= {0, *REGION_BY_VALUE}
    assert set(np.unique(labels).tolist()) <= set(CLASS_VALUES)
    # any size in, the same size out
    assert segmenter(scan[:200, :100]).shape == (200, 100)
    with pytest.raises(ValueError, match="shape"):
        segmenter(scan[None])
    # classes -> labels, and a single-view scan's empty half all background: a network that calls every pixel the
    # last class (injection site, label 22)
    segmenter.network = ConstantClass(NUM_CLASSES - 1)
    assert (segmenter(scan) == CLASS_VALUES[-1]).all()
    single = scan.copy()
    single[:, 64:] = 0
    labels = segmenter(single)
    assert not labels[:, 64:].any() and (labels[:, :64] == CLASS_VALUES[-1]).all()
    single = scan.copy()
    single[:, :64] = 0
    labels = segmenter(single)
    assert not labels[:, :64].any() and (labels[:, 64:] == CLASS_VALUES[-1]).all()


class ConstantClass(torch.nn.Module):
    """A stand-in network: logits (B, NUM_CLASSES, H, W) with class ``k`` highest everywhere."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[2:], dtype=x.dtype, device=x.device)
        logits[:, self.k] = 1.0
        return logits


def test_segmenter_bad_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        LearnedRegionSegmenter(str(tmp_path / "missing.pt"), str(REPO_ROOT))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="network"):
        LearnedRegionSegmenter(str(wrong), str(REPO_ROOT), spatial_size=[64, 32], device="cpu")
