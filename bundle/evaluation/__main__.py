"""Evaluation command line: ``python -m bundle.evaluation {cv,report} ...`` (``--help`` after either for its flags).

python -m bundle.evaluation cv --out outputs/cv [--networks resnet50,densenet169] [--folds 0 1] [overrides]
python -m bundle.evaluation report PREDICTIONS.csv --datalist DATALIST --out DIR
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bundle.evaluation import cv, report

COMMANDS = {"cv": cv.main, "report": report.main}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
