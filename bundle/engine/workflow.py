"""Messages at the start and end of a bundle run: where outputs go and how to look at them."""

from __future__ import annotations

import logging
import os

from monai.engines import Evaluator

logger = logging.getLogger("bundle")


def log_run_start(output_dir: str, log_dir: str) -> None:
    """Create ``output_dir`` and say where the run writes."""
    os.makedirs(output_dir, exist_ok=True)
    logger.info(f"outputs in {os.path.abspath(output_dir)}; TensorBoard logs in {os.path.abspath(log_dir)}")


def log_run_end(ckpt_dir: str, log_dir: str, evaluator: Evaluator | None = None) -> None:
    """Report the best validation metric, the checkpoints written and the TensorBoard command."""
    if evaluator is not None and evaluator.state.best_metric_epoch > 0:
        logger.info(
            f"best validation {evaluator.state.key_metric_name} = {evaluator.state.best_metric:.4f} "
            f"at epoch {evaluator.state.best_metric_epoch}"
        )
    metric = evaluator.state.key_metric_name if evaluator is not None else None
    logger.info(
        f"checkpoints in {os.path.abspath(ckpt_dir)} (model.pt = best validation {metric or 'metric'}, "
        "model_final.pt = last)"
    )
    logger.info(f"view the curves with: tensorboard --logdir {os.path.abspath(log_dir)}")
