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


# The child reports its own peak (VmHWM of its memory map) as it exits. Not wait4's
# ru_maxrss: Linux carries the parent's peak into a vforked child across exec, so the
# child of a 4 GB pytest process would report 4 GB whatever it used.
CHILD = ("import atexit, sys\n"
         "def peak():\n"
         "    for line in open('/proc/self/status'):\n"
         "        if line.startswith('VmHWM:'):\n"
         "            print('PEAK_RSS_KIB', line.split()[1], file=sys.stderr, flush=True)\n"
         "atexit.register(peak)\n"
         "from retinaunet_deploy.cli import cli\n"
         "cli(sys.argv[1:], prog_name='retinaunet-deploy')\n")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(),
                    reason="a process's peak RSS is read from /proc (Linux)")
def test_a_20k_slide_predicts_at_level_0_in_bounded_memory(big_slide, tiny_exported,
                                                           tmp_path):
    path, regions = big_slide
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, "predict",
         str(tiny_exported[0] / "model.onnx"), str(path), "--out", str(out),
         "--threads", "2", "--level", "0", "--score-threshold", "0.05"],
        capture_output=True, text=True, env=env, check=False)
    assert child.returncode == 0, (child.stdout + child.stderr)[-3000:]
    peaks = [int(line.split()[1]) for line in child.stderr.splitlines()
             if line.startswith("PEAK_RSS_KIB ")]
    assert len(peaks) == 1, child.stderr[-3000:]
    peak = peaks[0] * 1024
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
