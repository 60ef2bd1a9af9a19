"""The CLI skeleton: lazy imports, info, one-line errors."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from retinaunet_deploy.cli import cli


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ["build-engine", "triton", "info", "train", "export", "predict", "calibrate", "check-trt", "bench"]:
        assert f"  {name} " in result.output


def test_help_does_not_import_tensorflow():
    # `--help` must stay instant: TensorFlow takes seconds to import.
    code = ("import sys; from retinaunet_deploy.cli import main; sys.argv = ['x', '--help'];\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'tensorrt', 'tf2onnx')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_info_reports_parameters_flops_and_outputs():
    result = CliRunner().invoke(cli, ["info", "--preset", "tiny", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "RetinaNet heads" in result.output
    for name in ("mask", "cls_logits", "box_deltas"):
        assert name in result.output
    assert "(N, 64, 64, 3)" in result.output and "(N, 3024, 2)" in result.output


def test_info_without_detection_has_no_heads():
    result = CliRunner().invoke(cli, ["info", "--preset", "tiny", "--size", "64",
                                      "--no-detection"])
    assert result.exit_code == 0, result.output
    assert "RetinaNet heads" not in result.output and "cls_logits" not in result.output


def test_invalid_size_is_one_line_error():
    result = CliRunner().invoke(cli, ["info", "--preset", "tiny", "--size", "100"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: input height 100 is not a multiple of 16 "
                                     "(2**depth, depth=4); valid sizes are multiples of 16, "
                                     "e.g. 96 or 112")


def test_unknown_preset_is_a_usage_error():
    result = CliRunner().invoke(cli, ["info", "--preset", "huge"])
    assert result.exit_code == 2
    assert "'huge' is not one of" in result.output


def test_public_api_at_the_top_without_importing_tensorflow():
    code = ("import sys\n"
            "from retinaunet_deploy import RetinaUNet, Predictor, Prediction, Detections\n"
            "builder = RetinaUNet.from_preset('tiny', (64, 64, 1), 3)\n"
            "assert Predictor.__name__ == 'Predictor' and builder.stride == 16\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'tensorrt')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import retinaunet_deploy\n"
            "assert set(retinaunet_deploy.__all__) - {'__version__'} == "
            "set(retinaunet_deploy._PUBLIC)\n"
            "try:\n    retinaunet_deploy.Nope\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("args, named", [
    (["--soak", "--images", "8"], "--images would be ignored with --soak"),
    (["--serve-load", "--soak-minutes", "1"], "--soak-minutes would be ignored with --serve-load"),
    (["--folder-images", "16", "--callers", "3"], "--callers would be ignored without"),
    (["--soak", "--serve-load"], "--soak and --serve-load are separate bench modes"),
])
def test_bench_refuses_an_option_its_mode_would_ignore(tmp_path, args, named):
    """Each bench mode reads only some options; one it would drop is a usage error,
    before any work (no report folder is made)."""
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--out",
                                      str(tmp_path / "report"), *args])
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert not (tmp_path / "report").exists()


def test_bench_latency_only_refuses_run_options():
    result = CliRunner().invoke(cli, ["bench", "--latency-only", "--preset", "tiny",
                                      "--sweep-sizes", "128"])
    assert result.exit_code == 2
    assert "--sweep-sizes would be ignored with --latency-only" in result.output
