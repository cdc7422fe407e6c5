"""Tests of bundle.data.lesion_groups: per-lesion entries grouped by scan, masks loaded as (L, H, W), padding collate,
and the batch handed to MONAI's engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import decollate_batch
from monai.transforms import LoadImage

from bundle.data.datalist import load_split
from bundle.data.lesion_groups import (
    LESION_VALID_KEY,
    LoadLesionMasksd,
    PrepareScanBatch,
    group_by_scan,
    pad_lesions_collate,
)
from bundle.data.readers import WholeBodyScanReader
from bundle.errors import ProblemsError, ShapeMismatchError


def entry(image: str, lesion: str, label: int, patient: str = "P1", fold: int = 0) -> dict:
    return {
        "image": image,
        "mask": f"masks/{lesion}.nii.gz",
        "label": label,
        "patient_id": patient,
        "lesion_id": lesion,
        "fold": fold,
        "tumor_type": "lung",
        "lesions_in_image": 9,
    }


def test_group_by_scan_keeps_scan_and_lesion_order():
    entries = [
        entry("a.nii.gz", "A1", 1),
        entry("b.nii.gz", "B1", 0, patient="P2", fold=1),
        entry("a.nii.gz", "A2", 0),
        entry(["c_ant.dcm", "c_post.dcm"], "C1", 1, patient="P3"),
        entry("a.nii.gz", "A3", 1),
    ]
    scans = group_by_scan(entries)
    assert [s["image"] for s in scans] == ["a.nii.gz", "b.nii.gz", ["c_ant.dcm", "c_post.dcm"]]
    assert scans[0] == {
        "image": "a.nii.gz",
        "masks": ["masks/A1.nii.gz", "masks/A2.nii.gz", "masks/A3.nii.gz"],
        "labels": [1, 0, 1],
        "lesion_id": ["A1", "A2", "A3"],
        "mask_file": ["masks/A1.nii.gz", "masks/A2.nii.gz", "masks/A3.nii.gz"],
        "patient_id": "P1",
        "fold": 0,
        "tumor_type": "lung",
        "lesions_in_image": 9,
    }
    assert scans[1]["patient_id"] == "P2" and scans[1]["fold"] == 1 and scans[1]["labels"] == [0]
    assert group_by_scan([]) == []


def test_group_by_scan_refuses_a_scan_split_across_patients_or_folds():
    entries = [entry("a.nii.gz", "A1", 1), entry("a.nii.gz", "A2", 0, fold=2), entry("a.nii.gz", "A3", 0, patient="X")]
    with pytest.raises(ProblemsError) as info:
        group_by_scan(entries)
    assert len(info.value.problems) == 2
    assert "lesion_id 'A2' has fold 2" in info.value.problems[0] and "a.nii.gz" in info.value.problems[0]
    assert "lesion_id 'A3' has patient_id 'X'" in info.value.problems[1]


def scan_item(n: int, h: int = 8, w: int = 4, patient: str = "P") -> dict:
    """A loaded scan item with ``n`` lesions: lesion k's mask is filled with k + 1, its label k % 2."""
    return {
        "image": torch.full((1, h, w), float(n)),
        "masks": torch.stack([torch.full((h, w), k + 1.0) for k in range(n)]) if n else torch.zeros(0, h, w),
        "labels": [k % 2 for k in range(n)],
        "lesion_id": [f"{patient}_L{k}" for k in range(n)],
        "mask_file": [f"{patient}_L{k}.nii.gz" for k in range(n)],
        "patient_id": patient,
        "fold": 3,
    }


def test_pad_lesions_collate_shapes_padding_and_per_lesion_keys():
    batch = pad_lesions_collate([scan_item(3, patient="A"), scan_item(0, patient="B"), scan_item(12, patient="C")])
    assert batch["image"].shape == (3, 1, 8, 4)
    assert batch["masks"].shape == (3, 12, 8, 4) and batch["masks"].dtype == torch.float32
    valid = batch[LESION_VALID_KEY]
    assert valid.dtype == torch.bool and valid.sum(1).tolist() == [3, 0, 12]
    assert batch["masks"][0, :3, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch["masks"][0, 3:].abs().sum() == 0 and batch["masks"][1].abs().sum() == 0
    assert batch["labels"][0].tolist() == [0, 1, 0] + [-1] * 9
    assert batch["labels"][1].tolist() == [-1] * 12
    assert batch["labels"][2].tolist() == [k % 2 for k in range(12)]
    # per-lesion keys flattened, scan keys repeated per lesion: N = 15 values in lesion order
    assert batch["lesion_id"] == [f"A_L{k}" for k in range(3)] + [f"C_L{k}" for k in range(12)]
    assert batch["patient_id"] == ["A"] * 3 + ["C"] * 12
    assert batch["fold"] == [3] * 15
    # a 0-d tensor is a per-scan value too: repeated per lesion
    assert pad_lesions_collate([{**scan_item(2), "weight": torch.tensor(0.5)}])["weight"] == [torch.tensor(0.5)] * 2
    # decollated: one item per lesion; the scan tensor only on the first B items
    items = decollate_batch(batch)
    assert len(items) == 15
    assert [i["lesion_id"] for i in items] == batch["lesion_id"]


def test_pad_lesions_collate_without_lesions_or_labels():
    batch = pad_lesions_collate([scan_item(0), scan_item(0)])
    assert batch["masks"].shape == (2, 0, 8, 4) and batch[LESION_VALID_KEY].shape == (2, 0)
    assert batch["lesion_id"] == [] and batch["patient_id"] == []
    unlabelled = [{k: v for k, v in scan_item(2).items() if k != "labels"}]
    assert "labels" not in pad_lesions_collate(unlabelled)


def test_pad_lesions_collate_refuses_inconsistent_items():
    with pytest.raises(ValueError, match=r"\(L, H, W\) with one \(H, W\)"):
        pad_lesions_collate([scan_item(1), scan_item(1, h=16)])
    bad = scan_item(2)
    bad["labels"] = [1]
    with pytest.raises(ValueError, match="1 labels for 2 masks"):
        pad_lesions_collate([bad])
    bad = scan_item(2)
    bad["lesion_id"] = ["only one"]
    with pytest.raises(ValueError, match="1 values of 'lesion_id' for 2 masks"):
        pad_lesions_collate([bad])


def test_prepare_scan_batch_gives_flat_one_hot_targets_in_lesion_order():
    batch = pad_lesions_collate([scan_item(3), scan_item(0), scan_item(2)])
    image, targets, args, kwargs = PrepareScanBatch(num_classes=2)(batch, torch.device("cpu"))
    assert image.shape == (3, 1, 8, 4) and args == ()
    # labels 0, 1, 0 then 0, 1
    torch.testing.assert_close(targets, torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0], [0, 1]]))
    assert kwargs["lesion_masks"] is not None and kwargs["lesion_masks"].shape == (3, 3, 8, 4)
    assert kwargs["lesion_valid"].sum() == 5
    unlabelled = pad_lesions_collate([{k: v for k, v in scan_item(2).items() if k != "labels"}])
    assert PrepareScanBatch()(unlabelled)[1] is None


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory) -> Path:
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    out = tmp_path_factory.mktemp("groups_phantom") / "data"
    generate_dataset(out, patients=4, seed=5, config=PhantomConfig(height=256, width=128), num_folds=2)
    return out


def test_masks_of_a_phantom_scan_load_as_lesion_channels(tiny_phantom: Path):
    entries = load_split(tiny_phantom / "datalist.json", tiny_phantom, part="all")
    scans = group_by_scan(entries)
    assert sum(len(s["masks"]) for s in scans) == len(entries)
    assert [s["lesions_in_image"] for s in scans] == [len(s["masks"]) for s in scans]
    reader = WholeBodyScanReader()
    scan = scans[0]
    loaded = LoadLesionMasksd(keys="masks", reader=reader)({**scan, "image": np.zeros((1, 256, 128))})
    assert loaded["masks"].shape == (len(scan["masks"]), 256, 128)
    load = LoadImage(reader=reader, image_only=True)
    for channel, path in zip(loaded["masks"], scan["mask_file"], strict=True):
        torch.testing.assert_close(channel, torch.as_tensor(load(path), dtype=torch.float32))
        assert channel.sum() > 0
    # no masks: (0, H, W) of the scan's size; a mask of another size is refused, naming it
    empty = LoadLesionMasksd(reader=reader)({"image": np.zeros((1, 256, 128)), "masks": []})
    assert empty["masks"].shape == (0, 256, 128)
    with pytest.raises(ValueError, match="load it before the masks"):
        LoadLesionMasksd(reader=reader)({"image": "scan.nii.gz", "masks": []})
    with pytest.raises(ShapeMismatchError, match=scan["mask_file"][0].replace(".", r"\.")):
        LoadLesionMasksd(reader=reader)({"image": np.zeros((1, 128, 64)), "masks": scan["masks"][:1]})
