"""Artifacts on disk: atomic writes (and, with the export stage, the manifest).

Every artifact the toolkit writes goes to a temporary file in the same folder
and is renamed over the target only when complete, so a crash or Ctrl-C never
leaves a half-written file under an artifact's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from retinaunet_deploy.names import MANIFEST, plan_precision
from retinaunet_deploy.outputs import check_writable, output_error  # noqa: F401 (here too)
from retinaunet_deploy.strict_json import dumps_json


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path` (same suffix); rename it to `path` on success.

    The temporary file is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file 0600; give it the mode a plain open() would have had.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Temporary files of this artifact left by a killed writer: the new file supersedes them.
    # (Two processes writing the same artifact at once is not supported.)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.[a-z0-9_]{{8}}\.tmp{re.escape(path.suffix)}")
    for stale in path.parent.iterdir():
        if pattern.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def leftover_temporary_files(folder: Path) -> list[Path]:
    """Temporary files of `atomic_path` that a killed process left in `folder`."""
    return sorted(p for p in Path(folder).glob(".*.tmp*") if p.is_file())


def write_json(path: Path, data) -> None:
    """Write `data` as indented strict JSON (`dumps_json`), atomically.

    Raises `ValueError` (nothing written) when `data` holds a NaN or Infinity.
    """
    text = dumps_json(data, indent=2) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# === Manifest ===
#
# manifest.json in a run folder records, per artifact file name:
#   sha256, size, stage (the command that made it), parent {file, sha256},
#   created (UTC ISO time), tools {package: version}, options, figures, and for a
#   TensorRT engine its target {tensorrt, gpu, compute_capability}.
# A stage checks its input against this record before using it.

MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(run_dir: Path) -> dict:
    """The run's manifest, or an empty one when the run has none yet."""
    from retinaunet_deploy.errors import ArtifactError

    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return {"manifest_version": MANIFEST_VERSION, "artifacts": {}}
    remedy = "delete it and re-run the stages from 'retinaunet-deploy train'"
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is corrupt ({error}); {remedy}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        raise ArtifactError(f"{path} is corrupt (no 'artifacts' table); {remedy}")
    return manifest


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones left out)."""
    from importlib import metadata

    versions = {}
    for package in ("retinaunet-deploy",) + packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def record_artifact(run_dir: Path, name: str, stage: str, parent: str | None = None,
                    options: dict | None = None, figures: dict | None = None,
                    tools: dict | None = None, target: dict | None = None) -> dict:
    """Hash `run_dir/name` and record it (and its parent's hash) in the manifest.

    Args:
        target: for a TensorRT engine, the TensorRT version and GPU it only runs on.
    """
    import datetime

    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    path = run_dir / name
    entry = {
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "stage": stage,
        "parent": None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tools": tools or {},
        "options": options or {},
        "figures": figures or {},
    }
    if target is not None:
        entry["target"] = target
    if parent is not None:
        parent_entry = manifest["artifacts"].get(parent)
        entry["parent"] = {"file": parent,
                           "sha256": parent_entry["sha256"] if parent_entry else
                           sha256_file(run_dir / parent)}
    manifest["artifacts"][name] = entry
    write_json(run_dir / MANIFEST, manifest)
    return entry


def record_runtime_variant(run_dir: Path, name: str, file: str, runtime: str, passed: bool,
                           figures: dict, tools: dict | None = None) -> dict:
    """Record a variant that is a way of *running* a file, not a file of its own (OpenVINO
    int8 on model.int8.onnx, bf16 on model.onnx): its gate figures, tied to the file's hash.

    Kept in the manifest's ``runtime_variants`` table by `name`.
    """
    import datetime

    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    entry = {"file": file, "sha256": sha256_file(run_dir / file), "runtime": runtime,
             "passed": passed, "stage": "calibrate", "tools": tools or {},
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec="seconds"), "figures": figures}
    manifest.setdefault("runtime_variants", {})[name] = entry
    write_json(run_dir / MANIFEST, manifest)
    return entry


def runtime_variants(run_dir: Path) -> dict[str, dict]:
    """The recorded runtime variants whose file still has the hash they were judged on."""
    run_dir = Path(run_dir)
    current = {}
    for name, entry in load_manifest(run_dir).get("runtime_variants", {}).items():
        path = run_dir / entry["file"]
        if path.exists() and sha256_file(path) == entry["sha256"]:
            current[name] = entry
    return current


def forget_artifact(run_dir: Path, name: str) -> None:
    """Delete `run_dir/name` if present and drop it from the manifest."""
    run_dir = Path(run_dir)
    (run_dir / name).unlink(missing_ok=True)
    manifest = load_manifest(run_dir)
    if manifest["artifacts"].pop(name, None) is not None:
        write_json(run_dir / MANIFEST, manifest)


def verify_lineage(run_dir: Path, name: str, remedy: str) -> str:
    """`verify_artifact`, and that the file was made from its parent as it is now.

    A variant made from an older parent (e.g. model.int8.onnx after model.onnx was
    re-exported) is stale even if its own hash matches.
    """
    from retinaunet_deploy.errors import ArtifactError

    actual = verify_artifact(run_dir, name, remedy)
    artifacts = load_manifest(run_dir)["artifacts"]
    parent = artifacts[name].get("parent")
    if parent:
        current = artifacts.get(parent["file"])
        if current is None or current["sha256"] != parent["sha256"]:
            raise ArtifactError(f"{Path(run_dir) / name} was made from an older "
                                f"{parent['file']} (sha256 {parent['sha256'][:12]}); re-run "
                                f"'{remedy}'")
    return actual


def verify_artifact(run_dir: Path, name: str, remedy: str) -> str:
    """Check `run_dir/name` exists and matches its manifest record; return its sha256.

    Args:
        remedy: the command that remakes the file, quoted in the error.
    """
    from retinaunet_deploy.errors import ArtifactError

    path = Path(run_dir) / name
    if not path.is_file():
        raise ArtifactError(f"{path} not found; run '{remedy}' first")
    actual = sha256_file(path)
    record = load_manifest(run_dir)["artifacts"].get(name)
    if record is None:
        raise ArtifactError(f"{path} is not recorded in {Path(run_dir) / MANIFEST}; "
                            f"re-run '{remedy}' so its lineage is known")
    if record["sha256"] != actual:
        raise ArtifactError(f"{path} changed since '{record['stage']}' recorded it (sha256 "
                            f"{actual[:12]} != {record['sha256'][:12]}); re-run '{remedy}'")
    return actual


# === Lineage of a run ===

# Every suffix a registered runtime runs (tests/test_runtime_registry.py checks), and JSON.
ARTIFACT_SUFFIXES = (".keras", ".onnx", ".plan", ".tflite", ".json")


def remedy_for(run_dir: Path, name: str, stage: str) -> str:
    """The command that remakes artifact `name` of a run, made by `stage`."""
    if stage == "build-engine":
        precision = plan_precision(name) or "fp16"
        return f"retinaunet-deploy build-engine {run_dir} --precision {precision}"
    if stage == "train":
        return f"retinaunet-deploy train --out {run_dir}"
    return f"retinaunet-deploy {stage} {run_dir}"


def headline_figure(record: dict) -> str:
    """The one figure that says whether an artifact is good, from its manifest record."""
    figures = record.get("figures") or {}
    if "test" in figures:  # a trained model, against ground truth
        test = figures["test"]
        text = f"test Dice {_shown(test.get('mean_dice'), '.4f')}"
        return text + (f", mAP@0.1 {_shown(test['map@0.1'], '.3f')}" if "map@0.1" in test
                       else "")
    if "parity" in figures:
        parity = figures["parity"]
        return (f"max |ONNX - Keras| {_shown(parity['max_abs_error_all'], '.1e')}, argmax "
                f"{_shown(parity['mask_argmax_agreement'], '.2%')}")
    if "matched_fraction" in figures:  # an end-to-end file, vs the numpy post-process
        return (f"boxes matched {_shown(figures['matched_fraction'], '.2%')}, labels "
                f"{'identical' if figures.get('label_pixels_differing') == 0 else 'differ'}")
    if "agreement" in figures:
        agreement = figures["agreement"]
        return (f"pixels {_shown(agreement['pixel_agreement'], '.4%')}, Dice vs float "
                f"{_shown(agreement['mean_dice_vs_reference'], '.4f')}")
    return ""


def _shown(value, spec: str) -> str:
    """A figure as text; "n/a" for one written as null (undefined, with its reason)."""
    return "n/a" if value is None else format(value, spec)


def run_lineage(run_dir: Path) -> list[dict]:
    """Every recorded artifact of a run, verified: its hash, and its parent's hash now.

    Each row: file, stage, parent, sha256, size, status (ok | missing | changed |
    stale | unrecorded | leftover) and, when not ok, problem (with the command to re-run).
    Files that look like artifacts but have no record, and temporary files a
    killed writer left, are listed too.
    """
    from retinaunet_deploy.errors import ArtifactError

    run_dir = Path(run_dir)
    artifacts = load_manifest(run_dir)["artifacts"]
    rows = []
    for name, record in artifacts.items():
        row = {"file": name, "stage": record.get("stage"),
               "parent": (record.get("parent") or {}).get("file"), "sha256": record["sha256"],
               "size": record.get("size"), "status": "ok", "problem": None,
               "figure": headline_figure(record)}
        remedy = remedy_for(run_dir, name, record.get("stage", "train"))
        try:
            verify_lineage(run_dir, name, remedy)
        except ArtifactError as error:
            message = str(error)
            row["problem"] = message
            row["status"] = ("missing" if "not found" in message else
                             "stale" if "made from an older" in message else "changed")
        rows.append(row)
    for path in sorted(run_dir.iterdir()):
        if (path.suffix in ARTIFACT_SUFFIXES and path.name not in artifacts
                and path.name != MANIFEST and not path.name.startswith(".")):
            rows.append({"file": path.name, "stage": None, "parent": None,
                         "sha256": sha256_file(path), "size": path.stat().st_size,
                         "status": "unrecorded", "figure": "",
                         "problem": f"{path} is not in {run_dir / MANIFEST}; nothing vouches "
                                    f"for it: delete it or re-run the stage that makes it"})
    for path in leftover_temporary_files(run_dir):
        rows.append({"file": path.name, "stage": None, "parent": None, "sha256": None,
                     "size": path.stat().st_size, "status": "leftover", "figure": "",
                     "problem": f"{path} is a temporary file from an interrupted write; "
                                f"delete it (the next write of that artifact also does)"})
    return rows


# === Untrusted ONNX files ===

def _onnx_tensors(graph):
    """Every TensorProto of a graph: initializers, Constant/attribute tensors, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _onnx_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _onnx_tensors(subgraph)


def check_onnx_external_data(path: Path):
    """Read an ONNX file's structure without its external data; refuse data outside its folder.

    ONNX tensors may keep their bytes in other files named by a relative path.
    A file from elsewhere could name `/etc/...` or `../../secret`; loading it
    would read that file. Only plain paths inside the model's folder are allowed.

    Returns the ModelProto (external tensors not loaded).
    """
    from pathlib import PurePath

    import onnx

    from retinaunet_deploy import remake
    from retinaunet_deploy.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found; {remake.missing(path)}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf raises several types for a corrupt file
        raise ArtifactError(f"cannot read {path} as ONNX ({str(error).splitlines()[0][:160]}); "
                            f"it is corrupt or truncated: {remake.remedy(path)}") from error
    folder = path.parent.resolve()
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data
                         if entry.key == "location"), "")
        relative = PurePath(location)
        inside = (bool(location) and not relative.is_absolute() and ".." not in relative.parts
                  and (folder / relative).resolve().is_relative_to(folder))
        if not inside:
            raise ArtifactError(f"{path}: tensor {tensor.name!r} keeps its data at "
                                f"{location!r}, outside the model's folder; refusing to load it. "
                                f"Re-save the model with its external data beside it")
    return model


def load_onnx(path: Path):
    """`onnx.load` for files that may come from elsewhere: external data checked first."""
    import onnx

    from retinaunet_deploy import remake
    from retinaunet_deploy.errors import ArtifactError

    check_onnx_external_data(path)
    try:
        return onnx.load(path)
    except Exception as error:  # a missing or short external data file
        raise ArtifactError(f"cannot load {path} ({str(error).splitlines()[0][:160]}); "
                            f"{remake.remedy(path)}") from error
