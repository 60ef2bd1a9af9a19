"""Issue 21's acceptance on a large slide: a 20,000 x 20,000 pyramidal TIFF (written tile
by tile by the test, so the test stays small in memory) predicts at level 0 through the
CLI in a child process with peak RSS under 2 GB, skips its background tiles, writes a
GeoJSON FeatureCollection with one feature per detection and a label OME-TIFF pyramid
whose labels lie on the slide's regions of objects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from retinaunet_deploy.data.slides.synthetic import write_synthetic_slide

SIDE = 20000
PEAK_RSS_LIMIT = 2 * 1024**3


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.ome.tif"
    regions = write_synthetic_slide(path, SIDE, SIDE, regions=3, region=512, seed=3)
    return path, regions


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="peak RSS of a child needs os.wait4")
def test_a_20k_slide_predicts_at_level_0_in_bounded_memory(big_slide, tiny_exported,
                                                           tmp_path):
    path, regions = big_slide
    out, log = tmp_path / "out", tmp_path / "log.txt"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(log, "w") as handle:
        child = subprocess.Popen(
            [sys.executable, "-m", "retinaunet_deploy.cli", "predict",
             str(tiny_exported[0] / "model.onnx"), str(path), "--out", str(out),
             "--threads", "2", "--level", "0", "--score-threshold", "0.05"],
            stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, log.read_text()[-3000:]
    peak = usage.ru_maxrss * 1024          # Linux reports KiB
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    entry = json.loads((out / "results.jsonl").read_text().splitlines()[1])
    tiles = entry["tiles"]
    assert entry["size"] == [SIDE, SIDE] and entry["level"] == 0
    # 3 regions of 512 px touch at most 4 tiles each; everything else is background.
    assert 0 < tiles["predicted"] <= 12 and tiles["skipped_background"] == \
        tiles["total"] - tiles["predicted"] and tiles["total"] > 400
    collection = json.loads((out / entry["geojson"]).read_text())
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == entry["detection_count"] > 0
    assert all(f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
               for f in collection["features"])
    with tifffile.TiffFile(out / entry["mask"]) as tiff:
        levels = tiff.series[0].levels
        assert levels[0].shape == (SIDE, SIDE) and levels[0].keyframe.is_tiled
        coarse = levels[3].asarray()            # 1/8: labels only on the regions
    ys, xs = np.nonzero(coarse)
    assert ys.size
    on_region = np.zeros(len(ys), bool)
    for r in regions:
        on_region |= ((ys * 8 >= r.top - 16) & (ys * 8 < r.top + 528)
                      & (xs * 8 >= r.left - 16) & (xs * 8 < r.left + 528))
    assert on_region.all()
