"""The atlas region segmenter (bundle.read.atlas) and the per-region Dice (bundle.read.region_metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bundle.data.regions import REGION_BY_NAME, REGION_BY_VALUE
from bundle.phantom.scan import PhantomConfig, generate_patient, patient_rng
from bundle.read.atlas import DEFAULT_ATLAS, AtlasRegionSegmenter, load_atlas
from bundle.read.region_metrics import region_dice

# Mean Dice over seed-0 patients 0-2 at 256 x 128 (affine atlas), measured values minus a margin of about 0.1
# (docs/read_regions_atlas.md has the 20-patient table).
MIN_DICE = {
    "skull": 0.82,
    "cervical_spine": 0.7,
    "thoracic_spine": 0.72,
    "lumbar_spine": 0.75,
    "pelvis": 0.75,
    "ribs": 0.68,
    "scapulae": 0.7,
    "femora": 0.75,
    "kidneys": 0.75,
}


@pytest.fixture(scope="module")
def segmenter() -> AtlasRegionSegmenter:
    return AtlasRegionSegmenter()


@pytest.fixture(scope="module")
def scans() -> list:
    config = PhantomConfig(height=256, width=128)
    return [generate_patient(patient_rng(0, i), config)[0] for i in range(3)]


def test_region_dice_by_hand() -> None:
    truth = np.array([[1, 1, 0, 0], [3, 0, 0, 0]], np.int16)
    pred = np.array([[1, 0, 0, 12], [3, 3, 0, 0]], np.int16)
    dice = region_dice(pred, truth)
    assert list(dice) == [region.name for region in REGION_BY_VALUE.values()]
    assert dice["skull"] == pytest.approx(2 * 1 / (1 + 2))
    assert dice["thoracic_spine"] == pytest.approx(2 * 1 / (2 + 1))
    assert dice["femora"] == 0.0  # predicted only
    assert math.isnan(dice["sacrum"])  # in neither map
    with pytest.raises(ValueError, match="different shapes"):
        region_dice(pred, truth[:, :2])


def test_shipped_atlas() -> None:
    assert DEFAULT_ATLAS.is_file() and DEFAULT_ATLAS.stat().st_size < 1_000_000
    template, labels = load_atlas()
    assert template.shape == (2, *labels.shape) and labels.shape[0] > labels.shape[1]
    assert np.all(np.isfinite(template)) and template.min() >= 0.0 and template.max() <= 1.0
    values = set(np.unique(labels).tolist())
    assert {region.value for region in REGION_BY_VALUE.values()} - {REGION_BY_NAME["injection_site"].value} <= values
    assert REGION_BY_NAME["injection_site"].value not in values


def test_dice_against_phantom_truth(segmenter: AtlasRegionSegmenter, scans: list) -> None:
    dices = []
    for scan in scans:
        regions = segmenter(scan.image.astype(np.float32))
        assert regions.shape == scan.image.shape and regions.dtype == np.int16
        dices.append(region_dice(regions, scan.regions))
    mean = {name: float(np.nanmean([d[name] for d in dices])) for name in MIN_DICE}
    low = {name: round(value, 3) for name, value in mean.items() if value < MIN_DICE[name]}
    assert not low, f"Dice below the thresholds {MIN_DICE}: {low}"


def test_single_view_and_determinism(segmenter: AtlasRegionSegmenter, scans: list) -> None:
    image = scans[0].image.astype(np.float32)
    full = segmenter(image)
    np.testing.assert_array_equal(full, segmenter(image))
    half = image.shape[1] // 2
    single = image.copy()
    single[:, half:] = 0
    regions = segmenter(single)
    assert not regions[:, half:].any()
    np.testing.assert_array_equal(regions[:, :half], full[:, :half])


@pytest.mark.parametrize(
    ("scan", "match"),
    [
        (np.ones((2, 64, 32), np.float32), "2-D"),
        (np.ones((64, 33), np.float32), "even width"),
        (np.zeros((64, 32), np.float32), "empty"),
        (np.zeros((0, 32), np.float32), "too small"),
        (np.full((64, 32), np.nan, np.float32), "non-finite"),
    ],
)
def test_bad_input(segmenter: AtlasRegionSegmenter, scan: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        segmenter(scan)
