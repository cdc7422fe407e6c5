"""WholeBodyScanReader: DICOM NM views/orientation/scaling, compressed and odd exports, SEG/label masks, NIfTI/PNG.

Every test file is written here with pydicom, nibabel or Pillow (nothing downloaded).
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage, LoadImaged
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset

from bundle.data.__main__ import main as data_main
from bundle.data.dicom_nm import MULTIFRAME_WORD_SC_STORAGE, assemble_views, split_views
from bundle.data.paths import split_selector
from bundle.data.readers import WholeBodyScanReader
from bundle.errors import (
    CountsError,
    DicomReadError,
    MaskSelectionError,
    MissingFileError,
    NotWholeBodyNMError,
    ScanWarning,
    ViewError,
)
from bundle.phantom.dicom import nm_dataset, write_nm_whole_body, write_phantom_image, write_phantom_mask, write_seg

H, WV = 64, 32  # rows and columns of one view


def make_views(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(anterior, posterior as acquired): Poisson counts with a marker on the patient's right in each view."""
    rng = np.random.default_rng(seed)
    anterior = rng.poisson(30, (H, WV)).astype(np.float32)
    posterior = rng.poisson(40, (H, WV)).astype(np.float32)
    anterior[5, 2] = 1000  # patient's right is on the image left of the anterior view ...
    posterior[5, WV - 3] = 2000  # ... and on the image right of the posterior view as acquired
    return anterior, posterior


def expected_layout(anterior: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    return np.concatenate([anterior, posterior[:, ::-1]], axis=1)


def load(path, **kwargs):
    return WholeBodyScanReader(defer_errors=False, **kwargs).load(path)


# ---- views, orientation, scaling --------------------------------------------------------------------------------
def test_phantom_dicom_round_trip_equals_the_nifti_image(tmp_path):
    from bundle.phantom.scan import PhantomConfig, generate_patient, patient_rng

    scan, masks, _ = generate_patient(patient_rng(0, 0), PhantomConfig(height=256, width=128), "P00001")
    write_phantom_image(tmp_path / "scan.dcm", scan)
    write_phantom_mask(tmp_path / "mask.dcm", masks[0], scan)
    nib.save(nib.Nifti1Image(scan.image, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    nib.save(nib.Nifti1Image(masks[0].astype(np.uint8), np.eye(4)), str(tmp_path / "mask.nii.gz"))

    reference = LoadImage(image_only=True)(str(tmp_path / "scan.nii.gz")).numpy()  # MONAI's own NIfTI reading
    image, meta = load(tmp_path / "scan.dcm")
    assert image.shape == reference.shape == (256, 128)
    np.testing.assert_array_equal(image, reference)
    assert meta["views"] == "ANT+POST" and not meta["single_view"]
    assert meta["patient_id"] == "P00001"
    # a fresh reader finds the SEG's scan by itself
    mask, _ = load(tmp_path / "mask.dcm")
    np.testing.assert_array_equal(mask, LoadImage(image_only=True)(str(tmp_path / "mask.nii.gz")).numpy())


def test_views_are_placed_ant_left_post_mirrored_right(tmp_path):
    anterior, posterior = make_views()
    write_nm_whole_body(tmp_path / "scan.dcm", anterior, posterior, "P1", seed=1)
    image, _ = load(tmp_path / "scan.dcm")
    np.testing.assert_array_equal(image, expected_layout(anterior, posterior))
    # both markers sit on the patient's right: the left edge of each half
    assert image[5, 2] == 1000 and image[5, WV + 2] == 2000


def test_multiframe_with_post_stored_first_still_comes_out_ant_left(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "post_first.dcm", anterior, posterior, "P1", frame_order=("POST", "ANT"))
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array[0], posterior)  # stored first
    assert list(ds.DetectorVector) == [2, 1]
    image, meta = load(path)
    np.testing.assert_array_equal(image, expected_layout(anterior, posterior))
    assert meta["views"] == "ANT+POST"


def test_two_single_frame_files_as_a_list_or_a_folder(tmp_path):
    anterior, posterior = make_views()
    folder = tmp_path / "P1"
    ant = write_nm_whole_body(folder / "a.dcm", anterior, None, "P1", seed=1)
    post = write_nm_whole_body(folder / "b.dcm", None, posterior, "P1", seed=1)
    expected = expected_layout(anterior, posterior)
    for source in ([str(post), str(ant)], [str(ant), str(post)], folder):
        image, meta = load(source)
        np.testing.assert_array_equal(image, expected)
        assert meta["views"] == "ANT+POST"
    # and through LoadImaged, as the configs use it (a list of two files = the two views of one scan)
    loaded = LoadImaged(keys="image", reader=WholeBodyScanReader(), image_only=True)({"image": [str(post), str(ant)]})
    np.testing.assert_array_equal(loaded["image"].numpy(), expected)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "s.dcm", anterior * 0.5, posterior * 0.5 + 3, "P1", rescale=(0.5, 3.0))
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == 3.0
    image, _ = load(path)
    np.testing.assert_allclose(image, expected_layout(anterior * 0.5, posterior * 0.5 + 3))


def test_patient_orientation_of_a_single_view_file_is_respected(tmp_path):
    anterior, _ = make_views()
    # an anterior view exported mirrored and upside down, and saying so in PatientOrientation
    stored = anterior[::-1, ::-1]

    def say_so(ds: Dataset) -> None:
        ds.PatientOrientation = ["R", "H"]

    path = write_nm_whole_body(tmp_path / "a.dcm", stored, None, "P1", edit=say_so)
    with pytest.warns(ScanWarning, match="single ANT view"):
        image, _ = load(path)
    np.testing.assert_array_equal(image[:, :WV], anterior)


# ---- single views -----------------------------------------------------------------------------------------------
def test_single_view_without_view_code_is_read_as_one_view_and_said_so(tmp_path):
    anterior, _ = make_views()
    path = write_nm_whole_body(tmp_path / "one.dcm", anterior, None, "P1", view_codes=False, series_description="WB")
    with pytest.warns(ScanWarning, match="single view without view information") as caught:
        image, meta = load(path)
    assert str(path) in str(caught[0].message)
    assert meta["single_view"] and meta["views"] == "UNKNOWN"
    np.testing.assert_array_equal(image, np.concatenate([anterior, np.zeros_like(anterior)], axis=1))


def test_single_posterior_view_named_in_image_id_goes_right_mirrored(tmp_path):
    _, posterior = make_views()

    def text_only(ds: Dataset) -> None:
        ds.ImageID = "POST"
        del ds.PatientOrientation

    path = write_nm_whole_body(tmp_path / "post.dcm", None, posterior, "P1", view_codes=False, edit=text_only)
    with pytest.warns(ScanWarning, match="single POST view"):
        image, meta = load(path)
    assert meta["views"] == "POST"
    np.testing.assert_array_equal(image, assemble_views(None, posterior))


# ---- compressed and odd exports ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "syntax",
    [uid.JPEGLosslessSV1, uid.JPEGLossless, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless],
    ids=["jpeg-lossless-sv1", "jpeg-lossless", "jpeg-ls", "jpeg2000-lossless", "rle"],
)
def test_lossless_compressed_transfer_syntaxes_read_exactly(tmp_path, syntax):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "c.dcm", anterior, posterior, "P1", transfer_syntax=syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    image, meta = load(path)
    np.testing.assert_array_equal(image, expected_layout(anterior, posterior))
    assert not meta["lossy"]


@pytest.mark.parametrize("syntax", [uid.JPEGLSNearLossless, uid.JPEG2000], ids=["jpeg-ls-near", "jpeg2000"])
def test_lossy_transfer_syntaxes_are_read(tmp_path, syntax):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "c.dcm", anterior, posterior, "P1", transfer_syntax=syntax, lossy_error=2)
    image, meta = load(path)
    assert meta["lossy"] and image.shape == (H, 2 * WV)
    assert np.corrcoef(image.ravel(), expected_layout(anterior, posterior).ravel())[0, 1] > 0.9


def _lossy_flag(ds: Dataset) -> None:
    ds.LossyImageCompression = "01"


def _lossy_derivation(ds: Dataset) -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113040", "DCM", "Lossy Compression"
    ds.DerivationCodeSequence = [item]


@pytest.mark.parametrize(
    ("edit", "syntax"),
    [
        (_lossy_flag, uid.ExplicitVRLittleEndian),
        (_lossy_derivation, uid.ExplicitVRLittleEndian),
        (None, uid.JPEGLSNearLossless),
    ],
    ids=["LossyImageCompression-01", "lossy-derivation-code", "lossy-transfer-syntax"],
)
def test_small_negative_values_of_lossy_data_are_clipped_with_a_warning(tmp_path, edit, syntax):
    anterior, posterior = make_views()
    anterior[10:12, 10:12] = -2  # ringing left by lossy compression
    path = write_nm_whole_body(
        tmp_path / "lossy.dcm", anterior, posterior, "P1", signed=True, edit=edit, transfer_syntax=syntax
    )
    with pytest.warns(ScanWarning, match="negative pixel.*clipped to 0") as caught:
        image, _ = load(path)
    assert str(path) in str(caught[0].message)
    assert image.min() >= 0


def test_negative_counts_in_lossless_data_are_an_error(tmp_path):
    anterior, posterior = make_views()
    anterior[10, 10] = -5
    path = write_nm_whole_body(tmp_path / "neg.dcm", anterior, posterior, "P1", signed=True)
    with pytest.raises(CountsError, match=r"negative counts .* losslessly stored") as err:
        load(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_secondary_capture_nm_whole_body_is_read(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "sc.dcm", anterior, posterior, "P1", sop_class=MULTIFRAME_WORD_SC_STORAGE)
    image, meta = load(path)
    np.testing.assert_array_equal(image, expected_layout(anterior, posterior))
    assert meta["secondary_capture"]


def test_secondary_capture_screenshot_is_refused(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(
        tmp_path / "ot.dcm", anterior, posterior, "P1", modality="OT", sop_class=uid.SecondaryCaptureImageStorage
    )
    with pytest.raises(NotWholeBodyNMError, match="screenshot, not counts") as err:
        load(path)
    assert str(path) in str(err.value)


def test_ct_is_refused_and_loadimaged_does_not_fall_back_to_another_reader(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "ct.dcm", anterior, posterior, "P1", modality="CT")
    with pytest.raises(NotWholeBodyNMError, match="Modality CT") as err:
        load(path)
    assert str(path) in str(err.value)
    # MONAI would read the file with PydicomReader after a reader raised in read(); the error surfaces instead
    with pytest.raises(Exception, match="not a nuclear-medicine"):
        LoadImaged(keys="image", reader=WholeBodyScanReader(), image_only=True)({"image": str(path)})


def test_spect_and_static_acquisitions_are_refused(tmp_path):
    anterior, posterior = make_views()
    tomo = write_nm_whole_body(
        tmp_path / "tomo.dcm", anterior, posterior, "P1", image_type=("ORIGINAL", "PRIMARY", "TOMO", "EMISSION")
    )
    with pytest.raises(NotWholeBodyNMError, match="SPECT"):
        load(tomo)
    static = write_nm_whole_body(
        tmp_path / "static.dcm", anterior, posterior, "P1", image_type=("ORIGINAL", "PRIMARY", "STATIC", "EMISSION")
    )
    with pytest.raises(NotWholeBodyNMError, match="STATIC acquisition, not WHOLE BODY") as err:
        load(static)
    assert "require_whole_body=False" in str(err.value)
    with pytest.warns(ScanWarning, match="read as a whole-body scan"):
        image, _ = load(static, require_whole_body=False)
    assert image.shape == (H, 2 * WV)


def test_two_frames_without_view_codes_are_refused_unless_view_order_is_given(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "nocodes.dcm", anterior, posterior, "P1", view_codes=False)
    with pytest.raises(ViewError, match="cannot tell which frame is anterior") as err:
        load(path)
    assert str(path) in str(err.value) and "view_order" in str(err.value)
    image, _ = load(path, view_order=("ANT", "POST"))
    np.testing.assert_array_equal(image, expected_layout(anterior, posterior))


def test_wrong_number_of_frames_is_refused(tmp_path):
    anterior, posterior = make_views()

    def four_frames(ds: Dataset) -> None:  # two energy windows x two detectors
        frames = np.stack([anterior, posterior, anterior, posterior]).astype(np.uint16)
        ds.NumberOfFrames = 4
        ds.EnergyWindowVector = [1, 1, 2, 2]
        ds.DetectorVector = [1, 2, 1, 2]
        ds.PixelData = frames.tobytes()

    path = write_nm_whole_body(tmp_path / "four.dcm", anterior, posterior, "P1", edit=four_frames)
    with pytest.raises(ViewError, match="4 frames") as err:
        load(path)
    assert str(path) in str(err.value)


def test_corrupt_and_non_dicom_files_are_refused(tmp_path):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "scan.dcm", anterior, posterior, "P1")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(DicomReadError, match=r"cannot be decoded|not a readable DICOM") as err:
        load(truncated)
    assert str(truncated) in str(err.value)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DicomReadError, match="not a readable DICOM file") as err:
        load(garbage)
    assert str(garbage) in str(err.value)
    with pytest.raises(MissingFileError, match="file not found"):
        load(tmp_path / "absent.dcm")


# ---- NIfTI, PNG/TIFF, label masks, DICOM SEG --------------------------------------------------------------------
def test_png_and_tiff_are_read_as_rows_by_columns(tmp_path):
    image = np.arange(H * 2 * WV, dtype=np.uint16).reshape(H, 2 * WV)
    Image.fromarray(image).save(tmp_path / "scan.png")
    Image.fromarray(image.astype(np.float32)).save(tmp_path / "scan.tif")
    for name in ("scan.png", "scan.tif"):
        array, _ = load(tmp_path / name)
        assert array.shape == (H, 2 * WV)
        np.testing.assert_array_equal(array, image)


def test_nifti_is_read_as_monai_reads_it(tmp_path):
    image = np.random.default_rng(0).poisson(5, (H, 2 * WV)).astype(np.int16)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    array, _ = load(tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(array, LoadImage(image_only=True)(str(tmp_path / "scan.nii.gz")).numpy())


def test_label_png_gives_one_mask_per_label_value(tmp_path):
    labels = np.zeros((H, 2 * WV), dtype=np.uint8)
    labels[2:5, 3:6], labels[20:22, 40:44] = 3, 7
    Image.fromarray(labels).save(tmp_path / "labels.png")
    reader = WholeBodyScanReader(defer_errors=False)
    assert reader.mask_selectors(tmp_path / "labels.png") == ["3", "7"]
    mask, meta = reader.load(f"{tmp_path / 'labels.png'}#7")
    np.testing.assert_array_equal(mask, labels == 7)
    assert meta["label_value"] == "7"
    with pytest.raises(MaskSelectionError, match="label value #5 does not occur") as err:
        reader.load(f"{tmp_path / 'labels.png'}#5")
    assert str(tmp_path / "labels.png") in str(err.value)
    # a palette PNG: the palette index is the label value
    palette = Image.fromarray(labels, mode="L").convert("P")
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(reader.load(f"{tmp_path / 'palette.png'}#3")[0], labels == 3)


def test_rgb_label_png_gives_one_mask_per_colour(tmp_path):
    rgb = np.zeros((H, 2 * WV, 3), dtype=np.uint8)
    rgb[2:5, 3:6] = (255, 0, 0)
    rgb[30:33, 50:52] = (0, 128, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    reader = WholeBodyScanReader(defer_errors=False)
    assert reader.mask_selectors(tmp_path / "rgb.png") == ["0,128,255", "255,0,0"]
    mask, _ = reader.load(f"{tmp_path / 'rgb.png'}#255,0,0")
    assert mask.sum() == 9 and mask[3, 4] == 1
    with pytest.raises(MaskSelectionError, match="a colour \\(RGB\\) image"):
        reader.load(tmp_path / "rgb.png")


def test_dicom_seg_segments_land_in_the_layout(tmp_path):
    anterior, posterior = make_views()
    scan = write_nm_whole_body(tmp_path / "scans" / "P1.dcm", anterior, posterior, "P1", frame_order=("POST", "ANT"))
    first, second = np.zeros((H, 2 * WV)), np.zeros((H, 2 * WV))
    first[3:6, 4:9] = 1  # on the anterior half
    second[40:44, 50:60] = 1  # on the posterior half
    seg = write_seg(tmp_path / "masks" / "P1_seg.dcm", scan, {1: first, 2: second})
    reader = WholeBodyScanReader(defer_errors=False)
    reader.load(scan)  # as LoadImaged does: the scan first
    np.testing.assert_array_equal(reader.load(f"{seg}#2")[0], second)
    assert reader.mask_selectors(seg) == ["1", "2"]
    np.testing.assert_array_equal(WholeBodyScanReader().load(f"{seg}#1")[0], first)  # scan found next to the SEG
    with pytest.raises(MaskSelectionError, match="2 segments") as err:
        reader.load(seg)
    assert str(seg) in str(err.value)
    with pytest.raises(MaskSelectionError, match="segment #9 is not in this SEG"):
        reader.load(f"{seg}#9")


def test_selector_parsing_and_suffixes(tmp_path):
    assert split_selector("masks/P1.png#3") == ("masks/P1.png", "3")
    assert split_selector("masks/P1.png#255,0,0") == ("masks/P1.png", "255,0,0")
    assert split_selector("masks/P#1.png") == ("masks/P#1.png", None)
    reader = WholeBodyScanReader()
    assert reader.verify_suffix("a.dcm") and reader.verify_suffix("a.nii.gz") and reader.verify_suffix("a.png#2")
    assert reader.verify_suffix("IM0001") and reader.verify_suffix(["a.dcm", "b.dcm"])
    assert not reader.verify_suffix("a.jpg")


def test_export_command_writes_the_layout_as_nifti(tmp_path, capsys):
    anterior, posterior = make_views()
    path = write_nm_whole_body(tmp_path / "scan.dcm", anterior, posterior, "P1")
    assert data_main(["export", str(path), str(tmp_path / "scan.nii.gz")]) == 0
    assert "ANT+POST" in capsys.readouterr().out
    exported = LoadImage(image_only=True)(str(tmp_path / "scan.nii.gz")).numpy()
    np.testing.assert_array_equal(exported, expected_layout(anterior, posterior))
    assert data_main(["export", str(tmp_path / "absent.dcm"), str(tmp_path / "x.nii.gz")]) == 1


def test_split_and_assemble_are_inverse():
    anterior, posterior = make_views()
    image = assemble_views(anterior, posterior)
    back = split_views(image)
    np.testing.assert_array_equal(back[0], anterior)
    np.testing.assert_array_equal(back[1], posterior)
    ds = nm_dataset(anterior, posterior, "P1", seed=3)
    assert ds.StudyInstanceUID == nm_dataset(anterior, posterior, "P1", seed=3).StudyInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeValue == "399321004"
        assert ds.DetectorInformationSequence[1].ViewCodeSequence[0].CodeValue == "399001007"
