"""Whole-slide images (issue 21, item 5): pyramidal TIFF / OME-TIFF read lazily (SubIFDs
and successive pages), OpenSlide formats, --level / --mpp, Otsu tissue, the streamed
slide prediction against the Predictor on the whole level, the QuPath GeoJSON and the
label OME-TIFF pyramid, resume, and the bad slides (one line each, nothing written)."""

import json
import shutil

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from retinaunet_deploy.cli import cli
from retinaunet_deploy.data.slides import choose_level, open_slide, slide_kind
from retinaunet_deploy.data.slides.synthetic import GLASS, write_synthetic_slide
from retinaunet_deploy.data.slides.tissue import find_tissue, otsu_threshold
from retinaunet_deploy.errors import DataError

HEIGHT, WIDTH = 900, 700


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """The same small synthetic slide (2 regions of 256 px) as a SubIFD OME-TIFF with a
    pixel size, and as a pages pyramid without one: (ome path, pages path, regions)."""
    folder = tmp_path_factory.mktemp("slides")
    ome, pages = folder / "sub.ome.tif", folder / "pages.tif"
    regions = write_synthetic_slide(ome, HEIGHT, WIDTH, regions=2, region=256, tile=256,
                                    mpp=0.5)
    write_synthetic_slide(pages, HEIGHT, WIDTH, regions=2, region=256, tile=256,
                          pyramid="pages", mpp=None)
    return ome, pages, regions


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """A slide whose objects are twice the size the model was trained on, so that its
    level 1 looks like the training images: (path, regions)."""
    path = tmp_path_factory.mktemp("coarse") / "coarse.ome.tif"
    return path, write_synthetic_slide(path, 1400, 1200, regions=2, region=384, tile=256,
                                       mpp=0.5, patch=128, seed=1)


@pytest.fixture(scope="module")
def model(tiny_exported):
    return tiny_exported[0] / "model.onnx"


# === Reading ===

def test_subifd_and_page_pyramids_read_alike_and_lazily(slides):
    ome, pages, regions = slides
    with open_slide(ome) as a, open_slide(pages) as b:
        assert (a.format, b.format) == ("OME-TIFF", "TIFF")
        assert [(lv.height, lv.width) for lv in a.levels] == [(900, 700), (450, 350), (225, 175)]
        assert a.levels == b.levels and a.levels[1].downsample == (2.0, 2.0)
        assert a.mpp == (0.5, 0.5) and a.level_mpp(2) == (2.0, 2.0) and b.mpp is None
        for region in regions:
            top, left = region.top, region.left
            expected = region.image[3:103, 5:125]
            np.testing.assert_array_equal(a.read(0, top + 3, left + 5, 100, 120)[..., 0],
                                          expected)
            np.testing.assert_array_equal(b.read(0, top + 3, left + 5, 100, 120)[..., 0],
                                          expected)
        # Level 1 is level 0 subsampled by 2 (nearest), in both layouts.
        np.testing.assert_array_equal(a.read(1, 0, 0, 450, 350), b.read(1, 0, 0, 450, 350))
        assert a.read(1, 0, 0, 1, 1)[0, 0, 0] == a.read(0, 0, 0, 1, 1)[0, 0, 0]
        with pytest.raises(DataError, match=r"outside level 1 \(450x350\)"):
            a.read(1, 400, 0, 100, 10)


def test_plain_tiffs_stay_images(tmp_path, slides):
    """A stripped TIFF with a thumbnail page and a tiled one-level TIFF are images, as
    before; only a tiled pyramid is a slide."""
    from retinaunet_deploy.predict.plan import InputItem, plan_inputs
    from retinaunet_deploy.predict.slides import SlideItem

    pixels = np.random.default_rng(0).integers(0, 255, (96, 80), np.uint8)
    thumb, tiled = tmp_path / "thumb.tif", tmp_path / "tiled.tif"
    with tifffile.TiffWriter(thumb) as writer:
        writer.write(pixels, compression="lzw")
        writer.write(pixels[::4, ::4], subfiletype=1)
    tifffile.imwrite(tiled, pixels, tile=(32, 32))
    assert slide_kind(thumb) is None and slide_kind(tiled) is None
    assert slide_kind(slides[0]) == slide_kind(slides[1]) == "tiff"

    class Contract:   # the header check of a 1-channel uint8 model
        stride = 16

        def check_header(self, height, width, channels, dtype):
            assert channels == 1 and np.dtype(dtype) == np.uint8

    items = plan_inputs([thumb, tiled, slides[1]], Contract())
    assert [type(i) for i in items] == [InputItem, InputItem, SlideItem]
    assert (items[0].height, items[0].width) == (96, 80) and items[2].level == 0


def test_openslide_reads_vendor_files_and_generic_pyramids(tmp_path):
    """OpenSlide's reader (RGBA over white -> RGB) reads what tifffile reads; a file of a
    vendor suffix goes to OpenSlide."""
    from retinaunet_deploy.data.slides.openslide_slide import OpenSlideSlide
    from retinaunet_deploy.data.slides.tiff_slide import TiffSlide

    rgb = np.random.default_rng(1).integers(0, 255, (300, 260, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(rgb, tile=(64, 64), photometric="rgb")
        writer.write(rgb[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    vendor = tmp_path / "scan.svs"
    shutil.copy(path, vendor)
    assert slide_kind(vendor) == "openslide"
    with OpenSlideSlide(path) as a, TiffSlide(path) as b:
        assert a.levels == b.levels and a.channels == b.channels == 3
        np.testing.assert_array_equal(a.read(1, 10, 20, 50, 40), b.read(1, 10, 20, 50, 40))
        np.testing.assert_array_equal(a.read(0, 0, 0, 300, 260), rgb)


def test_level_and_mpp_choice(slides):
    ome, pages, _ = slides
    with open_slide(ome) as slide:
        assert choose_level(slide) == 0 and choose_level(slide, level=2) == 2
        assert choose_level(slide, mpp=1.0) == 1 and choose_level(slide, mpp=1.9) == 2
        with pytest.raises(DataError, match=r"has no level within 10% of 1.4 um/px \(levels "
                                            r"0: 900x700 at 0.5 um/px, 1: 450x350 at 1 um/px"):
            choose_level(slide, mpp=1.4)
        with pytest.raises(DataError, match=r"sub\.ome\.tif has no level 3: it has 3 level\(s\) "
                                            r"\(0: 900x700 .*choose --level 0\.\.2$"):
            choose_level(slide, level=3)
    with open_slide(pages) as slide, pytest.raises(
            DataError, match=r"pages\.tif records no pixel size .*--mpp 0\.5 cannot be found; "
                             r"choose a level with --level"):
        choose_level(slide, mpp=0.5)


def test_tissue_is_found_by_otsu_on_a_low_resolution_level(slides):
    values = np.concatenate([np.full(900, 20.0), np.full(100, 200.0)])
    assert 20 < otsu_threshold(values) <= 200
    assert otsu_threshold(np.full(10, 7.0)) is None
    ome, _, regions = slides
    with open_slide(ome) as slide:
        tissue = find_tissue(slide)
    assert tissue.dark_background and GLASS < tissue.threshold
    for region in regions:   # every region is tissue, and the glass far from them is not
        assert tissue.has_tissue(region.top + 100, region.left + 100, region.top + 120,
                                 region.left + 120)
    assert tissue.fraction < 0.5
    free = [(y, x) for y in range(0, HEIGHT - 64, 32) for x in range(0, WIDTH - 64, 32)
            if not any(r.top - 40 < y + 32 and y < r.top + 296 and r.left - 40 < x + 32
                       and x < r.left + 296 for r in regions)]
    assert free and not any(tissue.has_tissue(y, x, y + 32, x + 32) for y, x in free)


# === Predicting ===

def test_a_streamed_slide_is_the_predictor_on_its_whole_level(slides, model, tmp_path):
    """Every tile run (no skipping): the detections equal `Predictor.predict` on the level
    read whole (same tiles, same ownership, one NMS); labels agree but near core borders
    (no Gaussian blend); the label OME-TIFF holds the labels and their nearest-neighbour
    pyramid."""
    from retinaunet_deploy.predict import open_predictor
    from retinaunet_deploy.predict.plan import plan_inputs
    from retinaunet_deploy.predict.slides import predict_slide

    ome = slides[0]
    with open_predictor(model, tile=256, score_threshold=0.05) as predictor:
        (item,) = plan_inputs([ome], predictor)
        entry = predict_slide(predictor, item, tmp_path, skip_background=False)
        with open_slide(ome) as slide:
            whole = predictor.predict(slide.read(0, 0, 0, HEIGHT, WIDTH))
    tiles = len(predictor.tile_layout(HEIGHT, WIDTH).origins)
    assert tiles > 4 and entry["tiles"] == {"total": tiles, "predicted": tiles,
                                            "skipped_background": 0}
    assert entry["detection_count"] == len(whole.detections) > 0
    features = json.loads((tmp_path / entry["geojson"]).read_text())["features"]
    boxes = np.array([[f["geometry"]["coordinates"][0][i][::-1] for i in (0, 2)]
                      for f in features]).reshape(-1, 4)
    np.testing.assert_allclose(boxes, whole.detections.boxes, atol=0.01)
    assert [f["properties"]["classification"]["name"] for f in features] == \
        [predictor.det_class_names[c] for c in whole.detections.classes]
    np.testing.assert_allclose([f["properties"]["measurements"]["score"] for f in features],
                               whole.detections.scores, atol=1e-4)
    with tifffile.TiffFile(tmp_path / entry["mask"]) as tiff:
        assert tiff.is_ome and [lv.shape for lv in tiff.series[0].levels] == \
            [(900, 700), (450, 350)]
        labels = tiff.series[0].levels[0].asarray()
        np.testing.assert_array_equal(tiff.series[0].levels[1].asarray(), labels[::2, ::2])
        assert "PhysicalSizeX=\"0.5\"" in tiff.ome_metadata
    assert (labels == whole.mask).mean() > 0.98
    assert entry["class_pixels"] == {c: int((labels == i).sum())
                                     for i, c in enumerate(predictor.class_names)}


def test_cli_predicts_images_and_slides_at_a_level_and_resumes(coarse, model, tmp_path):
    """An image and a slide in one run: the image as before, the slide at --mpp 1 (level
    1) with background tiles skipped, its GeoJSON in level-0 pixels (inside the regions)."""
    ome, regions = coarse
    image = tmp_path / "img.png"
    Image.fromarray(np.full((80, 96), 60, np.uint8)).save(image)
    out = tmp_path / "out"
    args = ["predict", str(model), str(image), str(ome), "--out", str(out), "--mpp", "1",
            "--tile", "128", "--score-threshold", "0.05"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "level 1, " in result.output and " background):" in result.output
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert lines[0]["options"]["mpp"] == 1
    assert [line["name"] for line in lines[1:]] == ["img", "coarse"]   # x.ome.tif is x
    assert (out / "masks/img.png").is_file() and (out / "overlays/img.png").is_file()
    entry = lines[2]
    assert entry["kind"] == "slide" and entry["size"] == [700, 600] and entry["level"] == 1
    assert entry["downsample"] == [2.0, 2.0] and entry["mpp"] == [1.0, 1.0]
    assert entry["tiles"]["skipped_background"] > 0
    collection = json.loads((out / entry["geojson"]).read_text())
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == entry["detection_count"] > 0
    centres = []
    for feature in collection["features"]:
        (x1, y1), _, (x2, y2) = feature["geometry"]["coordinates"][0][:3]
        cy, cx = (y1 + y2) / 2, (x1 + x2) / 2
        assert any(r.top - 32 <= cy <= r.top + 416 and r.left - 32 <= cx <= r.left + 416
                   for r in regions), feature
        assert feature["properties"]["objectType"] == "detection"
        centres.append((cy, cx))
    # Level-0 pixels: the far region's boxes lie beyond level 1's 700 x 600.
    assert max(x for _, x in centres) > 700 and max(y for y, _ in centres) > 800
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = CliRunner().invoke(cli, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "resuming: 2 of 2 images already done" in again.output
    for path, mtime in before.items():
        if path.name not in ("results.jsonl", "detections.json"):
            assert path.stat().st_mtime_ns == mtime, path
    # The slide's files are checked on resume: a damaged label file is redone.
    (out / entry["mask"]).write_bytes(b"damaged")
    redo = CliRunner().invoke(cli, [*args, "--resume"])
    assert "resuming: 1 of 2 images already done" in redo.output
    assert json.loads((out / "results.jsonl").read_text().splitlines()[2]) == entry


def _damage_compression(path, level_page: int = 0) -> None:
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tiff.pages[level_page].tags["Compression"].overwrite(64999)


@pytest.mark.parametrize("case", ["level", "compression", "mpp", "no-slide"])
def test_bad_slides_are_one_line_and_nothing_is_written(slides, model, tmp_path, case):
    ome, pages, _ = slides
    path, extra = {"level": (ome, ["--level", "5"]), "mpp": (pages, ["--mpp", "0.5"]),
                   "compression": (tmp_path / "odd.tif", []),
                   "no-slide": (tmp_path / "plain.png", ["--level", "1"])}[case]
    if case == "no-slide":   # --level on images only would be ignored: refused instead
        Image.fromarray(np.full((80, 96), 60, np.uint8)).save(path)
    if case == "compression":
        shutil.copy(pages, path)
        _damage_compression(path)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(model), str(path), "--out", str(out),
                                      *extra])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    expected = {"level": f"Error: {ome} has no level 5: it has 3 level(s)",
                "mpp": f"Error: {pages} records no pixel size",
                "compression": f"Error: {path} is a TIFF compressed with 64999",
                "no-slide": "Error: --level chooses a level of a whole-slide image"}[case]
    assert lines[0].startswith(expected), lines[0]
    assert not out.exists()


def test_a_slide_that_fails_midway_leaves_nothing_half_written(slides, model, tmp_path,
                                                               monkeypatch):
    """A tile that cannot be read stops the slide: one line naming it, no label file, no
    GeoJSON, no temporary file or folder, no results line; the image before it is kept."""
    from retinaunet_deploy.data.slides import Slide

    image = tmp_path / "img.png"
    Image.fromarray(np.full((80, 96), 60, np.uint8)).save(image)
    real = Slide.read
    calls = []

    def failing(self, level, top, left, height, width):
        calls.append(top)
        if len(calls) > 3 and height > 100:    # past the thumbnail, into the tiles
            raise DataError(f"cannot read {self.path} (level {level} at row {top}, column "
                            f"{left}): broken tile; replace it with a valid slide")
        return real(self, level, top, left, height, width)

    monkeypatch.setattr(Slide, "read", failing)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(model), str(image), str(slides[0]),
                                      "--out", str(out), "--tile", "128"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        f"Error: cannot read {slides[0]} (level 0 at row")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "masks", "masks/img.png", "overlays", "overlays/img.png", "results.jsonl"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["name"] == "img"


def test_an_rgb_slide_for_a_grey_model_is_one_line(model, tmp_path):
    rgb = np.zeros((300, 260, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(rgb, tile=(64, 64), photometric="rgb")
        writer.write(rgb[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(model), str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        (f"Error: {path} (slide level 0): image has 3 channel(s), the model takes 1; save it "
         f"as greyscale (1 channel)")]
    assert not out.exists()
