"""The volume output writers (`predict.volume_writers`) on inputs the predict tests do not
cover: NIfTI-2 headers, TIFF stacks, and a DICOM SEG over a real scanner file."""

from pathlib import Path

import numpy as np
import pytest

from retinaunet_deploy.data import volumes
from retinaunet_deploy.predict import volume_writers
from tests.test_volume_io import OBLIQUE


def _load(data: bytes, tmp_path: Path, name="labels.nii.gz"):
    import nibabel as nib

    (tmp_path / name).write_bytes(data)
    return nib.load(tmp_path / name)


def test_nifti2_input_gives_a_nifti2_label_volume_with_its_geometry(tmp_path):
    import nibabel as nib

    image = nib.Nifti2Image(np.zeros((6, 5, 4), np.float32), OBLIQUE)
    image.set_qform(OBLIQUE, code=2)
    image.set_sform(OBLIQUE, code=4)
    nib.save(image, tmp_path / "in.nii")
    volume = volumes.read_volume(tmp_path / "in.nii")
    labels = np.arange(120, dtype=np.uint8).reshape(6, 5, 4) % 3
    data = volume_writers.label_nifti(labels, volume)
    assert data == volume_writers.label_nifti(labels, volume)      # same bytes every run
    out = _load(data, tmp_path)
    assert isinstance(out, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels)
    assert out.header.get_qform(coded=True)[1] == 2 and out.header.get_sform(coded=True)[1] == 4
    np.testing.assert_allclose(out.affine, volume.affine)
    assert int(out.header["intent_code"]) == volume_writers.NIFTI_INTENT_LABEL


def test_tiff_stack_labels_carry_its_spacing(tmp_path):
    """The label NIfTI of a TIFF stack overlays it in world space: page k's pixel (row r,
    column c) at (r dy, c dx, k dz) mm, through the sform and the qform alike."""
    import tifffile

    tifffile.imwrite(tmp_path / "s.ome.tif", np.zeros((3, 10, 12), np.uint8), metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 2.0})
    volume = volumes.read_volume(tmp_path / "s.ome.tif")
    labels = np.zeros(volume.shape, np.uint8)
    labels[9, 2, 1] = 1                     # page 1, row 2, column 9
    out = _load(volume_writers.label_nifti(labels, volume), tmp_path)
    assert out.shape == (12, 10, 3) and out.header.get_xyzt_units()[0] == "mm"
    voxel = np.argwhere(np.asarray(out.dataobj) == 1)[0]
    for affine in (out.affine, out.header.get_qform()):
        np.testing.assert_allclose(affine @ [*voxel, 1], [2 * 0.25e-3, 9 * 0.5e-3, 2e-3, 1],
                                   atol=1e-9)
    assert out.header.get_sform(coded=True)[1] == 1


def test_seg_over_pydicom_ct_slice_references_it(tmp_path):
    """highdicom writes a SEG over pydicom's real 16-bit CT slice; pydicom reads it back."""
    import highdicom as hd
    import pydicom
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("CT_small.dcm"))
    volume = volumes.read_volume(source)
    labels = np.zeros(volume.shape, np.uint8)
    labels[10:40, 20:30, 0] = 1
    labels[60:70, 60:90, 0] = 2
    data = volume_writers.dicom_seg(labels, volume, ("background", "a", "b"), "test 1.0")
    (tmp_path / "seg.dcm").write_bytes(data)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    ct = pydicom.dcmread(source, stop_before_pixels=True)
    assert int(seg.NumberOfFrames) == 2 and [s.SegmentLabel for s in seg.SegmentSequence] == \
        ["a", "b"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    back = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        [ct.SOPInstanceUID], combine_segments=True)
    np.testing.assert_array_equal(back[0], labels[:, :, 0].T)


def test_seg_of_an_empty_prediction_keeps_one_frame_per_slice(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    volume = volumes.read_volume(Path(get_testdata_file("MR_small.dcm")))
    data = volume_writers.dicom_seg(np.zeros(volume.shape, np.uint8), volume,
                                    ("background", "lesion"), "test 1.0")
    (tmp_path / "seg.dcm").write_bytes(data)
    assert int(pydicom.dcmread(tmp_path / "seg.dcm").NumberOfFrames) == 1


@pytest.mark.parametrize("bad", ["rtdose_rle.dcm"])
def test_seg_refused_for_a_source_highdicom_cannot_reference(bad, tmp_path):
    from pydicom.data import get_testdata_file

    from retinaunet_deploy.errors import DataError

    volume = volumes.read_volume(Path(get_testdata_file(bad)))
    labels = np.zeros(volume.shape, np.uint8)
    labels[2:5, 2:5, :] = 1
    with pytest.raises(DataError, match=f"cannot write a DICOM SEG for .*{bad} \\(.*\\): "
                                        f"highdicom cannot reference it"):
        volume_writers.dicom_seg(labels, volume, ("background", "x"), "test 1.0")
