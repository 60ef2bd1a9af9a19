"""The model card: everything a runtime needs besides the weights, as JSON.

``model_card.json`` sits beside ``model.keras`` (and goes into ONNX metadata):

* ``builder``: `RetinaUNet.get_config()`, which rebuilds the architecture;
* ``preset``, ``class_names``, ``det_class_names``;
* ``input``: layout NHWC, height, width, channels, dtype float32 and
  ``pixel_max`` (255 or 65535): apps feed raw pixel values as float32;
* ``normalization``: mean and std of the training pixels; applied in-graph by
  the ``preprocess`` Rescaling layer (x * scale + offset);
* ``anchors`` (`AnchorConfig`), ``postprocess`` (`DetectionConfig`);
* ``data``, ``training`` and ``evaluation``: where the model came from and how
  good it was on held-out images.
"""

from __future__ import annotations

import json
from pathlib import Path

from retinaunet_deploy.artifacts import write_json
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.names import CARD

CARD_VERSION = 1
REQUIRED_KEYS = ("card_version", "builder", "class_names", "input", "normalization")


def save_card(run_dir: Path, card: dict) -> dict:
    """Write ``run_dir/model_card.json``; returns the card exactly as written (JSON types)."""
    card = json.loads(json.dumps({"card_version": CARD_VERSION, **card}))
    write_json(Path(run_dir) / CARD, card)
    return card


def load_card(run_dir: Path) -> dict:
    """Read and check ``run_dir/model_card.json``."""
    path = Path(run_dir) / CARD
    if not path.is_file():
        raise ArtifactError(f"{path} not found; train a model into {run_dir} first "
                            f"('retinaunet-deploy train --out {run_dir}')")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); re-run training to "
                            f"rewrite it") from error
    missing = [k for k in REQUIRED_KEYS if not isinstance(card, dict) or k not in card]
    if missing:
        raise ArtifactError(f"{path} lacks {missing}; re-run training to rewrite it")
    if card["card_version"] != CARD_VERSION:
        raise ArtifactError(f"{path} has card_version {card['card_version']}, this toolkit "
                            f"reads {CARD_VERSION}; re-run training with this version")
    return card


def embedded_card(path: Path, text: str | None) -> dict | None:
    """The model card an ONNX file carries in its ``model_card`` metadata (None: it has
    none), parsed as JSON and never evaluated."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} has a corrupt model_card in its metadata; "
                            f"re-export it") from error
