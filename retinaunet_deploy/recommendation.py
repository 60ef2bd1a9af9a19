"""The run's recommendation file: which file to run, and in which runtime.

``bench`` chooses (`bench.recommend`) and writes the choice into the run as
``recommendation.json`` (recorded in the manifest, parent: the chosen file);
``retinaunet-deploy predict RUN_DIR images...`` reads it back here, so predict
never imports the bench.
"""

from __future__ import annotations

import json
from pathlib import Path

from retinaunet_deploy import names
from retinaunet_deploy.errors import ArtifactError


def write_recommendation(run_dir: Path, choice: dict | None) -> None:
    """Record the choice in the run (or drop a stale one when nothing qualifies).

    Args:
        choice: `bench.recommend.recommend`'s dict (``file``: a run-folder file name,
            ``runtime``: a registered runtime's name), or None.
    """
    from retinaunet_deploy.artifacts import forget_artifact, record_artifact, write_json

    if choice is None:
        forget_artifact(run_dir, names.RECOMMENDATION)
        return
    write_json(Path(run_dir) / names.RECOMMENDATION, choice)
    record_artifact(run_dir, names.RECOMMENDATION, "bench", parent=choice["file"])


def recommended_artifact(run_dir: Path) -> tuple[Path, str]:
    """(file, runtime) the run's bench recommended, its file verified unchanged since.

    Raises `ArtifactError` when the run has no recommendation, or the recommendation,
    its file or the model card changed since the stage that wrote them.
    """
    from retinaunet_deploy.artifacts import load_manifest, remedy_for, verify_lineage

    run_dir = Path(run_dir)
    path = run_dir / names.RECOMMENDATION
    if not path.exists():
        raise ArtifactError(f"{run_dir} has no {names.RECOMMENDATION}; run 'retinaunet-deploy "
                            f"bench {run_dir}' to choose the fastest variant that passes its "
                            f"gate, or give an artifact file")
    try:
        verify_lineage(run_dir, names.RECOMMENDATION, f"retinaunet-deploy bench {run_dir}")
    except ArtifactError as error:   # bench is long: the quick way out too
        raise ArtifactError(f"{error}, or give an artifact file (e.g. "
                            f"'{run_dir / names.ONNX}') instead of the run folder") from error
    choice = json.loads(path.read_text())
    # The file, and the card every runtime reads beside a file that carries none (.keras,
    # .tflite, .plan): each refused with the stage that remakes it when it changed.
    artifacts = load_manifest(run_dir)["artifacts"]
    for name in (choice["file"], names.CARD):
        stage = artifacts.get(name, {}).get("stage", "train")
        verify_lineage(run_dir, name, remedy_for(run_dir, name, stage))
    return run_dir / choice["file"], choice["runtime"]
