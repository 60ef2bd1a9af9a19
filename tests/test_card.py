"""The typed model card: built once from JSON, given back unchanged, defaults stated once."""

import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from retinaunet_deploy import card as card_module
from retinaunet_deploy.card import (
    CARD_VERSION,
    InputSpec,
    ModelCard,
    Normalization,
    embedded_card,
    load_card,
    save_card,
)
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.model.anchors import AnchorConfig
from retinaunet_deploy.postprocess import DetectionConfig

PACKAGE = Path(__file__).resolve().parents[1] / "retinaunet_deploy"


def trained_json() -> dict:
    """A card as `train` writes it (the sections in its order), plus an entry this toolkit
    does not know and a whole-number mean, which must come back exactly as they are."""
    from retinaunet_deploy.model import RetinaUNet

    builder = RetinaUNet.from_preset("tiny", (64, 64, 1), 3, input_scale=0.05,
                                     input_offset=-5.0)
    return json.loads(json.dumps({
        "card_version": CARD_VERSION, "preset": "tiny", "builder": builder.get_config(),
        "class_names": ["background", "disk", "ring"], "det_class_names": ["disk", "ring"],
        "input": {"name": "image", "layout": "NHWC", "height": None, "width": None,
                  "channels": 1, "dtype": "float32", "stride": 16, "patch_size": 64,
                  "pixel_dtype": "uint16", "pixel_max": 65535},
        "normalization": {"in_graph": True, "mean": 100, "std": 20.0, "scale": 0.05,
                          "offset": -5.0},
        "anchors": builder.anchor_config.to_dict(), "postprocess": DetectionConfig().to_dict(),
        "data": {"kind": "synthetic", "seed": 0, "counts": {"train": 4, "val": 2, "test": 2}},
        "training": {"epochs_run": 3, "seconds": 12.5, "history": {"loss": [2.0, 1.5, 1.2]}},
        "evaluation": {"split": "test", "whole_images": True, "mean_dice": 0.5},
        "warnings": ["WARNING: the test figures measured on only 2 image(s)"],
        "notes": {"written by": "a later toolkit"},
    }))


MINIMAL = {"card_version": CARD_VERSION, "builder": {"depth": 4, "input_shape": [32, 32, 1]},
           "class_names": ["background", "object"], "input": {"channels": 1},
           "normalization": {}}


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def test_from_dict_to_dict_gives_the_json_back_byte_for_byte():
    js = trained_json()
    card = ModelCard.from_dict(js)
    assert card.to_dict() == js
    assert json.dumps(card.to_dict()) == json.dumps(js)           # same order, same types
    assert json.dumps(card.to_dict(), sort_keys=True) == json.dumps(js, sort_keys=True)
    # Typed once: every section as the dataclasses the toolkit already has.
    assert card.input == InputSpec(channels=1, stride=16, patch_size=64, pixel_dtype="uint16",
                                   pixel_max=65535)
    assert card.normalization == Normalization(mean=100.0, std=20.0, scale=0.05, offset=-5.0)
    assert card.anchors == AnchorConfig() and card.postprocess == DetectionConfig()
    assert card.class_names == ("background", "disk", "ring")
    assert card.det_class_names == ("disk", "ring") and card.num_det_classes == 2
    assert card.has_detection and card.preset == "tiny" and card.card_version == CARD_VERSION
    assert card.training["epochs_run"] == 3 and card.evaluation["mean_dice"] == 0.5
    assert card.warnings == js["warnings"]
    # The typed sections write the JSON training writes, in its order.
    for section in ("input", "anchors", "postprocess"):
        assert json.dumps(getattr(card, section).to_dict()) == json.dumps(js[section])
    # A new dict each time: editing it edits nothing.
    card.to_dict()["input"]["channels"] = 3
    card.training["history"]["loss"].append(0.0)
    assert card.to_dict() == js


def test_save_and_load_round_trip_the_file(tmp_path):
    js = trained_json()
    saved = save_card(tmp_path, {k: v for k, v in js.items() if k != "card_version"})
    text = (tmp_path / "model_card.json").read_text()
    assert text == json.dumps(js, indent=2) + "\n"       # card_version first, as before
    loaded = load_card(tmp_path)
    assert loaded == saved and loaded.to_dict() == saved.to_dict() == js
    assert embedded_card(tmp_path / "model.onnx", json.dumps(js, sort_keys=True)) == loaded
    assert embedded_card(tmp_path / "model.onnx", None) is None


def test_defaults_are_stated_once():
    card = ModelCard.from_dict(MINIMAL)
    assert card.input.pixel_max == 255 and card.input.pixel_dtype == "uint8"
    assert card.input.name == "image" and card.input.layout == "NHWC"
    assert card.input.stride == 16 and card.input.patch_size == 32   # from the builder
    assert card.normalization == Normalization(mean=0.0, std=1.0, scale=1.0, offset=0.0)
    assert card.anchors is None and card.postprocess is None and not card.has_detection
    assert card.detection_config == DetectionConfig()
    assert card.det_class_names == () and card.num_det_classes is None
    assert card.data == {} and card.training == {} and card.evaluation == {}
    assert card.warnings == [] and card.preset is None
    assert card.to_dict() == MINIMAL            # nothing added to the JSON it came from


def test_the_predictor_reads_the_defaults_and_types_a_hand_built_card_once():
    from retinaunet_deploy.runtime.base import BackendBase
    from retinaunet_deploy.runtime.predictor import Predictor

    class Echo(BackendBase):
        def run(self, batch):
            probabilities = np.zeros((*batch.shape[:3], 2), np.float32)
            probabilities[..., 1] = batch[..., 0] > 0
            probabilities[..., 0] = 1 - probabilities[..., 1]
            return {"mask": probabilities}

    predictor = Predictor(Echo(), MINIMAL)
    assert isinstance(predictor.card, ModelCard) and predictor.card == ModelCard.from_dict(MINIMAL)
    assert (predictor.pixel_max, predictor.stride) == (255, 16)
    assert predictor.pixel_dtype == np.uint8 and predictor.patch_size == 32
    image = np.zeros((20, 24), np.uint8)
    image[:5] = 9
    result = predictor.predict(image)
    assert result.detections is None and result.mask.tolist() == (image > 0).tolist()
    with pytest.raises(ArtifactError) as error:
        Predictor(Echo(), {k: v for k, v in MINIMAL.items() if k != "input"})
    _one_line(error, "the card given to the Predictor lacks ['input']")


@pytest.mark.parametrize("version", [0, CARD_VERSION + 1, "1", None, True])
def test_a_card_of_another_version_is_refused_in_one_line(tmp_path, version):
    (tmp_path / "model_card.json").write_text(json.dumps({**trained_json(),
                                                          "card_version": version}))
    with pytest.raises(ArtifactError) as error:
        load_card(tmp_path)
    message = _one_line(error, str(tmp_path / "model_card.json"),
                        f"card_version {version!r}", f"this toolkit reads {CARD_VERSION}",
                        f"retinaunet-deploy train --out {tmp_path}",
                        f"retinaunet-deploy export {tmp_path}")
    assert ("upgrade retinaunet-deploy" in message) == (version == CARD_VERSION + 1)
    onnx_path = tmp_path / "model.onnx"
    with pytest.raises(ArtifactError) as error:
        embedded_card(onnx_path, json.dumps({**trained_json(), "card_version": version}))
    _one_line(error, f"the model card embedded in {onnx_path}", "re-export it",
              "retinaunet-deploy export")


def test_an_earlier_version_is_read_through_its_upgrade(monkeypatch, tmp_path):
    """The path an earlier card takes once a version 2 exists: upgraded, then typed."""
    def from_0(old: dict) -> dict:
        upgraded = {k: v for k, v in old.items() if k != "pixels"}
        return {**upgraded, "card_version": 1, "input": {**old["input"], **old["pixels"]}}

    monkeypatch.setitem(card_module.UPGRADES, 0, from_0)
    old = {**MINIMAL, "card_version": 0, "pixels": {"pixel_dtype": "uint16", "pixel_max": 4095}}
    (tmp_path / "model_card.json").write_text(json.dumps(old))
    card = load_card(tmp_path)
    assert card.card_version == CARD_VERSION and card.input.pixel_max == 4095
    assert card.to_dict()["card_version"] == CARD_VERSION and "pixels" not in card.to_dict()


@pytest.mark.parametrize("section", ["builder", "class_names", "input", "normalization"])
def test_a_card_lacking_a_required_section_is_refused_in_one_line(tmp_path, section):
    (tmp_path / "model_card.json").write_text(json.dumps(
        {k: v for k, v in trained_json().items() if k != section}))
    with pytest.raises(ArtifactError) as error:
        load_card(tmp_path)
    _one_line(error, str(tmp_path / "model_card.json"), f"lacks ['{section}']",
              f"retinaunet-deploy train --out {tmp_path}")


@pytest.mark.parametrize("section,value", [
    ("input", {"channels": "one", "stride": 16, "patch_size": 64}),
    ("input", {"stride": 16, "patch_size": 64}),
    ("input", {"channels": 1}),                   # no stride, and none in this builder
    ("builder", ["tiny"]),
    ("class_names", "background"),
    ("normalization", {"mean": "dark"}),
    ("normalization", {"median": 3.0}),
    ("anchors", {"strides": [16, 8]}),
    ("postprocess", {"score_threshold": 0.1, "nms": True}),
    ("data", ["synthetic"]),
])
def test_a_malformed_section_is_refused_in_one_line(tmp_path, section, value):
    js = {**trained_json(), section: value}
    if section == "input" and value == {"channels": 1}:
        js["builder"] = {}
    (tmp_path / "model_card.json").write_text(json.dumps(js))
    with pytest.raises(ArtifactError) as error:
        load_card(tmp_path)
    _one_line(error, str(tmp_path / "model_card.json"), f"malformed '{section}' section",
              "retinaunet-deploy train --out")


def test_unreadable_cards_are_refused_in_one_line(tmp_path):
    (tmp_path / "model_card.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError) as error:
        load_card(tmp_path)
    _one_line(error, str(tmp_path / "model_card.json"), "is not a JSON object")
    (tmp_path / "model_card.json").write_text('{"card_version": 1,')
    with pytest.raises(ArtifactError) as error:
        load_card(tmp_path)
    _one_line(error, str(tmp_path / "model_card.json"), "is not valid JSON")
    with pytest.raises(ArtifactError) as error:
        embedded_card(tmp_path / "x.onnx", "{not json")
    _one_line(error, str(tmp_path / "x.onnx"), "corrupt model_card")
    with pytest.raises(ArtifactError) as error:  # nothing written for a card that does not type
        save_card(tmp_path / "run", {"class_names": ["background"]})
    _one_line(error, str(tmp_path / "run" / "model_card.json"), "lacks ['builder'")
    assert not (tmp_path / "run").exists()


def test_the_card_is_frozen_and_edited_by_replace():
    js = trained_json()
    card = ModelCard.from_dict(js)
    for target, name, value in ((card, "input", None), (card, "class_names", ()),
                                (card.input, "channels", 3), (card.normalization, "mean", 1.0),
                                (card.anchors, "strides", (8,)),
                                (card.postprocess, "score_threshold", 0.5)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, name, value)
    edited = dataclasses.replace(card, postprocess=dataclasses.replace(
        card.detection_config, score_threshold=0.001))
    assert edited.detection_config.score_threshold == 0.001
    assert card.detection_config.score_threshold == 0.05          # the original is untouched
    expected = {**js, "postprocess": {**js["postprocess"], "score_threshold": 0.001}}
    assert json.dumps(edited.to_dict()) == json.dumps(expected)   # the rest exactly as read
    without_heads = dataclasses.replace(card, anchors=None, postprocess=None, det_class_names=())
    assert not without_heads.has_detection and without_heads.num_det_classes is None
    assert without_heads.to_dict()["anchors"] is None and without_heads.to_dict()["data"] == js[
        "data"]
    # Built in code (no JSON read): the typed sections in training's order.
    built = ModelCard(builder={"depth": 4}, class_names=["background", "x"],
                      input=InputSpec(channels=1, stride=16, patch_size=32))
    assert built.class_names == ("background", "x")
    assert list(built.to_dict()) == ["card_version", "preset", "builder", "class_names",
                                     "det_class_names", "input", "normalization", "anchors",
                                     "postprocess", "data"]
    assert ModelCard.from_dict(built.to_dict()) == built


def test_the_package_reads_the_card_only_by_attribute():
    """No ``card[...]``/``card.get(...)`` left: the JSON is read in card.py alone."""
    pattern = re.compile(r"\bcard(\(\))?(\[|\.get\()")
    found = [f"{path.relative_to(PACKAGE)}:{number}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not found, found


def test_the_card_sits_at_the_bottom():
    """card.py imports only the bottom layer and the three dataclasses it types with."""
    allowed = {"retinaunet_deploy.artifacts", "retinaunet_deploy.errors",
               "retinaunet_deploy.names", "retinaunet_deploy.model.anchors",
               "retinaunet_deploy.postprocess", "retinaunet_deploy.label_rules",
               "retinaunet_deploy.normalization",   # its Normalization (bottom: errors only)
               "retinaunet_deploy.remake"}   # the bottom layer's remedies (names, artifacts)
    tree = ast.parse((PACKAGE / "card.py").read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
                and node.module.startswith("retinaunet_deploy")}
    assert imported <= allowed, imported - allowed
