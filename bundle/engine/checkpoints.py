"""Checkpoints with ignite's public API (``Checkpoint``, ``DiskSaver``), finding the one to resume from, and exact
resume (re-seeding every epoch from the run's seed).

- :func:`model_checkpoint`: the network's plain ``state_dict`` under a fixed name, the best by a validation metric
  (``model.pt``) or the last (``model_final.pt``).
- :func:`epoch_checkpoint`: ``checkpoint_epoch=N.pt`` after every epoch (network, optimizer, trainer, best-model
  record), the newest ``n_saved`` kept by ignite's rotation; a resumed run adopts the stopped run's files.
- :func:`latest_checkpoint`: the newest complete ``checkpoint_epoch=N.pt``, without loading it.
- :class:`EpochSeeder`: the random transforms and the global generators restart from ``(seed, epoch)`` at every
  epoch start (and the sampler's order follows the epoch), so a resumed run ends with the weights of an
  uninterrupted one.

Every file is written to a temporary file and renamed into place (``DiskSaver(atomic=True)``), so a run killed at any
moment leaves only complete files (and at worst a stray ``tmp*`` file).
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite.utils import manual_seed
from monai.transforms import Randomizable

logger = logging.getLogger(__name__)

EPOCH_FILENAME = "checkpoint_epoch={score}.pt"  # ignite's filename_pattern; {score} is the epoch
_EPOCH_FILE = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


class CheckpointHandler(Checkpoint):
    """ignite ``Checkpoint`` that attaches itself to one event of an engine, for MONAI's handler lists.

    Args:
        args, kwargs: as for ``ignite.handlers.Checkpoint``.
        event: name of the ``ignite.engine.Events`` member that saves, e.g. ``EPOCH_COMPLETED``.
    """

    def __init__(self, *args: Any, event: str = "EPOCH_COMPLETED", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.event = Events[event]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)


class ReplacingDiskSaver(DiskSaver):
    """Atomic ``DiskSaver`` for a fixed file name: a new version replaces the old one in one rename.

    ignite removes a checkpoint's previous file before writing the next one; for a fixed name that is the same file,
    which would be missing while its replacement is written. Here ``remove`` keeps it for ``os.replace`` to overwrite.
    """

    def __init__(self, dirname: str | os.PathLike) -> None:
        super().__init__(dirname, atomic=True, require_empty=False)

    def remove(self, filename: str) -> None:
        """Keep ``filename``: the next atomic write replaces it."""


def _metric_score(metric_name: str) -> Callable[[Engine], float]:
    """Score function of ``engine.state.metrics[metric_name]`` as a Python float (so the record loads with
    ``weights_only=True``); an undefined value (NaN, e.g. AUC of one class) ranks below every defined one."""

    def score(engine: Engine) -> float:
        value = float(engine.state.metrics[metric_name])
        return value if math.isfinite(value) else -math.inf

    return score


def _epoch(engine: Engine) -> int:
    return engine.state.epoch


def model_checkpoint(
    save_dir: str | os.PathLike, model: torch.nn.Module, filename: str, metric_name: str | None = None
) -> CheckpointHandler:
    """The network's ``state_dict`` (unwrapped from DDP) saved as ``save_dir/filename``, atomically.

    Args:
        save_dir: folder of the file (created if missing).
        model: the network.
        filename: fixed file name, e.g. ``model.pt``.
        metric_name: keep the best model by ``engine.state.metrics[metric_name]`` (higher is better, ties keep the
            first), saved at every ``EPOCH_COMPLETED`` that improves it. None: save once, at ``COMPLETED``.
            Its record (best score) is ``state_dict()``, to be saved with the resume checkpoint.
    """
    if metric_name is None:
        return CheckpointHandler(
            {"model": model}, ReplacingDiskSaver(save_dir), filename_pattern=filename, event="COMPLETED"
        )
    return CheckpointHandler(
        {"model": model},
        ReplacingDiskSaver(save_dir),
        filename_pattern=filename,
        score_function=_metric_score(metric_name),
        score_name=metric_name,
        n_saved=1,
    )


def epoch_checkpoint(
    save_dir: str | os.PathLike, to_save: Mapping[str, Any], n_saved: int = 2, adopt_existing: bool = False
) -> CheckpointHandler:
    """``save_dir/checkpoint_epoch=N.pt`` (``{key: obj.state_dict()}`` of ``to_save``) at every ``EPOCH_COMPLETED``,
    written atomically; ignite removes the oldest beyond the newest ``n_saved`` (keep ``n_saved >= 2``, so that a run
    killed at any moment leaves a complete one).

    Args:
        save_dir: folder of the checkpoints (created if missing).
        to_save: objects with ``state_dict``/``load_state_dict``, e.g. network, optimizer, trainer.
        n_saved: how many of the newest checkpoints are kept.
        adopt_existing: when resuming, count the ``checkpoint_epoch=N.pt`` files already in ``save_dir`` up to the
            newest complete one (the one resumed from) as saved by this run, so that they are rotated out instead of
            lingering; newer, unreadable ones are overwritten when their epoch is saved again.
    """
    checkpoint = CheckpointHandler(
        to_save,
        DiskSaver(save_dir, atomic=True, require_empty=False),
        filename_pattern=EPOCH_FILENAME,
        score_function=_epoch,
        score_name="epoch",
        n_saved=n_saved,
    )
    if adopt_existing:
        existing = _epoch_checkpoints(save_dir)
        newest = max((epoch for epoch, path in existing if _is_complete_archive(path)), default=0)
        checkpoint.load_state_dict({"_saved": [(epoch, path.name) for epoch, path in existing if epoch <= newest]})
    return checkpoint


def _epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the per-epoch checkpoints in ``ckpt_dir``, oldest first (numeric, not lexical order)."""
    paths = Path(ckpt_dir).glob("checkpoint_epoch=*.pt")
    return sorted((int(m.group(1)), p) for p in paths if (m := _EPOCH_FILE.search(p.name)))


def _is_complete_archive(path: Path) -> bool:
    """Whether ``path`` is a complete ``torch.save`` zip archive: its central directory, at the end of the file (so a
    truncated file has none), lists a ``data.pkl`` record. Reads the directory only, not the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """Path of the newest complete per-epoch checkpoint (``checkpoint_epoch=N.pt``) in ``ckpt_dir``.

    Only the zip directory of the newest file is read; an older file is looked at only when a newer one is truncated.

    Raises:
        FileNotFoundError: when ``ckpt_dir`` holds no complete per-epoch checkpoint to resume from.
    """
    for epoch, path in reversed(_epoch_checkpoints(ckpt_dir)):
        if _is_complete_archive(path):
            logger.info(f"resuming from {path} (epoch {epoch})")
            return str(path)
        logger.warning(f"skipping unreadable checkpoint {path} (truncated or not a torch.save archive)")
    raise FileNotFoundError(
        f"{ckpt_dir}: no checkpoint_epoch=N.pt to resume from; start without --resume (or check --output_dir)"
    )


class EpochSeeder:
    """At every ``EPOCH_STARTED``, re-seed the training randomness from ``(seed, epoch)``, so that an epoch draws the
    same numbers whether the run started at epoch 1 or was resumed from a checkpoint.

    Two independent seeds come from ``numpy.random.SeedSequence((seed, epoch))``:

    - torch's (CPU and CUDA), numpy's and Python's global generators (``ignite.utils.manual_seed``): dropout, and the
      base seed that a DataLoader draws when ignite creates the epoch's iterator (after ``EPOCH_STARTED``), from
      which MONAI's ``worker_init_fn`` seeds the random transforms in worker processes;
    - ``transforms`` as run in this process (``num_workers=0``), through ``set_random_state``.

    The data order is the sampler's: use one that derives it from the epoch (``DistributedSampler``, whose
    ``set_epoch`` MONAI's trainer calls), not ``shuffle=True``: ``RandomSampler`` draws a permutation from its generator
    when the previous epoch's iterator runs out, which ignite does after ``EPOCH_STARTED``. Not exact with
    ``persistent_workers=True`` (the workers would keep their transforms' random states across epochs).

    Args:
        seed: the run's seed (>= 0).
        transforms: the training transforms (e.g. a ``Compose``, which seeds its random transforms).
    """

    def __init__(self, seed: int, transforms: Randomizable | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.transforms = transforms

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        global_seed, transform_seed = map(
            int, np.random.SeedSequence((self.seed, engine.state.epoch)).generate_state(2)
        )
        manual_seed(global_seed)
        if self.transforms is not None:
            self.transforms.set_random_state(seed=transform_seed)
