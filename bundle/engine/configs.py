"""Reading one of the bundle's configs from another by its path under ``bundle_root``.

MONAI resolves a ``%configs/train.yaml#id`` macro relative to the *working directory*, so a config that copies
another's definitions that way only loads from the bundle root. MONAI Label, MONAI Deploy and the Model Zoo's CI load
a bundle's inference config from their own folders, with ``bundle_root`` set to where the bundle is: this module
reads the other config under ``bundle_root`` instead, so ``configs/inference.yaml`` reuses train.yaml's
preprocessing, network and compute definitions (defined once) from any working directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["as_flag", "read_bundle_config"]

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0", "")


def as_flag(value: Any, name: str = "flag") -> bool:
    """A config flag as a bool. ``monai.bundle`` reads command-line values with python-fire, which keeps ``--amp false``
    as the *string* ``'false'`` (truthy); configs read their flags through this, so ``false``/``False``/``0``/``no``
    all switch a flag off.

    Raises:
        ValueError: a value that is not a yes/no word, naming the setting.
    """
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError(f"--{name} must be true or false, got {value!r}")


def read_bundle_config(
    bundle_root: str | os.PathLike, config_file: str | Sequence[str] = "configs/train.yaml", **settings: Any
) -> ConfigParser:
    """The parser of another config of this bundle, read from ``bundle_root/config_file``.

    ``config_file`` may also be a list of configs merged in order, as MONAI's ``--config_file "['a.yaml','b.yaml']"``
    (e.g. ``["configs/train.yaml", "configs/regions.yaml"]``).

    Its ``bundle_root`` is set to ``bundle_root``, and each of ``settings`` that is not ``None`` replaces the value of
    that id (e.g. ``spatial_size=[128, 64]``); ``None`` keeps the config's own. Definitions are instantiated on
    demand: ``parser.get_parsed_content("network_def")``.

    Raises:
        FileNotFoundError: a ``bundle_root/config_file`` does not exist (names the file and ``--bundle_root``).
    """
    files = [config_file] if isinstance(config_file, str | os.PathLike) else list(config_file)
    paths = [os.path.join(os.fspath(bundle_root), f) for f in files]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{os.path.abspath(path)}: config not found; pass the bundle's folder as --bundle_root "
                f"(now {os.fspath(bundle_root)!r})"
            )
    parser = ConfigParser()
    parser.read_config(paths)
    parser.update({"bundle_root": os.fspath(bundle_root), **{k: v for k, v in settings.items() if v is not None}})
    return parser
