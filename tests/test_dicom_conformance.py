"""Every DICOM object the project writes is conformant: the phantom's NM files and the highdicom SEG files pass
dciodvfy without errors, SEG masks round-trip through WholeBodyScanReader, and highdicom reads the SEG back."""

from __future__ import annotations

import datetime
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset

from bundle.data.dicom_nm import frame_views, save_dicom, split_views
from bundle.data.dicom_seg import lesion_segmentation
from bundle.data.readers import WholeBodyScanReader
from bundle.phantom.dicom import nm_dataset, write_nm_whole_body, write_phantom_image, write_phantom_mask, write_seg

from .dicom_checks import dciodvfy_errors, requires_dciodvfy

H, WV = 64, 32  # rows and columns of one view
DEPLOY_LIKE = dict(
    series_number=200,
    series_description="bone scan lesions (not for clinical use)",
    manufacturer="bone-scan-lesion-classifier",
    manufacturer_model_name="deploy test",
    software_versions="1.2.0",
    device_serial_number="0",
)


def make_views(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(anterior, posterior as acquired): Poisson counts."""
    rng = np.random.default_rng(seed)
    return rng.poisson(30, (H, WV)).astype(np.float32), rng.poisson(40, (H, WV)).astype(np.float32)


def make_masks() -> list[np.ndarray]:
    """Three asymmetric lesion masks in the (H, 2 WV) layout: anterior only, posterior only, and on both views."""
    masks = [np.zeros((H, 2 * WV), dtype=bool) for _ in range(3)]
    masks[0][3:6, 2:9] = True  # anterior half, near the image left
    masks[0][6, 2] = True  # an asymmetric corner: a flip would move it
    masks[1][40:44, 50:60] = True  # posterior half
    masks[1][44, 59] = True
    masks[2][20:23, 10:12] = True  # anterior ...
    masks[2][50:52, 35:37] = True  # ... and posterior
    return masks


def write_scan(folder, layout: str) -> list:
    """The scan as written by the phantom's writer: one 2-frame file, a POST-first file or two single-view files."""
    anterior, posterior = make_views()
    if layout == "two-frame":
        return [write_nm_whole_body(folder / "scan.dcm", anterior, posterior, "P1", seed=1)]
    if layout == "post-first":
        return [
            write_nm_whole_body(folder / "scan.dcm", anterior, posterior, "P1", seed=1, frame_order=("POST", "ANT"))
        ]
    return [
        write_nm_whole_body(folder / "ant.dcm", anterior, None, "P1", seed=1),
        write_nm_whole_body(folder / "post.dcm", None, posterior, "P1", seed=1),
    ]


LAYOUTS = ["two-frame", "post-first", "single-view-files"]


# ---- NM ---------------------------------------------------------------------------------------------------------
@requires_dciodvfy
@pytest.mark.parametrize("views", ["ANT+POST", "POST+ANT", "ANT", "POST"])
def test_nm_files_have_no_dciodvfy_errors(tmp_path, views):
    anterior, posterior = make_views()
    order = ("POST", "ANT") if views == "POST+ANT" else ("ANT", "POST")
    path = write_nm_whole_body(
        tmp_path / "scan.dcm",
        anterior if "ANT" in views else None,
        posterior if "POST" in views else None,
        "P1",
        frame_order=order,
    )
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == views.count("+") + 1
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert (item.RadionuclideCodeSequence[0].CodeValue, item.RadiopharmaceuticalCodeSequence[0].CodeValue) == (
        "72454006",  # ^99m^Technetium
        "96390006",  # Technetium Tc^99m^ medronate
    )
    frames = [anterior if v == "ANT" else posterior for v in views.split("+")]
    assert ds.CountsAccumulated == int(sum(f.sum() for f in frames))
    assert ds.ScanLength == round(H * 2.4) and ds.ActualFrameDuration == round(1000 * H * 2.4 / 2.0)
    assert [i.CollimatorType for i in ds.DetectorInformationSequence] == ["PARA"] * len(frames)


@requires_dciodvfy
@pytest.mark.parametrize(
    ("syntax", "lossy_error"),
    [
        (uid.JPEGLosslessSV1, None),
        ("1.2.840.10008.1.2.4.57", None),  # JPEG Lossless, process 14
        (uid.JPEGLSLossless, None),
        (uid.JPEGLSNearLossless, 2),
        (uid.JPEG2000Lossless, None),
        (uid.JPEG2000, 5),
        (uid.RLELossless, None),
    ],
    ids=["jpeg-lossless-sv1", "jpeg-lossless", "jpeg-ls", "jpeg-ls-near", "jpeg2000-lossless", "jpeg2000", "rle"],
)
def test_compressed_nm_files_have_no_dciodvfy_errors(tmp_path, syntax, lossy_error):
    anterior, posterior = make_views()
    path = write_nm_whole_body(
        tmp_path / "c.dcm", anterior, posterior, "P1", transfer_syntax=syntax, lossy_error=lossy_error
    )
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    if lossy_error is not None:
        assert ds.LossyImageCompression == "01"
        assert float(ds.LossyImageCompressionRatio) > 1
        assert ds.LossyImageCompressionMethod in ("ISO_14495_1", "ISO_15444_1")
    else:
        assert "LossyImageCompression" not in ds


@requires_dciodvfy
def test_the_checker_finds_a_missing_nm_module(tmp_path):
    """The conformance tests can fail: a file without the NM Isotope module's sequence draws dciodvfy's error."""
    anterior, posterior = make_views()

    def drop_isotope(ds: Dataset) -> None:
        del ds.RadiopharmaceuticalInformationSequence

    path = write_nm_whole_body(tmp_path / "bad.dcm", anterior, posterior, "P1", edit=drop_isotope)
    errors = dciodvfy_errors(path)
    assert len(errors) == 1 and "RadiopharmaceuticalInformationSequence" in errors[0]


@requires_dciodvfy
def test_phantom_dicom_files_have_no_dciodvfy_errors(tmp_path):
    from bundle.phantom.scan import PhantomConfig, generate_patient, patient_rng

    scan, masks, _ = generate_patient(patient_rng(0, 0), PhantomConfig(height=256, width=128), "P00001")
    write_phantom_image(tmp_path / "scan.dcm", scan)
    write_phantom_mask(tmp_path / "mask.dcm", masks[0], scan)
    assert dciodvfy_errors(tmp_path / "scan.dcm") == []
    assert dciodvfy_errors(tmp_path / "mask.dcm") == []
    mask, meta = WholeBodyScanReader(defer_errors=False).load(tmp_path / "mask.dcm")
    np.testing.assert_array_equal(mask, masks[0])
    assert meta["modality"] == "SEG"


# ---- SEG --------------------------------------------------------------------------------------------------------
@requires_dciodvfy
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algorithm", [None, ("bone-scan-lesion-classifier", "1.2.0")], ids=["manual", "automatic"])
def test_seg_files_have_no_dciodvfy_errors(tmp_path, layout, algorithm):
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in write_scan(tmp_path, layout)]
    labels = ["lesion 1 (benign)", "lesion 2 (malignant)", "lesion 3 (malignant)"]
    seg = lesion_segmentation(sources, make_masks(), labels, algorithm=algorithm, **DEPLOY_LIKE)
    path = save_dicom(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    written = pydicom.dcmread(path)
    expected = "MANUAL" if algorithm is None else "AUTOMATIC"
    assert [s.SegmentAlgorithmType for s in written.SegmentSequence] == [expected] * 3
    if algorithm is not None:
        identification = written.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert (identification.AlgorithmName, identification.AlgorithmVersion) == algorithm


@pytest.mark.parametrize("layout", LAYOUTS)
def test_seg_masks_round_trip_through_the_reader(tmp_path, layout):
    scans = write_scan(tmp_path / "scans", layout)
    masks = make_masks()
    seg = write_seg(tmp_path / "masks" / "seg.dcm", scans if len(scans) > 1 else scans[0], dict(enumerate(masks, 1)))
    reader = WholeBodyScanReader(defer_errors=False)
    assert reader.mask_selectors(seg) == ["1", "2", "3"]
    for number, mask in enumerate(masks, start=1):
        read, meta = reader.load(f"{seg}#{number}")  # finds the scan next to the SEG by itself
        np.testing.assert_array_equal(read, mask)
        assert meta["segment_label"] == f"lesion {number}"
    # one segment: each frame still names its segment
    single = write_seg(tmp_path / "masks" / "one.dcm", scans if len(scans) > 1 else scans[0], {1: masks[2]})
    written = pydicom.dcmread(single)
    assert [
        int(i.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for i in written.PerFrameFunctionalGroupsSequence
    ] == [1, 1]
    np.testing.assert_array_equal(WholeBodyScanReader(defer_errors=False).load(single)[0], masks[2])
    # other writers (highdicom itself) put a single segment's identification in the shared functional groups
    for item in written.PerFrameFunctionalGroupsSequence:
        del item.SegmentIdentificationSequence
    identification = Dataset()
    identification.ReferencedSegmentNumber = 1
    written.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence = [identification]
    shared = save_dicom(written, tmp_path / "masks" / "shared.dcm")
    np.testing.assert_array_equal(WholeBodyScanReader(defer_errors=False).load(shared)[0], masks[2])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_highdicom_reads_the_seg_frames_back_on_their_source_frames(tmp_path, layout):
    paths = write_scan(tmp_path, layout)
    sources = [pydicom.dcmread(p) for p in paths]
    masks = make_masks()
    seg = lesion_segmentation(sources, masks, ["a", "b", "c"], algorithm=("x", "1"), **DEPLOY_LIKE)
    path = save_dicom(seg, tmp_path / "seg.dcm")
    back = hd.seg.segread(path)
    assert back.number_of_segments == 3
    assert [back.get_segment_description(n).segment_label for n in (1, 2, 3)] == ["a", "b", "c"]
    assert back.get_segment_description(2).segmented_property_type.value == "52988006"  # SCT Lesion
    # every SEG frame, decoded by pydicom, equals the mask cut onto the frame it references, stored orientation
    reference = WholeBodyScanReader(defer_errors=False)
    layout_image, _ = reference.load([str(p) for p in paths] if len(paths) > 1 else paths[0])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    pixels = back.pixel_array.reshape(-1, H, WV)
    for index, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        ds = by_uid[str(source.ReferencedSOPInstanceUID)]
        frame = ds.pixel_array.reshape(-1, H, WV)[int(source.ReferencedFrameNumber) - 1]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)  # 3 segments: per frame
        anterior, posterior = split_views(layout_image)
        view_image = anterior if np.array_equal(frame, anterior) else posterior
        assert np.array_equal(frame, view_image)  # the referenced frame is one of the scan's views, as stored
        mask_ant, mask_post = split_views(masks[number - 1])
        expected = mask_ant if view_image is anterior else mask_post
        np.testing.assert_array_equal(pixels[index].astype(bool), expected)
    assert back.NumberOfFrames == 4  # lesions 1 and 2 lie on one view each, lesion 3 on both; empty frames left out
    # highdicom's own lookup: the pixels of each segment on the first file's first stored frame
    first = sources[0]
    view = frame_views(first)[0][0]
    got = back.get_pixels_by_source_frame(
        str(first.SOPInstanceUID), [1], segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True
    )
    expected = np.stack([split_views(m)[0 if view == "ANT" else 1] for m in masks], axis=-1)
    np.testing.assert_array_equal(got[0].astype(bool), expected)


def test_seg_files_are_reproducible(tmp_path):
    (scan,) = write_scan(tmp_path, "two-frame")
    masks = dict(enumerate(make_masks(), 1))
    a = write_seg(tmp_path / "a.dcm", scan, masks, seed=7)
    b = write_seg(tmp_path / "b.dcm", scan, masks, seed=7)
    c = write_seg(tmp_path / "c.dcm", scan, masks, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert pydicom.dcmread(a).SOPInstanceUID != pydicom.dcmread(c).SOPInstanceUID


def test_lesion_segmentation_refuses_masks_it_cannot_store(tmp_path):
    anterior, _ = make_views()
    only_ant = nm_dataset(anterior, None, "P1")
    masks = make_masks()
    with pytest.raises(ValueError, match="mask 2 has pixels on the POST view"):
        lesion_segmentation(only_ant, masks[:2], ["a", "b"], algorithm=None, **DEPLOY_LIKE)
    with pytest.raises(ValueError, match=r"mask 1 .* is empty"):
        lesion_segmentation(only_ant, [np.zeros((H, 2 * WV), bool)], ["a"], algorithm=None, **DEPLOY_LIKE)
    with pytest.raises(ValueError, match=r"mask 1 has shape \(64, 32\)"):
        lesion_segmentation(only_ant, [np.ones((H, WV), bool)], ["a"], algorithm=None, **DEPLOY_LIKE)
    with pytest.raises(ValueError, match="2 masks but 1 labels"):
        lesion_segmentation(only_ant, masks[:2], ["a"], algorithm=None, **DEPLOY_LIKE)
    with pytest.raises(ValueError, match=r"segment numbers must be 1\.\.1"):
        write_seg(tmp_path / "x.dcm", only_ant, {2: masks[0]})


def test_save_dicom_writes_the_file_format_atomically(tmp_path):
    anterior, posterior = make_views()
    ds = nm_dataset(anterior, posterior, "P1")
    path = save_dicom(ds, tmp_path / "out" / "scan.dcm")
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(ValueError, match="no file meta TransferSyntaxUID"):
        save_dicom(ds, tmp_path / "out" / "broken.dcm")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan.dcm"]  # nothing half-written
    ds.Rows = 2**20  # too large for US: pydicom fails while writing
    with pytest.raises(Exception):  # noqa: B017 - whichever pydicom error, no file may appear
        save_dicom(ds, tmp_path / "out" / "failed.dcm")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan.dcm"]


def test_content_datetime_is_used(tmp_path):
    anterior, posterior = make_views()
    when = datetime.datetime(2022, 3, 4, 5, 6, 7)
    seg = lesion_segmentation(
        nm_dataset(anterior, posterior, "P1"),
        make_masks()[:1],
        ["a"],
        algorithm=None,
        content_datetime=when,
        **DEPLOY_LIKE,
    )
    assert (seg.ContentDate, seg.ContentTime, seg.InstanceCreationDate) == ("20220304", "050607", "20220304")


@requires_dciodvfy
def test_seg_of_a_de_identified_source_without_type_2_details(tmp_path):
    """Exported or de-identified scans may lack type 2 patient/study attributes; the SEG leaves them empty."""
    anterior, posterior = make_views()
    source = nm_dataset(anterior, posterior, "P1")
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
        delattr(source, keyword)
    seg = lesion_segmentation(source, make_masks()[:1], ["a"], algorithm=None, **DEPLOY_LIKE)
    path = save_dicom(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    assert pydicom.dcmread(path).PatientName == "" and seg.PatientID == "P1"
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="no StudyInstanceUID; a SEG cannot reference this scan"):
        lesion_segmentation(source, make_masks()[:1], ["a"], algorithm=None, **DEPLOY_LIKE)


def test_save_dicom_pydicom_2_branch_writes_the_same_file(tmp_path, monkeypatch):
    """The pydicom 2.4 way of writing (``write_like_original=False``, encoding set on the dataset) gives the same
    bytes; pydicom 3 still accepts it, with deprecation warnings. (The MONAI Label environment has pydicom 2.4.)"""
    import bundle.data.dicom_nm as dicom_nm

    anterior, posterior = make_views()
    modern = save_dicom(nm_dataset(anterior, posterior, "P1", seed=1), tmp_path / "3.dcm")
    monkeypatch.setattr(dicom_nm, "PYDICOM_MAJOR", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy = save_dicom(nm_dataset(anterior, posterior, "P1", seed=1), tmp_path / "2.dcm")
    assert legacy.read_bytes() == modern.read_bytes()
