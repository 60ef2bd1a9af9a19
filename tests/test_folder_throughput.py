"""The bench's folder-throughput section: what it measures, how it reports it (figures are
measured by `bench`, not asserted here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retinaunet_deploy.bench import throughput
from retinaunet_deploy.bench.rows import BenchOptions
from retinaunet_deploy.errors import ConfigError


def test_folder_images_follow_the_synthetic_test_distribution(tiny_exported):
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import held_out_set

    card = load_card(tiny_exported[0])
    images = throughput.folder_images(card, 12)
    test = held_out_set(card, 12)
    assert all(np.array_equal(a, s.image) for a, s in zip(images, test))
    sizes = {image.shape[:2] for image in images}
    assert len(sizes) > 6      # mixed sizes, as the demo's test images


def test_the_section_measures_both_modes_of_each_artifact(tiny_exported, tmp_path):
    run_dir = tiny_exported[0]
    report = {"recommendation": {"file": "model.onnx", "runtime": "onnxruntime"}}
    options = BenchOptions(threads=1, folder_images=16,
                           folder_artifacts=throughput.folder_artifacts(
                               "recommended,model.onnx:onnxruntime,model.onnx"))
    said = []
    figures = throughput.measure_folder_throughput(run_dir, report, options, said.append)
    # "recommended" and the same file named again are one artifact; "auto" is another.
    assert [(a["file"], a["runtime"]) for a in figures["artifacts"]] == [
        ("model.onnx", "onnxruntime"), ("model.onnx", "auto")]
    assert figures["images"] == 16 and figures["rounds"] == 3 and figures["batch"] == 8
    assert figures["machine"]["cores"] and "cpu_flags" in figures["machine"]
    for row in figures["artifacts"]:
        for mode in ("inference", "end_to_end", "end_to_end_no_overlays",
                     "end_to_end_sequential"):
            assert row[mode]["images"] == 16 and len(row[mode]["rounds_images_per_s"]) == 3
            assert row[mode]["images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["end_to_end"]["images_per_s"]
                                             / row["inference"]["images_per_s"], abs=1e-3)
        assert row["no_overlays_ratio"] == pytest.approx(
            row["end_to_end_no_overlays"]["images_per_s"] / row["inference"]["images_per_s"],
            abs=1e-3)
        assert row["passed"] == (row["ratio"] >= throughput.TARGET_RATIO)
    json.loads(json.dumps(figures, allow_nan=False))
    assert any("folder throughput" in line for line in said)
    (tmp_path / "report.md").write_text("# Benchmark\n\n| table |\n")
    throughput.append_section(tmp_path / "report.md", figures)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# Benchmark\n\n| table |\n\n## Folder throughput")
    assert text.count("| model.onnx |") == 2
    lines = throughput.summary_lines(figures)
    assert len(lines) == 2 and "images/s end to end" in lines[0]


def test_no_recommendation_measures_model_onnx_and_says_so(tiny_exported):
    options = BenchOptions(threads=1, folder_images=8, folder_artifacts=(("recommended", "auto"),))
    figures = throughput.measure_folder_throughput(tiny_exported[0], {"recommendation": None},
                                                   options, lambda line: None)
    assert [a["file"] for a in figures["artifacts"]] == ["model.onnx"]
    assert figures["notes"] == [("no recommendation (no variant passed its gate): model.onnx "
                                 "measured instead")]


def test_folder_artifacts_option():
    assert throughput.folder_artifacts("recommended, model.int8.onnx:openvino") == (
        ("recommended", "auto"), ("model.int8.onnx", "openvino"))
    with pytest.raises(ConfigError, match=r"name run files as FILE\[:RUNTIME\]"):
        throughput.folder_artifacts("model.onnx,,")


def test_bench_option_refused_with_latency_only():
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--latency-only", "--preset", "tiny",
                                      "--folder-throughput"])
    assert result.exit_code == 2
    assert "--folder-throughput would be ignored with --latency-only" in result.output
