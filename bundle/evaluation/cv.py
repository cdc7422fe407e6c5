"""Patient-level k-fold cross-validation of the bundle, then the paper's evaluation report.

Typical usage::

    python -m bundle.cv --out outputs/cv                                     # 5 folds, ResNet50, paper settings
    python -m bundle.cv --out outputs/cv --spatial_size "[128,64]" --max_epochs 15
    python -m bundle.cv --out outputs/cv --compare resnet50,densenet169,vgg16,inception_v3

Each fold runs the bundle's own workflows — ``configs/train.yaml`` (run id ``training``) and then
``configs/train.yaml`` + ``configs/evaluate.yaml`` (run id ``evaluating``) — with the overrides given here, into
``OUT/<network>/fold<k>/``. Any option that is not the runner's own is passed to the bundle as an override
(``--max_epochs 5``, ``--spatial_size "[128,64]"``, ``--device cpu``, ``--dataset_dir ...``). A fold whose
evaluation finished is skipped; an interrupted fold resumes from its newest checkpoint. At the end the out-of-fold
predictions of all lesions are pooled into ``OUT/predictions.csv`` and ``python -m bundle.report`` writes
``OUT/report/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from tqdm import tqdm

from bundle.data.datalist import read_datalist
from bundle.engine.checkpoints import latest_checkpoint
from bundle.evaluation.predictions import model_selection_note
from bundle.evaluation.report import build_report, read_predictions, write_report
from bundle.io import atomic_write_csv, atomic_write_text

logger = logging.getLogger("bundle.evaluation.cv")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the bundle root holds the package
POOLED_COLUMNS = ("lesion_id", "patient_id", "label", "probability", "prediction", "fold", "network")


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``--key value`` tokens into bundle overrides; values are parsed as YAML (``"[128,64]"`` → list).

    Raises:
        SystemExit: on a token that is not ``--key value``.
    """
    overrides: dict[str, Any] = {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            raise SystemExit(f"unexpected argument {token!r}: bundle overrides are --key value (e.g. --max_epochs 5)")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif tokens:
            value = tokens.pop(0)
        else:
            raise SystemExit(f"bundle override {token!r} needs a value (e.g. --max_epochs 5)")
        overrides[key] = yaml.safe_load(value)
    return overrides


class EpochCallback:
    """Trainer handler that calls ``callback()`` after every epoch (drives the progress bar across folds)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.callback())


class CrossValidation:
    """Train and evaluate one network on every fold of a datalist, skipping finished folds and resuming others.

    Args:
        out_dir: root of the per-fold output folders.
        overrides: bundle overrides applied to every fold (``fold``, ``output_dir`` and ``network_name`` are set
            by the runner).
        config_dir: folder holding ``train.yaml``, ``evaluate.yaml``, ``metadata.json`` and ``logging.conf``.
    """

    def __init__(self, out_dir: str | Path, overrides: dict[str, Any], config_dir: str | Path = CONFIG_DIR) -> None:
        self.out_dir = Path(out_dir)
        self.overrides = dict(overrides)
        self.config_dir = Path(config_dir)
        parser = ConfigParser()
        parser.read_config(str(self.config_dir / "train.yaml"))
        parser.update(self.overrides)
        self.datalist = str(parser.get_parsed_content("datalist"))
        self.max_epochs = int(parser.get_parsed_content("train#trainer#max_epochs"))
        self.entries = read_datalist(self.datalist)["training"]

    def folds(self, num_folds: int | None = None) -> list[int]:
        """Folds to run: ``0..num_folds-1``, by default every fold present in the datalist."""
        present = sorted({int(e["fold"]) for e in self.entries})
        return present if num_folds is None else list(range(num_folds))

    def fold_dir(self, network: str, fold: int) -> Path:
        return self.out_dir / network / f"fold{fold}"

    def _workflow(self, network: str, fold: int, evaluate: bool, **extra: Any) -> ConfigWorkflow:
        configs = [str(self.config_dir / "train.yaml")]
        if evaluate:
            configs.append(str(self.config_dir / "evaluate.yaml"))
        return ConfigWorkflow(
            config_file=configs,
            meta_file=str(self.config_dir / "metadata.json"),
            logging_file=str(self.config_dir / "logging.conf"),
            workflow_type=None if evaluate else "train",
            run_id="evaluating" if evaluate else "training",
            **{**self.overrides, "fold": fold, "output_dir": str(self.fold_dir(network, fold))},
            network_name=network,
            **extra,
        )

    def run_fold(self, network: str, fold: int, on_epoch: Callable[[], None] | None = None) -> dict[str, Any]:
        """Train (or resume) and evaluate one fold; returns its summary. A finished fold is only read back."""
        fold_dir = self.fold_dir(network, fold)
        metrics_file = fold_dir / "eval" / "metrics.json"
        if metrics_file.is_file():
            logger.info(f"{network} fold {fold}: finished earlier, skipped ({metrics_file})")
            return {"fold": fold, "network": network, "skipped": True, **json.loads(metrics_file.read_text())}

        started = time.perf_counter()
        if not (fold_dir / "checkpoints" / "model_final.pt").is_file():
            try:
                resume = bool(latest_checkpoint(fold_dir / "checkpoints"))
            except FileNotFoundError:
                resume = False
            logger.info(f"{network} fold {fold}: {'resuming' if resume else 'training'} in {fold_dir}")
            train = self._workflow(network, fold, evaluate=False, resume=resume)
            if on_epoch is not None:
                # a handler added to the config, not to an early-instantiated trainer: instantiating the trainer
                # before `training` runs would draw the network's random init in another order than the bundle CLI
                train.parser["train#handlers"] = [*train.parser["train#handlers"], EpochCallback(on_epoch)]
            train.initialize()
            train.run()
            train.finalize()
        train_seconds = time.perf_counter() - started

        evaluation = self._workflow(network, fold, evaluate=True)
        evaluation.initialize()
        evaluation.run()
        evaluation.finalize()
        summary = json.loads(metrics_file.read_text())
        return {
            "fold": fold,
            "network": network,
            "skipped": False,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            **summary,
        }

    def pooled_predictions(self, networks: Sequence[str], folds: Sequence[int]) -> list[dict[str, Any]]:
        """Out-of-fold predictions of every lesion, with ``fold`` and ``network`` columns."""
        rows = []
        for network in networks:
            for fold in folds:
                with open(self.fold_dir(network, fold) / "eval" / "predictions.csv", newline="") as f:
                    rows += [{**row, "fold": fold, "network": network} for row in csv.DictReader(f)]
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.cv",
        description=__doc__.split("\n\n")[0],
        epilog="Other --key value options are bundle overrides, e.g. --max_epochs 5 --spatial_size '[128,64]'.",
    )
    parser.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    parser.add_argument("--folds", type=int, default=None, help="run folds 0..K-1 (default: every fold present)")
    parser.add_argument("--network", default="resnet50", help="network to cross-validate (default: resnet50)")
    parser.add_argument(
        "--compare", default=None, help="comma-separated networks on the same folds, e.g. resnet50,densenet169"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="malignancy threshold (default: 0.5)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="patient bootstrap resamples (default: 2000)")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end")
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides(rest)
    networks = [n.strip() for n in args.compare.split(",")] if args.compare else [args.network]

    cv = CrossValidation(args.out, overrides)
    folds = cv.folds(args.folds)
    summaries = []
    total = len(networks) * len(folds) * cv.max_epochs
    with tqdm(total=total, desc="cross-validation epochs", unit="epoch", file=sys.stderr) as bar:
        for network in networks:
            for fold in folds:
                bar.set_postfix_str(f"{network} fold {fold}")
                summary = cv.run_fold(network, fold, on_epoch=lambda: bar.update(1))
                bar.n = (networks.index(network) * len(folds) + folds.index(fold) + 1) * cv.max_epochs
                bar.refresh()
                summaries.append(summary)

    out = Path(args.out)
    rows = cv.pooled_predictions(networks, folds)
    atomic_write_csv(out / "predictions.csv", rows, POOLED_COLUMNS)
    atomic_write_text(
        out / "cv_summary.json",
        json.dumps({"datalist": cv.datalist, "overrides": overrides, "folds": summaries}, indent=1) + "\n",
    )
    for s in summaries:
        auc, accuracy = (f"{v:.3f}" if v is not None else "n/a" for v in (s["auc"], s["accuracy"]))
        print(f"{s['network']:>13} fold {s['fold']}: AUC {auc}  accuracy {accuracy}  ({s['n']} lesions)")
    print(f"pooled out-of-fold predictions: {out / 'predictions.csv'}")
    if not args.no_report:
        note = model_selection_note(cv.overrides.get("checkpoint", "model.pt"))
        report = build_report(
            read_predictions(out / "predictions.csv"),
            cv.entries,
            threshold=args.threshold,
            bootstrap=args.bootstrap,
            reference_network=networks[0],
            selection_note=note,
        )
        written = write_report(report, out / "report")
        print(f"report: {written['html']} (and report.md, report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
