"""The MONAI Deploy application (bundle/deploy): phantom DICOM studies in, DICOM SR / SEG / encapsulated PDF out.

One run of ``python -m bundle.deploy`` (from a folder outside the bundle) over an input folder holding: study A (an
NM scan and a DICOM SEG of its lesions), study B (an NM scan alone, as two single-view files: the full read),
study C (a CT series only) and a corrupt file; the tests below check that run's outputs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("highdicom")
pytest.importorskip("monai.deploy.core", reason="the deploy extra: pip install -e .[deploy]")

from bundle.data.readers import WholeBodyScanReader
from bundle.phantom.dicom import nm_dataset, write_nm_whole_body, write_seg
from tests.conftest import REPO_ROOT, run_bundle, run_python, save_seeded_resnet50
from tests.dicom_checks import dciodvfy_errors, requires_dciodvfy

SETTINGS = {"spatial_size": [64, 32], "amp": False, "batch_size": 4}


def sr_findings(path: Path) -> dict[str, dict]:
    """Per tracking identifier of the SR's measurement groups: its numeric values, coded values and references."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    groups = {}
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeMeaning != "Imaging Measurements":
            continue
        for group in container.ContentSequence:
            found = {"num": {}, "code": {}, "refs": [], "text": {}}

            def walk(items, found=found):
                for item in items:
                    name = item.ConceptNameCodeSequence[0].CodeMeaning
                    if item.ValueType == "NUM":
                        found["num"][name] = float(item.MeasuredValueSequence[0].NumericValue)
                    elif item.ValueType == "CODE":
                        found["code"][name] = item.ConceptCodeSequence[0].CodeMeaning
                    elif item.ValueType == "TEXT":
                        found["text"][name] = item.TextValue
                    elif item.ValueType == "IMAGE":
                        found["refs"] += list(item.ReferencedSOPSequence)
                    walk(item.get("ContentSequence", []))

            walk(group.ContentSequence)
            groups[found["text"]["Tracking Identifier"]] = found
    return groups


@pytest.fixture(scope="module")
def deploy_run(tmp_path_factory, phantom_dir):
    work = tmp_path_factory.mktemp("deploy")
    model = work / "model"
    model.mkdir()
    save_seeded_resnet50(model / "model.pt")
    (model / "settings.json").write_text(json.dumps(SETTINGS))
    reader = WholeBodyScanReader()
    datalist = json.loads((phantom_dir / "datalist.json").read_text())
    inbox = work / "in"
    # study A: the scan and a SEG of its outlined lesions (from the phantom's masks)
    a_items = [e for e in datalist["training"] if e["patient_id"] == "P00003"]
    scan_a = reader.get_data(reader.read(str(phantom_dir / "images" / "P00003.nii.gz")))[0]
    half = scan_a.shape[1] // 2
    nm_a = write_nm_whole_body(inbox / "A" / "nm.dcm", scan_a[:, :half], scan_a[:, half:][:, ::-1], "PA", seed=31)
    masks = {k: reader.get_data(reader.read(str(phantom_dir / e["mask"])))[0] > 0 for k, e in enumerate(a_items, 1)}
    write_seg(inbox / "A" / "seg.dcm", nm_a, masks, seed=31)
    # study B: the scan alone
    scan_b = reader.get_data(reader.read(str(phantom_dir / "images" / "P00004.nii.gz")))[0]
    # (as two single-view files of one series, as some cameras export)
    write_nm_whole_body(inbox / "B" / "nm.dcm", scan_b[:, :half], None, "PB", seed=32)
    write_nm_whole_body(inbox / "B" / "nm_post.dcm", None, scan_b[:, half:][:, ::-1], "PB", seed=32)
    # study C: a CT series only; and a corrupt file (a cut copy of study B's scan)
    ct = nm_dataset(scan_b[:, :half], None, "PC", seed=33, modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"))
    (inbox / "C").mkdir()
    ct.save_as(inbox / "C" / "ct.dcm", enforce_file_format=True)
    (inbox / "corrupt.dcm").write_bytes((inbox / "B" / "nm.dcm").read_bytes()[:3000])
    out = work / "out"
    result = run_python(
        "-m", "bundle.deploy", "-i", str(inbox), "-o", str(out), "-m", str(model), check=False, cwd=work
    )  # fmt: skip
    studies = {p.name: p for p in out.iterdir() if p.is_dir()}
    uid = {k: str(pydicom.dcmread(inbox / k / "nm.dcm").StudyInstanceUID) for k in ("A", "B")}
    return {"work": work, "in": inbox, "out": out, "result": result, "studies": studies, "uid": uid,
            "masks": masks, "model": model}  # fmt: skip


@pytest.mark.integration
def test_one_sr_seg_and_pdf_per_study_and_ct_or_corrupt_skipped(deploy_run):
    result, studies, uid = deploy_run["result"], deploy_run["studies"], deploy_run["uid"]
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert set(studies) == set(uid.values())  # no output for the CT-only study
    assert "no whole-body NM bone-scan series" in log and "['CT']" in log
    assert "corrupt.dcm: skipped" in log
    for folder in studies.values():
        assert sorted(p.name for p in folder.iterdir()) == [
            "report.pdf", "report_pdf.dcm", "result.json", "seg.dcm", "sr.dcm"
        ]  # fmt: skip
        assert (folder / "report.pdf").read_bytes().startswith(b"%PDF")
        pdf = pydicom.dcmread(folder / "report_pdf.dcm")
        assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
        assert pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength] == (folder / "report.pdf").read_bytes()
        for name in ("sr.dcm", "seg.dcm", "report_pdf.dcm"):
            ds = pydicom.dcmread(folder / name)
            assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
            assert ds.StudyInstanceUID == folder.name
    assert not [p for p in deploy_run["out"].iterdir() if p.name.startswith(".")]  # no temporary files left
    a = json.loads((studies[uid["A"]] / "result.json").read_text())
    b = json.loads((studies[uid["B"]] / "result.json").read_text())
    assert a["lesions_source"] == "SEG" and len(a["lesions"]) == len(deploy_run["masks"])
    assert b["lesions_source"] == "detected" and b["regions_source"] == "atlas"
    assert len(b["sop_instance_uids"]) == 2 and len(b["lesions"]) > 0
    assert set(a["seconds"]) == {"load", "read", "classify", "write"}


@requires_dciodvfy
@pytest.mark.integration
def test_every_output_passes_dciodvfy(deploy_run):
    for folder in deploy_run["studies"].values():
        for name in ("sr.dcm", "seg.dcm", "report_pdf.dcm"):
            assert dciodvfy_errors(folder / name) == [], f"{folder.name}/{name}"


@pytest.mark.integration
def test_sr_references_and_probabilities_equal_the_bundle_inference(deploy_run, tmp_path):
    """Study A: the SR's per-lesion P(malignant) equal inference.yaml's on the same scan and SEG masks (1e-5); each
    finding references its SEG segment and the SEG references the source NM instance."""
    work, uid = deploy_run["work"], deploy_run["uid"]["A"]
    folder = deploy_run["studies"][uid]
    nm = pydicom.dcmread(deploy_run["in"] / "A" / "nm.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(folder / "sr.dcm")
    seg = pydicom.dcmread(folder / "seg.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == nm.StudyInstanceUID
    assert sr.PatientID == nm.PatientID == "PA"
    evidence = {
        (s.SeriesInstanceUID, i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert (nm.SeriesInstanceUID, nm.SOPInstanceUID) in evidence
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) in evidence
    seg_sources = {
        src.ReferencedSOPInstanceUID
        for group in seg.PerFrameFunctionalGroupsSequence
        for derivation in group.DerivationImageSequence
        for src in derivation.SourceImageSequence
    }
    assert seg_sources == {nm.SOPInstanceUID}
    findings = sr_findings(folder / "sr.dcm")
    n = len(deploy_run["masks"])
    assert set(findings) == {f"lesion {k}" for k in range(1, n + 1)} | {"patient"}
    for k in range(1, n + 1):
        refs = {r.ReferencedSOPInstanceUID for r in findings[f"lesion {k}"]["refs"]}
        assert refs == {seg.SOPInstanceUID, nm.SOPInstanceUID}, k
        frame = next(
            int(r.ReferencedFrameNumber)
            for r in findings[f"lesion {k}"]["refs"]
            if r.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        )
        segment = seg.PerFrameFunctionalGroupsSequence[frame - 1].SegmentIdentificationSequence[0]
        assert int(segment.ReferencedSegmentNumber) == k
        derived_from = seg.PerFrameFunctionalGroupsSequence[frame - 1].DerivationImageSequence[0].SourceImageSequence[0]
        (nm_frame,) = [
            int(r.ReferencedFrameNumber)
            for r in findings[f"lesion {k}"]["refs"]
            if r.ReferencedSOPInstanceUID == nm.SOPInstanceUID
        ]
        assert nm_frame == int(derived_from.ReferencedFrameNumber) in (1, 2)
    # the bundle's own inference on the same scan and the input SEG's segments
    entries = [
        {"image": str(deploy_run["in"] / "A" / "nm.dcm"), "mask": f"{deploy_run['in'] / 'A' / 'seg.dcm'}#{k}",
         "lesion_id": f"lesion {k}"}
        for k in range(1, n + 1)
    ]  # fmt: skip
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries}))
    overrides = ["--spatial_size", "[64,32]", "--amp", "false", "--batch_size", "4"]
    run_bundle(
        "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(work), "--datalist", str(datalist),
        "--checkpoint", str(deploy_run["model"] / "model.pt"), "--output_dir", str(tmp_path / "infer"), *overrides,
    )  # fmt: skip
    with open(tmp_path / "infer" / "lesions.csv", newline="") as f:
        inferred = {r["lesion_id"]: float(r["probability"]) for r in csv.DictReader(f)}
    result = json.loads((folder / "result.json").read_text())
    for k in range(1, n + 1):
        p_sr = findings[f"lesion {k}"]["num"]["Probability of malignancy"]
        assert p_sr == pytest.approx(inferred[f"lesion {k}"], abs=1e-5), k
        expected_class = "Malignant (suspicious for metastasis)" if p_sr >= 0.5 else "Benign"
        assert findings[f"lesion {k}"]["code"]["Bone lesion classification"] == expected_class
    patient = findings["patient"]
    expected_call = "Positive" if max(inferred.values()) >= 0.5 else "Negative"
    assert patient["code"]["Patient-level call"] == f"{expected_call} for bone metastasis"
    assert patient["num"]["Bone Scan Index"] == pytest.approx(result["bsi"], abs=1e-6)
    assert patient["num"]["Patient-level probability of bone metastasis"] == pytest.approx(
        max(inferred.values()), abs=1e-5
    )


@pytest.mark.integration
def test_seg_segments_are_the_lesions_on_the_source_grid(deploy_run):
    """Study A's output SEG read back with the bundle's reader equals the input lesion masks, segment by segment."""
    folder = deploy_run["studies"][deploy_run["uid"]["A"]]
    staged = deploy_run["work"] / "seg_check"
    staged.mkdir()
    shutil.copy(deploy_run["in"] / "A" / "nm.dcm", staged / "nm.dcm")
    shutil.copy(folder / "seg.dcm", staged / "seg.dcm")
    reader = WholeBodyScanReader()
    for k, mask in deploy_run["masks"].items():
        read = reader.get_data(reader.read(f"{staged / 'seg.dcm'}#{k}"))[0] > 0
        np.testing.assert_array_equal(read, mask)


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    """A failure while the PDF is made (after the SEG and SR were written to the temporary folder) leaves no study
    folder and no temporary file."""
    import bundle.deploy.outputs as outputs
    from bundle.read.hotspots import HotSpots

    scan = np.zeros((256, 128), np.float32)
    scan[20:240, 10:54] = 5
    scan[20:240, 74:118] = 5
    path = write_nm_whole_body(tmp_path / "nm.dcm", scan[:, :64], scan[:, 64:][:, ::-1], "P9", seed=9)
    labels = np.zeros(scan.shape, np.int32)
    labels[100:106, 20:26] = 1
    hotspots = HotSpots(labels, [{"hotspot_id": 1, "views": "ANT", "centre_row": 102.5, "centre_col": 22.5,
                                  "area_px": 36, "area_mm2": 250.0, "region": "pelvis"}])  # fmt: skip
    read = {"bsi": 0.1, "patient_probability": 0.7, "patient_call": 1, "rules": {"threshold": 0.5}}
    result = outputs.StudyResult(
        sources=[pydicom.dcmread(path, stop_before_pixels=True)], scan=scan, regions=None, hotspots=hotspots,
        probabilities=[0.7], read=read, lesions_source="detected", lesion_masks=[labels == 1],
        model={"name": "test model", "version": "0.0.1"},
    )  # fmt: skip
    out = tmp_path / "out"

    def fail(_result):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(outputs, "render_pdf", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        outputs.write_study_outputs(result, out)
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    files = outputs.write_study_outputs(result, out)
    assert sorted(files) == ["json", "pdf", "pdf_dicom", "seg", "sr"] and all(p.is_file() for p in files.values())


def test_no_model_is_a_clear_error(tmp_path):
    (tmp_path / "in").mkdir()
    result = run_python("-m", "bundle.deploy", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                        "-m", str(tmp_path), check=False, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert f"{tmp_path}: no model.pt" in result.stderr


def test_rules_file_selects_nm_whole_body():
    rules = json.loads((REPO_ROOT / "bundle" / "deploy" / "series_rules.json").read_text())
    (selection,) = rules["selections"]
    assert selection["conditions"]["ImageType"] == ["WHOLE BODY"] and "NM" in selection["conditions"]["Modality"]


@pytest.mark.integration
def test_torchscript_model_gives_the_checkpoint_s_probabilities(deploy_run, tmp_path):
    """A model folder with model.ts (TorchScript) instead of model.pt: same preprocessing, same probabilities."""
    import torch

    from bundle.deploy.study import StudyAnalyser

    net = save_seeded_resnet50(tmp_path / "unused.pt")
    folder = tmp_path / "ts_model"
    folder.mkdir()
    torch.jit.trace(net, torch.zeros(1, 2, 64, 32)).save(str(folder / "model.ts"))
    (folder / "settings.json").write_text(json.dumps(SETTINGS))
    analyser = StudyAnalyser(REPO_ROOT, folder, tmp_path / "work")
    inbox = deploy_run["in"] / "A"
    result = analyser.analyse([str(inbox / "nm.dcm")], str(inbox / "seg.dcm"))
    assert result.model["weights"].endswith("model.ts")
    expected = json.loads((deploy_run["studies"][deploy_run["uid"]["A"]] / "result.json").read_text())
    assert [round(p, 6) for p in result.probabilities] == pytest.approx(
        [row["p_malignant"] for row in expected["lesions"]], abs=1e-5
    )
