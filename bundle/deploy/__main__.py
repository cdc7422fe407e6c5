"""``python -m bundle.deploy -i INPUT_DIR -o OUTPUT_DIR [-m MODEL_DIR]``: run the MONAI Deploy application locally."""

from __future__ import annotations

import logging
import shutil
import sys

from bundle.deploy.app import BoneScanReportApp


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one line per module copied, per object
    app = BoneScanReportApp()
    try:
        app.run()
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        workdir = getattr(app, "workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    for failure in app.failures:
        print(f"error: study {failure['study']}: {failure['error']}", file=sys.stderr)
    return 1 if app.failures else 0


if __name__ == "__main__":
    sys.exit(main())
