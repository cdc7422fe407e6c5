"""The options beyond the paper: local patches (centred, padded at the edge, the other view), context masks (exactly
the other lesions), their batching, and the networks that read them (one pass = per-lesion loop, tandem shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.data.lesion_groups import LoadContextMaskd, PrepareScanBatch, items_for_mode, pad_lesions_collate
from bundle.data.local_inputs import (
    CONTEXT_KEY,
    PATCH_KEY,
    LesionPatchd,
    add_context_masks,
    lesion_centre,
    lesion_patches,
)
from bundle.data.readers import WholeBodyScanReader
from bundle.nets import build_network
from bundle.nets.onepass import OnePassLesionClassifier, context_union, per_lesion_logits
from bundle.nets.tandem import PatchEncoder, TandemLesionClassifier, build_lesion_classifier

from .conftest import save_nifti
from .test_onepass import lesion_batch, one_thread  # noqa: F401  (fixture)

H, W, P = 40, 32, 8


def scan_with_lesions(boxes: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, H, W) scan of distinct values (so every crop is identifiable) and one mask per (top, left, h, w) box."""
    scan = torch.arange(H * W, dtype=torch.float32).reshape(1, H, W) + 1
    masks = torch.zeros(len(boxes), H, W)
    for i, (top, left, height, width) in enumerate(boxes):
        masks[i, top : top + height, left : left + width] = 1
    return scan, masks


def test_patch_is_centred_on_the_lesion_with_the_other_view_half_the_width_away():
    scan, masks = scan_with_lesions([(10, 4, 3, 5), (20, 25, 2, 2)])
    patches = lesion_patches(scan, masks, (P, P))
    assert patches.shape == (6, P, P) and patches.dtype == torch.float32
    for lesion, (row, col, other_col) in enumerate([(11, 6, 6 + W // 2), (20, 25, 25 - W // 2)]):
        assert lesion_centre(masks[lesion]) == (row, col)
        scan_patch, mask_patch, other_patch = patches[3 * lesion : 3 * lesion + 3]
        # the centre pixel of the patch (P // 2, P // 2) is the lesion's centre, in the scan and in the mask
        assert scan_patch[P // 2, P // 2] == scan[0, row, col]
        assert torch.equal(scan_patch, scan[0, row - P // 2 : row + P // 2, col - P // 2 : col + P // 2])
        assert torch.equal(mask_patch, masks[lesion, row - P // 2 : row + P // 2, col - P // 2 : col + P // 2])
        assert mask_patch.sum() == masks[lesion].sum()  # the whole lesion is inside its patch
        assert other_patch[P // 2, P // 2] == scan[0, row, other_col]


def test_patch_is_zero_padded_at_the_image_edge():
    scan, masks = scan_with_lesions([(0, 0, 1, 1), (H - 1, W - 1, 1, 1)])
    patches = lesion_patches(scan, masks, (P, P))
    top_left, bottom_right = patches[0], patches[3]
    assert top_left[P // 2, P // 2] == scan[0, 0, 0]
    assert torch.equal(top_left[: P // 2], torch.zeros(P // 2, P)) and torch.equal(
        top_left[:, : P // 2], 0 * top_left[:, : P // 2]
    )
    assert torch.equal(top_left[P // 2 :, P // 2 :], scan[0, : P // 2, : P // 2])
    assert bottom_right[P // 2, P // 2] == scan[0, H - 1, W - 1]
    assert torch.equal(bottom_right[P // 2 + 1 :], torch.zeros(P // 2 - 1, P))
    assert patches[1][P // 2, P // 2] == 1 and patches[1].sum() == 1  # the mask's single pixel, centred


def test_patch_transform_in_both_modes_and_errors():
    scan, masks = scan_with_lesions([(10, 4, 3, 5), (20, 25, 2, 2), (5, 5, 1, 1)])
    one = LesionPatchd("mask", (P, P))({"image": scan, "mask": masks[1:2]})
    every = LesionPatchd("masks", (P, P))({"image": scan, "masks": masks})
    assert one[PATCH_KEY].shape == (3, P, P) and every[PATCH_KEY].shape == (9, P, P)
    assert torch.equal(every[PATCH_KEY][3:6], one[PATCH_KEY])  # lesion 1 of the scan = lesion 1 alone
    assert LesionPatchd("masks", (P, P))({"image": scan, "masks": masks[:0]})[PATCH_KEY].shape == (0, P, P)
    with pytest.raises(ValueError, match="patch_size must be two positive sizes"):
        LesionPatchd("mask", (0, P))


def test_context_lists_exactly_the_other_lesions_of_the_scan():
    entries = [
        {"image": "a.nii", "mask": "a1.nii"}, {"image": "b.nii", "mask": "b1.nii"},
        {"image": "a.nii", "mask": "a2.nii"}, {"image": "a.nii", "mask": "a3.nii"},
    ]  # fmt: skip
    contexts = [e[CONTEXT_KEY] for e in add_context_masks(entries)]
    assert contexts == [["a2.nii", "a3.nii"], [], ["a1.nii", "a3.nii"], ["a1.nii", "a2.nii"]]
    assert items_for_mode(entries, "lesion", context_masks=True)[2][CONTEXT_KEY] == ["a1.nii", "a3.nii"]
    assert CONTEXT_KEY not in items_for_mode(entries, "lesion")[0]
    assert CONTEXT_KEY not in items_for_mode(entries, "scan", context_masks=True)[0]  # the network's part there


def test_context_mask_is_the_union_of_the_other_masks(tmp_path: Path):
    scan, masks = scan_with_lesions([(10, 4, 3, 5), (11, 6, 3, 3), (30, 20, 2, 2)])
    paths = [str(tmp_path / save_nifti(tmp_path / f"m{i}.nii.gz", masks[i].numpy())) for i in range(3)]
    loader = LoadContextMaskd(reader=WholeBodyScanReader())
    union = loader({"image": scan, CONTEXT_KEY: paths[1:]})[CONTEXT_KEY]
    assert union.shape == (1, H, W) and torch.equal(union[0], torch.maximum(masks[1], masks[2]))
    assert torch.equal(loader({"image": scan, CONTEXT_KEY: []})[CONTEXT_KEY], torch.zeros(1, H, W))
    save_nifti(tmp_path / "small.nii.gz", np.zeros((H, W - 2), np.float32))
    with pytest.raises(ValueError, match=r"small\.nii\.gz"):
        loader({"image": scan, CONTEXT_KEY: [str(tmp_path / "small.nii.gz")]})
    # one pass: each lesion's context is the union of the other valid masks, padding excluded
    valid = torch.tensor([[True, True, True, False]])
    padded = torch.cat([masks, torch.ones(1, H, W)])[None]
    context = context_union(padded, valid)
    assert torch.equal(context[0, 0], torch.maximum(masks[1], masks[2]))
    assert torch.equal(context[0, 2], torch.maximum(masks[0], masks[1]))


def test_patches_are_padded_per_lesion_in_a_batch():
    scan, masks = scan_with_lesions([(10, 4, 3, 5), (20, 25, 2, 2), (5, 5, 1, 1)])
    items = [
        {"image": scan, "masks": m, "labels": [1] * len(m), PATCH_KEY: lesion_patches(scan, m, (P, P))}
        for m in (masks, masks[:1])
    ]
    batch = pad_lesions_collate(items)
    assert batch[PATCH_KEY].shape == (2, 3, 3, P, P)
    assert torch.equal(batch[PATCH_KEY][0].reshape(9, P, P), items[0][PATCH_KEY])
    assert torch.equal(batch[PATCH_KEY][1, 1:], torch.zeros(2, 3, P, P))
    _, _, _, kwargs = PrepareScanBatch()(batch, "cpu")
    assert torch.equal(kwargs["lesion_patches"], batch[PATCH_KEY])
    items[1][PATCH_KEY] = items[1][PATCH_KEY][:2]  # not a multiple of 3 channels per lesion
    with pytest.raises(ValueError, match="local patches must be"):
        pad_lesions_collate(items)


@pytest.mark.parametrize(("context_masks", "local_patch"), [(True, False), (False, True), (True, True)])
def test_one_pass_with_options_equals_the_per_lesion_loop(context_masks, local_patch):
    image, masks, valid = lesion_batch([3, 1, 5], l_max=6, seed=4)
    patches = torch.rand(*valid.shape, 3, 32, 32)
    torch.manual_seed(0)
    model = OnePassLesionClassifier("resnet10", context_masks=context_masks, local_patch=local_patch).eval()
    with torch.no_grad():
        out = model(image, masks, valid, lesion_patches=patches)
        reference = per_lesion_logits(model, image, masks, valid, lesion_patches=patches)
    assert out.shape == (9, 2)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    if context_masks:  # the context changes the output: another scan's lesions give other logits
        alone = torch.zeros_like(valid)
        alone[0, 0] = True
        with torch.no_grad():
            single = model(image, masks, alone, lesion_patches=patches)
        assert not torch.allclose(single[0], out[0], atol=1e-4)
    if local_patch:
        with pytest.raises(ValueError, match="lesion_patches must be"):
            model(image, masks, valid)


@pytest.mark.parametrize("name", ["resnet50", "densenet169", "vgg16", "inception_v3"])
def test_tandem_fuses_the_local_stream_with_each_paper_network(name):
    torch.manual_seed(0)
    model = build_lesion_classifier(name, in_channels=3, local_patch=True).eval()
    assert isinstance(model, TandemLesionClassifier) and isinstance(model.local_stream, PatchEncoder)
    image, patch = torch.rand(2, 3, 64, 32), torch.rand(2, 3, 32, 32, requires_grad=True)
    out = model(image, patch)
    out[:, 1].sum().backward()
    assert out.shape == (2, 2) and patch.grad is not None and patch.grad.abs().sum() > 0  # the patch reaches it
    assert model.head.in_features == model.global_stream(image).shape[1] + PatchEncoder.out_features


def test_without_options_the_paper_network_is_built_unchanged():
    torch.manual_seed(0)
    plain = build_network("resnet50", 2, 2)
    torch.manual_seed(0)
    same = build_lesion_classifier("resnet50", 2, 2, local_patch=False)
    assert type(same) is type(plain)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), same.state_dict().values(), strict=True))
