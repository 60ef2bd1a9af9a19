"""Predicting on volumes (`predict.volumes`): label volumes on the input's exact grid
(NIfTI in -> NIfTI, DICOM in -> NIfTI + DICOM SEG), 3D boxes linked from per-slice
detections, resume, and bad volumes refused before anything is written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.data import volumes
from retinaunet_deploy.errors import DataError, InputError
from retinaunet_deploy.postprocess import Detections
from retinaunet_deploy.predict import predict_files
from retinaunet_deploy.predict.volumes import plan_volume, run_volumes
from retinaunet_deploy.predict.writer import ResultWriter
from retinaunet_deploy.runtime.predictor import Prediction
from tests.test_volume_io import OBLIQUE, write_nifti, write_series


def _discs(shape, seed=0) -> np.ndarray:
    """A uint8 volume of bright discs (spheres cut by slices) on a noisy background."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    array = rng.normal(50, 8, shape)
    for centre, radius in (((14, 14, 1), 8), ((30, 26, 2), 6)):
        inside = (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (2 * (kk - centre[2])) ** 2
        array[inside < radius ** 2] += 110
    return np.clip(array, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model(tiny_exported):
    return tiny_exported[0] / "model.onnx"


def _geometry(header) -> dict:
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    return {"qform": qform, "qcode": int(qcode), "sform": sform, "scode": int(scode),
            "pixdim": np.asarray(header["pixdim"][1:4]), "units": header.get_xyzt_units(),
            "dim_info": header.get_dim_info()}


@pytest.mark.parametrize("variant,tile", [("model.onnx", None), ("model.keras", None),
                                          ("model.onnx", 32)])   # 32: slices run tiled
def test_oblique_nifti_gives_labels_with_equal_affine_shape_and_header(tiny_exported, tmp_path,
                                                                       variant, tile):
    import nibabel as nib

    from retinaunet_deploy.runtime import Predictor
    from retinaunet_deploy.runtime.predictor import DEFAULT_TILE

    array = _discs((40, 36, 4))
    path = write_nifti(tmp_path / "scan.nii.gz", array, OBLIQUE, sform=2, qform=1)
    artifact = tiny_exported[0] / variant
    results = predict_files(artifact, [path], tmp_path / "out", threads=2, tile=tile)
    entry = results[str(path)]
    out = tmp_path / "out" / "masks" / "scan.nii.gz"
    assert entry["files"]["masks/scan.nii.gz"] and entry["size"] == [40, 36, 4]
    assert entry["tiled"] == (tile is not None)
    source, labels = nib.load(path), nib.load(out)
    assert labels.shape == source.shape and labels.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(labels.affine, source.affine)
    got, want = _geometry(labels.header), _geometry(source.header)
    assert (got["qcode"], got["scode"]) == (want["qcode"], want["scode"]) == (1, 2)
    for key in ("qform", "sform", "pixdim"):
        np.testing.assert_array_equal(got[key], want[key])
    assert got["units"] == want["units"] and got["dim_info"] == want["dim_info"]
    # Slice k of the label volume is the model's mask of displayed slice k (axis 2:
    # array[:, :, k].T, rows j, columns i), put back on the grid.
    with Predictor.from_artifact(artifact, threads=2, tile=tile or DEFAULT_TILE) as predictor:
        for k in (0, 3):
            mask = predictor.predict(array[:, :, k].T[..., None]).mask
            np.testing.assert_array_equal(np.asarray(labels.dataobj)[:, :, k], mask.T)
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["path"] == str(path)


def test_dicom_series_gives_nifti_and_seg_referencing_the_series(model, tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom

    series = write_series(tmp_path / "ct_series", _discs((40, 36, 5), seed=1), modality="MR")
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir()),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    out = tmp_path / "out"
    result = CliRunner().invoke(_cli(), ["predict", str(model), str(series), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels_image = nib.load(out / "masks" / "ct_series.nii.gz")
    np.testing.assert_allclose(labels_image.affine, volumes.read_volume(series).affine)
    labels = np.asarray(labels_image.dataobj)
    seg = pydicom.dcmread(out / "seg" / "ct_series.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in sources}
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    present = [c for c in range(1, 3) if (labels == c).any()]
    frames = sum(int((labels == c).any(axis=(0, 1)).sum()) for c in present) or 5
    assert int(seg.NumberOfFrames) == frames
    # Each source slice's label map read back through highdicom equals the NIfTI's slice
    # (the tiny model finds the bright discs: about 1,200 disk voxels).
    assert present
    if present:
        back = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
            combine_segments=True, skip_overlap_checks=True)
        np.testing.assert_array_equal(back, np.moveaxis(labels, 2, 0).swapaxes(1, 2))


def test_a_2d_prediction_on_a_displayed_slice_equals_the_volume_prediction(model, tmp_path):
    """A DICOM slice and a TIFF page exported as PNG (as pydicom and tifffile show them)
    and predicted as 2D images give the masks the volume predictions have on that slice:
    a model trained on exported slices sees the volume as it saw them."""
    import nibabel as nib
    import pydicom
    import tifffile
    from PIL import Image

    array = _discs((40, 36, 3), seed=2)                    # (columns, rows, slices)
    series = write_series(tmp_path / "ct_series", array, modality="MR")
    shown = next(ds for ds in map(pydicom.dcmread, series.iterdir()) if ds.InstanceNumber == 2)
    Image.fromarray(shown.pixel_array).save(tmp_path / "dicom_k1.png")
    pages = np.ascontiguousarray(_discs((36, 40, 3), seed=3).transpose(2, 0, 1))  # (Z, Y, X)
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    Image.fromarray(tifffile.imread(tmp_path / "stack.tif", key=2)).save(tmp_path / "tiff_k2.png")
    out = tmp_path / "out"
    predict_files(model, [tmp_path / "dicom_k1.png", series, tmp_path / "tiff_k2.png",
                          tmp_path / "stack.tif"], out, threads=2)
    for name, volume, k in (("dicom_k1", "ct_series", 1), ("tiff_k2", "stack", 2)):
        flat = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        labels = np.asarray(nib.load(out / "masks" / f"{volume}.nii.gz").dataobj)
        assert flat.shape == (36, 40) and flat.any()
        np.testing.assert_array_equal(labels[:, :, k].T, flat)


def _cli():
    from retinaunet_deploy.cli import cli

    return cli


# === 3D boxes: a stand-in detector that finds every object of a slice exactly ===

class ExactDetector:
    """Segments voxels > 0 as class 1 and boxes each grey value of a slice as one object
    (value = instance), score 0.9: the 2D detections of a perfect model."""

    card, stride, channels, batch_size = None, 16, 1, 4
    class_names, det_class_names = ("background", "sphere"), ("sphere",)

    def check_header(self, height, width, channels, dtype):
        assert channels == 1

    def fits_whole(self, height, width):
        return True

    def predict(self, batch):
        out = []
        for image in batch[..., 0]:
            boxes = []
            for value in np.unique(image[image > 0]):
                rows, cols = np.nonzero(image == value)
                boxes.append([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
            count = len(boxes)
            out.append(Prediction((image > 0).astype(np.uint8), Detections(
                np.asarray(boxes, np.float32).reshape(-1, 4), np.full(count, 0.9, np.float32),
                np.zeros(count, np.int32))))
        return out


def _touching_spheres():
    """Two spheres, voxel-face touching at one point (a 3D connected component of the mask
    is both): instance values 60 and 120."""
    shape = (34, 44, 26)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    a = (ii - 16) ** 2 + (jj - 14) ** 2 + (kk - 12) ** 2 <= 6 ** 2
    b = ((ii - 16) ** 2 + (jj - 27) ** 2 + (kk - 12) ** 2 < 7 ** 2) & ~a
    array = np.zeros(shape, np.uint8)
    array[a], array[b] = 60, 120
    return array, a, b


@pytest.mark.parametrize("axis", [2, 0])   # 0: a model trained on slices along i (card)
def test_touching_spheres_give_two_3d_boxes_at_their_true_extent(tmp_path, axis):
    from types import SimpleNamespace

    from scipy import ndimage

    array, a, b = _touching_spheres()
    assert ndimage.label(array > 0)[1] == 1     # the mask alone cannot tell them apart
    affine = np.array([[-0.7, 0, 0, 50.0], [0, 0.8, 0, -20.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "spheres.nii.gz", array, affine)
    predictor = ExactDetector()
    from retinaunet_deploy.data.volumes import SLICE_ORDER

    predictor.card = SimpleNamespace(data={"kind": "volumes", "axis": axis,
                                           "slice_order": SLICE_ORDER})
    item = plan_volume(path, "spheres", predictor)
    assert item.axis == axis
    with ResultWriter(tmp_path / "out", header={"artifact": "stand-in"}, resume=False) as writer:
        run_volumes(predictor, [item], writer, warn=pytest.fail)
        entry = writer.finish([item])[str(path)]
    boxes = entry["detections"]
    assert len(boxes) == 2, boxes
    spacing, origin = np.array([-0.7, 0.8, 2.0]), affine[:3, 3]
    got = sorted(boxes, key=lambda box: box["voxel_box"][1])
    for box, sphere in zip(got, (a, b)):
        index = np.argwhere(sphere)
        low, high = index.min(axis=0), index.max(axis=0) + 1
        assert box["voxel_box"] == [*map(float, low), *map(float, high)]
        assert box["slices"] == [int(low[axis]), int(high[axis]) - 1]
        ends = origin + np.stack([low - 0.5, high - 0.5]) * spacing      # voxel edges in mm
        np.testing.assert_allclose(box["world_box_mm"], [*ends.min(0), *ends.max(0)], atol=1e-3)
    document = json.loads((tmp_path / "out" / "detections" / "spheres.json").read_text())
    assert document["boxes_3d"] == boxes
    # Slice boxes are rows and columns of the displayed slice (axis 2: rows j, columns i;
    # axis 0: rows k, columns j), and the coordinates line says so.
    row, col = {2: (1, 0), 0: (2, 1)}[axis]
    for found in document["slice_detections"]:
        voxel = found["voxel_box"]
        assert found["box"] == [voxel[row], voxel[col], voxel[row + 3], voxel[col + 3]]
    assert f"rows along voxel axis {'ijk'[row]}, columns along {'ijk'[col]}" in \
        document["coordinates"]
    others = tuple(n for n in (0, 1, 2) if n != axis)
    assert len(document["slice_detections"]) == entry["slice_detections"] == \
        int(a.any(axis=others).sum() + b.any(axis=others).sum())


def test_resume_keeps_finished_volumes_and_redoes_damaged_ones(tmp_path):
    array, _, _ = _touching_spheres()
    paths = [write_nifti(tmp_path / "a.nii.gz", array),
             write_nifti(tmp_path / "b.nii", array[:, :, :20])]
    predictor = ExactDetector()

    def run(resume):
        items = [plan_volume(p, volumes.volume_stem(p), predictor) for p in paths]
        with ResultWriter(tmp_path / "out", header={"artifact": "x"}, resume=resume) as writer:
            todo = [item for item in items if not writer.is_done(item)]
            run_volumes(predictor, todo, writer, warn=pytest.fail)
            writer.finish(items)
        return [item.name for item in todo]

    assert run(False) == ["a", "b"]
    first = (tmp_path / "out" / "results.jsonl").read_bytes()
    assert run(True) == []
    (tmp_path / "out" / "detections" / "b.json").write_text("{}")
    assert run(True) == ["b"]
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == first


def test_bad_volumes_are_named_before_anything_is_written(model, tmp_path):
    four_d = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((20, 20, 3, 2), np.uint8))
    mixed = write_series(tmp_path / "mixed", np.zeros((20, 20, 2), np.uint8))
    write_series(tmp_path / "other", np.zeros((20, 20, 2), np.uint8), origin=(0, 0, 0))
    for n, path in enumerate(sorted((tmp_path / "other").iterdir())):
        shutil.move(path, mixed / f"B{n}.dcm")
    signed = write_nifti(tmp_path / "ct.nii.gz", np.zeros((20, 20, 3), np.int16))
    out = tmp_path / "out"
    with pytest.raises((DataError, InputError)) as error:
        predict_files(model, [four_d, mixed, signed], out, threads=2)
    text = str(error.value)
    assert "\n" not in text and text.startswith("3 of 3 images cannot be predicted")
    assert "fmri.nii.gz is a 4D NIfTI" in text and "holds 2 DICOM series" in text
    assert "ct.nii.gz: its slices along voxel axis 2 (20x20) cannot be predicted" in text
    assert not out.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("no slices here")
    with pytest.raises(InputError, match="notes is a folder without DICOM files; give"):
        predict_files(model, [tmp_path / "notes"], out, threads=2)
    small = write_nifti(tmp_path / "thin.nii.gz", np.zeros((20, 8, 3), np.uint8))
    with pytest.raises(InputError, match="thin.nii.gz: its slices .* \\(8x20\\).*smaller than"):
        predict_files(model, [small], out, threads=2)
    assert not out.exists()


def test_a_dicom_source_highdicom_cannot_reference_gets_its_nifti_and_a_warning(tmp_path):
    """pydicom's multi-frame RT dose grid: labels written as NIfTI, the SEG warned about."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("rtdose_rle.dcm"))
    predictor, warned = ExactDetector(), []
    item = plan_volume(path, "dose", predictor)
    with ResultWriter(tmp_path / "out", header={"artifact": "x"}, resume=False) as writer:
        run_volumes(predictor, [item], writer, warned.append)
        entry = writer.finish([item])[str(path)]
    assert sorted(entry["files"]) == ["detections/dose.json", "masks/dose.nii.gz"]
    assert len(warned) == 1 and "cannot write a DICOM SEG for" in warned[0]
    assert warned[0].endswith("its labels are in masks/dose.nii.gz only")
    assert not (tmp_path / "out" / "seg" / "dose.dcm").exists()
