"""Temperature scaling of the trained classifier: fitted on the inner validation split after training, saved next to
the best checkpoint, and the calibration of an evaluation before and after it.

After training (train.yaml's ``training``), :func:`fit_checkpoint_temperature` loads the best checkpoint
(``ckpt_dir/model.pt``, chosen on the inner validation split), runs it on that same inner validation split (patients
of the training folds, never the test fold) and fits one temperature T by NLL
(:func:`bundle.evaluation.calibration.fit_temperature`); it writes ``ckpt_dir/temperature.json``::

    {"temperature": 1.83, "checkpoint": "model.pt", "fitted_on": "...", "method": "...", "lesions": 42,
     "nll_before": ..., "nll_after": ..., "ece_before": {"top_label": ..., "positive": ...}, "ece_after": {...},
     "youden": {"threshold": 0.41, ...}, "fold": 0, "lesion_mode": "lesion", ...}

``youden`` is the threshold on the *uncalibrated* P(malignant) that maximises sensitivity + specificity - 1 on the
inner validation split (so it is chosen without the test fold; ``threshold_calibrated`` is the same cut on the
calibrated probability). The evaluation (:class:`~bundle.evaluation.predictions.LesionPredictionWriter`) reads the
file and writes :func:`calibration_summary` into ``metrics.json``. Calibrated probabilities are
``softmax(logits / T)``; with two classes they give the same calls at 0.5 as the uncalibrated ones (T > 0 keeps the
sign of the logit difference), and the same AUC.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax

from bundle.engine.writers import is_distributed, is_rank0
from bundle.evaluation.calibration import (
    CALIBRATION_KINDS,
    apply_temperature,
    fit_temperature,
    reliability_diagram,
    softmax_nll,
)
from bundle.evaluation.metrics import PROPORTION_NAMES, binary_metrics, youden_threshold
from bundle.io import atomic_write_text

__all__ = [
    "FITTED_ON",
    "TEMPERATURE_FILE",
    "calibration_summary",
    "collect_logits",
    "fit_checkpoint_temperature",
    "inner_threshold_metrics",
    "json_ready",
    "read_temperature",
]

logger = logging.getLogger(__name__)

TEMPERATURE_FILE = "temperature.json"
N_BINS = 10
FITTED_ON = (
    "inner validation split (val_fraction of the patients of the training folds, the split that selected the "
    "checkpoint); the test fold was not used"
)
METHOD = (
    "temperature scaling (Guo et al. 2017): one T > 0 minimising the mean negative log-likelihood of "
    "softmax(logits / T) on the inner validation split (bounded search over T in [0.01, 100]); "
    "calibrated P = softmax(logits / T)"
)


def collect_logits(
    network: torch.nn.Module,
    dataloader: Any,
    inferer: Callable[..., torch.Tensor],
    prepare_batch: Callable[..., tuple],
    device: torch.device | str,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every lesion of ``dataloader``, as MONAI's ``SupervisedEvaluator`` computes them.

    ``prepare_batch(batch, device)`` gives ``(inputs, targets)`` or ``(inputs, targets, args, kwargs)`` (MONAI's
    convention: ``default_prepare_batch`` in lesion mode, :class:`~bundle.data.lesion_groups.PrepareScanBatch` in
    scan mode); the network runs in eval mode without gradients through ``inferer(inputs, network, *args, **kwargs)``.
    In a distributed run every rank's lesions are gathered (each rank gets all of them).

    Returns:
        logits (N, K) float64 and labels (N,) int64 (class indices of the one-hot or index targets).
    """
    was_training = network.training
    network.eval()
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with torch.no_grad():
        for batch in dataloader:
            prepared = prepare_batch(batch, device)
            inputs, targets = prepared[0], prepared[1]
            args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
            output = inferer(inputs, network, *args, **kwargs)
            logits.append(output.detach().float().cpu().numpy().reshape(len(output), -1))
            target = torch.as_tensor(targets).detach().cpu()
            one_hot = target.ndim == 2 and target.shape[1] > 1
            labels.append((target.argmax(dim=1) if one_hot else target.reshape(-1)).numpy())
    network.train(was_training)
    z = np.concatenate(logits).astype(np.float64) if logits else np.zeros((0, 2))
    y = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64)
    if is_distributed():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (z, y))
        z = np.concatenate([g[0] for g in gathered])
        y = np.concatenate([g[1] for g in gathered])
    return z, y


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars made plain Python and every NaN or infinity replaced by None (nested)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def positive_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(class 1) (N,) of ``softmax(logits / temperature)`` for logits (N, 2)."""
    return softmax(apply_temperature(np.asarray(logits, dtype=np.float64), temperature), axis=1)[:, 1]


def logit_of(probability: float) -> float:
    """log(p / (1 - p)): the two-class logit difference of a probability (±inf at 1 and 0)."""
    with np.errstate(divide="ignore"):
        return float(np.log(probability) - np.log1p(-probability))


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """The cut on the calibrated P(malignant) equivalent to ``threshold`` on the uncalibrated one (two classes)."""
    return float(1.0 / (1.0 + np.exp(-logit_of(threshold) / temperature)))


def ece_by_kind(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    """ECE of each of :data:`~bundle.evaluation.calibration.CALIBRATION_KINDS` for probabilities (N, K)."""
    return {kind: reliability_diagram(probabilities, labels, n_bins, kind).ece for kind in CALIBRATION_KINDS}


def fit_checkpoint_temperature(
    network: torch.nn.Module,
    dataloader: Any,
    inferer: Callable[..., torch.Tensor],
    prepare_batch: Callable[..., tuple],
    device: torch.device | str,
    ckpt_dir: str | os.PathLike,
    checkpoint_name: str = "model.pt",
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Fit T for ``ckpt_dir/checkpoint_name`` on ``dataloader`` (the inner validation split) and write
    ``ckpt_dir/temperature.json`` (module docstring) atomically, on rank 0.

    The checkpoint's weights are loaded into ``network`` (unwrapped from DDP): call it after training. In a
    distributed run every rank must call it (the split's lesions are gathered from all ranks).

    Args:
        network: the trained network (``network`` of train.yaml).
        dataloader: the inner validation split (``validate#dataloader``).
        inferer, prepare_batch, device: as the validation evaluator runs the network.
        ckpt_dir: folder of the checkpoint and of the file written.
        checkpoint_name: the checkpoint T is fitted for.
        details: recorded in the file as given (fold, lesion_mode, datalist, ...).

    Returns:
        The record written, or None (with a warning) when there is no checkpoint or no validation lesion.
    """
    checkpoint = Path(ckpt_dir) / checkpoint_name
    found = [checkpoint.is_file()]
    if is_distributed():  # every rank takes rank 0's answer, once rank 0 (which writes the checkpoints) is here
        torch.distributed.barrier()
        found = [checkpoint.is_file()]
        torch.distributed.broadcast_object_list(found, src=0)
    if not found[0]:
        logger.warning(f"no temperature scaling: {checkpoint} not found (no validation epoch selected a model)")
        return None
    module = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    module.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    logits, labels = collect_logits(network, dataloader, inferer, prepare_batch, device)
    if len(labels) == 0:
        logger.warning("no temperature scaling: the inner validation split has no lesion")
        return None
    temperature = fit_temperature(logits, labels)
    before = softmax(logits, axis=1)
    after = softmax(apply_temperature(logits, temperature), axis=1)
    youden = None
    if 0 < labels.sum() < len(labels):
        best = youden_threshold(labels, before[:, 1])
        youden = {**best, "threshold_calibrated": calibrated_threshold(best["threshold"], temperature)}
    record = {
        "temperature": temperature,
        "checkpoint": checkpoint_name,
        "fitted_on": FITTED_ON,
        "method": METHOD,
        "lesions": len(labels),
        "malignant": int(labels.sum()),
        "nll_before": softmax_nll(logits, labels),
        "nll_after": softmax_nll(apply_temperature(logits, temperature), labels),
        "n_bins": N_BINS,
        "ece_before": ece_by_kind(before, labels),
        "ece_after": ece_by_kind(after, labels),
        "youden": youden,
        **dict(details or {}),
    }
    record = json_ready(record)
    if is_rank0():
        atomic_write_text(Path(ckpt_dir) / TEMPERATURE_FILE, json.dumps(record, indent=2) + "\n")
        logger.info(
            f"temperature T = {temperature:.3f} fitted on {len(labels)} inner-validation lesions "
            f"(NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}); written to "
            f"{(Path(ckpt_dir) / TEMPERATURE_FILE).resolve()}"
        )
    return record


def read_temperature(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The record of a ``temperature.json``, or None (with a warning) when it is absent, unreadable, or fitted for
    another checkpoint file name than ``checkpoint``'s."""
    path = Path(path)
    if not path.is_file():
        logger.warning(f"{path} not found: probabilities without temperature scaling")
        return None
    try:
        record = json.loads(path.read_text())
        temperature = float(record["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning(f"{path}: not a temperature file ({err}); probabilities without temperature scaling")
        return None
    if not temperature > 0:
        logger.warning(f"{path}: temperature {temperature} is not positive; probabilities without temperature scaling")
        return None
    if checkpoint is not None and record.get("checkpoint") not in (None, Path(checkpoint).name):
        logger.warning(
            f"{path} was fitted for {record.get('checkpoint')}, not for {Path(checkpoint).name}: probabilities "
            "without temperature scaling"
        )
        return None
    return {**record, "temperature": temperature, "file": str(path.resolve())}


def inner_threshold_metrics(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, Any]:
    """The test lesions' proportions (sensitivity, specificity, accuracy, PPV, NPV) and counts at ``threshold``."""
    metrics = binary_metrics(np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float), threshold)
    keep = (*PROPORTION_NAMES, "tp", "fp", "tn", "fn")
    return {"threshold": float(threshold), **{k: metrics[k] for k in keep if k in metrics}}


def calibration_summary(
    labels: Sequence[int] | np.ndarray,
    logits: np.ndarray,
    temperature: Mapping[str, Any] | None,
    n_bins: int = N_BINS,
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """ECE (both kinds) and reliability-diagram data of evaluated lesions, before and after temperature scaling.

    Args:
        labels: (N,) class indices.
        logits: (N, 2) logits (or log-probabilities) of the lesions.
        temperature: a :func:`read_temperature` record, or None (then only ``before``).
        n_bins: equal-width confidence bins.
        probabilities: (N,) P(malignant) as the evaluation wrote it, called at the inner Youden threshold (default:
            from ``logits``).

    Returns:
        ``temperature`` (T or None), ``fitted_on``/``temperature_file``, ``n_bins``, ``ece_before``/``ece_after``
        (``{kind: ece}``), ``reliability_before``/``reliability_after`` (``{kind: diagram dict}``), and
        ``inner_youden``: the test lesions' metrics at the inner split's Youden threshold (None without one).
    """
    y = np.asarray(labels, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    out: dict[str, Any] = {
        "temperature": None,
        "fitted_on": None,
        "temperature_file": None,
        "n_bins": n_bins,
        "lesions": len(y),
    }
    if len(y) == 0:
        empty = ("ece_before", "ece_after", "reliability_before", "reliability_after", "inner_youden")
        return out | dict.fromkeys(empty)
    before = softmax(z, axis=1)
    out["ece_before"] = ece_by_kind(before, y, n_bins)
    out["reliability_before"] = {k: reliability_diagram(before, y, n_bins, k).to_dict() for k in CALIBRATION_KINDS}
    out["ece_after"] = out["reliability_after"] = out["inner_youden"] = None
    if temperature is None:
        return json_ready(out)
    t = float(temperature["temperature"])
    after = softmax(apply_temperature(z, t), axis=1)
    out.update(
        temperature=t,
        fitted_on=temperature.get("fitted_on"),
        temperature_file=temperature.get("file"),
        ece_after=ece_by_kind(after, y, n_bins),
        reliability_after={k: reliability_diagram(after, y, n_bins, k).to_dict() for k in CALIBRATION_KINDS},
    )
    youden = temperature.get("youden")
    if youden and youden.get("threshold") is not None:
        called = before[:, 1] if probabilities is None else np.asarray(probabilities, dtype=np.float64)
        out["inner_youden"] = inner_threshold_metrics(y, called, float(youden["threshold"]))
    return json_ready(out)


def checkpoint_temperature(checkpoint: str | os.PathLike) -> float:
    """The temperature fitted for ``checkpoint`` (``temperature.json`` beside it, see :func:`read_temperature`), or
    1.0 (no scaling) when there is none for it."""
    record = read_temperature(Path(checkpoint).parent / "temperature.json", checkpoint)
    return float(record["temperature"]) if record else 1.0
