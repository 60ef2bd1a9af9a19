"""The data registries: readers by suffix, sources by kind.

A new file format is one reader registration: a folder dataset of it then
lists, loads, splits and reads back through the normal path, and `predict`
reads it. A new source is one registration: training splits it and later
stages read its splits back from the card.
"""

import json

import numpy as np
import pytest
from PIL import Image

from retinaunet_deploy.card import InputSpec, ModelCard
from retinaunet_deploy.data import readers, sources
from retinaunet_deploy.data.folder import write_folder_dataset
from retinaunet_deploy.data.sample import Sample
from retinaunet_deploy.data.splits import held_out_set, load_split
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples
from retinaunet_deploy.errors import ConfigError, DataError
from retinaunet_deploy.train import TrainOptions, load_splits

# === A new format: .npy, registered in one place ===

def read_npy(path):
    """A NumPy array file; never unpickles."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; replace it with a valid .npy") from error
    return array, {"fortran_order": bool(np.isfortran(array))}


@pytest.fixture
def npy_reader(monkeypatch):
    """The one registration a new format needs (undone after the test)."""
    monkeypatch.setattr(readers, "READERS", dict(readers.READERS))
    readers.register_reader(readers.Reader("NPY", (".npy",), read_npy))


def _card(data: dict) -> ModelCard:
    """A card whose only real section is the data block (what the split readers use)."""
    return ModelCard(builder={}, class_names=("background", "object"),
                     input=InputSpec(channels=1, stride=16, patch_size=64), data=data)


def _npy_folder(root, samples):
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True)
    for sample in samples:
        stem = sample.name.removesuffix(".png")
        np.save(root / "images" / f"{stem}.npy", sample.image[..., 0])
        np.save(root / "masks" / f"{stem}.npy", sample.mask)
        np.save(root / "instances" / f"{stem}.npy", sample.instances.astype(np.uint16))
    return root


def test_a_registered_format_loads_splits_and_reads_back(npy_reader, tmp_path):
    samples = synthetic_samples(SyntheticConfig(size=32), 6, seed=5)
    root = _npy_folder(tmp_path / "npy", samples)
    splits = load_splits(TrainOptions(data=str(root), seed=2))
    data = splits.description
    assert data["kind"] == "folder" and data["instances"]
    loaded = splits.train + splits.val + splits.test
    assert sorted(s.name for s in loaded) == sorted(s.name.replace(".png", ".npy")
                                                    for s in samples)
    by_name = {s.name.replace(".png", ".npy"): s for s in samples}
    for sample in loaded:
        original = by_name[sample.name]
        np.testing.assert_array_equal(sample.image, original.image)
        np.testing.assert_array_equal(sample.mask, original.mask)
        np.testing.assert_array_equal(sample.instances, original.instances)
    card = _card(data)
    assert [s.name for s in load_split(card, "test")] == [n for n, _ in data["splits"]["test"]]
    assert len(held_out_set(card, 10, "val")) == len(splits.val)
    array, metadata = readers.read_file(root / "images" / loaded[0].name)
    assert metadata["format"] == "NPY" and metadata["suffix"] == ".npy"
    assert metadata["dtype"] == "uint8" and metadata["shape"] == array.shape
    assert "fortran_order" in metadata
    # The registered reader's image check applies: a float array is refused, named.
    np.save(tmp_path / "float.npy", np.zeros((32, 32), np.float32))
    with pytest.raises(DataError, match=r"float\.npy is float32; use 8/16-bit greyscale"):
        readers.read_image(tmp_path / "float.npy")
    # Errors name the registered formats.
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="no PNG, TIFF or NPY images in"):
        load_splits(TrainOptions(data=str(tmp_path / "empty")))


def test_without_the_registration_the_format_is_not_listed(tmp_path):
    root = _npy_folder(tmp_path / "npy", synthetic_samples(SyntheticConfig(size=32), 3, seed=5))
    with pytest.raises(DataError, match="no PNG or TIFF images in"):
        load_splits(TrainOptions(data=str(root)))


def test_predict_reads_a_registered_format(npy_reader, tiny_exported, tmp_path):
    from retinaunet_deploy.predict import predict_files

    image = synthetic_samples(SyntheticConfig(size=64), 1, seed=1, split="test")[0].image
    np.save(tmp_path / "a.npy", image[..., 0])
    results = predict_files(tiny_exported[0] / "model.onnx", [tmp_path / "a.npy"],
                            tmp_path / "out")
    entry = results[str(tmp_path / "a.npy")]
    assert entry["size"] == list(image.shape[:2])
    assert np.asarray(Image.open(tmp_path / "out" / entry["mask"])).shape == image.shape[:2]
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert str(tmp_path / "a.npy") in written["images"]


# === The built-in readers' metadata ===

def test_png_and_tiff_readers_report_what_they_know(tmp_path):
    import tifffile

    Image.fromarray(np.zeros((20, 30), np.uint16)).save(tmp_path / "a.png")
    array, metadata = readers.read_file(tmp_path / "a.png")
    assert metadata["format"] == "PNG" and metadata["suffix"] == ".png"
    assert metadata["mode"].startswith("I;16") and metadata["shape"] == array.shape == (20, 30)
    assert readers.read_image(tmp_path / "a.png").dtype == np.uint16
    tifffile.imwrite(tmp_path / "b.TIFF", np.zeros((20, 30, 3), np.uint8))
    array, metadata = readers.read_file(tmp_path / "b.TIFF")
    assert metadata["shape"] == array.shape == (20, 30, 3)
    assert metadata["format"] == "TIFF" and metadata["suffix"] == ".tiff"
    assert metadata["pages"] == 1 and metadata["dtype"] == "uint8"
    assert readers.read_image(tmp_path / "b.TIFF").shape == (20, 30, 3)
    assert readers.stem_of(tmp_path / "b.TIFF") == "b"


def test_png_mode_is_checked_for_images_not_for_labels(tmp_path):
    palette = Image.fromarray(np.eye(32, dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    with pytest.raises(DataError, match=r"p\.png has PNG mode 'P'; use 8/16-bit greyscale"):
        readers.read_image(tmp_path / "p.png")
    assert readers.read_labels(tmp_path / "p.png", "mask").shape == (32, 32)


def test_an_unregistered_suffix_is_read_by_pillow_as_before(tmp_path):
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(tmp_path / "a.bmp")
    assert readers.reader_for(tmp_path / "a.bmp").format == "PNG"
    assert readers.read_image(tmp_path / "a.bmp")[0, 0, 0] == 7
    assert not readers.readable(tmp_path / "a.bmp")   # not listed in folder datasets


def test_a_multi_part_suffix_pairs_by_its_stem(monkeypatch, tmp_path):
    monkeypatch.setattr(readers, "READERS", dict(readers.READERS))
    readers.register_reader(readers.Reader("NPY-GZ", (".npy.gz",), read_npy))
    assert readers.suffix_of(tmp_path / "x.1.NPY.GZ") == ".npy.gz"
    assert readers.stem_of(tmp_path / "x.1.npy.gz") == "x.1"
    with pytest.raises(ValueError, match="lower-case"):
        readers.register_reader(readers.Reader("X", (".X",), read_npy))


# === Sources ===

def test_the_card_data_sections_are_as_recorded_before(tmp_path):
    options = TrainOptions(size=64, train_images=3, val_images=2, test_images=2, seed=4)
    splits = load_splits(options)
    assert splits.description == {"kind": "synthetic", "seed": 4,
                                  "config": SyntheticConfig(size=64).to_dict(),
                                  "instances": True,
                                  "counts": {"train": 3, "val": 2, "test": 2}}
    assert list(splits.description) == ["kind", "seed", "config", "instances", "counts"]
    assert splits.class_names == ["background", "disk", "ring"]
    write_folder_dataset(tmp_path, synthetic_samples(SyntheticConfig(size=32), 7, seed=1),
                         instances=False)
    data = load_splits(TrainOptions(data=str(tmp_path), seed=0)).description
    assert list(data) == ["kind", "path", "instances", "splits"]
    assert data["kind"] == "folder" and data["path"] == str(tmp_path.resolve())
    assert data["instances"] is False and list(data["splits"]) == ["train", "val", "test"]
    # The seeded shuffle of 7 names at seed 0 (15% / 15%): fixed forever.
    assert [len(data["splits"][s]) for s in ("train", "val", "test")] == [5, 1, 1]
    assert [n for n, _ in data["splits"]["val"]] == ["synthetic-train-00000.png"]
    assert [n for n, _ in data["splits"]["test"]] == ["synthetic-train-00001.png"]


def _constant_samples(split, count):
    return [Sample(f"{split}-{i}.png", np.full((32, 40, 1), 10 * i, np.uint8),
                   np.ones((32, 40), np.uint8), np.ones((32, 40), np.int32))
            for i in range(count)]


def test_a_registered_source_trains_and_reads_back(monkeypatch):
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))

    def split(options):
        parts = {name: _constant_samples(name, n) for name, n in
                 (("train", 3), ("val", 2), ("test", 2))}
        return sources.Splits(parts["train"], parts["val"], parts["test"],
                              ["background", "square"], {"kind": "constant", "counts": 2})

    sources.register_source(sources.Source(
        "constant", claims=lambda value: value == "constant", split=split,
        load=lambda data, name, count, min_size: _constant_samples(name, count or 2)))
    splits = load_splits(TrainOptions(data="constant"))
    assert len(splits.train) == 3 and splits.description["kind"] == "constant"
    card = _card(splits.description)
    assert [s.name for s in load_split(card, "test", 1)] == ["test-0.png"]
    assert len(held_out_set(card, 5, "val")) == 5      # no `make`: its recorded split
    assert sources.source_for("some/folder").kind == "folder"
    assert sources.source_for("synthetic").kind == "synthetic"


def test_unknown_kinds_and_values_are_refused(monkeypatch):
    with pytest.raises(DataError, match=r"the run's data is of kind 'volumes', which this "
                                        r"toolkit cannot read back"):
        load_split(_card({"kind": "volumes"}), "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(_card({"kind": "synthetic"}), "dev")
    monkeypatch.setattr(sources, "SOURCES", {})
    with pytest.raises(ConfigError, match="no dataset source takes --data 'x'"):
        sources.source_for("x")


def test_import_data_choices_come_from_the_registry():
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli

    assert sources.importable() == ("stardist-nuclei",)
    result = CliRunner().invoke(cli, ["import-data", "--help"])
    assert result.exit_code == 0 and "stardist-nuclei" in result.output
    result = CliRunner().invoke(cli, ["import-data", "nothing", "out"])
    assert result.exit_code == 2 and "'nothing' is not" in result.output
