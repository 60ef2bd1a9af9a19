"""Volume readers (`data.volumes`): NIfTI, DICOM series (written here, and pydicom's own
scanner files), TIFF stacks; and every bad volume input, one line each."""

from pathlib import Path

import numpy as np
import pytest

from retinaunet_deploy.data import volumes
from retinaunet_deploy.errors import DataError

# An oblique, sheared-free affine (rotation about two axes, anisotropic voxels), RAS+ mm.
OBLIQUE = np.array([[0.8 * np.cos(0.3), -0.7 * np.sin(0.3), 0.0, -40.5],
                    [0.8 * np.sin(0.3) * np.cos(0.2), 0.7 * np.cos(0.3) * np.cos(0.2),
                     -2.5 * np.sin(0.2), 12.25],
                    [0.8 * np.sin(0.3) * np.sin(0.2), 0.7 * np.cos(0.3) * np.sin(0.2),
                     2.5 * np.cos(0.2), -7.0],
                    [0, 0, 0, 1]])


def write_nifti(path: Path, array: np.ndarray, affine=OBLIQUE, **codes) -> Path:
    """A NIfTI-1 file with `affine` as both sform (code 1, scanner) and qform (code 1)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=codes.get("sform", 1))
    image.set_qform(affine, code=codes.get("qform", 1))
    nib.save(image, str(path))
    return path


def write_series(folder: Path, array: np.ndarray, *, spacing=(0.75, 0.6), step=2.0,
                 origin=(-30.0, -20.0, 50.0), positions=None, slope=1.0, intercept=0.0,
                 series_uid=None, study_uid=None, modality="CT", shuffle=True) -> Path:
    """A DICOM series folder of `array` (I columns, J rows, K slices), one file per slice,
    axial (row direction +x, column direction +y in LPS), files in shuffled order.

    Stored values are ``(array - intercept) / slope`` (uint8 for a uint8 array, else uint16,
    or int16 for negatives).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = series_uid or generate_uid(), study_uid or generate_uid()
    frame_uid = generate_uid()
    stored = np.round((array.astype(np.float64) - intercept) / slope)
    signed = stored.min() < 0
    dtype = np.uint8 if array.dtype == np.uint8 else np.int16 if signed else np.uint16
    bits = np.dtype(dtype).itemsize * 8
    count = array.shape[2]
    positions = positions if positions is not None else [origin[2] + k * step
                                                         for k in range(count)]
    order = np.random.default_rng(0).permutation(count) if shuffle else range(count)
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Volume", "volio"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, int(k) + 1, "volio"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], float(positions[k])]
        ds.PixelSpacing = [spacing[0], spacing[1]]   # [row spacing, column spacing]
        ds.SliceThickness = step
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = int(signed)
        if (slope, intercept) != (1.0, 0.0):
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype(dtype)).tobytes()
        ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)
    return folder


def test_nifti_keeps_array_affine_and_header(tmp_path):
    array = np.random.default_rng(1).integers(-1000, 2000, (7, 6, 5)).astype(np.int16)
    path = write_nifti(tmp_path / "ct.nii.gz", array)
    volume = volumes.read_volume(path)
    assert volume.format == "NIfTI" and volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, [0.8, 0.7, 2.5], atol=1e-5)
    assert int(volume.header["sform_code"]) == 1
    shape, dtype, affine = volumes.probe_volume(path)
    assert shape == (7, 6, 5) and dtype == np.int16
    np.testing.assert_allclose(affine, volume.affine)
    assert volumes.volume_readable(path) and volumes.volume_stem(path) == "ct"
    assert volumes.slices(volume, 2).shape == (5, 6, 7)      # display slices: rows J, cols I
    np.testing.assert_array_equal(volumes.slices(volume, 2)[3], array[:, :, 3].T)
    np.testing.assert_array_equal(volumes.stack_slices(volumes.slices(volume, 1), 1), array)


def test_dicom_series_sorted_by_position_rescaled_with_lps_to_ras(tmp_path):
    rng = np.random.default_rng(2)
    array = rng.integers(-1024, 1500, (9, 8, 6)).astype(np.int16)   # (columns, rows, slices)
    folder = write_series(tmp_path / "series", array, slope=1.0, intercept=-1024.0)
    volume = volumes.read_volume(folder)
    assert volume.format == "DICOM" and volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)   # sorted back from shuffled files
    expected = np.array([[-0.6, 0, 0, 30.0], [0, -0.75, 0, 20.0], [0, 0, 2.0, 50.0],
                         [0, 0, 0, 1]])
    np.testing.assert_allclose(volume.affine, expected)
    assert volume.header["spacing_used"] == [0.6, 0.75, 2.0]
    assert volumes.probe_volume(folder)[0] == (9, 8, 6)
    assert volumes.volume_readable(folder) and volumes.volume_stem(folder) == "series"


def test_enhanced_multiframe_ct_reads_as_its_series(tmp_path):
    """One enhanced CT file (per-frame positions, shared orientation, spacing and rescale;
    made from a series by highdicom's legacy conversion) gives the series' volume."""
    import warnings

    import pydicom
    from highdicom import UID
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    array = np.random.default_rng(4).integers(-1000, 1000, (9, 8, 5)).astype(np.int16)
    folder = write_series(tmp_path / "series", array, intercept=-1024.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = LegacyConvertedEnhancedCTImage(
            [pydicom.dcmread(p) for p in sorted(folder.iterdir())], series_instance_uid=UID(),
            series_number=2, sop_instance_uid=UID(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    assert int(enhanced.NumberOfFrames) == 5 and "PerFrameFunctionalGroupsSequence" in enhanced
    volume = volumes.read_volume(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, volumes.read_volume(folder).affine)


def _pydicom_files():
    from pydicom.data import get_testdata_file

    return {name: get_testdata_file(name) for name in (
        "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
        "rtdose_rle.dcm")}


@pytest.mark.parametrize("name", sorted(_pydicom_files()))
def test_real_scanner_files_match_pydicom(name):
    """pydicom's shipped files (16-bit CT with rescale, MR in six transfer syntaxes, a
    multi-frame RT dose): geometry and intensities equal pydicom's own values."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = Path(_pydicom_files()[name])
    ds = pydicom.dcmread(path)
    volume = volumes.read_volume(path)
    pixels = ds.pixel_array
    frames = pixels if pixels.ndim == 3 else pixels[None]
    want = apply_modality_lut(frames, ds)
    if "DoseGridScaling" in ds:
        want = frames * float(ds.DoseGridScaling)
    got = np.moveaxis(volume.array, 2, 0).swapaxes(1, 2)    # back to (frames, rows, columns)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(volumes.slices(volume, 2), want, rtol=1e-6)   # as displayed
    if name == "CT_small.dcm":
        assert volume.array.dtype == np.int16 and float(ds.RescaleIntercept) == -1024
    row, col = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    flip = np.array([-1, -1, 1])
    np.testing.assert_allclose(volume.affine[:3, 0], flip * row * dc, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 1], flip * col * dr, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 3],
                               flip * np.array(ds.ImagePositionPatient, float), atol=1e-5)
    if pixels.ndim == 3:   # frames GridFrameOffsetVector apart along the normal
        step = float(np.diff(np.array(ds.GridFrameOffsetVector, float))[0])
        np.testing.assert_allclose(volume.spacing[2], step)
    else:
        np.testing.assert_allclose(volume.spacing[2], float(ds.SliceThickness))


def test_tiff_stacks_multipage_and_ome(tmp_path):
    import tifffile

    stack = np.random.default_rng(3).integers(0, 4000, (5, 12, 10)).astype(np.uint16)  # Z, Y, X
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 2.0})
    volume = volumes.read_volume(tmp_path / "s.ome.tif")
    np.testing.assert_array_equal(volume.array, np.transpose(stack, (2, 1, 0)))  # X, Y, Z
    np.testing.assert_allclose(volume.spacing, [0.5e-3, 0.25e-3, 2e-3])   # i (X), j, k; mm
    # Page k's pixel (row r, column c) lies at (r dy, c dx, k dz) mm.
    r, c, k = 7, 3, 4
    np.testing.assert_allclose(volume.affine @ [c, r, k, 1], [r * 0.25e-3, c * 0.5e-3, 8e-3, 1])
    np.testing.assert_allclose(volumes.probe_volume(tmp_path / "s.ome.tif")[2], volume.affine)
    assert volumes.probe_volume(tmp_path / "s.ome.tif")[0] == (10, 12, 5)
    assert volumes.volume_stem(tmp_path / "s.ome.tif") == "s"
    tifffile.imwrite(tmp_path / "plain.tif", stack)   # a plain multi-page TIFF
    plain = volumes.read_volume(tmp_path / "plain.tif")
    np.testing.assert_array_equal(volumes.slices(plain, 2), stack)
    assert plain.notes and "1 mm voxels assumed" in plain.notes[0]
    tifffile.imwrite(tmp_path / "flat.tif", stack[0])
    assert not volumes.volume_readable(tmp_path / "flat.tif")   # a 2D image
    tifffile.imwrite(tmp_path / "movie.tif", np.zeros((2, 3, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "TZYX"})
    with pytest.raises(DataError, match="movie.tif has axes TZYX of shape \\(2, 3, 8, 8\\), "
                                        "not one stack axis \\(Z\\); save one 3D stack per"):
        volumes.read_volume(tmp_path / "movie.tif")


def test_slices_are_what_pydicom_and_tifffile_show(tmp_path):
    """A slice along k is the image as displayed: pydicom's rescaled ``pixel_array`` of
    that DICOM slice, tifffile's page of a stack (non-square, so a transpose cannot
    pass); its pixel (row, col) lies where DICOM's geometry puts it; `stack_slices` is
    the exact inverse on every axis."""
    import pydicom
    import tifffile
    from pydicom.pixels import apply_modality_lut

    array = np.random.default_rng(5).integers(-1000, 1000, (9, 7, 4)).astype(np.int16)
    folder = write_series(tmp_path / "series", array, intercept=-1024.0)
    volume = volumes.read_volume(folder)
    shown = volumes.slices(volume, 2)
    assert shown.shape == (4, 7, 9)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        k = int(ds.InstanceNumber) - 1
        np.testing.assert_array_equal(shown[k], apply_modality_lut(ds.pixel_array, ds))
        # Row r, column c of the slice: IPP + c dc (row direction) + r dr (column direction).
        r, c = 5, 2
        dr, dc = (float(v) for v in ds.PixelSpacing)
        cosines = np.array(ds.ImageOrientationPatient, float)
        lps = np.array(ds.ImagePositionPatient, float) + c * dc * cosines[:3] + \
            r * dr * cosines[3:]
        world = volumes.slice_affine(volume.affine, 2, k) @ [r, c, 0, 1]
        np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=1e-6)
    stack = np.random.default_rng(6).integers(0, 255, (3, 11, 6)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    tiff = volumes.read_volume(tmp_path / "stack.tif")
    for k in range(3):
        np.testing.assert_array_equal(volumes.slices(tiff, 2)[k],
                                      tifffile.imread(tmp_path / "stack.tif", key=k))
    for axis in (0, 1, 2):
        row, col = volumes.slice_axes(axis)
        cut = volumes.slices(volume, axis)
        assert cut.shape[1:] == (volume.shape[row], volume.shape[col])
        np.testing.assert_array_equal(volumes.stack_slices(cut, axis), volume.array)
        index = [2, 3, 1]
        assert cut[index[axis], index[row], index[col]] == volume.array[tuple(index)]


# === Bad input: one line each, naming the file and a remedy ===

def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_two_series_in_one_folder_are_refused(tmp_path):
    array = np.zeros((4, 4, 2), np.uint16)
    folder = write_series(tmp_path / "mixed", array)
    write_series(tmp_path / "other", array, origin=(0, 0, 0))
    for n, path in enumerate(sorted((tmp_path / "other").iterdir())):
        path.rename(folder / f"B{n}.dcm")
    with pytest.raises(DataError) as error:
        volumes.read_volume(folder)
    assert "holds 2 DICOM series" in _one_line(error) and "its own folder" in str(error.value)
    with pytest.raises(DataError, match="holds 2 DICOM series"):
        volumes.probe_volume(folder)


@pytest.mark.parametrize("positions,expected", [
    ([0.0, 2.0, 4.0, 8.0, 10.0], "1 slice\\(s\\) missing between 4.00 and 8.00 mm"),
    ([0.0, 2.0, 4.5, 6.0, 8.0], "unevenly spaced slices \\(1.500 to 2.500 mm apart\\)"),
    ([0.0, 2.0, 2.0, 4.0, 6.0], "at the same position"),
])
def test_missing_uneven_or_duplicate_slices_are_refused(tmp_path, positions, expected):
    folder = write_series(tmp_path / "s", np.zeros((4, 4, 5), np.uint16), positions=positions)
    with pytest.raises(DataError, match=expected) as error:
        volumes.read_volume(folder)
    assert str(folder) in _one_line(error)


def test_4d_nifti_is_refused(tmp_path):
    path = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((4, 4, 3, 2), np.float32))
    with pytest.raises(DataError, match="is a 4D NIfTI of shape \\(4, 4, 3, 2\\).*own file"):
        volumes.read_volume(path)
    with pytest.raises(DataError, match="4D NIfTI"):
        volumes.probe_volume(path)


def test_corrupt_nifti_and_dicom_files_are_refused(tmp_path):
    path = write_nifti(tmp_path / "a.nii", np.arange(64, dtype=np.int16).reshape(4, 4, 4))
    path.write_bytes(path.read_bytes()[:200])              # header cut
    with pytest.raises(DataError, match=f"cannot read {path}: .*valid NIfTI") as error:
        volumes.read_volume(path)
    _one_line(error)
    ok = write_nifti(tmp_path / "b.nii", np.arange(64, dtype=np.int16).reshape(4, 4, 4))
    ok.write_bytes(ok.read_bytes()[:-40])                  # voxels cut
    with pytest.raises(DataError, match=f"{ok}.*valid NIfTI"):
        volumes.read_volume(ok)
    folder = write_series(tmp_path / "s", np.zeros((4, 4, 3), np.uint16))
    bad = sorted(folder.iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:140])                # preamble only
    with pytest.raises(DataError, match=f"{bad}") as error:
        volumes.read_volume(folder)
    _one_line(error)
    bad.unlink()
    cut = min(folder.iterdir())
    cut.write_bytes(cut.read_bytes()[:-10])                # pixel data cut
    volumes.probe_volume(folder)                           # the headers are whole
    with pytest.raises(DataError, match=f"cannot decode the pixels of DICOM file {cut}"):
        volumes.read_volume(folder)
    (folder / "notes.txt").write_text("not a slice")
    with pytest.raises(DataError, match="notes.txt is not a DICOM file.*move it out"):
        volumes.read_volume(folder)


def test_mask_on_another_grid_is_refused(tmp_path):
    image = write_nifti(tmp_path / "img.nii.gz", np.zeros((6, 5, 4), np.int16))
    same = write_nifti(tmp_path / "same.nii.gz", np.zeros((6, 5, 4), np.uint8))
    volumes.check_same_grid(volumes.probe_volume(image), volumes.probe_volume(same),
                            image_path=image, mask_path=same)
    other_shape = write_nifti(tmp_path / "m1.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DataError, match="has shape \\(6, 5, 3\\).*\\(6, 5, 4\\); resample"):
        volumes.check_same_grid(volumes.read_volume(image), volumes.read_volume(other_shape))
    moved = OBLIQUE.copy()
    moved[0, 3] += 1.5
    other_affine = write_nifti(tmp_path / "m2.nii.gz", np.zeros((6, 5, 4), np.uint8), moved)
    with pytest.raises(DataError, match="another affine .*up to 1.5 mm") as error:
        volumes.check_same_grid(volumes.probe_volume(image), volumes.probe_volume(other_affine),
                                image_path=image, mask_path=other_affine)
    assert str(other_affine) in _one_line(error)
