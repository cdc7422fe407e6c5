"""Command-line flags: ``monai.bundle`` (python-fire) passes ``--amp false`` as the string 'false'."""

from __future__ import annotations

import pytest

from bundle.engine.configs import as_flag, read_bundle_config
from tests.conftest import REPO_ROOT


def test_fire_keeps_lowercase_false_as_text():
    fire = pytest.importorskip("fire")
    seen = {}
    fire.Fire(lambda amp=None: seen.setdefault("amp", amp), command=["--amp", "false"])
    assert seen["amp"] == "false"  # truthy: why the configs read flags through as_flag


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("False", False), ("0", False), (False, False),
                                                 ("true", True), ("TRUE", True), (1, True), (True, True)])  # fmt: skip
def test_as_flag(value, expected):
    assert as_flag(value) is expected


def test_as_flag_names_the_setting():
    with pytest.raises(ValueError, match="--amp must be true or false, got 'fast'"):
        as_flag("fast", "amp")


def test_amp_false_on_the_command_line_means_fp32():
    parser = read_bundle_config(REPO_ROOT, "configs/train.yaml", amp="false", channels_last="false")
    assert parser.get_parsed_content("amp_dtype") is None
    inferer = parser.get_parsed_content("validate#inferer")
    assert inferer.dtype is None and inferer.channels_last is False
