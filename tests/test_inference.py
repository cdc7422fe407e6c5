"""Inference (configs/inference.yaml): same probabilities as evaluate.yaml, corrupt scans, properties, result files."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser, create_workflow
from monai.transforms import Compose, LoadImaged, MapTransform

from bundle.engine.explanations import gradcam_maps, safe_name
from bundle.engine.inference import (
    ScanCachedCompose,
    TolerantDataset,
    exit_on_failures,
    inference_items,
    items_from_datalist,
)
from bundle.engine.writers import LesionResultWriter

from .conftest import REPO_ROOT, copy_first_scans, run_bundle, save_seeded_resnet50
from .conftest import TINY_OVERRIDES as TINY

VERSION = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())["version"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """6 phantom patients (256x128 scans, about 35 lesions) with datalist.json, 2 folds, both classes in each."""
    from bundle.data.datalist import check_entries
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    for seed in range(20):  # evaluate.yaml refuses a fold without a malignant (or benign) lesion
        out = tmp_path_factory.mktemp("phantom") / "data"
        content = generate_dataset(out, patients=6, seed=seed, config=PhantomConfig(height=256, width=128), num_folds=2)
        if not check_entries(content["training"], content["num_folds"]):
            return out
    raise AssertionError("no phantom seed gave usable folds")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A plain state_dict of a seeded ResNet50 with non-trivial BatchNorm statistics (no training needed)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_seeded_resnet50(path)
    return path


def test_infer_properties(phantom):
    workflow = create_workflow(
        config_file=str(REPO_ROOT / "configs/inference.yaml"),
        workflow_type="infer",
        bundle_root=str(REPO_ROOT),
        dataset_dir=str(phantom),
    )
    assert workflow.check_properties() == []


def test_preprocessing_is_train_yaml_s(tmp_path, monkeypatch):
    """inference.yaml reuses train.yaml's definitions (read under bundle_root from any working directory): the same
    transforms, network and postprocessing, none restated in inference.yaml."""
    monkeypatch.chdir(tmp_path)  # outside the bundle
    infer = ConfigParser()
    infer.read_config(REPO_ROOT / "configs/inference.yaml")
    infer.read_meta(REPO_ROOT / "configs/metadata.json")
    infer.update({"bundle_root": str(REPO_ROOT), "spatial_size": [64, 32], "dataset_dir": str(tmp_path)})
    train = ConfigParser()
    train.read_config(REPO_ROOT / "configs/train.yaml")
    train.update({"spatial_size": [64, 32], "dataset_dir": str(tmp_path)})

    def describe(transforms):
        return [(type(t).__name__, tuple(getattr(t, "keys", ()))) for t in transforms]

    assert describe(infer.get_parsed_content("preprocessing").transforms) == describe(
        train.get_parsed_content("image_transforms")
    )
    assert "OneHotLabeld" not in {type(t).__name__ for t in infer.get_parsed_content("preprocessing").transforms}
    resize = [t for t in infer.get_parsed_content("preprocessing").transforms if type(t).__name__ == "Resized"]
    assert list(resize[0].resizer.spatial_size) == [64, 32]  # a setting given to inference reaches train's transform
    assert describe(infer.get_parsed_content("postprocessing").transforms) == describe(
        train.get_parsed_content("postprocessing").transforms
    )
    assert type(infer.get_parsed_content("network_def")) is type(train.get_parsed_content("network_def"))
    text = (REPO_ROOT / "configs/inference.yaml").read_text()
    assert "LoadImaged" not in text and "build_network" not in text and "%configs/" not in text.split("\nimports")[1]


@pytest.mark.integration
def test_inference_equals_evaluation(phantom, checkpoint, tmp_path):
    """One row per lesion, with the probabilities evaluate.yaml computes from the same checkpoint (1e-5)."""
    infer_out, eval_out = tmp_path / "infer", tmp_path / "eval"
    infer = ["run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(phantom)]
    run_bundle(*infer, "--checkpoint", str(checkpoint), "--output_dir", str(infer_out), *TINY)  # from outside
    run_bundle(*infer, "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "root"), *TINY, cwd=REPO_ROOT)
    for name in ("lesions.csv", "scans.csv", "failed.csv", "predictions.json"):  # the same from the bundle root
        assert (infer_out / name).read_bytes() == (tmp_path / "root" / name).read_bytes(), name
    run_bundle(
        "run", "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(phantom), "--checkpoint", str(checkpoint), "--output_dir", str(eval_out),
        "--eval_part", "all", *TINY,
    )  # fmt: skip

    datalist = json.loads((phantom / "datalist.json").read_text())["training"]
    lesions = read_csv(infer_out / "lesions.csv")
    assert [r["lesion_id"] for r in lesions] == [e["lesion_id"] for e in datalist]
    assert list(lesions[0]) == [
        "scan", "mask_file", "patient_id", "lesion_id", "probability", "prediction", "predicted_class", "model_version"
    ]  # fmt: skip
    evaluated = {r["lesion_id"]: float(r["probability"]) for r in read_csv(eval_out / "eval" / "predictions.csv")}
    assert len(evaluated) == len(lesions)
    for row in lesions:
        assert float(row["probability"]) == pytest.approx(evaluated[row["lesion_id"]], abs=1e-5)
        assert row["prediction"] == str(int(float(row["probability"]) >= 0.5))
        assert row["predicted_class"] == ("malignant" if row["prediction"] == "1" else "benign")
        assert row["model_version"] == VERSION
    assert len({float(r["probability"]) for r in lesions}) > 1  # the checkpoint separates lesions

    scans = read_csv(infer_out / "scans.csv")
    assert [s["scan"] for s in scans] == list(dict.fromkeys(e["image"] for e in datalist))
    for scan in scans:
        mine = [r for r in lesions if r["scan"] == scan["scan"]]
        assert int(scan["lesions"]) == len(mine)
        assert float(scan["max_probability"]) == max(float(r["probability"]) for r in mine)
        malignant = sum(r["prediction"] == "1" for r in mine)
        assert int(scan["malignant_lesions"]) == malignant
        assert scan["patient_call"] == ("malignant" if malignant else "benign")
    assert read_csv(infer_out / "failed.csv") == []
    content = json.loads((infer_out / "predictions.json").read_text())
    assert content["model_version"] == VERSION
    assert len(content["lesions"]) == len(lesions) and len(content["scans"]) == len(scans)
    assert content["failed"] == []
    assert not [p for p in infer_out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.integration
def test_corrupt_scan_is_reported_and_skipped(phantom, checkpoint, tmp_path):
    """A truncated scan and a garbage mask among good ones: the rest is classified, failures listed, exit 1."""
    data = tmp_path / "data"
    entries, scans = copy_first_scans(phantom, data)
    corrupt_scan = data / scans[1]
    corrupt_scan.write_bytes(corrupt_scan.read_bytes()[:300])  # truncated gzip
    good = [e for e in entries if e["image"] != scans[1]]
    corrupt_mask = data / good[-1]["mask"]
    corrupt_mask.write_text("not an image")
    (data / "lesions.json").write_text(
        json.dumps({"training": [{"image": e["image"], "mask": e["mask"]} for e in entries]})
    )

    out = tmp_path / "out"
    result = run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(data),
        "--datalist", str(data / "lesions.json"), "--checkpoint", str(checkpoint), "--output_dir", str(out), *TINY,
        "--explain", "true", check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could not be loaded" in result.stderr
    failed = read_csv(out / "failed.csv")
    expected = [e for e in entries if e["image"] == scans[1]] + [good[-1]]
    assert sorted(f["mask_file"] for f in failed) == sorted(e["mask"] for e in expected)
    for f in failed:
        assert f["failed_file"] == str(corrupt_scan if f["scan"] == scans[1] else corrupt_mask)
        assert f["error"]
    lesions = read_csv(out / "lesions.csv")
    assert sorted(r["mask_file"] for r in lesions) == sorted(e["mask"] for e in good[:-1])
    assert {s["scan"] for s in read_csv(out / "scans.csv")} == {scans[0], scans[2]}
    assert len(json.loads((out / "predictions.json").read_text())["failed"]) == len(expected)
    # --explain true: one Grad-CAM overlay per classified lesion, none for those that failed to load
    pictures = sorted(p.name for p in (out / "explanations").iterdir())
    assert pictures == sorted(f"{safe_name(r['lesion_id'])}.png" for r in lesions)
    assert all((out / "explanations" / name).read_bytes().startswith(b"\x89PNG") for name in pictures)


# ---- units ------------------------------------------------------------------------------------------------------


def test_items_from_datalist_defaults_and_errors(tmp_path):
    entries = [
        {"image": "a/S1.nii.gz", "mask": "m/S1_L1.nii.gz"},
        {"image": "/x/S2.nii", "mask": "/x/lab.nii.gz#3", "lesion_id": "Z"},
        {"image": ["d/S3_ant.dcm", "d/S3_post.dcm"], "mask": "m/S3_L1.png"},  # two single-view files
    ]
    (tmp_path / "l.json").write_text(json.dumps({"training": entries}))
    items = items_from_datalist(tmp_path / "l.json", tmp_path)
    assert items[0] == {
        "image": str(tmp_path / "a/S1.nii.gz"),
        "mask": str(tmp_path / "m/S1_L1.nii.gz"),
        "scan": "a/S1.nii.gz",
        "mask_file": "m/S1_L1.nii.gz",
        "patient_id": "S1",
        "lesion_id": "S1_L1",
    }
    assert items[1]["image"] == "/x/S2.nii" and items[1]["lesion_id"] == "Z" and items[1]["patient_id"] == "S2"
    assert items[2]["image"] == [str(tmp_path / "d/S3_ant.dcm"), str(tmp_path / "d/S3_post.dcm")]
    assert items[2]["scan"] == "d/S3_ant.dcm + d/S3_post.dcm" and items[2]["lesion_id"] == "S3_L1"
    assert inference_items(tmp_path, tmp_path / "l.json") == items

    (tmp_path / "dup.json").write_text(json.dumps({"training": [{"image": "a", "mask": "m.nii"}] * 2}))
    with pytest.raises(ValueError, match="unique"):
        items_from_datalist(tmp_path / "dup.json", tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"image": "a"}]}))
    with pytest.raises(ValueError, match="mask"):
        items_from_datalist(tmp_path / "bad.json", tmp_path)
    with pytest.raises(ValueError, match="not found"):
        inference_items(tmp_path, tmp_path / "missing.json")


def test_tolerant_dataset_placeholder(tmp_path):
    missing = str(tmp_path / "missing.nii.gz")
    data = [{"image": missing, "mask": missing, "scan": "s", "mask_file": "m", "patient_id": "p", "lesion_id": "l"}]
    dataset = TolerantDataset(data, Compose([LoadImaged(keys=["image", "mask"])]), placeholder_shape=(2, 8, 4))
    item = dataset[0]
    assert item["image"].shape == (2, 8, 4) and not item["image"].any()
    assert item["failed_file"] == missing and item["error"]
    assert item["lesion_id"] == "l"


def test_writer_summaries_and_exit(tmp_path):
    """Per-scan summary (lesions, highest probability, call) and exit status from decollated items."""
    probabilities = {"A1": 0.2, "A2": 0.7, "B1": 0.1}

    def step(engine, lesion_ids):
        engine.state.batch = [
            {"scan": i[0], "mask_file": i, "patient_id": "P" + i[0], "lesion_id": i, "error": "", "failed_file": ""}
            for i in lesion_ids
        ]
        return [{"pred": torch.tensor([1 - probabilities[i], probabilities[i]])} for i in lesion_ids]

    engine = Engine(step)
    LesionResultWriter(tmp_path, model_version="9.9.9", threshold=0.5).attach(engine)
    engine.run([["A1", "A2"], ["B1"]], max_epochs=1)
    exit_on_failures(engine)  # nothing failed: returns
    scans = read_csv(tmp_path / "scans.csv")
    assert scans == [
        {"scan": "A", "patient_id": "PA", "lesions": "2", "malignant_lesions": "1", "max_probability": "0.700000",
         "top_lesion_id": "A2", "patient_call": "malignant", "model_version": "9.9.9"},
        {"scan": "B", "patient_id": "PB", "lesions": "1", "malignant_lesions": "0", "max_probability": "0.100000",
         "top_lesion_id": "B1", "patient_call": "benign", "model_version": "9.9.9"},
    ]  # fmt: skip

    def failing_step(engine, lesion_ids):
        out = step(engine, lesion_ids)
        engine.state.batch[0].update(error="OSError: broken", failed_file="A.nii")
        return out

    engine = Engine(failing_step)
    LesionResultWriter(tmp_path, model_version="9.9.9").attach(engine)
    engine.run([["A1", "A2"]], max_epochs=1)
    assert [r["lesion_id"] for r in read_csv(tmp_path / "lesions.csv")] == ["A2"]
    assert read_csv(tmp_path / "failed.csv")[0]["failed_file"] == "A.nii"
    with pytest.raises(SystemExit):
        exit_on_failures(engine)


class _AddMask(MapTransform):
    """A transform that reads another key: not per-key, so it must not be cached per scan."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key] + d["mask"]
        return d


def _scan_items(tmp_path, n_scans=2, lesions=3):
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    items = []
    for s in range(n_scans):
        scan = tmp_path / f"S{s}.nii.gz"
        nib.save(nib.Nifti1Image(rng.poisson(5, (32, 16)).astype(np.int16), np.eye(4)), scan)
        for k in range(lesions):
            mask = np.zeros((32, 16), np.uint8)
            mask[2 * k : 2 * k + 3, 4:8] = 1
            path = tmp_path / f"S{s}_L{k}.nii.gz"
            nib.save(nib.Nifti1Image(mask, np.eye(4)), path)
            items.append({"image": str(scan), "mask": str(path), "lesion_id": f"S{s}_L{k}"})
    return items


def test_scan_cached_compose_equals_compose(tmp_path):
    from monai.transforms import ConcatItemsd, EnsureChannelFirstd, Resized, ScaleIntensityRangePercentilesd

    transforms = [
        LoadImaged(keys=["image", "mask"], image_only=True),
        EnsureChannelFirstd(keys=["image", "mask"], channel_dim="no_channel"),
        ScaleIntensityRangePercentilesd(keys="image", lower=0, upper=99, b_min=0, b_max=1),
        Resized(keys=["image", "mask"], spatial_size=(16, 8), mode="area"),
        ConcatItemsd(keys=["image", "mask"], name="image"),
    ]
    items = _scan_items(tmp_path)
    cached = ScanCachedCompose(transforms, cache_size=1)
    assert len(cached.per_key) == 4  # up to ConcatItemsd
    for item in items:
        out, expected = cached(dict(item)), Compose(transforms)(dict(item))
        assert torch.equal(out["image"], expected["image"]) and out["lesion_id"] == item["lesion_id"]
    assert cached.enabled and len(cached._cache) == 1

    joint = ScanCachedCompose([*transforms[:2], _AddMask(keys="image"), *transforms[3:]])
    out, expected = joint(dict(items[0])), Compose(joint.transforms)(dict(items[0]))
    assert not joint.enabled  # verification on the first item found the difference
    assert torch.equal(out["image"], expected["image"])


def _folder_without_datalist(phantom: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """The phantom's scans and masks, no datalist.json; the first scan's lesions as one label image (value k =
    its k-th lesion). Returns the folder and the phantom's datalist entries."""
    import nibabel as nib
    import numpy as np

    entries = json.loads((phantom / "datalist.json").read_text())["training"]
    folder = tmp_path / "scans"
    shutil.copytree(phantom / "images", folder / "images")
    shutil.copytree(phantom / "masks", folder / "masks")
    first = entries[0]["image"]
    lesions = [e for e in entries if e["image"] == first]
    label_image = None
    for k, entry in enumerate(lesions, start=1):
        mask = np.asanyarray(nib.load(folder / entry["mask"]).dataobj)
        label_image = np.zeros(mask.shape, np.uint8) if label_image is None else label_image
        label_image[mask > 0] = k
        (folder / entry["mask"]).unlink()
    nib.save(nib.Nifti1Image(label_image, np.eye(4)), folder / "masks" / Path(first).name)
    return folder, entries


def test_folder_input_equals_datalist_input(phantom, tmp_path):
    """A folder of scans and masks (one scan's lesions as one label image) gives the datalist's preprocessed items."""
    folder, entries = _folder_without_datalist(phantom, tmp_path)
    (folder / "masks" / "P99999_L01.nii.gz").write_text("no scan of this name")
    with pytest.raises(ValueError, match="belongs to no scan"):
        inference_items(folder)
    (folder / "masks" / "P99999_L01.nii.gz").unlink()
    broken = next(folder.glob("masks/*_L02.nii.gz"))
    broken.write_text("not an image")

    items = inference_items(folder)
    by_mask = {i["mask_file"]: i for i in items}
    first_scan = entries[0]["image"]
    label_image = f"masks/{Path(first_scan).name}"
    expected_masks = {e["mask"] for e in entries if e["image"] != first_scan}
    expected_masks |= {f"{label_image}#{k}" for k in range(1, sum(e["image"] == first_scan for e in entries) + 1)}
    assert set(by_mask) == expected_masks
    assert by_mask[broken.relative_to(folder).as_posix()]["error"]  # reported, not raised

    parser = ConfigParser()
    parser.read_config(REPO_ROOT / "configs/inference.yaml")
    parser.read_meta(REPO_ROOT / "configs/metadata.json")
    parser.update({"bundle_root": str(REPO_ROOT), "dataset_dir": str(folder), "spatial_size": [64, 32]})
    dataset = parser.get_parsed_content("dataset")
    reference = TolerantDataset(
        items_from_datalist(phantom / "datalist.json", phantom), dataset.transform, dataset.placeholder_shape
    )
    ref = {r["mask_file"]: r for r in (reference[i] for i in range(len(reference)))}
    label_lesions = [e["mask"] for e in entries if e["image"] == first_scan]
    for index in range(len(dataset)):
        got = dataset[index]
        if got["error"]:
            assert got["failed_file"] == str(broken)
            continue
        name = got["mask_file"]
        original = label_lesions[int(name.rsplit("#", 1)[1]) - 1] if "#" in name else name
        assert torch.equal(got["image"], ref[original]["image"]), name


def test_folder_input_in_the_training_layout(phantom, tmp_path):
    """masks/benign|malignant (python -m bundle.data build's layout): labels are ignored, lesions found."""
    entries = json.loads((phantom / "datalist.json").read_text())["training"]
    folder = tmp_path / "labelled"
    shutil.copytree(phantom / "images", folder / "images")
    for e in entries:
        target = folder / "masks" / ("malignant" if e["label"] else "benign") / Path(e["mask"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(phantom / e["mask"], target)
    items = inference_items(folder)
    assert sorted(Path(i["mask"]).name for i in items) == sorted(Path(e["mask"]).name for e in entries)
    assert all(os.path.isfile(i["image"]) for i in items)


@pytest.mark.integration
def test_missing_dataset_dir_stops_the_run_naming_it(checkpoint, tmp_path):
    missing = tmp_path / "no_scans_here"
    result = run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(missing),
        "--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out"), *TINY, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"{missing}: no such folder" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_gradcam_maps_of_a_trained_tiny_model():
    """Grad-CAM of P(malignant) has the input's spatial size, lies in [0, 1] and is not constant once the network has
    learnt something (here: class 1 = a bright blob in the lower half, a few Adam steps)."""
    from bundle.nets import NETWORKS, build_network

    torch.manual_seed(0)
    net = build_network("resnet50")
    images = torch.rand(8, 2, 64, 32) * 0.1
    labels = torch.tensor([0, 1] * 4)
    for k in range(8):
        row = 40 if labels[k] else 10
        images[k, :, row : row + 6, 12:18] = 1.0
    optimiser = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    for _ in range(5):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimiser.step()
    net.eval()
    maps = gradcam_maps(net, NETWORKS["resnet50"].cam_layer, images)
    assert maps.shape == (8, 64, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.std() > 1e-3 for m in maps)
    assert not net.training  # the network's mode is kept
