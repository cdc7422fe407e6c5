"""Data command line: build a datalist from a hospital's folder or CSV, check one, export a scan in the layout.

    python -m bundle.data build DATA_DIR [--csv lesions.csv] [--num_folds 5] [--seed 0] [--overwrite]
    python -m bundle.data validate DATA_DIR/datalist.json [--dataset_dir DATA_DIR] [--pretrained_weights W]
        [--network_name resnet50]
    python -m bundle.data export SCAN OUT.nii.gz

See ``docs/data.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bundle.data.builder import build_datalist
from bundle.data.datalist import summary, write_datalist
from bundle.data.paths import image_key
from bundle.data.readers import WholeBodyScanReader, save_layout_nifti
from bundle.data.validation import validate
from bundle.errors import DataError, describe


def export(scan: Sequence[str], output: str, reader: WholeBodyScanReader) -> int:
    """Write ``scan`` (one path, or a scan's two single-view files) in the pipeline's layout as NIfTI ``output``."""
    try:
        array, meta = reader.load(scan if len(scan) > 1 else scan[0])
    except DataError as err:
        print(f"error: {err}")
        return 1
    save_layout_nifti(output, array)
    print(f"{output}: {array.shape[0]}x{array.shape[1]} (views {meta.get('views', 'n/a')})")
    return 0


def _print_problems(problems: Sequence[Exception], notes: Sequence[str]) -> None:
    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem(s) found:")
        for p in problems:
            print(f"  - {describe(p)}")


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m bundle.data {build,validate,export}``."""
    parser = argparse.ArgumentParser(
        prog="python -m bundle.data", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build",
        allow_abbrev=False,
        help="build datalist.json from a data folder or a CSV",
        description="Build a datalist (one entry per lesion, patient-level stratified folds) from a data folder "
        "(images/, masks/benign/, masks/malignant/, optional patients.csv) or a CSV of "
        "image,mask,label,patient_id[,tumor_type][,lesion_id]. Every file is read and checked first; nothing is "
        "written when there is a problem. See docs/data.md.",
    )
    build.add_argument("source", help="data folder, or a CSV file")
    build.add_argument("--csv", help="CSV of lesions, its paths relative to SOURCE (a folder)")
    build.add_argument("--dataset_dir", help="folder the datalist's paths are relative to (default: SOURCE folder)")
    build.add_argument("--output", help="datalist file to write (default: DATASET_DIR/datalist.json)")
    build.add_argument("--num_folds", type=int, default=5, help="cross-validation folds (default: 5)")
    build.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: 0)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing datalist file")
    check = commands.add_parser(
        "validate",
        allow_abbrev=False,
        help="check a datalist and every file it names",
        description="Read every scan and mask of a datalist and list every problem (exit status 1 when any).",
    )
    check.add_argument("datalist", help="datalist JSON file")
    check.add_argument("--dataset_dir", help="folder the datalist's paths are relative to (default: its folder)")
    check.add_argument("--num_folds", type=int, help="folds expected (default: the datalist's num_folds)")
    check.add_argument("--allow_single_view", action="store_true", help="accept single-view scans (evaluation only)")
    check.add_argument("--pretrained_weights", help="also check this torchvision-format weights file")
    check.add_argument("--network_name", default="resnet50", help="network of --pretrained_weights (default: resnet50)")
    export_parser = commands.add_parser(
        "export",
        allow_abbrev=False,
        help="write a scan in the pipeline's layout as NIfTI",
        description="Write a scan (DICOM NM, NIfTI, PNG, TIFF) in the pipeline's layout (H, W: anterior | mirrored "
        "posterior) as NIfTI, e.g. to draw lesion masks on it in 3D Slicer or MONAI Label.",
    )
    export_parser.add_argument("scan", nargs="+", help="scan file, folder, or the two single-view DICOM files")
    export_parser.add_argument("output", help="output .nii.gz")
    for sub in (build, check, export_parser):  # every command reads DICOM with the same reader option
        sub.add_argument("--view_order", nargs="+", choices=["ANT", "POST"], help="views of DICOM frames without codes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bundle.data {build,validate,export}``; returns the exit status (0 ok, 1 problems, 2 usage)."""
    args = get_args_parser().parse_args(argv)
    reader = WholeBodyScanReader(view_order=args.view_order, defer_errors=args.command != "export")

    if args.command == "export":
        return export(args.scan, args.output, reader)
    if args.command == "validate":
        report = validate(
            args.datalist,
            args.dataset_dir,
            reader,
            args.num_folds,
            allow_single_view=args.allow_single_view,
            pretrained_weights=args.pretrained_weights,
            network=args.network_name,
        )
        _print_problems(report.problems, report.notes)
        if report.problems:
            return 1
        print(f"{args.datalist}: OK ({report.entries} lesions, {report.scans} scans, {report.masks} masks checked)")
        return 0

    source = Path(args.source)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else (source if source.is_dir() else source.parent)
    output = Path(args.output) if args.output else dataset_dir / "datalist.json"
    if output.exists() and not args.overwrite:
        print(f"error: {output} exists; pass --overwrite to replace it")
        return 1
    if args.num_folds < 2:
        print(f"error: --num_folds must be at least 2, got {args.num_folds}")
        return 2
    content, problems, notes = build_datalist(
        source, csv=args.csv, dataset_dir=dataset_dir, num_folds=args.num_folds, seed=args.seed, reader=reader
    )
    _print_problems(problems, notes)
    if content is None:
        print(f"nothing written to {output}")
        return 1
    write_datalist(output, content)
    entries = content["training"]
    print(
        f"{output}: {len({e['patient_id'] for e in entries})} patients, "
        f"{len({image_key(e['image']) for e in entries})} scans, {len(entries)} lesions, "
        f"{args.num_folds} folds (seed {args.seed})"
    )
    print(summary(content))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
