"""TIFFs as microscopes, Fiji and scanners write them (issue 19, item 7).

Each file is written by tifffile with the compression, tiling and BigTIFF layout
a microscope uses, and must read back through `read_image` / `read_labels` (and
`probe_image`) with the pixels it holds: exactly for lossless codecs, within a
tolerance for JPEG, which is refused for label files. A codec this machine lacks
is one line naming the codec and the fix; files with more than one image, or
samples that are not an image's intensities, are refused with one line, never
read in part.
"""

import sys

import numpy as np
import pytest
import tifffile

from retinaunet_deploy.data import readers
from retinaunet_deploy.data.folder import load_folder_dataset
from retinaunet_deploy.errors import DataError

LOSSLESS = ["lzw", "adobe_deflate", "zstd", "packbits", None]
LAYOUTS = {"strips": {}, "tiled": {"tile": (16, 16)}, "bigtiff-tiled": {"tile": (16, 16),
                                                                         "bigtiff": True},
           "bigtiff": {"bigtiff": True}}


def _kinds():
    """8-bit grey, 16-bit grey and 8-bit RGB pixels of an odd size (37x45: tiles overhang)."""
    rng = np.random.default_rng(3)
    return {"grey8": rng.integers(0, 256, (37, 45), dtype=np.uint8),
            "grey16": rng.integers(0, 65536, (37, 45), dtype=np.uint16),
            "rgb8": rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)}


def _smooth(channels: int) -> np.ndarray:
    """A smooth 8-bit picture (what JPEG is meant for) of 40x48 pixels."""
    y, x = np.mgrid[:40, :48]
    grey = (120 + 50 * np.sin(y / 7) + 40 * np.cos(x / 9)).astype(np.uint8)  # 30..210
    return grey if channels == 1 else np.stack([grey, 255 - grey, grey // 2 + 40], -1)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("compression", LOSSLESS)
@pytest.mark.parametrize("kind", ["grey8", "grey16", "rgb8"])
def test_lossless_tiffs_read_exactly(tmp_path, kind, compression, layout):
    pixels = _kinds()[kind]
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, pixels, compression=compression, **LAYOUTS[layout])
    image = readers.read_image(path)
    expected = pixels.reshape(pixels.shape[:2] + (-1,))
    assert image.dtype == pixels.dtype
    np.testing.assert_array_equal(image, expected)
    header = readers.probe_image(path)
    assert (header.height, header.width, header.channels, header.dtype) == (
        *image.shape, image.dtype)
    metadata = readers.read_file(path)[1]
    assert metadata["tiled"] == ("tile" in LAYOUTS[layout])
    assert metadata["bigtiff"] == LAYOUTS[layout].get("bigtiff", False)
    assert metadata["lossy"] is False
    if kind != "rgb8":  # a grey file is also a label image, read exactly
        np.testing.assert_array_equal(readers.read_labels(path, "mask"), pixels)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["strips", "bigtiff-tiled"])
def test_jpeg_tiffs_read_within_tolerance_and_are_refused_as_labels(tmp_path, channels,
                                                                    layout):
    pixels = _smooth(channels)
    path = tmp_path / "j.tif"
    tifffile.imwrite(path, pixels, compression="jpeg", **LAYOUTS[layout])
    image = readers.read_image(path).astype(int)
    assert image.shape == pixels.shape[:2] + (channels,)
    error = np.abs(image - pixels.reshape(image.shape))
    assert error.mean() < 3 and error.max() <= 32   # a colour space misread is off by ~100
    assert readers.probe_image(path).channels == channels
    assert readers.read_file(path)[1]["lossy"] is True
    if channels == 1:
        with pytest.raises(DataError, match=r"^mask .*j\.tif is JPEG-compressed, which is lossy "
                                            r"and changes label values .*; save masks "
                                            r"uncompressed or with a lossless codec"):
            readers.read_labels(path, "mask")


def test_a_folder_of_compressed_tiffs_trains_as_written(tmp_path):
    """An LZW image with a zstd mask and deflate instances load as one sample, unchanged."""
    root = tmp_path / "data"
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True)
    image = _kinds()["grey16"][:32, :32]
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 5:15], mask[20:28, 18:30] = 1, 2
    instances = (mask > 0) * np.where(np.arange(32)[:, None] < 16, 1, 2).astype(np.uint16)
    tifffile.imwrite(root / "images" / "a.tif", image, compression="lzw", tile=(16, 16))
    tifffile.imwrite(root / "masks" / "a.tif", mask, compression="zstd")
    tifffile.imwrite(root / "instances" / "a.tif", instances, compression="adobe_deflate",
                     bigtiff=True)
    [sample] = load_folder_dataset(root)
    np.testing.assert_array_equal(sample.image[..., 0], image)
    np.testing.assert_array_equal(sample.mask, mask)
    np.testing.assert_array_equal(sample.instances, instances)


# === A codec this machine lacks ===

def _lzw_file(tmp_path):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, _kinds()["grey8"], compression="lzw")
    return path


def test_a_missing_codec_is_named_with_the_fix(tmp_path, monkeypatch):
    path = _lzw_file(tmp_path)
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {})   # this build has no codecs
    for read in (readers.read_image, readers.probe_image,
                 lambda p: readers.read_labels(p, "mask")):
        with pytest.raises(DataError, match=r"lzw\.tif is a TIFF compressed with LZW, which "
                                            r"imagecodecs .* cannot decode; run 'pip install "
                                            r"--upgrade imagecodecs' or re-save it"):
            read(path)


def test_a_missing_codec_package_says_install_it(tmp_path, monkeypatch):
    path = _lzw_file(tmp_path)
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {})
    monkeypatch.setitem(sys.modules, "imagecodecs", None)     # `import imagecodecs` fails
    with pytest.raises(DataError, match=r"lzw\.tif is a TIFF compressed with LZW, and the "
                                        r"codec package is not installed; run 'pip install "
                                        r"imagecodecs'"):
        readers.read_image(path)


# === What is read from a file that holds more than one plane ===

def test_a_stack_of_full_resolution_pages_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((4, 32, 32), np.uint16), photometric="minisblack")
    for read in (readers.read_image, readers.probe_image,
                 lambda p: readers.read_labels(p, "mask")):
        with pytest.raises(DataError, match=r"stack\.tif is a multi-page TIFF \(4 pages\); "
                                            r"save each 2D image as its own file"):
            read(path)


def test_two_images_in_one_file_are_refused(tmp_path):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(np.zeros((32, 32), np.uint8))
        writer.write(np.ones((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"two\.tif is a multi-page TIFF \(2 pages\)"):
        readers.read_image(path)


def test_a_thumbnail_page_is_left_out_and_counted(tmp_path):
    pixels = _kinds()["grey8"]
    path = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(pixels, compression="lzw")
        writer.write(pixels[::4, ::4], subfiletype=1)   # a reduced-resolution copy
    np.testing.assert_array_equal(readers.read_image(path)[..., 0], pixels)
    assert readers.read_file(path)[1]["reduced_pages"] == 1
    assert readers.probe_image(path).height == 37


def test_planar_rgb_reads_interleaved(tmp_path):
    pixels = _kinds()["rgb8"]
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(pixels, -1, 0), photometric="rgb",
                     planarconfig="separate", compression="zstd")
    np.testing.assert_array_equal(readers.read_image(path), pixels)
    assert readers.read_file(path)[1]["planar"] is True
    assert readers.probe_image(path).channels == 3


@pytest.mark.parametrize("pixels,options,expected", [
    (np.zeros((24, 24, 4), np.uint8), {"photometric": "rgb", "extrasamples": ["unassalpha"]},
     r"has 4 samples per pixel \(RGB \+ 1 extra sample\(s\), e\.g\. alpha\)"),
    (np.zeros((24, 24, 2), np.uint8), {"photometric": "minisblack", "planarconfig": "contig",
                                       "extrasamples": ["unspecified"]},
     r"has 2 samples per pixel \(grey \+ 1 extra sample\(s\), e\.g\. alpha\)"),
    (np.zeros((24, 24), np.uint8), {"photometric": "palette",
                                    "colormap": np.zeros((3, 256), np.uint16)},
     r"is a palette \(indexed-colour\) TIFF: its values are colour indices"),
    (np.zeros((24, 24, 4), np.uint8), {"photometric": "separated"},
     r"has TIFF photometric SEPARATED; save it as greyscale or RGB"),
    (np.zeros((24, 24), np.float32), {}, r"is float32; use 8/16-bit greyscale or 8-bit RGB"),
    (np.zeros((24, 24, 3), np.uint16), {"photometric": "rgb"},
     r"is uint16; use 8/16-bit greyscale or 8-bit RGB"),
])
def test_samples_that_are_not_an_image_are_refused(tmp_path, pixels, options, expected):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, pixels, **options)
    for read in (readers.read_image, readers.probe_image):
        with pytest.raises(DataError, match=r"odd\.tif " + expected):
            read(path)


def test_a_palette_mask_is_read_as_its_indices(tmp_path):
    indices = np.zeros((24, 24), np.uint8)
    indices[5:9, 5:9] = 2
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=np.zeros((3, 256),
                                                                              np.uint16))
    np.testing.assert_array_equal(readers.read_labels(path, "mask"), indices)


def test_miniswhite_is_read_as_stored(tmp_path):
    """An 'inverting LUT' is a display convention: the values are the data."""
    pixels = _kinds()["grey16"]
    path = tmp_path / "inverted.tif"
    tifffile.imwrite(path, pixels, photometric="miniswhite", compression="lzw")
    np.testing.assert_array_equal(readers.read_image(path)[..., 0], pixels)
    assert readers.read_file(path)[1]["photometric"] == "MINISWHITE"


def test_big_endian_tiffs_read_in_native_order(tmp_path):
    pixels = _kinds()["grey16"]
    path = tmp_path / "motorola.tif"
    tifffile.imwrite(path, pixels, byteorder=">", compression="adobe_deflate")
    image = readers.read_image(path)
    assert image.dtype == np.dtype(np.uint16)
    np.testing.assert_array_equal(image[..., 0], pixels)
    assert readers.probe_image(path).dtype == np.dtype(np.uint16)


def test_predict_takes_compressed_tiffs(tiny_exported, tmp_path):
    """Issue 19: LZW and JPEG TIFFs were refused by predict ("replace it with a valid TIFF")."""
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli
    from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples

    run_dir, _ = tiny_exported
    image = synthetic_samples(SyntheticConfig(size=64), 1, seed=1, split="test")[0].image
    tifffile.imwrite(tmp_path / "lzw.tif", image[..., 0], compression="lzw", tile=(32, 32))
    tifffile.imwrite(tmp_path / "jpeg.tif", image[..., 0], compression="jpeg", bigtiff=True)
    result = CliRunner().invoke(cli, ["predict", str(run_dir / "model.onnx"),
                                      str(tmp_path / "lzw.tif"), str(tmp_path / "jpeg.tif"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "lzw.tif" in result.output and "jpeg.tif" in result.output


@pytest.mark.parametrize("options", [{"ome": True}, {"imagej": True}, {}])
def test_a_truncated_stack_is_refused_not_read_as_its_first_page(tmp_path, capsys, options):
    """tifffile only logs pages past the end of the file and reads the pages before them:
    a 3-page stack cut in half read as one 2D image, and 3 log lines were printed."""
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.zeros((3, 64, 64), np.uint8), photometric="minisblack",
                     **options)
    path = tmp_path / "cut.tif"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for read in (readers.read_image, readers.probe_image):
        with pytest.raises(DataError, match=r"cut\.tif: it is truncated or damaged \(tifffile: "
                                            r".*invalid .* offset.*replace it with a valid"):
            read(path)
    assert "offset" not in capsys.readouterr().err
    from retinaunet_deploy.data.volumes import volume_readable

    assert volume_readable(path) is False    # a probe: the reader above says why
    assert "offset" not in capsys.readouterr().err
