"""Command line of the whole-scan read's tools (the read itself runs with ``python -m monai.bundle run reading``).

python -m bundle.read regions                                   # the region labels and BSI weights
python -m bundle.read froc --dataset_dir DIR --out OUT [--folds 0] [--regions truth|atlas|CKPT]
python -m bundle.read evaluate --dataset_dir DIR --read_dir READ --out OUT [--folds 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.data.regions import regions_table_markdown
from bundle.io import atomic_write_text


def default_bundle_root() -> str:
    """The bundle this package belongs to (its configs/ beside the package), else the working directory."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "configs" / "read.yaml").is_file() else "."


def _folds(text: str | None) -> list[int] | None:
    return [int(f) for f in text.split(",")] if text else None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bundle.read", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("regions", help="print the region labels, their values and BSI weights (Markdown)")
    for name, text in (("froc", "detector FROC against ground truth"), ("evaluate", "a finished read vs truth")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dataset_dir", required=True, help="data set with datalist.json holding 'scans' (phantom)")
        p.add_argument("--datalist", default=None, help="datalist (default: DATASET_DIR/datalist.json)")
        p.add_argument("--folds", default=None, help="only these folds' scans, e.g. 0 or 0,1 (default: all)")
        p.add_argument("--limit", type=int, default=None, help="at most this many scans")
        p.add_argument("--out", required=True, help="output folder (JSON, Markdown, figure)")
    froc_parser = sub.choices["froc"]
    froc_parser.add_argument(
        "--thresholds", default="1.4,1.6,1.8,2.0,2.2,2.5,3.0", help="detector thresholds (× normal bone)"
    )
    froc_parser.add_argument(
        "--regions", default="truth", help="region maps: truth (the datalist's), atlas, or a regions checkpoint"
    )
    froc_parser.add_argument(
        "--detector", default="classical", help="classical, or a checkpoint of configs/hotspots.yaml (the thresholds "
        "are then lesion probabilities, e.g. 0.3,0.5,0.7)",
    )  # fmt: skip
    froc_parser.add_argument(
        "--bundle_root", default=default_bundle_root(), help="bundle folder (for a regions/hotspots checkpoint)"
    )
    froc_parser.add_argument(
        "--spatial_size", default=None, help='input size the regions/hotspots network was trained at, e.g. "256,128" '
        "(default: the configs')",
    )  # fmt: skip
    froc_parser.add_argument(
        "--max_false_positives", type=float, default=5.0, help="operating-point rule: lowest threshold with at most "
        "this many false positives per scan (default: 5)",
    )  # fmt: skip
    sub.choices["evaluate"].add_argument("--read_dir", required=True, help="output folder of the read")
    sub.choices["evaluate"].add_argument("--threshold", type=float, default=0.5, help="patient-level threshold")
    comp = sub.add_parser("compare", help="a follow-up scan against the baseline: new/persistent/resolved, PCWG")
    comp.add_argument("--baseline", required=True, help="the earlier scan (a file, or a folder of two DICOM views)")
    comp.add_argument("--followup", required=True, help="the later scan")
    comp.add_argument("--out", required=True, help="output folder (replaced as a whole when it exists)")
    comp.add_argument("--force", action="store_true", help="compare scans of different patients anyway")
    comp.add_argument("--baseline_date", default=None, help="YYYYMMDD, for files without dates (DICOM has them)")
    comp.add_argument("--followup_date", default=None, help="YYYYMMDD")
    comp.add_argument("--baseline_patient", default=None, help="patient id, for files without one")
    comp.add_argument("--followup_patient", default=None, help="patient id")
    ceval = sub.add_parser("compare-eval", help="compare every pair of a pairs file and measure against its truth")
    ceval.add_argument("--pairs", required=True, help="pairs.json of `python -m bundle.phantom --pairs`")
    ceval.add_argument("--out", required=True, help="output folder: one comparison per patient + the evaluation")
    ceval.add_argument("--folds", default=None, help="only these folds' pairs, e.g. 0")
    ceval.add_argument("--limit", type=int, default=None, help="at most this many pairs")
    for comp in (sub.choices["compare"], ceval):
        comp.add_argument("--match_distance_mm", type=float, default=20.0, help="largest centre distance of a match")
        comp.add_argument("--deformable", action="store_true", help="a B-spline stage after the affine alignment")
        comp.add_argument(
            "--bundle_root", default=default_bundle_root(), help="the bundle's folder (its configs/read.yaml is "
            "used; default: the one this package belongs to)",
        )  # fmt: skip
        _read_options(comp)
    return parser


def _read_options(comp: argparse.ArgumentParser) -> None:
    """The read.yaml settings a comparison takes on the command line."""
    for name, text in (
        ("checkpoint", "the classifier (required)"),
        ("spatial_size", 'its input size, e.g. "[128,64]"'),
        ("regions_checkpoint", "region network (default: the atlas)"),
        ("regions_spatial_size", "its input size"),
        ("hotspots_checkpoint", "hot-spot network (default: the classical detector)"),
        ("hotspots_spatial_size", "its input size"),
        ("threshold", "P(malignant) threshold (default 0.5)"),
    ):
        comp.add_argument(f"--{name}", default=None, required=name == "checkpoint", help=f"read.yaml's {name}: {text}")


def _size(text: str | None) -> list[int] | None:
    return [int(v) for v in text.strip("[]").split(",")] if text else None


def _segmenter(spec: str, bundle_root: str, spatial_size: list[int] | None = None):
    if spec == "truth":
        return None
    if spec == "atlas":
        from bundle.read.atlas import AtlasRegionSegmenter

        return AtlasRegionSegmenter()
    from bundle.read.learned import LearnedRegionSegmenter

    return LearnedRegionSegmenter(checkpoint=spec, bundle_root=bundle_root, spatial_size=spatial_size)


def _detector(spec: str, bundle_root: str, spatial_size: list[int] | None = None):
    if spec == "classical":
        return None
    from bundle.read.learned import LearnedHotSpotDetector

    network = LearnedHotSpotDetector(spec, bundle_root, spatial_size=spatial_size)
    return lambda t: network.at_threshold(t)


def _build_reader(args: argparse.Namespace):
    """The full read of configs/read.yaml under --bundle_root with the classifier's weights loaded."""
    import ast
    import os

    from bundle.engine.configs import read_bundle_config
    from bundle.read.reading import load_classifier

    settings = {}
    for name in ("spatial_size", "regions_spatial_size", "hotspots_spatial_size", "threshold"):
        value = getattr(args, name)
        settings[name] = ast.literal_eval(value) if value is not None else None
    for name in ("regions_checkpoint", "hotspots_checkpoint"):
        settings[name] = getattr(args, name)
    parser = read_bundle_config(args.bundle_root, "configs/read.yaml", checkpoint=args.checkpoint, **settings)
    parser.read_meta(os.path.join(args.bundle_root, "configs", "metadata.json"))
    load_classifier(parser.get_parsed_content("network"), args.checkpoint)
    return parser.get_parsed_content("reader")


def _compare(args: argparse.Namespace) -> int:
    from bundle.read.compare import compare

    try:
        reader = _build_reader(args)
        dates = (args.baseline_date, args.followup_date) if args.baseline_date and args.followup_date else None
        patients = (
            (args.baseline_patient, args.followup_patient) if args.baseline_patient and args.followup_patient else None
        )
        result = compare(
            reader,
            args.baseline,
            args.followup,
            args.out,
            args.force,
            dates,
            patients,
            args.match_distance_mm,
            args.deformable,
        )
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"BSI {result['bsi_baseline']:.2f} -> {result['bsi_followup']:.2f} ({result['bsi_change']:+.2f}); "
        f"{result['persistent']} persistent, {result['new_hotspots']} new hot spot(s) of which "
        f"{result['new_lesions']} called malignant, {result['resolved']} resolved; PCWG >= 2 new lesions: "
        f"{'met' if result['pcwg_progression_criterion_met'] else 'not met'}; written to {args.out}"
    )
    return 0


def _compare_eval(args: argparse.Namespace) -> int:
    """Compare every pair of a pairs file (the phantom's pairs.json), then measure against its truth."""
    from bundle.data.paths import resolve
    from bundle.read.compare import compare
    from bundle.read.evaluation import evaluate_comparisons

    try:
        pairs_file = Path(args.pairs)
        content = json.loads(pairs_file.read_text(encoding="utf-8"))
        folds = _folds(args.folds)
        chosen = [p for p in content["pairs"] if folds is None or p.get("fold") in set(folds)][: args.limit]
        reader = _build_reader(args)
        out = Path(args.out)
        for pair in chosen:
            dates = (pair["baseline_date"], pair["followup_date"]) if pair.get("baseline_date") else None
            patient = (str(pair["patient_id"]),) * 2
            compare(
                reader, resolve(pair["baseline"], pairs_file.parent), resolve(pair["followup"], pairs_file.parent),
                out / str(pair["patient_id"]), dates=dates, patient_ids=patient,
                match_distance_mm=args.match_distance_mm, deformable=args.deformable,
            )  # fmt: skip
        result = evaluate_comparisons(pairs_file, out, folds)
        atomic_write_text(out / "compare_evaluation.json", json.dumps(result, indent=1))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.command == "regions":
        print(regions_table_markdown())
        return 0
    if args.command == "compare":
        return _compare(args)
    if args.command == "compare-eval":
        return _compare_eval(args)
    from bundle.read.evaluation import choose_threshold, evaluate_read, froc, truth_scans
    from bundle.read.figures import plot_froc

    try:
        scans = truth_scans(args.dataset_dir, args.datalist, _folds(args.folds), args.limit)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if args.command == "froc":
            thresholds = [float(t) for t in args.thresholds.split(",")]
            points = froc(
                scans,
                thresholds,
                _segmenter(args.regions, args.bundle_root, _size(args.spatial_size)),
                _detector(args.detector, args.bundle_root, _size(args.spatial_size)),
            )
            try:
                chosen = choose_threshold(points, args.max_false_positives)
            except ValueError as err:  # reported, the curve is still written
                print(f"warning: {err}", file=sys.stderr)
                chosen = None
            rule = f"lowest threshold with <= {args.max_false_positives} false positives per scan"
            result = {"regions": args.regions, "detector": args.detector, "rule": rule, "chosen_threshold": chosen,
                      "points": points}  # fmt: skip
            atomic_write_text(out / "froc.json", json.dumps(result, indent=1))
            title = f"{args.detector} detector, {len(scans)} scans, regions: {args.regions}"
            plot_froc(points, out / "froc.png", title=title)
            for p in points:
                print(f"threshold {p['threshold']:.2f}: sensitivity {p['sensitivity']:.3f}, "
                      f"{p['false_positives_per_scan']:.2f} false positives per scan")  # fmt: skip
            print(f"operating point ({result['rule']}): {chosen}")
        else:
            result = evaluate_read(scans, args.read_dir, args.threshold)
            atomic_write_text(out / "read_evaluation.json", json.dumps(result, indent=1))
            print(json.dumps({k: v for k, v in result.items() if k != "detection"}, indent=1))
            d = result["detection"]
            print(
                f"detection: sensitivity {d['sensitivity']}, {d['false_positives_per_scan']} false positives per scan"
            )
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
