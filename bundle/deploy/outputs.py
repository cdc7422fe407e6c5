"""The study's DICOM outputs, built with highdicom and pydicom: Comprehensive SR (TID 1500), SEG, encapsulated PDF.

Everything here works on a :class:`StudyResult` (one study read and classified) and needs no MONAI Deploy runtime,
so it is tested on its own; :mod:`bundle.deploy.operators` wires it into the application.

- **SR** (:func:`build_sr`): a Comprehensive SR holding a TID 1500 *Imaging Measurement Report*; one TID 1410
  *Planar ROI Measurements and Qualitative Evaluations* group per lesion (tracking id ``lesion k`` and a UID, the
  lesion's segment in the SEG and the NM frame it lies on, finding type *Lesion*, finding site = its skeletal region,
  area in mm², P(malignant), the class) and one TID 1501 group for the patient (BSI, patient-level probability and
  call), the algorithm's name and version in each group. The codes the standard lacks (the benign/malignant call,
  P(malignant), BSI) use the private coding scheme :data:`PRIVATE_SCHEME` (declared in the SR).
- **SEG** (:func:`build_seg`): one segment per lesion on the source NM frames (:mod:`bundle.data.dicom_seg`).
- **Encapsulated PDF** (:func:`render_pdf`, :func:`build_pdf_document`): the scan with numbered outlines coloured by
  class, the lesion table, BSI, model version and a disclaimer; the same PDF as a plain file.

:func:`write_study_outputs` writes a study's files into one folder that appears complete or not at all.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from bundle.data.dicom_nm import save_dicom
from bundle.data.dicom_seg import lesion_segmentation
from bundle.io import atomic_directory, atomic_write_text
from bundle.read.hotspots import HotSpots
from bundle.read.reading import draw_read

DISCLAIMER = (
    "Research use only - not for clinical use. Not a medical device; every finding must be read by a physician."
)
SERIES_SUFFIX = "NOT FOR CLINICAL USE"
MANUFACTURER = "bone-scan-lesion-classifier (open source)"
ENCAPSULATED_PDF_STORAGE = UID("1.2.840.10008.5.1.4.1.1.104.1")
# a private coding scheme (DICOM PS3.16 8.2: "99" prefix) for the concepts no standard code covers
PRIVATE_SCHEME = "99BSLC"
PROCEDURE_BONE_SCAN = Code("41747008", "SCT", "Radioisotope scan of bone")
FINDING_LESION = Code("52988006", "SCT", "Lesion")
CONCEPT_CLASS = Code("lesion-class", PRIVATE_SCHEME, "Bone lesion classification")
CLASS_MALIGNANT = Code("malignant", PRIVATE_SCHEME, "Malignant (suspicious for metastasis)")
CLASS_BENIGN = Code("benign", PRIVATE_SCHEME, "Benign")
CONCEPT_P_MALIGNANT = Code("p-malignant", PRIVATE_SCHEME, "Probability of malignancy")
CONCEPT_PATIENT_P = Code("patient-p-malignant", PRIVATE_SCHEME, "Patient-level probability of bone metastasis")
CONCEPT_PATIENT_CALL = Code("patient-call", PRIVATE_SCHEME, "Patient-level call")
CALL_POSITIVE = Code("positive", PRIVATE_SCHEME, "Positive for bone metastasis")
CALL_NEGATIVE = Code("negative", PRIVATE_SCHEME, "Negative for bone metastasis")
CONCEPT_BSI = Code("bsi", PRIVATE_SCHEME, "Bone Scan Index")
CONCEPT_AREA = Code("42798000", "SCT", "Area")
UNIT_NONE = Code("1", "UCUM", "no units")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_MM2 = Code("mm2", "UCUM", "square millimeter")
# SNOMED CT body structures of the skeletal regions (bundle/data/regions.py); distal_limbs has no single concept
REGION_CODES: dict[str, Code] = {
    "skull": Code("89546000", "SCT", "Skull"),
    "cervical_spine": Code("122494005", "SCT", "Cervical spine"),
    "thoracic_spine": Code("122495006", "SCT", "Thoracic spine"),
    "lumbar_spine": Code("122496007", "SCT", "Lumbar spine"),
    "sacrum": Code("54735007", "SCT", "Sacrum"),
    "pelvis": Code("12921003", "SCT", "Pelvis"),
    "ribs": Code("113197003", "SCT", "Rib"),
    "sternum": Code("56873002", "SCT", "Sternum"),
    "scapulae": Code("79601000", "SCT", "Scapula"),
    "clavicles": Code("51299004", "SCT", "Clavicle"),
    "humeri": Code("85050009", "SCT", "Humerus"),
    "femora": Code("71341001", "SCT", "Femur"),
    "distal_limbs": Code("66019005", "SCT", "Limb"),
}


@dataclass
class StudyResult:
    """One study read and classified, everything the outputs need.

    Attributes:
        sources: the NM dataset(s) of the scan (one 2-frame file or two single-view files), read with pixels or not.
        scan: counts (H, W) float32 in the stored layout (anterior | mirrored posterior).
        regions: region map (H, W) of the read, or ``None``.
        hotspots: the lesions (labels (H, W) and one record per lesion) with ``probabilities`` in the same order.
        probabilities: P(malignant) per lesion.
        read: the read's summary (``WholeScanReader`` result: BSI, patient probability and call, threshold...).
        lesions_source: ``"SEG"`` (outlines came with the study) or ``"detected"`` (the full read's hot spots).
        lesion_masks: one bool (H, W) mask per lesion (the SEG's segments, or the hot spots).
        model: algorithm name, version, network, checkpoint.
        seconds: time per stage.
    """

    sources: list[Dataset]
    scan: np.ndarray
    regions: np.ndarray | None
    hotspots: HotSpots
    probabilities: list[float]
    read: dict[str, Any]
    lesions_source: str
    lesion_masks: list[np.ndarray]
    model: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.read["rules"]["threshold"])

    @property
    def study_uid(self) -> str:
        return str(self.sources[0].StudyInstanceUID)

    def lesion_rows(self) -> list[dict[str, Any]]:
        """One row per lesion: number, region, views, area, P(malignant), class."""
        return [
            {
                "lesion": r["hotspot_id"],
                "region": r["region"],
                "views": r["views"],
                "area_mm2": r["area_mm2"],
                "p_malignant": round(p, 6),
                "class": "malignant" if p >= self.threshold else "benign",
            }
            for r, p in zip(self.hotspots.records, self.probabilities, strict=True)
        ]


def _algorithm(result: StudyResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=result.model["name"], version=result.model["version"])


def series_description(kind: str) -> str:
    """``SeriesDescription`` of an output series (at most 64 characters), saying it is not for clinical use."""
    return f"Bone scan AI {kind} - {SERIES_SUFFIX}"[:64]


def build_seg(result: StudyResult, series_number: int = 901) -> hd.seg.Segmentation:
    """The lesions as a DICOM SEG, segment ``k`` = lesion ``k``, on the source NM frames.

    Raises:
        ValueError: the study has no lesion (a SEG needs at least one segment).
    """
    if not result.lesion_masks:
        raise ValueError(f"study {result.study_uid}: no lesion to segment")
    labels = [f"lesion {row['lesion']} ({row['class']})" for row in result.lesion_rows()]
    return lesion_segmentation(
        result.sources,
        result.lesion_masks,
        labels,
        series_number=series_number,
        series_description=series_description("lesions SEG"),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=result.model["name"][:64],
        software_versions=result.model["version"],
        device_serial_number="0",
        algorithm=(result.model["name"], result.model["version"]),
    )


def _segmentation_frame(seg: Dataset, segment_number: int) -> hd.sr.ReferencedSegmentationFrame:
    """The first SEG frame of a segment, with the NM frame it was drawn on as its source image.

    Built by hand: highdicom's ``ReferencedSegmentationFrame.from_segmentation`` (0.28) gives the source image the
    *SEG's* frame number instead of the source frame its ``DerivationImageSequence`` names.
    """
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment_number:
            continue
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = source.get("ReferencedFrameNumber")
        return hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=index,
            segment_number=segment_number,
            source_image=hd.sr.SourceImageForSegmentation(
                source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID, [int(frame)] if frame else None
            ),
        )
    raise ValueError(f"segment {segment_number} has no frame in the SEG")


def build_sr(
    result: StudyResult, seg: Dataset | None, series_number: int = 902, instance_number: int = 1
) -> hd.sr.ComprehensiveSR:
    """The read as a Comprehensive SR with a TID 1500 measurement report (see the module docstring).

    ``seg``: the SEG written for the lesions (each finding then references its segment), or ``None``.
    """
    algorithm = _algorithm(result)
    groups: list[Any] = []
    for row in result.lesion_rows():
        number = row["lesion"]
        referenced_segment = None
        if seg is not None:
            referenced_segment = _segmentation_frame(seg, number)
        site = REGION_CODES.get(row["region"])
        measurements = [
            hd.sr.Measurement(name=CONCEPT_AREA, value=float(row["area_mm2"]), unit=UNIT_MM2, algorithm_id=algorithm),
            hd.sr.Measurement(
                name=CONCEPT_P_MALIGNANT, value=float(row["p_malignant"]), unit=UNIT_NONE, algorithm_id=algorithm
            ),
        ]
        evaluation = hd.sr.QualitativeEvaluation(
            CONCEPT_CLASS, CLASS_MALIGNANT if row["class"] == "malignant" else CLASS_BENIGN
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"lesion {number}"),
                referenced_segment=referenced_segment,
                referenced_region=None if referenced_segment is not None else _lesion_region(result, number),
                finding_type=FINDING_LESION,
                finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(site)] if site is not None else None,
                measurements=measurements,
                qualitative_evaluations=[evaluation],
            )
        )
    read = result.read
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="patient"),
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(CONCEPT_BSI, float(read["bsi"]), UNIT_PERCENT, algorithm_id=algorithm),
                hd.sr.Measurement(
                    CONCEPT_PATIENT_P, float(read["patient_probability"]), UNIT_NONE, algorithm_id=algorithm
                ),
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    CONCEPT_PATIENT_CALL, CALL_POSITIVE if read["patient_call"] else CALL_NEGATIVE
                )
            ],
        )
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(),
            name=result.model["name"][:64],
            manufacturer_name=MANUFACTURER,
            model_name=result.model["version"],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_BONE_SCAN,
        imaging_measurements=groups,
    )
    evidence = [*result.sources, *([seg] if seg is not None else [])]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series_description("SR"),
    )
    _frame_or_segment(sr.ContentSequence)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "bone-scan-lesion-classifier concepts"
    scheme.CodingSchemeResponsibleOrganization = "bone-scan-lesion-classifier project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _frame_or_segment(items: Sequence[Dataset]) -> None:
    """Drop ``ReferencedSegmentNumber`` where ``ReferencedFrameNumber`` is given, in place.

    PS3.3 Table 10-3 makes the two mutually exclusive (a SEG frame belongs to exactly one segment, so the frame
    says which); highdicom's ``ReferencedSegmentationFrame`` writes both, which dciodvfy reports as an error.
    """
    for item in items:
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
        _frame_or_segment(item.get("ContentSequence", []))


def _lesion_region(result: StudyResult, number: int) -> hd.sr.ImageRegion:
    """A lesion without a SEG: its centre as a point on the NM frame of the first view it lies in."""
    record = result.hotspots.records[number - 1]
    source = result.sources[0]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[record["centre_col"] + 0.5, record["centre_row"] + 0.5]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=[1] if int(source.get("NumberOfFrames", 1)) > 1 else None,
        ),
    )


def render_pdf(result: StudyResult) -> bytes:
    """The report as PDF bytes: page 1 the scan with numbered lesion outlines coloured by class (red malignant,
    blue benign), the summary and the first lesions of the table; further pages the rest of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    source = result.sources[0]
    read = result.read
    rows = result.lesion_rows()
    header = [
        f"Patient {source.get('PatientName', '')}  ID {source.get('PatientID', '')}  "
        f"study date {source.get('StudyDate', '')}  accession {source.get('AccessionNumber', '')}",
        f"Bone Scan Index {read['bsi']:.2f} %   patient-level P(malignant) {read['patient_probability']:.3f} "
        f"-> {'POSITIVE' if read['patient_call'] else 'negative'} (threshold {result.threshold:g})",
        f"{len(rows)} lesion(s), {sum(r['class'] == 'malignant' for r in rows)} malignant; lesions "
        f"{'from the SEG that came with the study' if result.lesions_source == 'SEG' else 'detected by the full read'}"
        f"; regions: {read.get('regions_source', '')}",
        f"Model: {result.model['name']} {result.model['version']} ({result.model.get('network', '')})",
    ]
    buffer = io.BytesIO()
    first_rows, later_rows = 22, 48
    chunks = [rows[:first_rows]] + [rows[i : i + later_rows] for i in range(first_rows, len(rows), later_rows)]
    with PdfPages(buffer, metadata={"Title": "Bone scan lesion classification", "Creator": MANUFACTURER}) as pdf:
        for page, chunk in enumerate(chunks):
            fig = plt.figure(figsize=(8.27, 11.69))  # A4 portrait
            fig.text(0.05, 0.97, "Bone scintigraphy: lesion classification", fontsize=13, weight="bold")
            fig.text(0.05, 0.955, DISCLAIMER, fontsize=7, color="#b00000")
            if page == 0:
                for i, line in enumerate(header):
                    fig.text(0.05, 0.935 - 0.014 * i, line, fontsize=7.5)
                ax = fig.add_axes((0.05, 0.36, 0.9, 0.5))
                draw_read(ax, result.scan, None, result.hotspots, result.probabilities, result.threshold, 5)
                ax.set_title("anterior | posterior (mirrored)   red: malignant, blue: benign", fontsize=7)
                table_box = (0.05, 0.03, 0.9, 0.31)
            else:
                table_box = (0.05, 0.03, 0.9, 0.9)
            table_ax = fig.add_axes(table_box)
            table_ax.set_axis_off()
            if chunk:
                columns = ["lesion", "region", "views", "area_mm2", "p_malignant", "class"]
                cells = [[str(r[c]) for c in columns] for r in chunk]
                table = table_ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="center")
                table.auto_set_font_size(False)
                table.set_fontsize(7)
                table.scale(1, 1.05)
            else:
                table_ax.text(0.5, 0.9, "no lesion", ha="center", fontsize=9)
            fig.text(0.95, 0.01, f"page {page + 1} of {len(chunks)}", fontsize=6, ha="right")
            pdf.savefig(fig)
            plt.close(fig)
    return buffer.getvalue()


_PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip


def build_pdf_document(result: StudyResult, pdf: bytes, series_number: int = 903) -> Dataset:
    """The PDF as a DICOM Encapsulated PDF Storage instance of the study (pydicom), referencing the source scan."""
    source = result.sources[0]
    now = datetime.datetime.now()
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    for keyword in _PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, source.get(keyword, ""))
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description("report PDF")
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "SYN"
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Bone scan lesion classification report"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Diagnostic imaging study"
    ds.ConceptNameCodeSequence = [concept]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceInstanceSequence = [reference]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def result_json(result: StudyResult, files: Mapping[str, str]) -> dict[str, Any]:
    """The study's results as JSON-ready data: study/series/SOP UIDs, lesions, BSI, model, files, timings."""
    source = result.sources[0]
    read = result.read
    return {
        "study_instance_uid": result.study_uid,
        "series_instance_uid": str(source.SeriesInstanceUID),
        "sop_instance_uids": [str(s.SOPInstanceUID) for s in result.sources],
        "patient_id": str(source.get("PatientID", "")),
        "lesions_source": result.lesions_source,
        "regions_source": read.get("regions_source"),
        "threshold": result.threshold,
        "bsi": read["bsi"],
        "bsi_regional": read.get("bsi_regional", {}),
        "patient_probability": read["patient_probability"],
        "patient_call": "positive" if read["patient_call"] else "negative",
        "lesions": result.lesion_rows(),
        "model": result.model,
        "files": dict(files),
        "seconds": result.seconds,
        "disclaimer": DISCLAIMER,
    }


def write_study_outputs(result: StudyResult, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a study's SR, SEG (when it has lesions), encapsulated PDF, the PDF and a JSON into
    ``output_dir/<StudyInstanceUID>/``; the folder appears complete or not at all (an existing one is replaced).

    Returns:
        file kind (``sr``, ``seg``, ``pdf_dicom``, ``pdf``, ``json``) → final path.
    """
    folder = Path(output_dir) / result.study_uid
    names = {"sr": "sr.dcm", "seg": "seg.dcm", "pdf_dicom": "report_pdf.dcm", "pdf": "report.pdf"}
    names["json"] = "result.json"
    started = time.perf_counter()
    with atomic_directory(folder) as tmp:
        seg = build_seg(result) if result.lesion_masks else None
        if seg is not None:
            save_dicom(seg, tmp / names["seg"])
        save_dicom(build_sr(result, seg), tmp / names["sr"])
        pdf = render_pdf(result)
        (tmp / names["pdf"]).write_bytes(pdf)
        save_dicom(build_pdf_document(result, pdf), tmp / names["pdf_dicom"])
        written = {k: v for k, v in names.items() if k != "seg" or seg is not None}
        result.seconds["write"] = round(time.perf_counter() - started, 3)  # everything but the JSON itself
        atomic_write_text(tmp / names["json"], json.dumps(result_json(result, written), indent=1))
    return {k: folder / v for k, v in written.items()}


def dicom_sources(files: Sequence[str | os.PathLike]) -> list[Dataset]:
    """Read the NM file(s) of a scan for the outputs (headers only)."""
    import pydicom

    return [pydicom.dcmread(os.fspath(f), stop_before_pixels=True) for f in files]
