"""Evaluation command line: ``python -m bundle.evaluation {cv,report} ...`` (``--help`` after either for its flags)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bundle.evaluation import cv, report

COMMANDS: dict[str, tuple[Callable[[Sequence[str] | None], int], Callable[[], argparse.ArgumentParser], str]] = {
    "cv": (cv.main, cv.get_args_parser, "cross-validate networks (bundle overrides accepted), then report"),
    "report": (report.main, report.get_args_parser, "the paper's report from out-of-fold predictions CSV files"),
}


def get_args_parser() -> argparse.ArgumentParser:
    """The top-level parser: its ``--help`` lists each command with its full usage."""
    usages = "\n".join(make_parser().format_usage() for _, make_parser, _ in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog="python -m bundle.evaluation",
        description="Cross-validation of the bundle and the paper's report.\n"
        "`python -m bundle.evaluation COMMAND --help` lists a command's flags.",
        epilog=f"{usages}\nExamples:\n"
        "  python -m bundle.evaluation cv --out outputs/cv --networks resnet50,densenet169 --folds 0 1 --max_epochs 5\n"
        "  python -m bundle.evaluation report outputs/cv/predictions.csv --datalist DATALIST --out outputs/report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{cv,report}")
    for name, (_, _, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command's own ``main`` (its flags parsed there); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        get_args_parser().parse_args(args[:1])  # exits: the help (status 0) or the usage error (status 2)
        return 2
    return COMMANDS[args[0]][0](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
