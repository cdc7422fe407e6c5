"""The bundle as its clients load it: from their own folders, with ``bundle_root`` pointing at it.

The Model Zoo's ``ci/verify_bundle.py`` (full mode) places a bundle at ``models/<name>/`` and, from the zoo's root,
checks its files, version and changelog, the inference config's properties, the network's input/output shapes
(``verify_net_in_out``) and the TorchScript export (``ckpt_export``), each with ``bundle_root=models/<name>``. These
tests make the same calls from a folder outside the bundle (its schema download aside: there is no network here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_net_in_out

from .conftest import REPO_ROOT, run_bundle, save_seeded_resnet50

pytestmark = pytest.mark.integration

NAME = "bone_scan_lesion_classifier"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A model-zoo checkout with the bundle at models/<name>/ (its files and a seeded models/model.pt)."""
    root = tmp_path_factory.mktemp("model-zoo")
    bundle = root / "models" / NAME
    for item in ("configs", "docs", "LICENSE"):
        source = REPO_ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, bundle / item)
    (bundle / "models").mkdir()
    save_seeded_resnet50(bundle / "models" / "model.pt")
    (root / "models" / "model_info.json").write_text("{}")
    return root


def test_files_version_and_changelog(zoo):
    bundle = zoo / "models" / NAME
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.yaml"):
        assert (bundle / name).is_file(), name
    metadata = json.loads((bundle / "configs/metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]


def test_inference_properties_from_the_zoo_root(zoo, monkeypatch):
    monkeypatch.chdir(zoo)
    bundle = Path("models") / NAME
    workflow = create_workflow(
        workflow_type="inference",
        bundle_root=str(bundle),
        config_file=str(bundle / "configs/inference.yaml"),
        logging_file=str(bundle / "configs/logging.conf"),
        meta_file=str(bundle / "configs/metadata.json"),
    )
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(bundle)


def test_net_in_out_and_torchscript_from_the_zoo_root(zoo, monkeypatch):
    monkeypatch.chdir(zoo)
    bundle = Path("models") / NAME
    meta, config = str(bundle / "configs/metadata.json"), str(bundle / "configs/inference.yaml")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=str(bundle), device="cpu")
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle / "models/verify_model.ts"),
        ckpt_file=str(bundle / "models/model.pt"),
        meta_file=meta,
        config_file=config,
        bundle_root=str(bundle),
    )
    exported = torch.jit.load(str(bundle / "models/verify_model.ts"))
    reference = save_seeded_resnet50(zoo / "reference.pt")  # the same seeded weights
    x = torch.rand(1, 2, 512, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(exported(x), reference(x), atol=1e-5)


def test_ckpt_export_is_the_same_from_any_folder(zoo, tmp_path):
    """``ckpt_export`` with inference.yaml alone, from the bundle root and from elsewhere: the same network."""
    bundle = zoo / "models" / NAME
    outputs = {}
    for name, cwd in (("root", bundle), ("outside", tmp_path)):
        path = tmp_path / f"{name}.ts"
        configs = bundle / "configs"
        run_bundle(
            "ckpt_export", "network_def", "--filepath", str(path), "--ckpt_file", str(bundle / "models/model.pt"),
            "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.yaml"),
            cwd=cwd, bundle_root=bundle,
        )  # fmt: skip
        outputs[name] = torch.jit.load(str(path))
    x = torch.rand(2, 2, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(outputs["root"](x), outputs["outside"](x))


def test_monai_label_bundle_infer_task_loading(zoo, tmp_path, monkeypatch):
    """MONAI Label's stock ``monaibundle`` app (bundle at ``APP/model/<name>/``) reads configs/inference.yaml, sets
    ``bundle_root`` in the raw config, and instantiates network_def, preprocessing, inferer and postprocessing."""
    app = tmp_path / "app"
    shutil.copytree(zoo / "models" / NAME, app / "model" / NAME)
    monkeypatch.chdir(app)  # the app's folder, not the bundle's
    path = str(Path("model") / NAME)
    config = ConfigParser()
    config.read_config(Path(path) / "configs" / "inference.yaml")
    config.config.update({"bundle_root": path})
    network = config.get_parsed_content("network_def", instantiate=True)
    preprocessing = config.get_parsed_content("preprocessing", instantiate=True)
    inferer = config.get_parsed_content("inferer", instantiate=True)
    postprocessing = config.get_parsed_content("postprocessing", instantiate=True)
    assert type(network).__name__ == "ResNet"
    assert [type(t).__name__ for t in preprocessing.transforms][:2] == ["LoadImaged", "EnsureChannelFirstd"]
    assert type(inferer).__name__ == "FastInferer"
    assert [type(t).__name__ for t in postprocessing.transforms] == ["Activationsd", "CopyItemsd", "AsDiscreted"]
