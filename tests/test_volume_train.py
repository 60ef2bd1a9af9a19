"""Issue 21, items 3 and 6 (MNI152) and the volume half of item 7: training on volumes.

A volume dataset (``images/`` and ``masks/`` of NIfTI volumes) trains a 2D model on
slices along ``--axis``; splits are per volume (slabs for a single volume), recorded
with hashes; every figure states volumes and slices; calibrate and bench take it.
Tiny synthetic CT-like volumes (int16 HU), a tiny model.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from retinaunet_deploy.errors import ConfigError, DataError

AFFINE = np.array([[0.8, 0, 0, -20], [0, 0.8, 0, -16], [0, 0, 2.5, 40], [0, 0, 0, 1.0]])


def _ct_volume(seed: int, shape=(48, 40, 10)):
    """An int16 CT-like volume (air -1000 HU, body ~0 HU, noise) with two ellipsoids of
    60 HU (class 1) and 300 HU (class 2); its uint8 label volume."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    (a, b, c) = (n / 2 for n in shape)
    body = ((i - a) / (0.9 * a)) ** 2 + ((j - b) / (0.9 * b)) ** 2 < 1
    hu = np.where(body, rng.normal(0, 20, shape), -1000 + rng.normal(0, 5, shape))
    mask = np.zeros(shape, np.uint8)
    for label, value in ((1, 60), (2, 300)):
        ci, cj, ck = (rng.uniform(0.5 * n, 1.5 * n) for n in (a, b, c))
        inside = (((i - ci) / 7) ** 2 + ((j - cj) / 6) ** 2 + ((k - ck) / 2.5) ** 2) < 1
        hu[inside] = value + rng.normal(0, 10, inside.sum())
        mask[inside] = label
    return hu.astype(np.int16), mask


def _save(path, array, affine=AFFINE):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _dataset(root, volumes=4, shape=(48, 40, 10)):
    for n in range(volumes):
        hu, mask = _ct_volume(n, shape)
        _save(root / "images" / f"case{n}.nii.gz", hu)
        _save(root / "masks" / f"case{n}.nii.gz", mask)
    return root


def test_splits_are_per_volume_recorded_with_hashes_and_counted(tmp_path):
    from retinaunet_deploy.data.sources import source_for
    from retinaunet_deploy.data.volume_source import load_volumes
    from retinaunet_deploy.train import TrainOptions

    root = _dataset(tmp_path / "ct")
    options = TrainOptions(data=str(root), size=32, val_fraction=0.25, test_fraction=0.25)
    assert source_for(options.data).kind == "volumes"
    splits = source_for(options.data).split(options)
    data = splits.description
    volumes = {split: {name for name, _, _ in data["splits"][split]}
               for split in ("train", "val", "test")}
    assert data["split_by"] == "volume" and data["axis"] == 2 and data["dtype"] == "int16"
    from retinaunet_deploy.predict.volumes import slice_order_warning

    assert slice_order_warning(SimpleNamespace(data=data)) is None    # cut as predict cuts
    old_run = {k: v for k, v in data.items() if k != "slice_order"}
    assert "retrain it" in slice_order_warning(SimpleNamespace(data=old_run))
    assert slice_order_warning(SimpleNamespace(data={"kind": "synthetic"})) is None
    assert sum(map(len, volumes.values())) == 4 and not (volumes["train"] & volumes["test"])
    assert not (volumes["train"] & volumes["val"]) and not (volumes["val"] & volumes["test"])
    # Every slice of a volume is in its volume's split, never in another.
    for split in ("train", "val", "test"):
        samples = getattr(splits, split)
        assert {s.name.rsplit(".", 1)[0] for s in samples} == volumes[split]
        assert data["counts"][split] == {"volumes": len(volumes[split]),
                                         "slices": 10 * len(volumes[split])}
        assert all(s.image.shape == (40, 48, 1) and s.image.dtype == np.int16 for s in samples)
    assert splits.class_names == ["background", "class_1", "class_2"]
    # Read back exactly; a changed volume is refused, naming it.
    back = load_volumes(data, "test", None, 16)
    assert [s.name for s in back] == [s.name for s in splits.test]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(back, splits.test))
    hu, _ = _ct_volume(99)
    _save(root / "images" / "case0.nii.gz", hu)
    with pytest.raises(DataError, match=r"case0\.nii\.gz \(or its mask\) changed since"):
        load_volumes(data, "train", None, 16)


def test_one_volume_splits_in_slabs_and_no_held_out_slice_trains(tmp_path):
    from retinaunet_deploy.data.sources import source_for
    from retinaunet_deploy.data.volume_source import GAP_SLICES, slab_ranges
    from retinaunet_deploy.train import TrainOptions

    ranges = slab_ranges(100, seed=0, val_fraction=0.15, test_fraction=0.15)
    owner = {}
    for split, spans in ranges.items():
        for start, stop in spans:
            for index in range(start, stop):
                assert index not in owner            # disjoint
                owner[index] = split
    assert {"train", "val", "test"} == set(owner.values())
    for a, split_a in owner.items():   # a slice of another split is > GAP_SLICES away
        for b, split_b in owner.items():
            if split_a != split_b:
                assert abs(a - b) > GAP_SLICES
    root = _dataset(tmp_path / "one", volumes=1, shape=(32, 32, 40))
    splits = source_for(str(root)).split(TrainOptions(data=str(root), size=32))
    assert splits.description["split_by"] == "slab"
    names = {split: {s.name for s in getattr(splits, split)} for split in ("train", "test")}
    assert names["test"] and not names["train"] & names["test"]
    with pytest.raises(DataError, match="fewer than 3 slabs"):
        slab_ranges(16, 0, 0.15, 0.15)


def test_axis_chooses_the_slices_and_is_refused_for_2d_data(tmp_path):
    from retinaunet_deploy.data.sources import source_for
    from retinaunet_deploy.train import TrainOptions, load_splits

    cube = _dataset(tmp_path / "cube", volumes=3, shape=(32, 24, 20))
    splits = source_for(str(cube)).split(TrainOptions(data=str(cube), size=32, axis=0))
    assert splits.description["axis"] == 0 and splits.train[0].name.endswith(".i000")
    assert splits.train[0].image.shape == (20, 24, 1)     # rows k, columns j
    assert splits.description["counts"]["test"] == {"volumes": 1, "slices": 32}
    flat = _dataset(tmp_path / "flat", volumes=3)            # 48 x 40 x 10
    with pytest.raises(DataError, match="along axis 0 are 10x40, smaller than one network"):
        source_for(str(flat)).split(TrainOptions(data=str(flat), size=32, axis=0))
    with pytest.raises(ConfigError, match="--axis applies to volume datasets"):
        load_splits(TrainOptions(data="synthetic", axis=1))
    with pytest.raises(ConfigError, match="--axis must be 0, 1 or 2"):
        TrainOptions(data=str(cube), axis=3)


def test_a_mask_of_another_shape_or_affine_or_non_integer_is_refused(tmp_path):
    from retinaunet_deploy.data.sources import source_for
    from retinaunet_deploy.train import TrainOptions

    root = _dataset(tmp_path / "ct", volumes=3)
    mask = root / "masks" / "case1.nii.gz"
    options = TrainOptions(data=str(root), size=32)
    _, labels = _ct_volume(1)
    for array, affine, message in (
            (labels[:, :, :9], AFFINE, r"mask .*case1\.nii\.gz has shape \(48, 40, 9\)"),
            (labels, AFFINE * [[1], [1], [1.2], [1]], r"case1\.nii\.gz has another affine"),
            (labels.astype(np.float32) + 0.5, AFFINE, "non-integer values")):
        _save(mask, array, affine)
        with pytest.raises(DataError, match=message) as error:
            source_for(str(root)).split(options)
        assert "\n" not in str(error.value)
    mask.unlink()
    with pytest.raises(DataError, match=r"case1\.nii\.gz has no mask volume"):
        source_for(str(root)).split(options)


def test_mni152_tissue_labels_and_import(tmp_path):
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli
    from retinaunet_deploy.data.mni152 import THRESHOLD, tissue_labels
    from retinaunet_deploy.data.volumes import read_volume

    gm = np.array([0.9, 0.3, 0.2, 0.45])
    wm = np.array([0.05, 0.6, 0.1, 0.5])
    assert tissue_labels(gm, wm).tolist() == [1, 2, 0, 2] and THRESHOLD == 0.5
    result = CliRunner().invoke(cli, ["import-data", "mni152-tissue", str(tmp_path / "mni")])
    assert result.exit_code == 0, result.output
    assert "197x233x189" in result.output
    image = read_volume(tmp_path / "mni" / "images" / "mni152.nii.gz")
    labels = read_volume(tmp_path / "mni" / "masks" / "mni152.nii.gz")
    assert image.shape == labels.shape == (197, 233, 189) and image.array.dtype == np.float32
    assert np.allclose(image.affine, labels.affine) and np.allclose(image.spacing, 1.0)
    assert np.allclose(image.affine[:3, 3], [-98, -134, -72])
    assert set(np.unique(labels.array)) == {0, 1, 2}
    assert json.loads((tmp_path / "mni" / "classes.json").read_text())[1] == "grey_matter"
    assert "Louis Collins" in (tmp_path / "mni" / "TERMS.txt").read_text()


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    """A tiny model (no heads) trained on 4 synthetic CT volumes with --normalization ct,
    exported: (run_dir, card)."""
    from retinaunet_deploy.export.onnx import export_onnx
    from retinaunet_deploy.train import TrainOptions, train

    root = _dataset(tmp_path_factory.mktemp("ct_volumes") / "ct")
    out = tmp_path_factory.mktemp("ct_run") / "run"
    card = train(TrainOptions(data=str(root), preset="tiny", size=32, epochs=2,
                              steps_per_epoch=5, batch_size=4, detection=False,
                              val_fraction=0.25, test_fraction=0.25, normalization="ct"),
                 out, verbose=0)
    export_onnx(out)
    return out, card


def test_a_ct_run_records_its_normalisation_and_counts_volumes_and_slices(ct_run):
    from retinaunet_deploy.data.splits import calibration_images, load_split
    from retinaunet_deploy.runtime import Predictor

    run, card = ct_run
    norm = card.normalization
    assert norm.scheme == "ct" and not norm.in_graph and card.input.pixel_dtype == "int16"
    assert -100 < norm.clip_low < norm.mean < norm.clip_high < 400   # foreground HU only
    assert card.evaluation["volumes"] == 1 and card.evaluation["slices"] == 10
    assert card.training["volumes_and_slices"]["train"] == {"volumes": 2, "slices": 20}
    # The calibration patches are normalised values, not raw HU (air is clipped).
    calib = calibration_images(card, 8)
    assert calib.min() >= (norm.clip_low - norm.mean) / norm.std - 1e-4
    assert calib.max() <= (norm.clip_high - norm.mean) / norm.std + 1e-4
    # Every runtime takes raw HU through the card's normalisation.
    test = load_split(card, "test")
    masks = {}
    for artifact in ("model.keras", "model.onnx"):
        with Predictor.from_artifact(run / artifact) as predictor:
            masks[artifact] = [p.mask for p in predictor.predict([s.image for s in test])]
    agree = np.mean([np.mean(a == b) for a, b in zip(*masks.values())])
    assert agree > 0.99


def test_calibrate_and_bench_take_a_volume_run(ct_run, tmp_path):
    import shutil

    from retinaunet_deploy.bench.harness import BenchOptions, run_bench
    from retinaunet_deploy.export.calibration import CalibrationOptions, calibrate

    run = tmp_path / "run"
    shutil.copytree(ct_run[0], run)
    report = calibrate(run, CalibrationOptions.from_flat(
        calibration_images=8, eval_images=10, threads=2, fallback=False, cpu_variant=False,
        openvino=False, tflite=False, pixel_agreement=0.5, mean_dice=0.0), fp16=False)
    assert report["evaluation"]["volumes"] == 1 and report["evaluation"]["slices"] == 10
    assert report["calibration_data"]["drawn_from"] == {"volumes": 2, "slices": 20}
    assert report["calibration_data"]["intensity"]["normalization"]["scheme"] == "ct"
    bench = run_bench(run, tmp_path / "bench", BenchOptions(
        images=4, batch_sizes=(1,), rounds=1, min_seconds=0.0, peak=False,
        backends=("keras", "onnxruntime"), overlay_images=1))
    assert (bench["volumes"], bench["slices"]) == (1, 4)
    assert "4 slices of 1 volume(s)" in (tmp_path / "bench" / "report.md").read_text()


def test_train_options_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--normalization", "minmax", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'minmax' is not one of" in result.output
    result = runner.invoke(cli, ["train", "--axis", "3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--axis" in result.output
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "--axis" in help_text and "zscore" in help_text
