"""The benchmark on the tiny model: every report file, self-agreement, failed and skipped rows."""

import json
import shutil

import pytest
from click.testing import CliRunner

from retinaunet_deploy.bench.harness import REFERENCE, BenchOptions, run_bench
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ArtifactError

QUICK = BenchOptions(images=2, batch_sizes=(1,), rounds=2, min_seconds=0.0)
FASTER = BenchOptions(images=2, batch_sizes=(1,), rounds=2, min_seconds=0.0, peak=False,
                      backends=("keras", "onnxruntime"))


@pytest.fixture(scope="module")
def bench_report(tiny_calibrated, tmp_path_factory):
    run, _ = tiny_calibrated
    out = tmp_path_factory.mktemp("bench")
    return out, run_bench(run, out, QUICK)


def test_every_report_file_exists_and_parses(bench_report):
    from PIL import Image

    out, report = bench_report
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    markdown = (out / "report.md").read_text()
    assert "| row | precision | MB | pixel agreement [95% CI] | Dice vs float [95% CI] |" in markdown
    assert "| gate |" in markdown
    assert "| AP@0.5 |" in markdown
    # Every figure says its image count; 2 images (< 16) are flagged loudly.
    assert "Every figure is measured on 2 whole held-out images" in markdown
    assert "**WARNING: every figure measured on only 2 image(s)" in markdown
    for picture in ("latency_vs_agreement.png", "overlays.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 200 and image.size[1] > 200


def test_reference_agrees_with_itself_exactly(bench_report):
    _, report = bench_report
    reference = report["rows"][0]
    assert reference["name"] == REFERENCE and reference["status"] == "ok"
    fidelity = reference["fidelity"]
    assert fidelity["pixel_agreement"] == 1.0
    assert fidelity["mean_dice_vs_reference"] == 1.0
    assert fidelity["max_abs_prob_diff"] == 0.0
    assert reference["latency"]["1"]["speedup_vs_reference"] == 1.0


def test_every_ok_row_has_latency_throughput_and_agreement(bench_report):
    _, report = bench_report
    names = {row["name"]: row for row in report["rows"]}
    for expected in ("onnxruntime fp32 (model.onnx)", "onnxruntime int8 (model.int8.onnx)",
                     "tflite fp32", "tflite int8"):
        assert names[expected]["status"] == "ok", names[expected]["reason"]
    for row in report["rows"]:
        if row["status"] == "ok":
            figures = row["latency"]["1"]["end_to_end"]
            assert figures["p50_ms"] > 0 and figures["images_per_s"] > 0
            assert 0.9 <= row["fidelity"]["pixel_agreement"] <= 1.0
            assert row["size_bytes"] > 0
        else:
            assert row["status"] == "skipped" and row["reason"]
    assert report["model"]["gflops_per_image"] > 0 and report["machine"]["threads"] == 2
    # The measured limit, and each CPU row's share of the one for its precision.
    limits = report["limits"]
    assert limits["int8"]["gflops"] > limits["fp32"]["gflops"] > 0
    int8 = names["openvino int8 (model.int8.onnx)"]["latency"]["1"]
    expected = (report["model"]["gflops_per_image"] / (int8["inference"]["p50_ms"] / 1e3)
                / limits["int8"]["gflops"])
    # Both the share and the model's GFLOPs are stored to 4 significant figures.
    assert int8["share_of_limit"] == pytest.approx(expected, rel=2e-3)
    assert names["openvino int8 (model.int8.onnx)"]["threads"] == 2
    assert "Limits measured here" in (bench_report[0] / "report.md").read_text()
    # The limit is the best of repeats interleaved with the rows' timing, every one kept;
    # a row above it would be a named fault, not a share.
    for precision in ("int8", "fp32"):
        repeats = limits[precision]["repeats"]
        assert [r["when"] for r in repeats] == ["before batch 1", "after batch 1"]
        assert limits[precision]["gflops"] == max(r["gflops"] for r in repeats)
    assert report["limit_faults"] == [fault for fault in report["limit_faults"]
                                      if names[fault["row"]]["latency"][str(fault["batch"])]
                                      .get("limit_fault")]
    assert all(figures.get("share_of_limit", 0) <= 1 for row in report["rows"]
               for figures in row["latency"].values())


def test_rows_that_cannot_run_here_are_skipped_with_the_reason(bench_report):
    from retinaunet_deploy.runtime.registry import runtime_named

    _, report = bench_report
    reason = runtime_named("tensorrt").unavailable()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present")
    trt = [row for row in report["rows"] if row["backend"] == "tensorrt"]
    assert trt and all(row["status"] == "skipped" and row["reason"] == reason for row in trt)


def test_a_broken_artifact_becomes_a_failed_row(tiny_calibrated, tmp_path):
    run, _ = tiny_calibrated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.fp16.onnx").write_bytes(b"\x08\x07not an onnx model")
    report = run_bench(copy, tmp_path / "out",
                       BenchOptions(images=2, batch_sizes=(1,), rounds=1, min_seconds=0.0,
                                    backends=("keras", "onnxruntime"), peak=False))
    row = next(r for r in report["rows"] if r["artifact"] == "model.fp16.onnx")
    assert row["status"] == "failed"
    assert "model.fp16.onnx changed since 'calibrate' recorded it" in row["reason"]
    assert f"re-run 'retinaunet-deploy calibrate {copy}'" in row["reason"]
    healthy = {r["name"]: r["status"] for r in report["rows"]}
    assert healthy["keras fp32"] == healthy["onnxruntime fp32 (model.onnx)"] == "ok"


def test_a_variant_of_an_older_onnx_becomes_a_failed_row(tiny_calibrated, tmp_path):
    from retinaunet_deploy.artifacts import record_artifact

    run, _ = tiny_calibrated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # model.onnx re-made after calibration (here: the same graph with one more metadata entry).
    import onnx

    model = onnx.load(copy / "model.onnx")
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "re-exported": "yes"})
    onnx.save(model, copy / "model.onnx")
    record_artifact(copy, "model.onnx", "export", parent="model.keras")
    report = run_bench(copy, tmp_path / "out",
                       BenchOptions(images=2, batch_sizes=(1,), rounds=1, min_seconds=0.0,
                                    backends=("keras", "onnxruntime"), peak=False))
    status = {r["artifact"]: (r["status"], r["reason"]) for r in report["rows"]
              if r["backend"] == "onnxruntime"}
    assert status["model.onnx"][0] == "ok"
    assert status["model.int8.onnx"][0] == "failed"
    assert "was made from an older model.onnx" in status["model.int8.onnx"][1]


def test_a_broken_reference_fails_the_bench(tiny_calibrated, tmp_path):
    run, _ = tiny_calibrated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ArtifactError, match="the reference .*model.keras cannot run"):
        run_bench(copy, tmp_path / "out", FASTER)
    result = CliRunner().invoke(cli, ["bench", str(copy), "--out", str(tmp_path / "cli"),
                                      "--images", "2", "--batch-sizes", "1", "--rounds", "1",
                                      "--min-seconds", "0"])
    assert result.exit_code == 1 and "cannot run" in result.output


def test_latency_only_sweep(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--latency-only", "--preset", "tiny", "--sizes",
                                      "64", "--rounds", "2", "--min-seconds", "0", "--no-limits",
                                      "--backends", "keras,onnxruntime", "--out",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["latency_only"] and report["weights"] == "random (latency only)"
    (sweep,) = report["sweeps"]
    assert sweep["size"] == 64
    ok = [row for row in sweep["rows"] if row["status"] == "ok"]
    assert {row["name"] for row in ok} >= {"keras fp32", "onnxruntime int8 (model.int8.onnx)"}
    assert all(row["latency"]["1"]["end_to_end"]["p50_ms"] > 0 for row in ok)
    assert "Latency only" in (tmp_path / "report.md").read_text()


def test_bench_usage_errors(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--latency-only"])
    assert result.exit_code == 2 and "either RUN_DIR, or --latency-only with --preset" in \
        result.output
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--batch-sizes", "1,x"])
    assert result.exit_code == 2 and "expected comma-separated integers" in result.output


def test_size_sweep_times_whole_and_tiled_images_in_one_run(tiny_exported, tmp_path):
    from retinaunet_deploy.bench.sweep import size_sweep

    run, _ = tiny_exported
    report = size_sweep(run, tmp_path, sizes=(64, 128, 256), rounds=2, min_seconds=0.0)
    assert set(report["rows"]) == {"whole 64", "whole 128", "whole 256", "tiled 256"}
    for row in report["rows"].values():
        assert row["p50_ms"] > 0
        assert row["ms_per_megapixel"] == pytest.approx(row["p50_ms"] / row["megapixels"],
                                                        rel=1e-2)
    assert report["rows"]["whole 128"]["ms_per_mp_vs_base"] == 1.0   # the base size
    assert report["tile"] == 128 and report["tiles"]["count"] > 1
    assert report["tiles"]["pixels_ratio"] > 1 and report["tiled_over_whole"] > 0
    assert json.loads((tmp_path / "size_sweep.json").read_text())["rows"] == report["rows"]
    assert "| tiled 256 |" in (tmp_path / "size_sweep.md").read_text()


def test_latency_only_threads_hold_for_every_row_keras_included(tmp_path):
    """TensorFlow sets its pools once per process, so this runs the CLI in a fresh one."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "retinaunet_deploy.cli", "bench", "--latency-only",
               "--preset", "tiny", "--sizes", "64", "--threads", "1", "--rounds", "1",
               "--min-seconds", "0", "--no-limits", "--backends", "keras,onnxruntime,tflite",
               "--out",
               str(tmp_path)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = [row for row in report["sweeps"][0]["rows"] if row["status"] == "ok"]
    assert {row["backend"] for row in rows} >= {"keras", "onnxruntime", "tflite"}
    assert all(row["threads"] == 1 for row in rows), [(r["name"], r["threads"]) for r in rows]
    assert "1 intra-op thread(s), asserted" in rows[0]["notes"]
    assert "ran with 1 intra-op thread(s), read back from its runtime and asserted" in \
        (tmp_path / "report.md").read_text()


def test_a_keras_thread_count_tensorflow_cannot_take_is_refused():
    from retinaunet_deploy.errors import ConfigError
    from retinaunet_deploy.runtime.backends import configure_tensorflow, tensorflow_threads

    assert tensorflow_threads() == 2  # conftest set it before TensorFlow started
    configure_tensorflow(2)           # the same count again is fine
    with pytest.raises(ConfigError, match="already runs in this process with 2 intra-op "
                                          "threads and cannot switch to 1"):
        configure_tensorflow(1)
