"""Artifacts on disk: atomic writes (and, with the export stage, the manifest).

Every artifact the toolkit writes goes to a temporary file in the same folder
and is renamed over the target only when complete, so a crash or Ctrl-C never
leaves a half-written file under an artifact's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# === Manifest ===
#
# manifest.json in a run folder records, per artifact file name:
#   sha256, size, stage (the command that made it), parent {file, sha256},
#   created (UTC ISO time), tools {package: version}, options, figures, and for a
#   TensorRT engine its target {tensorrt, gpu, compute_capability}.
# A stage checks its input against this record before using it.

MANIFEST_NAME = "manifest.json"
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

    path = Path(run_dir) / MANIFEST_NAME
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
    write_json(run_dir / MANIFEST_NAME, manifest)
    return entry


def forget_artifact(run_dir: Path, name: str) -> None:
    """Delete `run_dir/name` if present and drop it from the manifest."""
    run_dir = Path(run_dir)
    (run_dir / name).unlink(missing_ok=True)
    manifest = load_manifest(run_dir)
    if manifest["artifacts"].pop(name, None) is not None:
        write_json(run_dir / MANIFEST_NAME, manifest)


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
        raise ArtifactError(f"{path} is not recorded in {Path(run_dir) / MANIFEST_NAME}; "
                            f"re-run '{remedy}' so its lineage is known")
    if record["sha256"] != actual:
        raise ArtifactError(f"{path} changed since '{record['stage']}' recorded it (sha256 "
                            f"{actual[:12]} != {record['sha256'][:12]}); re-run '{remedy}'")
    return actual
