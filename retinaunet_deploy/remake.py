"""What remakes a file of a run: the stage that writes it, and the command a user runs.

Every error about a missing or damaged artifact ends with a remedy the user can follow
with the toolkit as it is: the command that writes that file of its run folder (the
stage in the run's manifest record, else the one its name says: `STAGE_BY_NAME`), or,
for a file whose name no stage writes (a renamed or copied file), the commands that
write files of its kind (`BY_SUFFIX`).

    remedy(Path("runs/a/model.int8.onnx"))
    -> "re-create it with 'retinaunet-deploy calibrate runs/a'"
"""

from __future__ import annotations

from pathlib import Path

from retinaunet_deploy import names

# The stage that writes each file of a run folder (names.py lists them).
STAGE_BY_NAME = {names.KERAS: "train", names.CARD: "train", names.ONNX: "export",
                 names.FP16_ONNX: "calibrate", names.INT8_ONNX: "calibrate",
                 names.INT8_CPU_ONNX: "calibrate", names.INT8_TFLITE: "calibrate",
                 names.CALIBRATION: "calibrate", names.E2E_ONNX: "export",
                 names.FP16_E2E_ONNX: "calibrate", names.INT8_E2E_ONNX: "calibrate"}

# What writes a file of each kind, for a file whose name no stage writes.
BY_SUFFIX = {
    ".keras": f"'retinaunet-deploy train --out RUN' (it writes RUN/{names.KERAS})",
    ".onnx": f"'retinaunet-deploy export RUN' ({names.ONNX}) or 'retinaunet-deploy "
             f"calibrate RUN' (its FP16/INT8 variants)",
    ".tflite": f"'retinaunet-deploy calibrate RUN' (it writes RUN/{names.INT8_TFLITE})",
    ".plan": "'retinaunet-deploy build-engine RUN --precision P' (it writes "
             "RUN/model.P.plan)",
}


def stage_of(run_dir: Path, name: str) -> str | None:
    """The stage that writes file `name` of `run_dir`: its manifest record's, else the one
    its name says (None for a name no stage writes). A damaged manifest is passed over
    (the name decides), so a remedy never fails."""
    from retinaunet_deploy.artifacts import load_manifest
    from retinaunet_deploy.errors import ArtifactError

    try:
        record = load_manifest(Path(run_dir))["artifacts"].get(name)
    except (ArtifactError, OSError):
        record = None
    if isinstance(record, dict) and record.get("stage"):
        return record["stage"]
    if names.plan_precision(name):
        return "build-engine"
    return STAGE_BY_NAME.get(name)


def command_for(path: Path) -> str | None:
    """The command that remakes `path` in its run folder ("retinaunet-deploy export RUN"),
    or None for a file whose name no stage writes."""
    from retinaunet_deploy.artifacts import remedy_for

    path = Path(path)
    stage = stage_of(path.parent, path.name)
    return remedy_for(path.parent, path.name, stage) if stage else None


def remedy(path: Path, verb: str = "re-create it") -> str:
    """How to remake a damaged `path`: "<verb> with '<command>'" for a run's file; for
    another name, the commands that write files of its kind, or copying it again."""
    path = Path(path)
    command = command_for(path)
    if command:
        return f"{verb} with '{command}'"
    kind = BY_SUFFIX.get(path.suffix)
    return (f"{verb} with {kind}, or copy it again" if kind
            else f"{verb} with the stage that made it, or copy it again")


def missing(path: Path) -> str:
    """What to do about a `path` that does not exist: run the command that writes it, or
    for a name no stage writes, check the path (and which commands write such files)."""
    path = Path(path)
    command = command_for(path)
    if command:
        return f"run '{command}' first"
    kind = BY_SUFFIX.get(path.suffix)
    return "check the path" + (f"; {path.suffix} files are written by {kind}" if kind else "")
