"""Patient-level k-fold cross-validation of the bundle, then the paper's evaluation report.

Typical usage::

    python -m bundle.evaluation cv --out outputs/cv                        # every fold, ResNet50, paper settings
    python -m bundle.evaluation cv --out outputs/cv --spatial_size "[128,64]" --max_epochs 15
    python -m bundle.evaluation cv --out outputs/cv --networks resnet50,densenet169,vgg16,inception_v3
    python -m bundle.evaluation cv --out outputs/cv --folds 0 1            # two of the folds only
    python -m bundle.evaluation cv --out outputs/cv --lesion_mode lesion,scan   # the paper's method vs one pass
    python -m bundle.evaluation cv --out outputs/cv --lesion_mode scan --local_patch false,true --context_masks true
    python -m bundle.evaluation cv --out outputs/cv --runs resnet50,resnet50_scan,resnet50_scan_patch_context --explain

Each fold runs the bundle's own workflows — ``configs/train.yaml`` (run id ``training``) and then
``configs/train.yaml`` + ``configs/evaluate.yaml`` (run id ``evaluating``) — with the overrides given here, into
``OUT/<run>/fold<k>/``: a run is a network in a ``lesion_mode`` with or without ``local_patch`` and
``context_masks`` (train.yaml's options beyond the paper; each flag takes a comma-separated list and every
combination is run, or ``--runs`` names the runs), named ``<network>`` for the paper's method and
``<network>[_scan][_patch][_context]`` otherwise (the ``network`` column of the pooled predictions and the report).
Any option that is not the runner's own is passed to the bundle as an override (``--max_epochs 5``,
``--spatial_size "[128,64]"``, ``--device cpu``, ``--dataset_dir ...``); ``--fold``, ``--network_name``,
``--output_dir``, ``--lesion_mode``, ``--local_patch`` and ``--context_masks`` are the runner's. The datalist is
validated once, every entry (each fold is a training fold of the others), before the first fold that runs; the folds
then run with ``validate_data: false``. A fold whose evaluation finished is skipped; an interrupted fold resumes from
its newest checkpoint. At the end the out-of-fold predictions of all lesions are pooled into ``OUT/predictions.csv`` and
the report (``python -m bundle.evaluation report``) is written to ``OUT/report/``, with each fold's temperature and
inner-split Youden threshold (from its ``metrics.json``) for the calibration and threshold sections.
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
from typing import Any, NamedTuple

import yaml
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from tqdm import tqdm

from bundle.data.datalist import read_datalist
from bundle.data.lesion_groups import LESION_MODES
from bundle.data.validation import check_datalist
from bundle.engine.checkpoints import latest_checkpoint
from bundle.engine.configs import as_flag
from bundle.evaluation.predictions import model_selection_note
from bundle.evaluation.report import (
    build_report,
    explanation_pictures,
    fold_calibration,
    read_predictions,
    write_report,
)
from bundle.io import atomic_write_csv, atomic_write_text
from bundle.nets import NETWORKS
from bundle.nets.onepass import BACKBONES

logger = logging.getLogger("bundle.evaluation.cv")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the bundle root holds the package
POOLED_COLUMNS = ("lesion_id", "patient_id", "label", "probability", "prediction", "fold", "network")
# bundle config ids the runner sets for each fold, and the runner's flag for each
RUNNER_KEYS = {
    "fold": "--folds",
    "network_name": "--networks",
    "output_dir": "--out",
    "lesion_mode": "--lesion_mode",
    "local_patch": "--local_patch",
    "context_masks": "--context_masks",
}
#: the name suffix of each option of a run (:meth:`Run.name`)
OPTION_SUFFIXES = {"scan": "_scan", "local_patch": "_patch", "context_masks": "_context"}
# former flags of the runner, refused instead of being passed on as bundle overrides
RENAMED_FLAGS = {"--compare": "--networks", "--network": "--networks", "--no-report": "--no_report"}


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


def parse_networks(text: str) -> list[str]:
    """``"resnet50,densenet169"`` → ``["resnet50", "densenet169"]``: known, distinct names, the first the reference.

    Known: the paper's networks (:data:`bundle.nets.NETWORKS`) and the one-pass backbones
    (:data:`bundle.nets.onepass.BACKBONES`); :func:`plan_runs` checks each against the lesion modes.

    Raises:
        argparse.ArgumentTypeError: an empty list, an unknown or a repeated name.
    """
    known = list(dict.fromkeys([*NETWORKS, *BACKBONES]))
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected distinct comma-separated names of {', '.join(known)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return names


def parse_lesion_modes(text: str) -> list[str]:
    """``"lesion,scan"`` → ``["lesion", "scan"]``: distinct values of :data:`~bundle.data.lesion_groups.LESION_MODES`.

    Raises:
        argparse.ArgumentTypeError: an empty list, an unknown or a repeated mode.
    """
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in LESION_MODES for m in modes) or len(set(modes)) < len(modes):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected distinct comma-separated lesion modes of {', '.join(LESION_MODES)} "
            "(lesion = one network pass per lesion, the paper's; scan = one pass per scan)"
        )
    return modes


def parse_switches(text: str) -> list[bool]:
    """``"false,true"`` → ``[False, True]``: the values of an on/off option of the runs (``--local_patch``).

    Raises:
        argparse.ArgumentTypeError: an empty list, a repeated or unknown value (true/false, yes/no, on/off, 1/0).
    """
    try:
        values = [as_flag(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected false, true or false,true")
    return values


class Run(NamedTuple):
    """One row of the comparison: a network trained in a lesion mode with or without the options beyond the paper."""

    network: str
    lesion_mode: str = "lesion"
    local_patch: bool = False
    context_masks: bool = False

    @property
    def name(self) -> str:
        """``resnet50`` (the paper's method), ``resnet50_scan``, ``resnet50_patch_context``, ... (:func:`parse_run`)."""
        return (
            self.network
            + (OPTION_SUFFIXES["scan"] if self.lesion_mode == "scan" else "")
            + (OPTION_SUFFIXES["local_patch"] if self.local_patch else "")
            + (OPTION_SUFFIXES["context_masks"] if self.context_masks else "")
        )

    def overrides(self) -> dict[str, Any]:
        """The bundle overrides of this run."""
        return {
            "network_name": self.network,
            "lesion_mode": self.lesion_mode,
            "local_patch": self.local_patch,
            "context_masks": self.context_masks,
        }


def run_name(network: str, lesion_mode: str) -> str:
    """The name of a network trained in a lesion mode: ``resnet50`` (per lesion) or ``resnet50_scan`` (one pass)."""
    return Run(network, lesion_mode).name


def parse_run(name: str) -> Run:
    """The run of a name of :attr:`Run.name` (``resnet50_scan_patch`` → ``Run("resnet50", "scan", True, False)``).

    Raises:
        ValueError: an unknown network or suffix, naming the valid ones.
    """
    known = sorted(dict.fromkeys([*NETWORKS, *BACKBONES]), key=len, reverse=True)
    network = next((n for n in known if name == n or name.startswith(n + "_")), None)
    rest = name[len(network) :] if network else ""
    suffixes = list(OPTION_SUFFIXES.values())
    parts = [f"_{p}" for p in rest.split("_")[1:]]
    if network is None or any(p not in suffixes for p in parts) or parts != sorted(set(parts), key=suffixes.index):
        raise ValueError(
            f"{name!r}: a run is <network>[_scan][_patch][_context] in this order, network one of "
            f"{', '.join(sorted(known))}"
        )
    return Run(network, "scan" if "_scan" in parts else "lesion", "_patch" in parts, "_context" in parts)


def parse_runs(text: str) -> list[Run]:
    """``"resnet50,resnet50_scan_patch"`` → the distinct runs (:func:`parse_run`).

    Raises:
        argparse.ArgumentTypeError: an empty list, an unknown or repeated run.
    """
    try:
        runs = [parse_run(n.strip()) for n in text.split(",") if n.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not runs or len(set(runs)) < len(runs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct comma-separated run names")
    return runs


def plan_runs(
    networks: Sequence[str],
    lesion_modes: Sequence[str],
    local_patch: Sequence[bool] = (False,),
    context_masks: Sequence[bool] = (False,),
) -> list[Run]:
    """Every combination, network by network, then mode, local patch and context (the first is the report's
    reference).

    Raises:
        ValueError: a network that the mode cannot use (per-lesion mode: :data:`bundle.nets.NETWORKS`; scan mode:
            :data:`bundle.nets.onepass.BACKBONES`).
    """
    runs = [Run(n, m, p, c) for n in networks for m in lesion_modes for p in local_patch for c in context_masks]
    check_runs(runs)
    return runs


def check_runs(runs: Sequence[Run]) -> None:
    """Raise ValueError naming every run whose network its lesion mode cannot use."""
    allowed = {"lesion": NETWORKS, "scan": BACKBONES}
    bad = list(
        dict.fromkeys(f"{r.network} in {r.lesion_mode} mode" for r in runs if r.network not in allowed[r.lesion_mode])
    )
    if bad:
        raise ValueError(
            f"not available: {', '.join(bad)} (lesion mode: {', '.join(NETWORKS)}; scan mode: {', '.join(BACKBONES)})"
        )


def run_workflow(workflow: ConfigWorkflow) -> None:
    """Initialize, run and finalize a bundle workflow (what ``python -m monai.bundle run`` does)."""
    workflow.initialize()
    workflow.run()
    workflow.finalize()


class EpochCallback:
    """Trainer handler that calls ``callback()`` after every epoch (drives the progress bar across folds)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.callback())


class CrossValidation:
    """Train and evaluate one network on every fold of a datalist, skipping finished folds and resuming others.

    The datalist is validated once (every entry) before the first fold that runs, unless the overrides set
    ``validate_data`` false; each fold's workflows then run with ``validate_data: false``.

    Args:
        out_dir: root of the per-fold output folders.
        overrides: bundle overrides applied to every fold (``fold``, ``output_dir``, ``network_name`` and
            ``lesion_mode`` are set by the runner).
        config_dir: folder holding ``train.yaml``, ``evaluate.yaml``, ``metadata.json`` and ``logging.conf``.

    Raises:
        ValueError: an override of a key that the runner sets, or of an id that neither config defines.
    """

    def __init__(self, out_dir: str | Path, overrides: dict[str, Any], config_dir: str | Path = CONFIG_DIR) -> None:
        self.out_dir = Path(out_dir)
        self.config_dir = Path(config_dir)
        # the bundle's folder, whatever the working directory (--bundle_root overrides it)
        self.overrides = {"bundle_root": str(self.config_dir.parent), **overrides}
        reserved = [k for k in RUNNER_KEYS if k in overrides]
        if reserved:
            raise ValueError("set by the runner: " + ", ".join(f"--{k} (use {RUNNER_KEYS[k]})" for k in reserved))
        parser = ConfigParser()
        parser.read_config(str(self.config_dir / "train.yaml"))
        evaluate = ConfigParser.load_config_file(str(self.config_dir / "evaluate.yaml"))
        known = {k.lstrip("+").split("#")[0] for k in [*parser.get(), *evaluate]}
        unknown = [k for k in self.overrides if k.split("#")[0] not in known]
        if unknown:
            raise ValueError(
                f"not an id of train.yaml or evaluate.yaml: {', '.join('--' + k for k in unknown)} "
                "(bundle overrides are --id value)"
            )
        parser.update(self.overrides)
        self.datalist = str(parser.get_parsed_content("datalist"))
        self.dataset_dir = str(parser.get_parsed_content("dataset_dir"))
        self.image_reader = parser.get_parsed_content("image_reader")
        self.validate_data = bool(parser.get_parsed_content("validate_data"))
        self.max_epochs = int(parser.get_parsed_content("train#trainer#max_epochs"))
        self.entries = read_datalist(self.datalist)["training"]
        self.data_checked = False

    def folds(self, selected: Sequence[int] | None = None) -> list[int]:
        """Folds to run: ``selected`` (in that order, each once), by default every fold present in the datalist.

        Raises:
            ValueError: a selected fold that is not in the datalist.
        """
        present = sorted({e["fold"] for e in self.entries if isinstance(e, dict) and isinstance(e.get("fold"), int)})
        if selected is None:
            return present
        missing = sorted({f for f in selected if f not in present})
        if missing:
            raise ValueError(f"fold(s) {missing} not in {self.datalist} (folds present: {present})")
        return list(dict.fromkeys(selected))

    def check_data(self) -> None:
        """Validate every datalist entry and file once (each fold trains on the others); raises on a problem."""
        if self.data_checked:
            return
        if self.validate_data:
            check_datalist(self.datalist, self.dataset_dir, self.image_reader)
        self.data_checked = True

    def fold_dir(self, run: Run, fold: int) -> Path:
        return self.out_dir / run.name / f"fold{fold}"

    def _workflow(self, run: Run, fold: int, evaluate: bool, **extra: Any) -> ConfigWorkflow:
        configs = [str(self.config_dir / "train.yaml")]
        if evaluate:
            configs.append(str(self.config_dir / "evaluate.yaml"))
        return ConfigWorkflow(
            config_file=configs,
            meta_file=str(self.config_dir / "metadata.json"),
            logging_file=str(self.config_dir / "logging.conf"),
            workflow_type=None if evaluate else "train",
            run_id="evaluating" if evaluate else "training",
            **{
                **self.overrides,
                "fold": fold,
                "output_dir": str(self.fold_dir(run, fold)),
                **run.overrides(),
                "validate_data": False,  # validated once for all folds (check_data)
                **extra,
            },
        )

    def run_fold(self, run: Run, fold: int, on_epoch: Callable[[], None] | None = None) -> dict[str, Any]:
        """Train (or resume) and evaluate one fold of a run; returns its summary (``network`` is the run's name,
        :attr:`Run.name`). A finished fold is only read back."""
        name = run.name
        fold_dir = self.fold_dir(run, fold)
        metrics_file = fold_dir / "eval" / "metrics.json"
        identity = {"fold": fold, "network": name, **run.overrides()}
        if metrics_file.is_file():
            logger.info(f"{name} fold {fold}: finished earlier, skipped ({metrics_file})")
            return {**json.loads(metrics_file.read_text()), **identity, "skipped": True}

        self.check_data()
        started = time.perf_counter()
        if not (fold_dir / "checkpoints" / "model_final.pt").is_file():
            try:
                resume = bool(latest_checkpoint(fold_dir / "checkpoints"))
            except FileNotFoundError:
                resume = False
            logger.info(f"{name} fold {fold}: {'resuming' if resume else 'training'} in {fold_dir}")
            train = self._workflow(run, fold, evaluate=False, resume=resume)
            if on_epoch is not None:
                # a handler added to the config, not to an early-instantiated trainer: instantiating the trainer
                # before `training` runs would draw the network's random init in another order than the bundle CLI
                train.parser["train#handlers"] = [*train.parser["train#handlers"], EpochCallback(on_epoch)]
            run_workflow(train)
        train_seconds = time.perf_counter() - started

        evaluation = self._workflow(run, fold, evaluate=True)
        run_workflow(evaluation)
        summary = json.loads(metrics_file.read_text())
        return {
            **summary,
            **identity,
            "skipped": False,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
        }

    def explain_fold(self, run: Run, fold: int) -> Path:
        """Grad-CAM pictures of a finished fold's test lesions (evaluate.yaml ``--explain true``), made once: the
        evaluation is run again with ``explain`` on when its ``eval/explanations`` folder is missing (same
        checkpoint, same predictions). Returns that folder."""
        folder = self.fold_dir(run, fold) / "eval" / "explanations"
        if not folder.is_dir():
            logger.info(f"{run.name} fold {fold}: Grad-CAM pictures of the test lesions")
            run_workflow(self._workflow(run, fold, evaluate=True, explain=True))
        return folder

    def pooled_predictions(self, runs: Sequence[Run], folds: Sequence[int]) -> list[dict[str, Any]]:
        """Out-of-fold predictions of every lesion, with ``fold`` and ``network`` (the run's name) columns."""
        rows = []
        for run in runs:
            for fold in folds:
                with open(self.fold_dir(run, fold) / "eval" / "predictions.csv", newline="") as f:
                    rows += [{**row, "fold": fold, "network": run.name} for row in csv.DictReader(f)]
        return rows


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m bundle.evaluation cv`` (other ``--key value`` pairs: bundle overrides)."""
    parser = argparse.ArgumentParser(
        prog="python -m bundle.evaluation cv",
        description=__doc__.split("\n\n")[0],
        epilog="Other --key value options are bundle overrides, e.g. --max_epochs 5 --spatial_size '[128,64]' "
        "--dataset_dir DIR; --fold, --network_name, --output_dir, --lesion_mode, --local_patch and --context_masks "
        "are the runner's (--folds, --networks, --out, --lesion_mode, --local_patch, --context_masks or --runs).",
        allow_abbrev=False,  # an override such as --fold must not be taken for --folds
    )
    parser.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=None,
        metavar="FOLD",
        help="indices of the folds to run, each the held-out test fold once (default: every fold in the datalist)",
    )
    parser.add_argument(
        "--networks",
        type=parse_networks,
        default="resnet50",
        help=f"comma-separated networks ({', '.join(NETWORKS)}; in scan mode also "
        f"{', '.join(n for n in BACKBONES if n not in NETWORKS)}), each on the same folds; the first is the report's "
        "reference (default: resnet50)",
    )
    parser.add_argument(
        "--lesion_mode",
        type=parse_lesion_modes,
        default="lesion",
        help="comma-separated lesion modes, each network trained in each: lesion (one pass per lesion, the "
        "paper's) and/or scan (one pass per scan; runs named <network>_scan) (default: lesion)",
    )
    parser.add_argument(
        "--local_patch",
        type=parse_switches,
        default="false",
        help="false, true or false,true: each run without and/or with the full-resolution local patch (runs named "
        "..._patch) (default: false)",
    )
    parser.add_argument(
        "--context_masks",
        type=parse_switches,
        default="false",
        help="false, true or false,true: each run without and/or with the other lesions as context (runs named "
        "..._context) (default: false)",
    )
    parser.add_argument(
        "--runs",
        type=parse_runs,
        default=None,
        help="comma-separated run names <network>[_scan][_patch][_context] instead of every combination of "
        "--networks, --lesion_mode, --local_patch and --context_masks (e.g. resnet50,resnet50_scan_patch)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="Grad-CAM pictures of the reference run's test lesions (evaluate.yaml --explain true), a sample of "
        "true/false positives/negatives shown in the report (default: off)",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="malignancy threshold (default: 0.5)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="patient bootstrap resamples (default: 2000)")
    parser.add_argument("--no_report", action="store_true", help="skip the report at the end (default: off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cross-validation command line; returns the exit status."""
    parser = get_args_parser()
    args, rest = parser.parse_known_args(argv)
    for token in rest:
        if token.split("=")[0] in RENAMED_FLAGS:
            parser.error(f"{token.split('=')[0]} is now {RENAMED_FLAGS[token.split('=')[0]]}")
    overrides = {**parse_overrides(rest), "threshold": args.threshold}  # the folds' metrics use the same threshold
    tokens = [t.split("=")[0] for t in (sys.argv[1:] if argv is None else argv)]
    product_flags = [f for f in ("--networks", "--lesion_mode", "--local_patch", "--context_masks") if f in tokens]
    if args.runs is not None and product_flags:
        parser.error(f"--runs names the runs: leave out {', '.join(product_flags)}")
    try:
        if args.runs is not None:
            runs: list[Run] = args.runs
            check_runs(runs)
        else:
            runs = plan_runs(args.networks, args.lesion_mode, args.local_patch, args.context_masks)
        cv = CrossValidation(args.out, overrides)
        folds = cv.folds(args.folds)
    except ValueError as err:
        parser.error(str(err))
    summaries = []
    total = len(runs) * len(folds) * cv.max_epochs
    with tqdm(total=total, desc="cross-validation epochs", unit="epoch", file=sys.stderr) as bar:
        for index, run in enumerate(runs):
            for fold in folds:
                bar.set_postfix_str(f"{run.name} fold {fold}")
                summary = cv.run_fold(run, fold, on_epoch=lambda: bar.update(1))
                bar.n = (index * len(folds) + folds.index(fold) + 1) * cv.max_epochs
                bar.refresh()
                summaries.append(summary)

    out = Path(args.out)
    pictures = explanation_pictures([cv.explain_fold(runs[0], f) for f in folds]) if args.explain else None
    rows = cv.pooled_predictions(runs, folds)
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
            reference_network=runs[0].name,
            selection_note=note,
            calibration=fold_calibration(summaries),
            explanations=pictures,
        )
        written = write_report(report, out / "report")
        print(f"report: {written['html']} (and report.md, report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
