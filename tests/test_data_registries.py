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
    with pytest.raises(DataError, match=r"the run's data is of kind 'holograms', which this "
                                        r"toolkit cannot read back"):
        load_split(_card({"kind": "holograms"}), "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(_card({"kind": "synthetic"}), "dev")
    monkeypatch.setattr(sources, "SOURCES", {})
    with pytest.raises(ConfigError, match="no dataset source takes --data 'x'"):
        sources.source_for("x")


def test_import_data_choices_come_from_the_registry():
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli

    assert sources.importable() == ("stardist-nuclei", "mni152-tissue")
    result = CliRunner().invoke(cli, ["import-data", "--help"])
    assert result.exit_code == 0 and "stardist-nuclei" in result.output
    result = CliRunner().invoke(cli, ["import-data", "nothing", "out"])
    assert result.exit_code == 2 and "'nothing' is not" in result.output


# === PNG files Pillow would reinterpret ===

def _raw_png(path, width, height, depth, colour, rows):
    """A PNG written byte by byte (Pillow cannot write 2-bit or 16-bit colour PNGs)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    data = zlib.compress(b"".join(b"\x00" + bytes(row) for row in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("colour,samples,kind", [(2, 3, "RGB"), (6, 4, "RGBA"),
                                                 (4, 2, "grey\\+alpha")])
def test_a_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path, colour, samples, kind):
    path = _raw_png(tmp_path / "deep.png", 2, 2, 16, colour, [[1, 2] * samples * 2] * 2)
    for read in (readers.read_image, readers.probe_image,
                 lambda p: readers.read_labels(p, "mask")):
        with pytest.raises(DataError, match=rf"deep\.png is a 16-bit {kind} PNG, which would "
                                            rf"be read as 8 bits \(the low byte dropped\)"):
            read(path)


@pytest.mark.parametrize("depth,packed,values", [(2, [0b00011011], [0, 1, 2, 3]),
                                                 (4, [0x0F, 0x5A], [0, 15, 5, 10])])
def test_a_low_bit_depth_png_keeps_its_class_values(tmp_path, depth, packed, values):
    """Pillow scales 2/4-bit grey to 0..255; a mask's classes must stay 0..3 / 0..15."""
    path = _raw_png(tmp_path / "low.png", 4, 1, depth, 0, [packed])
    assert readers.read_labels(path, "mask").tolist() == [values]
    scale = 255 // (2 ** depth - 1)   # an image is shown as PNG viewers show it
    assert readers.read_image(path)[..., 0].tolist() == [[v * scale for v in values]]
    assert readers.read_file(path)[1]["bit_depth"] == depth


def test_alpha_is_refused_by_name_not_dropped(tmp_path):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(np.zeros((8, 8, 2), np.uint8), mode="LA").save(tmp_path / "la.png")
    for name, note in (("rgba", "RGB with alpha"), ("la", "grey with alpha")):
        for read in (readers.read_image, readers.probe_image):
            with pytest.raises(DataError, match=rf"{name}\.png has PNG mode '\w+' \({note}\); "
                                                rf"use 8/16-bit greyscale or 8-bit RGB"):
                read(tmp_path / f"{name}.png")


def test_a_decompression_bomb_names_a_way_round(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # 64x64 > 2 x 1000: an error
    with pytest.raises(DataError, match=r"big\.png is refused as a possible decompression "
                                        r"bomb .*save it as TIFF \(no such limit\)"):
        readers.read_image(tmp_path / "big.png")


# === probe_image: the header without the pixels ===

def _every_kind(folder):
    """One file of every kind read_image takes, and what read_image returns for it."""
    import tifffile

    rng = np.random.default_rng(4)
    grey8 = rng.integers(0, 256, (21, 34), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (21, 34), dtype=np.uint16)
    rgb = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    Image.fromarray(grey8).save(folder / "grey8.png")
    Image.fromarray(grey16).save(folder / "grey16.png")
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(grey8).save(folder / "grey8.bmp")           # Pillow's fallback
    _raw_png(folder / "grey2.png", 4, 1, 2, 0, [[0b00011011]])
    tifffile.imwrite(folder / "grey8.tif", grey8, compression="lzw")
    tifffile.imwrite(folder / "grey16.tiff", grey16, tile=(16, 16), bigtiff=True)
    tifffile.imwrite(folder / "rgb.tif", rgb, compression="zstd")
    tifffile.imwrite(folder / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    tifffile.imwrite(folder / "column.tif", grey8[..., :1], photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(folder / "jpeg.tif", rgb, compression="jpeg")
    return sorted(folder.iterdir())


def test_probe_agrees_with_read_image_on_every_kind(tmp_path):
    paths = _every_kind(tmp_path)
    assert len(paths) == 11
    for path in paths:
        image = readers.read_image(path)
        header = readers.probe_image(path)
        assert header == readers.ImageHeader(path, *image.shape, image.dtype,
                                             readers.reader_for(path).format), path


@pytest.mark.parametrize("make", [
    lambda p: Image.fromarray(np.eye(8, dtype=np.uint8)).convert("P").save(p / "x.png"),
    lambda p: Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(p / "x.png"),
    lambda p: Image.fromarray(np.zeros((8, 8), np.float32)).save(p / "x.tif"),
    lambda p: Image.fromarray(np.zeros((8, 8), bool)).save(p / "x.png"),
    lambda p: _raw_png(p / "x.png", 1, 1, 16, 2, [[1, 2, 3, 4, 5, 6]]),
    lambda p: __import__("tifffile").imwrite(p / "x.tif", np.zeros((8, 8), np.int16)),
    lambda p: __import__("tifffile").imwrite(p / "x.tif", np.zeros((8, 8, 3), np.uint16),
                                             photometric="rgb"),
    lambda p: __import__("tifffile").imwrite(p / "x.tif", np.zeros((2, 8, 8), np.uint8),
                                             photometric="minisblack"),
    lambda p: __import__("tifffile").imwrite(p / "x.tif", np.zeros((8, 8, 5), np.uint8),
                                             photometric="minisblack", planarconfig="contig"),
    lambda p: (p / "x.png").write_bytes(b"not an image at all"),
])
def test_probe_refuses_what_read_image_refuses_with_the_same_line(tmp_path, make):
    make(tmp_path)
    [path] = list(tmp_path.iterdir())
    with pytest.raises(DataError) as read:
        readers.read_image(path)
    with pytest.raises(DataError) as probed:
        readers.probe_image(path)
    assert str(probed.value) == str(read.value)


def test_probe_decodes_no_pixels(tmp_path, monkeypatch):
    """A file whose pixel data is cut off probes fine: read errors come at read time."""
    import tifffile

    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert readers.probe_image(tmp_path / "cut.png") == readers.ImageHeader(
        tmp_path / "cut.png", 64, 64, 1, np.dtype(np.uint8), "PNG")
    with pytest.raises(DataError, match=r"cannot read .*cut\.png: .*replace it with a valid"):
        readers.read_image(tmp_path / "cut.png")
    # A TIFF's pixels are not touched either: decoding them would fail here.
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 30), np.uint16), compression="lzw")

    def no_decoding(*args, **kwargs):
        raise AssertionError("probe_image decoded pixels")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    assert readers.probe_image(tmp_path / "a.tif").height == 40
    assert readers.probe_image(tmp_path / "a.png").width == 64


def test_a_reader_without_a_probe_is_read_in_full(npy_reader, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((12, 20, 3), np.uint8))
    assert readers.probe_image(tmp_path / "a.npy") == readers.ImageHeader(
        tmp_path / "a.npy", 12, 20, 3, np.dtype(np.uint8), "NPY")


def test_boxes_from_mask_refuses_values_outside_its_classes():
    from retinaunet_deploy.data.sample import boxes_from_mask

    mask = np.zeros((10, 10), np.uint8)
    mask[2:4, 2:4], mask[6:8, 6:8] = 1, 255
    with pytest.raises(DataError, match=r"the mask has value\(s\) \[255\] outside the 3 "
                                        r"classes 0\.\.2; fix the mask"):
        boxes_from_mask(mask, 3)
    assert len(boxes_from_mask(np.minimum(mask, 1), 3)[0]) == 2


def test_a_file_of_several_frames_is_refused_not_cut_to_its_first(tmp_path):
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    for read in (readers.read_image, readers.probe_image,
                 lambda p: readers.read_labels(p, "mask")):
        with pytest.raises(DataError, match=r"anim\.png holds 2 frames \(an animation or a "
                                            r"stack\); save each image as its own file"):
            read(tmp_path / "anim.png")


def test_a_colour_mask_with_equal_channels_says_save_it_as_greyscale(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"mask .*m\.png is uint8 of shape \(8, 8, 3\); masks "
                                        r"must be single-channel integer label images; its "
                                        r"channels are equal: save it as greyscale"):
        readers.read_labels(tmp_path / "m.png", "mask")
