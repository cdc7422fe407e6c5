"""Tests of bundle.nets.onepass: one backbone pass per scan equals the per-lesion loop, 0 and 12 lesions, gradients,
autocast/channels_last, weights, and a tiny one-pass model training on a tiny phantom with MONAI's trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ROCAUC, from_engine
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Resized,
    ScaleIntensityRangePercentilesd,
)
from torch import nn

from bundle.data.datalist import load_split
from bundle.data.lesion_groups import LoadLesionMasksd, PrepareScanBatch, group_by_scan, pad_lesions_collate
from bundle.data.readers import WholeBodyScanReader
from bundle.engine.inferers import FastInferer
from bundle.engine.writers import LesionWriter
from bundle.nets import NETWORKS
from bundle.nets.onepass import (
    BACKBONES,
    FeatureExtractor,
    OnePassLesionClassifier,
    masked_average_pool,
    per_lesion_logits,
    scatter_lesions,
)

H, W = 64, 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared CPU, waiting threads make these small tensors many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def lesion_batch(counts: list[int], l_max: int | None = None, seed: int = 0, size: tuple[int, int] = (H, W)):
    """Random scans (B, 1, H, W) and ``counts[b]`` square lesion masks per scan at random places, padded to L_max
    (with random junk in the padding, which must be ignored); returns (image, masks, valid)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    l_max = max(counts, default=0) if l_max is None else l_max
    image = torch.rand(len(counts), 1, height, width, generator=generator)
    masks = (torch.rand(len(counts), l_max, height, width, generator=generator) > 0.5).float()  # junk padding
    valid = torch.zeros(len(counts), l_max, dtype=torch.bool)
    for b, n in enumerate(counts):
        for lesion in range(n):
            masks[b, lesion] = 0
            side = int(torch.randint(2, 7, (1,), generator=generator))
            row = int(torch.randint(0, height - side, (1,), generator=generator))
            col = int(torch.randint(0, width - side, (1,), generator=generator))
            masks[b, lesion, row : row + side, col : col + side] = 1
            image[b, 0, row : row + side, col : col + side] += 2.0 * (lesion % 2)  # hot or plain lesions
            valid[b, lesion] = True
    return image, masks, valid


def tiny_model(in_channels: int = 2, backbone: str = "resnet10", seed: int = 0) -> OnePassLesionClassifier:
    torch.manual_seed(seed)
    return OnePassLesionClassifier(backbone, in_channels=in_channels, hidden_channels=32)


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("backbone", ["resnet10", "resnet50"])
def test_one_pass_equals_per_lesion_loop(backbone, in_channels):
    model = tiny_model(in_channels, backbone).eval()
    image, masks, valid = lesion_batch([3, 1, 0, 2])
    with torch.no_grad():
        one_pass = model(image, masks, valid)
        reference = per_lesion_logits(model, image, masks, valid)
    assert one_pass.shape == (6, 2)
    torch.testing.assert_close(one_pass, reference, atol=1e-5, rtol=0)
    # the lesions get different outputs, so a mix-up of lesions could not pass the comparison above
    differences = (one_pass[:, None, :] - one_pass[None, :, :]).abs().amax(-1)
    assert differences[~torch.eye(6, dtype=torch.bool)].min() > 1e-3


def test_twelve_lesions_and_scatter_back():
    model = tiny_model().eval()
    image, masks, valid = lesion_batch([12, 5], size=(128, 64), seed=1)
    with torch.no_grad():
        flat = model(image, masks, valid)
        reference = per_lesion_logits(model, image, masks, valid)
    assert flat.shape == (17, 2)
    torch.testing.assert_close(flat, reference, atol=1e-5, rtol=0)
    padded = scatter_lesions(flat, valid)
    assert padded.shape == (2, 12, 2)
    torch.testing.assert_close(padded[0], flat[:12])
    torch.testing.assert_close(padded[1, :5], flat[12:])
    assert torch.isnan(padded[1, 5:]).all()
    # a single lesion scored with its scan alone gives the same logits as within the batch
    with torch.no_grad():
        alone = model(image[1:], masks[1:], valid[1:])
    torch.testing.assert_close(alone, flat[12:], atol=1e-5, rtol=0)


def test_zero_lesions():
    model = tiny_model().eval()
    image, masks, valid = lesion_batch([0, 0])
    assert masks.shape == (2, 0, H, W)
    with torch.no_grad():
        assert model(image, masks, valid).shape == (0, 2)
        assert per_lesion_logits(model, image, masks, valid).shape == (0, 2)
    assert scatter_lesions(torch.zeros(0, 2), valid).shape == (2, 0, 2)
    # padding only (L_max = 3, nothing valid)
    image, masks, valid = lesion_batch([0, 0], l_max=3)
    with torch.no_grad():
        assert model(image, masks, valid).shape == (0, 2)


def test_padding_is_ignored():
    model = tiny_model().eval()
    image, masks, valid = lesion_batch([2, 1], l_max=4, seed=3)
    other_junk = masks.clone()
    other_junk[~valid] = 1.0 - other_junk[~valid]
    with torch.no_grad():
        torch.testing.assert_close(model(image, masks, valid), model(image, other_junk, valid))


def test_union_mask_channel():
    model = tiny_model(in_channels=2)
    image, masks, valid = lesion_batch([2, 0], l_max=2)
    backbone_input = model.backbone_input(image, masks, valid)
    assert backbone_input.shape == (2, 2, H, W)
    torch.testing.assert_close(backbone_input[:, :1], image)
    torch.testing.assert_close(backbone_input[0, 1], torch.maximum(masks[0, 0], masks[0, 1]))
    assert backbone_input[1, 1].sum() == 0  # scan 1's padding does not count
    assert tiny_model(in_channels=1).backbone_input(image, masks, valid) is image


def test_masked_average_pool_values():
    feature_map = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(1, 2, 4, 2)  # (B, C, h, w)
    masks = torch.zeros(1, 2, 8, 4)
    masks[0, 0, :2, :2] = 1  # exactly feature cell (0, 0)
    masks[0, 1, 0, 0] = 1  # a quarter of cell (0, 0)
    masks[0, 1, 6:8, 2:4] = 1  # all of cell (3, 1): weights 0.25 and 1
    pooled = masked_average_pool(feature_map, masks)
    assert pooled.shape == (1, 2, 2)
    torch.testing.assert_close(pooled[0, 0], feature_map[0, :, 0, 0])
    expected = (0.25 * feature_map[0, :, 0, 0] + 1.0 * feature_map[0, :, 3, 1]) / 1.25
    torch.testing.assert_close(pooled[0, 1], expected)
    assert masked_average_pool(feature_map, torch.zeros(1, 1, 8, 4)).abs().sum() == 0  # empty mask -> zeros


def test_gradients_reach_backbone_and_head():
    model = tiny_model().train()
    image, masks, valid = lesion_batch([3, 2])
    targets = torch.tensor([0, 1, 1, 0, 1])
    nn.functional.cross_entropy(model(image, masks, valid), targets).backward()
    first_conv = model.backbone.body.conv1.weight.grad
    deepest = model.backbone.body.layer4[0].conv1.weight.grad
    for grad in (first_conv, deepest, model.head[1].weight.grad, model.head[-1].weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not hasattr(model.backbone.body, "fc")  # the classifier's head is gone: no unused parameters
    assert all(p.grad is not None for p in model.parameters())


def test_autocast_and_channels_last():
    model = tiny_model().eval()
    image, masks, valid = lesion_batch([3, 1])
    with torch.no_grad():
        reference = model(image, masks, valid)
        model = model.to(memory_format=torch.channels_last)
        inferer = FastInferer(dtype=torch.bfloat16, channels_last=True)
        reduced = inferer(image, model, lesion_masks=masks, lesion_valid=valid)
    assert reduced.dtype == torch.float32 and reduced.shape == (4, 2)
    torch.testing.assert_close(reduced, reference, atol=0.1, rtol=0.05)


def test_pretrained_weights_load_into_the_backbone(tmp_path: Path):
    torch.manual_seed(1)
    source = NETWORKS["resnet50"].build(3, 1000).state_dict()  # a torchvision-format ImageNet file
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(source, path)
    model = OnePassLesionClassifier("resnet50", pretrained_weights=path)
    body = model.backbone.body.state_dict()
    torch.testing.assert_close(body["layer3.2.conv2.weight"], source["layer3.2.conv2.weight"])
    # the first convolution adapted to scan + union mask: RGB sum and mean
    torch.testing.assert_close(body["conv1.weight"][:, 0], source["conv1.weight"].sum(1))
    torch.testing.assert_close(body["conv1.weight"][:, 1], source["conv1.weight"].mean(1))


@pytest.mark.parametrize("backbone", ["densenet169", "vgg16"])
def test_other_paper_backbones(backbone):
    model = OnePassLesionClassifier(backbone, hidden_channels=16).eval()
    image, masks, valid = lesion_batch([2, 1])
    with torch.no_grad():
        torch.testing.assert_close(
            model(image, masks, valid), per_lesion_logits(model, image, masks, valid), atol=1e-5, rtol=0
        )
    assert model.feature_channels() == {"densenet169": [256, 512, 1280, 1664], "vgg16": [256, 512, 512]}[backbone]


def test_feature_extractor_stages_and_errors():
    extractor = FeatureExtractor("resnet10", in_channels=1, stages=("layer2", "layer4")).eval()
    with torch.no_grad():
        maps = extractor(torch.zeros(1, 1, 128, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 128, 16, 8), (1, 512, 4, 2)]
    assert set(BACKBONES) >= {"resnet50", "densenet169", "vgg16"}
    shallow = OnePassLesionClassifier("resnet10", stages=("layer1", "layer2"), hidden_channels=8)
    assert not hasattr(shallow.backbone.body, "layer3") and not hasattr(shallow.backbone.body, "layer4")
    image, masks, valid = lesion_batch([2])
    nn.functional.cross_entropy(shallow(image, masks, valid), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in shallow.parameters())  # none unused (DistributedDataParallel needs it)
    vgg = FeatureExtractor("vgg16", stages=("features.15",))
    assert len(vgg.body.features) == 16 and not hasattr(vgg.body, "classifier")
    with pytest.raises(ValueError, match="unknown one-pass backbone 'inception_v3'"):
        FeatureExtractor("inception_v3")
    with pytest.raises(ValueError, match="stages"):
        FeatureExtractor("resnet10", stages=("layer5",))
    with pytest.raises(ValueError, match="in_channels"):
        OnePassLesionClassifier("resnet10", in_channels=3)
    model = tiny_model()
    image, masks, valid = lesion_batch([1])
    with pytest.raises(ValueError, match=r"image must be \(B, 1, H, W\)"):
        model(image.expand(-1, 2, -1, -1), masks, valid)
    with pytest.raises(ValueError, match="lesion_valid"):
        model(image, masks, valid[:, :0])
    with pytest.raises(ValueError, match="rows for"):
        scatter_lesions(torch.zeros(3, 2), valid)


# ---- a tiny one-pass model trains on a tiny phantom with MONAI's SupervisedTrainer ------------------------------
@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory) -> Path:
    from bundle.phantom.dataset import generate_dataset
    from bundle.phantom.scan import PhantomConfig

    out = tmp_path_factory.mktemp("onepass_phantom") / "data"
    generate_dataset(out, patients=4, seed=5, config=PhantomConfig(height=256, width=128), num_folds=2)
    return out


def scan_transforms(reader: WholeBodyScanReader) -> Compose:
    """train.yaml's image transforms for one item per scan: the mask list loaded as (L, H, W), resized with the scan."""
    return Compose(
        [
            LoadImaged(keys="image", reader=reader, image_only=True),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            LoadLesionMasksd(keys="masks", reader=reader),
            EnsureTyped(keys="image", data_type="numpy"),
            ScaleIntensityRangePercentilesd(keys="image", lower=0, upper=99, b_min=0.0, b_max=1.0, clip=False),
            Resized(keys=["image", "masks"], spatial_size=(H, W), mode="area"),
            AsDiscreted(keys="masks", threshold=1e-6),
            EnsureTyped(keys=["image", "masks"], dtype=torch.float32, track_meta=False),
        ]
    )


def test_tiny_model_trains_on_phantom(tiny_phantom: Path):
    scans = group_by_scan(load_split(tiny_phantom / "datalist.json", tiny_phantom, part="all"))
    assert len(scans) == 4
    loader = DataLoader(
        Dataset(scans, scan_transforms(WholeBodyScanReader())), batch_size=4, collate_fn=pad_lesions_collate
    )
    batch = next(iter(loader))
    n_lesions = sum(len(s["labels"]) for s in scans)
    assert batch["lesion_id"] == [i for s in scans for i in s["lesion_id"]]
    assert batch["masks"].shape[:2] == batch["lesion_valid"].shape and int(batch["lesion_valid"].sum()) == n_lesions
    torch.manual_seed(0)
    model = OnePassLesionClassifier("resnet10", hidden_channels=32)
    losses: list[float] = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=15,
        train_data_loader=[batch],  # the same cached batch every epoch: a few steps that must fit it
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        loss_function=nn.CrossEntropyLoss(),
        prepare_batch=PrepareScanBatch(num_classes=2),
        inferer=FastInferer(dtype=None, channels_last=False),
        postprocessing=Activationsd(keys="pred", softmax=True),
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output[0]["loss"]))
    trainer.run()
    assert len(losses) == 15
    # decollated into one item per lesion, softmax applied per lesion
    assert len(trainer.state.output) == n_lesions
    assert all(
        item["pred"].shape == (2,) and abs(float(item["pred"].sum()) - 1) < 1e-5 for item in trainer.state.output
    )
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, losses
    # MONAI's evaluator and ROCAUC metric on the flat per-lesion outputs: the fitted batch is separated
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=[batch],
        network=model,
        prepare_batch=PrepareScanBatch(num_classes=2),
        inferer=FastInferer(dtype=None, channels_last=False),
        postprocessing=Activationsd(keys="pred", softmax=True),
        key_val_metric={"auc": ROCAUC(output_transform=from_engine(["pred", "label"]))},
    )
    writer = RecordingWriter(tiny_phantom)  # the per-lesion writers' base: zips outputs with batch items, strictly
    writer.attach(evaluator)
    evaluator.run()
    assert evaluator.state.metrics["auc"] == 1.0
    labels = batch["labels"][batch["lesion_valid"]]
    assert [int(item["label"].argmax()) for item in evaluator.state.output] == labels.tolist()
    # one record per lesion, each with its own lesion_id, patient_id and P(malignant)
    assert [r["lesion_id"] for r in writer.written] == batch["lesion_id"]
    assert [r["patient_id"] for r in writer.written] == [s["patient_id"] for s in scans for _ in s["lesion_id"]]
    probabilities = [float(item["pred"][1]) for item in evaluator.state.output]
    assert [r["probability"] for r in writer.written] == pytest.approx(probabilities)


class RecordingWriter(LesionWriter):
    """A per-lesion writer that keeps its records instead of writing files."""

    def write(self, records, engine) -> None:
        self.written = list(records)
