"""The MONAI Deploy operators of the bone-scan application (Holoscan operators of monai-deploy-app-sdk 4.x).

``StudyLoaderOperator`` → ``DICOMSeriesSelectorOperator`` (the SDK's, rules from ``series_rules.json``) →
``BoneScanClassifierOperator`` → ``StudyReportWriterOperator``. The work itself lives in
:mod:`bundle.deploy.study` and :mod:`bundle.deploy.outputs`; the operators pass studies between them, log, and
record the studies that failed (the application's exit status).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pydicom
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from pydicom.uid import UID

from bundle.deploy.outputs import StudyResult, write_study_outputs
from bundle.deploy.study import StudyAnalyser, is_seg, seg_references

logger = logging.getLogger(__name__)
# attributes the SDK's series selector matches on (study- and series-level)
_STUDY_KEYWORDS = ("StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID")
_SERIES_KEYWORDS = ("Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined", "SeriesDate", "SeriesTime")


def load_studies(input_dir: str | os.PathLike) -> list[DICOMStudy]:
    """Every DICOM file under ``input_dir`` grouped into SDK studies and series (headers kept, pixel data dropped;
    each :class:`DICOMSOPInstance` keeps its ``filename``). A file that is not readable DICOM, or an image whose
    pixel data is missing or cut short, is skipped with a log line.

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root.resolve()}: no such input folder")
    studies: dict[str, DICOMStudy] = {}
    series: dict[str, DICOMSeries] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
            study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            if is_image_storage(ds):
                if "PixelData" not in ds:
                    raise ValueError("an image without pixel data (truncated?)")
                _ = ds.pixel_array  # raises on pixel data cut short or undecodable
                del ds.PixelData  # checked complete; the scan is read again by the bundle's reader
        except Exception as err:  # any unreadable file is skipped, never the whole input
            logger.warning("%s: skipped, not a readable DICOM instance (%s)", path, err)
            continue
        if study_uid not in studies:
            studies[study_uid] = DICOMStudy(study_uid)
            for keyword in _STUDY_KEYWORDS:
                if keyword in ds:
                    setattr(studies[study_uid], keyword, str(ds.get(keyword)))
        if series_uid not in series:
            series[series_uid] = DICOMSeries(series_uid)
            for keyword in _SERIES_KEYWORDS:
                if keyword in ds:
                    value = ds.get(keyword)
                    setattr(series[series_uid], keyword, int(value) if keyword == "SeriesNumber" else str(value))
            studies[study_uid].add_series(series[series_uid])
        series[series_uid].add_sop_instance(ds)
    return list(studies.values())


def is_image_storage(ds: Any) -> bool:
    """Whether an instance's SOP class stores pixel data (an image, or a segmentation)."""
    name = UID(str(ds.get("SOPClassUID", ""))).name
    return "Image Storage" in name or "Segmentation Storage" in name


def series_instances(series: DICOMSeries) -> list[Any]:
    """The headers of a series' SOP instances (each with its ``filename``), in instance number order."""
    natives = [s.get_native_sop_instance() for s in series.get_sop_instances()]
    return sorted(natives, key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))


def study_seg_file(study: DICOMStudy, scan_series: DICOMSeries) -> str | None:
    """A DICOM SEG of the study drawn on the scan's instances (the newest by series number), or ``None``."""
    scan_uids = {str(s.get_native_sop_instance().SOPInstanceUID) for s in scan_series.get_sop_instances()}
    found = []
    for candidate in study.get_all_series():
        for instance in candidate.get_sop_instances():
            ds = instance.get_native_sop_instance()
            if is_seg(ds) and seg_references(ds) & scan_uids:
                found.append((int(ds.get("SeriesNumber", 0) or 0), str(ds.filename)))
    return max(found)[1] if found else None


class StudyLoaderOperator(Operator):
    """Loads the DICOM studies of the input folder (headers only; unreadable files skipped with a log line).

    Named output: ``dicom_study_list`` (list of :class:`DICOMStudy`).
    """

    def __init__(self, fragment: Fragment, *args: Any, input_folder: Path, **kwargs: Any) -> None:
        self.input_folder = Path(input_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("dicom_study_list")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        studies = load_studies(self.input_folder)
        logger.info("%s: %d DICOM stud(ies)", self.input_folder, len(studies))
        op_output.emit(studies, "dicom_study_list")


class BoneScanClassifierOperator(Operator):
    """Reads and classifies the selected whole-body NM series of each study (SEG lesions, or the full read).

    Named inputs: ``dicom_study_list`` (all studies, to log the ones without a whole-body series) and
    ``study_selected_series_list`` (the SDK selector's output). Named output: ``results`` (list of
    :class:`~bundle.deploy.outputs.StudyResult`). Failed studies are logged and added to ``failures``.
    """

    def __init__(
        self, fragment: Fragment, *args: Any, analyser: StudyAnalyser, failures: list[dict], **kwargs: Any
    ) -> None:
        self.analyser, self.failures = analyser, failures
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("dicom_study_list")
        spec.input("study_selected_series_list")
        spec.output("results").condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        studies = op_input.receive("dicom_study_list")
        selected = op_input.receive("study_selected_series_list") or []
        chosen = {str(s.study.StudyInstanceUID): s for s in selected if s.selected_series}
        for study in studies:
            if str(study.StudyInstanceUID) not in chosen:
                modalities = sorted({str(getattr(s, "Modality", "?")) for s in study.get_all_series()})
                logger.warning(
                    "study %s: no whole-body NM bone-scan series (series modalities %s; rules %s): skipped",
                    study.StudyInstanceUID, modalities, "series_rules.json",
                )  # fmt: skip
        results = []
        for uid, study_selection in chosen.items():
            series = study_selection.selected_series[0].series
            try:
                headers = series_instances(series)
                seg_file = study_seg_file(study_selection.study, series)
                result = self.analyser.analyse([str(ds.filename) for ds in headers], seg_file, headers)
                logger.info(
                    "study %s: %d lesion(s) (%s), %d malignant, BSI %.2f, P(patient) %.3f",
                    uid, len(result.probabilities), "from SEG " + seg_file if seg_file else "detected",
                    sum(r["class"] == "malignant" for r in result.lesion_rows()), result.read["bsi"],
                    result.read["patient_probability"],
                )  # fmt: skip
                results.append(result)
            except Exception as err:  # one bad study must not stop the others
                logger.error("study %s: %s: %s", uid, type(err).__name__, err)
                self.failures.append({"study": uid, "error": f"{type(err).__name__}: {err}"})
        op_output.emit(results, "results")


class StudyReportWriterOperator(Operator):
    """Writes each study's SR, SEG, encapsulated PDF, PDF and JSON into ``output_folder/<StudyInstanceUID>/``,
    atomically (:func:`~bundle.deploy.outputs.write_study_outputs`).

    Named input: ``results`` (list of :class:`~bundle.deploy.outputs.StudyResult`).
    """

    def __init__(
        self, fragment: Fragment, *args: Any, output_folder: Path, failures: list[dict], **kwargs: Any
    ) -> None:
        self.output_folder, self.failures = Path(output_folder), failures
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results: list[StudyResult] = op_input.receive("results") or []
        for result in results:
            started = time.perf_counter()
            try:
                files = write_study_outputs(result, self.output_folder)
                logger.info(
                    "study %s: wrote %s in %.2f s", result.study_uid, ", ".join(p.name for p in files.values()),
                    time.perf_counter() - started,
                )  # fmt: skip
            except Exception as err:
                logger.error("study %s: writing failed: %s: %s", result.study_uid, type(err).__name__, err)
                self.failures.append({"study": result.study_uid, "error": f"{type(err).__name__}: {err}"})
