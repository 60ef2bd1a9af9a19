"""Every remedy for a missing or damaged artifact is a command the toolkit runs (issue 19)."""

import pytest
from click.testing import CliRunner

from retinaunet_deploy import remake
from retinaunet_deploy.artifacts import record_artifact
from retinaunet_deploy.cli import cli

RUN_FILES = [
    ("model.keras", "retinaunet-deploy train --out {run}"),
    ("model_card.json", "retinaunet-deploy train --out {run}"),
    ("model.onnx", "retinaunet-deploy export {run}"),
    ("model.fp16.onnx", "retinaunet-deploy calibrate {run}"),
    ("model.int8.onnx", "retinaunet-deploy calibrate {run}"),
    ("model.int8.cpu.onnx", "retinaunet-deploy calibrate {run}"),
    ("model.int8.tflite", "retinaunet-deploy calibrate {run}"),
    ("model.int8.plan", "retinaunet-deploy build-engine {run} --precision int8"),
]


@pytest.mark.parametrize("name,command", RUN_FILES)
def test_a_run_file_names_the_stage_that_writes_it(tmp_path, name, command):
    command = command.format(run=tmp_path)
    assert remake.command_for(tmp_path / name) == command
    assert remake.remedy(tmp_path / name) == f"re-create it with '{command}'"
    assert remake.missing(tmp_path / name) == f"run '{command}' first"


def test_the_manifest_record_decides_and_a_damaged_manifest_is_passed_over(tmp_path):
    (tmp_path / "custom.onnx").write_bytes(b"x")
    record_artifact(tmp_path, "custom.onnx", "calibrate", parent=None)
    assert remake.command_for(tmp_path / "custom.onnx") == f"retinaunet-deploy calibrate {tmp_path}"
    (tmp_path / "manifest.json").write_text("{not json")
    assert remake.command_for(tmp_path / "model.onnx") == f"retinaunet-deploy export {tmp_path}"
    assert remake.command_for(tmp_path / "custom.onnx") is None


@pytest.mark.parametrize("name,expected", [
    ("copy.onnx", ("'retinaunet-deploy export RUN' (model.onnx) or 'retinaunet-deploy calibrate "
                  "RUN'")),
    ("old.keras", "'retinaunet-deploy train --out RUN'"),
    ("edge.tflite", "'retinaunet-deploy calibrate RUN'"),
    ("gpu.plan", "'retinaunet-deploy build-engine RUN --precision P'"),
])
def test_a_renamed_file_names_the_commands_for_its_kind(tmp_path, name, expected):
    assert remake.command_for(tmp_path / name) is None
    assert remake.remedy(tmp_path / name).startswith(f"re-create it with {expected}")
    assert remake.remedy(tmp_path / name).endswith("or copy it again")
    assert remake.missing(tmp_path / name).startswith("check the path; ")
    assert expected in remake.missing(tmp_path / name)


def test_every_command_named_exists_in_the_cli():
    """The commands the remedies name are the CLI's, with the options they pass."""
    runner = CliRunner()
    for args, options in ((["train"], ["--out"]), (["export"], ["--no-simplify", "--tolerance"]),
                          (["calibrate"], []), (["build-engine"], ["--precision", "--max-size",
                                                                    "--min-size"])):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output
        for option in options:
            assert option in result.output, (args, option)
