"""The MONAI Deploy application: a folder of DICOM studies in, per study a DICOM SR, SEG and encapsulated PDF out.

Run locally (``-m``: a folder with ``model.pt`` or ``model.ts`` and optionally ``settings.json``, or a whole bundle
folder, whose ``configs/`` and ``models/`` are then used; default: this bundle's ``models/``)::

    python -m bundle.deploy -i INPUT_DIR -o OUTPUT_DIR [-m MODEL_DIR] [-l DEBUG]

or with ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH`` set, as inside a MONAI
Application Package (``app.yaml`` beside this file; docs/deploy.md). The exit status is 0 when every selected study
was processed (a study without a whole-body NM series is logged and skipped), 1 when one failed (the others' outputs
are written), 2 when the application could not start (no model, bad input folder).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators import DICOMSeriesSelectorOperator

from bundle.deploy.operators import BoneScanClassifierOperator, StudyLoaderOperator, StudyReportWriterOperator
from bundle.deploy.study import RULES_FILE, StudyAnalyser, default_bundle_root

logger = logging.getLogger(__name__)


class BoneScanReportApp(Application):
    """Loader → series selector (``series_rules.json``) → read and classify → SR / SEG / PDF writer.

    Attributes:
        failures: one ``{"study", "error"}`` per study that could not be processed (filled while running).
    """

    name = "bone-scan-lesion-report"
    description = "Whole-body bone scintigraphy: lesions classified benign/malignant, reported as DICOM SR/SEG/PDF"
    version = "0.3.0"

    def __init__(self, *args, bundle_root: str | os.PathLike | None = None, **kwargs) -> None:
        self.bundle_root = Path(bundle_root or default_bundle_root())
        self.failures: list[dict] = []
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        input_dir, output_dir = Path(context.input_path), Path(context.output_path)
        given = {"-m", "--model"} & set(self.argv) or os.environ.get("HOLOSCAN_MODEL_PATH")
        model_dir = Path(context.model_path) if given else self.bundle_root / "models"
        if (model_dir / "configs" / "read.yaml").is_file():  # a whole bundle given as the model (a MAP's models/)
            self.bundle_root, model_dir = model_dir, model_dir / "models"
        output_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="bone-scan-deploy-"))  # the lesion label images the classifier reads
        analyser = StudyAnalyser(self.bundle_root, model_dir, workdir)
        logger.info("input %s, output %s, model %s (%s)", input_dir, output_dir, model_dir, analyser.model)
        loader = StudyLoaderOperator(self, CountCondition(self, 1), input_folder=input_dir, name="study_loader")
        selector = DICOMSeriesSelectorOperator(
            self, rules=RULES_FILE.read_text(encoding="utf-8"), name="series_selector"
        )
        classifier = BoneScanClassifierOperator(self, analyser=analyser, failures=self.failures, name="classifier")
        writer = StudyReportWriterOperator(self, output_folder=output_dir, failures=self.failures, name="writer")
        self.workdir = workdir
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, classifier, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, classifier, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(classifier, writer, {("results", "results")})
