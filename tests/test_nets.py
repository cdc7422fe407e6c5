"""Tests of bundle.nets: the four paper networks, their torchvision-format weight loading and the registry.

No torchvision here: a "torchvision file" is the state_dict of a 3-channel, 1000-class instance of our own network
(its names are torchvision's, which the parameter counts and literal keys below pin down), or for DenseNet169
MONAI's state_dict with its keys mapped back to torchvision's names by the test's own inverse mapping.
Every tensor of such a file is randomised, so nothing matches a freshly initialised network by chance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from bundle.nets import NETWORKS, VGG16, InceptionV3, build_network
from bundle.nets.densenet import densenet169, torchvision_to_monai_key
from bundle.nets.inception import MIN_SIZE, InceptionOutputs
from bundle.nets.pretrained import PretrainedWeightsError, load_pretrained

NAMES = ("resnet50", "densenet169", "vgg16", "inception_v3")
#: Keys of each 2-channel network that must keep their random initialisation: the 2-class head only.
HEAD_KEYS = {
    "resnet50": {"fc.weight", "fc.bias"},
    "densenet169": {"class_layers.out.weight", "class_layers.out.bias"},
    "vgg16": {"classifier.6.weight", "classifier.6.bias"},
    "inception_v3": {"fc.weight", "fc.bias"},
}
FIRST_CONV = {
    "resnet50": "conv1.weight",
    "densenet169": "features.conv0.weight",
    "vgg16": "features.0.weight",
    "inception_v3": "Conv2d_1a_3x3.conv.weight",
}


def n_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def monai_to_torchvision_key(key: str) -> str:
    """Inverse of the DenseNet key mapping, written independently: MONAI name -> torchvision name."""
    key = re.sub(r"\.layers\.(norm|conv)([12])\.", r".\1\2.", key)
    return re.sub(r"^class_layers\.out\.", "classifier.", key)


def legacy_densenet_key(key: str) -> str:
    """torchvision name -> the pre-0.4 name of torchvision's hub file (``norm1`` -> ``norm.1``)."""
    return re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", key)


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network without allocating or initialising its weights (for names, shapes and counts)."""
    with torch.device("meta"):
        return build()


def random_state(template: nn.Module) -> dict[str, torch.Tensor]:
    """Random tensors with ``template``'s state_dict keys and shapes: small weights, positive BN variances."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in template.state_dict().items():
        if not value.is_floating_point():
            state[key] = torch.full(value.shape, 7, dtype=value.dtype)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.02
    return state


def imagenet_source(name: str) -> dict[str, torch.Tensor]:
    """A torchvision-format ImageNet state_dict (3 channels, 1000 classes) of network ``name``, randomised."""
    if name == "densenet169":
        state = random_state(on_meta(lambda: densenet169(3, 1000)))
        return {monai_to_torchvision_key(k): v for k, v in state.items()}
    if name == "inception_v3":  # torchvision's inception_v3 file includes the auxiliary classifier
        return random_state(on_meta(lambda: InceptionV3(3, 1000, aux_logits=True)))
    return random_state(on_meta(lambda: NETWORKS[name].build(3, 1000)))


def assert_tensors_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], keys: list[str]) -> None:
    differing = [k for k in keys if not torch.equal(actual[k], expected[k])]
    assert not differing, f"{len(differing)} of {len(keys)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("imagenet")
    files = {}
    for name in NAMES:
        files[name] = folder / f"{name}.pth"
        torch.save(imagenet_source(name), files[name])
    return files


@pytest.fixture(scope="module")
def eval_networks() -> dict[str, nn.Module]:
    return {name: build_network(name).eval() for name in NAMES}


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: VGG16(3, 1000), 138_357_544),
        (lambda: VGG16(3, 1000, batch_norm=True), 138_365_992),
        (lambda: InceptionV3(3, 1000, aux_logits=True), 27_161_264),
        (lambda: densenet169(3, 1000), 14_149_480),
        (lambda: NETWORKS["resnet50"].build(3, 1000), 25_557_032),
    ],
    ids=["vgg16", "vgg16_bn", "inception_v3", "densenet169", "resnet50"],
)
def test_parameter_count_equals_torchvision(build: Callable[[], nn.Module], expected: int) -> None:
    assert n_parameters(on_meta(build)) == expected


def test_torchvision_parameter_names() -> None:
    vgg = on_meta(lambda: VGG16(3, 1000)).state_dict()
    assert {"features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.3.weight"} <= set(vgg)
    assert vgg["classifier.6.weight"].shape == (1000, 4096)
    assert "features.1.running_mean" in on_meta(lambda: VGG16(batch_norm=True)).state_dict()
    inception = on_meta(lambda: InceptionV3(3, 1000, aux_logits=True)).state_dict()
    expected = {
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.running_var",
        "Mixed_5b.branch1x1.conv.weight",
        "Mixed_6e.branch7x7dbl_5.bn.bias",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
        "AuxLogits.conv1.conv.weight",
        "AuxLogits.fc.weight",
        "fc.weight",
    }
    assert expected <= set(inception)
    assert inception["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert not any(k.startswith("AuxLogits.") for k in on_meta(InceptionV3).state_dict())


def test_densenet_key_mapping() -> None:
    assert (
        torchvision_to_monai_key("features.denseblock1.denselayer1.norm1.weight")
        == "features.denseblock1.denselayer1.layers.norm1.weight"
    )
    assert (
        torchvision_to_monai_key("features.denseblock4.denselayer32.conv.2.weight")
        == "features.denseblock4.denselayer32.layers.conv2.weight"
    )
    assert torchvision_to_monai_key("classifier.bias") == "class_layers.out.bias"
    for same in ("features.conv0.weight", "features.transition3.conv.weight", "features.norm5.running_var"):
        assert torchvision_to_monai_key(same) == same
    torchvision_keys = set(imagenet_source("densenet169"))
    assert {"features.denseblock3.denselayer32.norm2.running_mean", "classifier.weight"} <= torchvision_keys
    monai_keys = set(on_meta(lambda: densenet169(3, 1000)).state_dict())
    assert {torchvision_to_monai_key(k) for k in torchvision_keys} == monai_keys
    assert {torchvision_to_monai_key(legacy_densenet_key(k)) for k in torchvision_keys} == monai_keys


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(64, 32), (128, 64), (512, 256)])
def test_forward_eval(eval_networks: dict[str, nn.Module], name: str, size: tuple[int, int]) -> None:
    with torch.no_grad():
        out = eval_networks[name](torch.randn(2, 2, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_train_returns_tensor_with_gradients(name: str) -> None:
    net = build_network(name).train()
    out = net(torch.randn(2, 2, 128, 64))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 2)
    out.sum().backward()
    first_conv = dict(net.named_parameters())[NETWORKS[name].first_conv]
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(128, 64), (512, 256), (299, 299)])
def test_inception_aux_logits_in_training(size: tuple[int, int]) -> None:
    net = InceptionV3(aux_logits=True).train()
    out = net(torch.randn(2, 2, *size))
    assert isinstance(out, InceptionOutputs)
    assert out.logits.shape == out.aux_logits.shape == (2, 2)
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 2, *size)).shape == (2, 2)


def test_inception_small_input_is_zero_padded() -> None:
    net = InceptionV3().eval()
    x = torch.randn(1, 2, 70, 64)
    padded = torch.zeros(1, 2, MIN_SIZE, MIN_SIZE)
    padded[..., 2:72, 5:69] = x
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded))


def test_unknown_name_raises() -> None:
    assert set(NETWORKS) == set(NAMES)
    with pytest.raises(ValueError, match=r"densenet169.*inception_v3.*resnet50.*vgg16"):
        build_network("resnet18")


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_weights_load(imagenet_files: dict[str, Path], name: str) -> None:
    rename = NETWORKS[name].rename or (lambda key: key)
    source = {rename(k): v for k, v in torch.load(imagenet_files[name], weights_only=True).items()}
    torch.manual_seed(1)
    random_init = build_network(name).state_dict()
    torch.manual_seed(1)
    net = build_network(name, pretrained_weights=imagenet_files[name])
    loaded = net.state_dict()

    first_conv = FIRST_CONV[name]
    rgb = source[first_conv]
    torch.testing.assert_close(loaded[first_conv][:, 0], rgb.sum(dim=1))
    torch.testing.assert_close(loaded[first_conv][:, 1], rgb.mean(dim=1))
    head = sorted(HEAD_KEYS[name])
    assert_tensors_equal(loaded, random_init, head)  # the 2-class head keeps its random initialisation
    body = [k for k in loaded if k not in HEAD_KEYS[name] and k != first_conv]
    assert len(body) > 10
    assert_tensors_equal(loaded, source, body)
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 2, 128, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


def test_legacy_densenet_hub_file_loads(tmp_path: Path) -> None:
    """torchvision's densenet169 hub file: ``norm.1`` names and no BatchNorm ``num_batches_tracked``."""
    source = imagenet_source("densenet169")
    legacy = {legacy_densenet_key(k): v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet169-legacy.pth"
    torch.save(legacy, path)
    net = build_network("densenet169", pretrained_weights=path)
    torch.testing.assert_close(
        net.state_dict()["features.denseblock2.denselayer5.layers.conv2.weight"],
        source["features.denseblock2.denselayer5.conv2.weight"],
    )


def test_inception_with_aux_keeps_pretrained_aux_body(imagenet_files: dict[str, Path]) -> None:
    net = InceptionV3(aux_logits=True)
    load_pretrained(
        net,
        imagenet_files["inception_v3"],
        first_conv="Conv2d_1a_3x3.conv.weight",
        head_prefixes=("fc.", "AuxLogits.fc."),
    )
    source = torch.load(imagenet_files["inception_v3"], weights_only=True)
    torch.testing.assert_close(net.AuxLogits.conv1.conv.weight.detach(), source["AuxLogits.conv1.conv.weight"])


@pytest.mark.parametrize(
    ("file_of", "network"),
    [("vgg16", "inception_v3"), ("inception_v3", "vgg16"), ("resnet50", "densenet169"), ("densenet169", "resnet50")],
)
def test_wrong_architecture_raises(imagenet_files: dict[str, Path], file_of: str, network: str) -> None:
    with pytest.raises(PretrainedWeightsError, match=re.escape(str(imagenet_files[file_of]))):
        build_network(network, pretrained_weights=imagenet_files[file_of])


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_network("resnet50", pretrained_weights=tmp_path / "absent.pth")


def test_rename_collision_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save({"a.weight": torch.zeros(1), "b.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match="collide"):
        load_pretrained(nn.Linear(1, 1), path, rename=lambda key: "weight")
