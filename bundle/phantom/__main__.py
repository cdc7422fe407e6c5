"""Command line: ``python -m bundle.phantom --out DIR --patients N --seed S`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tqdm import tqdm

from bundle.phantom.dataset import OutputDirectoryError, format_summary, generate_dataset
from bundle.phantom.followup import format_pairs_summary, generate_pairs
from bundle.phantom.scan import PhantomConfig
from bundle.phantom.writers import WRITERS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bundle.phantom",
        description="Generate synthetic whole-body bone scans (anterior | mirrored posterior) with per-lesion masks, "
        "benign/malignant labels and a datalist with patient-grouped folds.",
        allow_abbrev=False,
    )
    parser.add_argument("--out", required=True, help="output directory (created; must be absent or empty)")
    parser.add_argument("--patients", type=int, default=100, help="number of patients, one scan each (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed; same seed = identical data (default: 0)")
    formats = ", ".join(f"{k}: {w.description}" for k, w in WRITERS.items())
    parser.add_argument(
        "--format", default="nifti", choices=sorted(WRITERS), help=f"file format (default: nifti) — {formats}"
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="divides the malignancy logit; higher = p_malignant nearer 0.5 = lower best-possible AUC "
        "(default: 1.0, best AUC about 0.92)",
    )
    parser.add_argument(
        "--num_folds", type=int, default=5, help="cross-validation folds, grouped by patient (default: 5)"
    )
    parser.add_argument("--height", type=int, default=1024, help="image rows, head to feet (default: 1024)")
    parser.add_argument("--width", type=int, default=512, help="image columns, both views side by side (default: 512)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing phantom data set in --out (default: off)"
    )
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="write follow-up pairs instead (a baseline and a follow-up scan per patient, every lesion's fate, "
        "pairs.json; docs/phantom.md, Follow-up pairs) (default: off)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        config = PhantomConfig(height=args.height, width=args.width, difficulty=args.difficulty)
        progress = lambda it: tqdm(it, total=args.patients, desc="patients", unit="pt")  # noqa: E731
        generate = generate_pairs if args.pairs else generate_dataset
        content = generate(
            args.out,
            args.patients,
            args.seed,
            config=config,
            fmt=args.format,
            num_folds=args.num_folds,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=progress,
        )
    except (OutputDirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    print((format_pairs_summary if args.pairs else format_summary)(content["statistics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
