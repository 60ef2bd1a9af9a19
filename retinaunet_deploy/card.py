"""The model card: everything a runtime needs besides the weights, typed once.

``model_card.json`` sits beside ``model.keras`` (and its text goes into every
ONNX file's metadata). Its sections:

* ``card_version``: the schema version (`CARD_VERSION`);
* ``builder``: `RetinaUNet.get_config()`, which rebuilds the architecture;
* ``preset``, ``class_names``, ``det_class_names``;
* ``input`` (`InputSpec`): layout NHWC, height, width (null: any), channels,
  dtype float32, stride, patch_size, ``pixel_dtype`` (uint8, uint16, or since
  issue 21 signed and float: int16, float32...) and ``pixel_max``;
* ``normalization`` (`normalization.Normalization`): the scheme chosen at
  training (``global``: mean and std of the training pixels, applied in-graph by
  the ``preprocess`` Rescaling layer, x * scale + offset, so apps feed raw pixel
  values as float32; ``zscore`` per image, or ``ct`` clip and z-score, applied
  before the graph by `normalization.normalize`, the one function every runtime
  calls);
* ``anchors`` (`AnchorConfig`), ``postprocess`` (`DetectionConfig`);
* ``labels`` (`label_rules.Labels`, optional): the mask values' label map and ignore index;
* ``data``, ``training``, ``evaluation`` and ``warnings``: where the model came
  from and how good it was on held-out images.

Every stage reads the card through `load_card` (a run folder) or `embedded_card`
(an ONNX file's metadata) as a frozen `ModelCard`; the defaults of optional
entries are stated here and nowhere else. `ModelCard.to_dict` gives back the
JSON exactly as read (same keys, values and order), since it is embedded and
hashed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

from retinaunet_deploy.artifacts import write_json
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.label_rules import VOID_LABEL, Labels  # noqa: F401 (the card's section)
from retinaunet_deploy.model.anchors import AnchorConfig
from retinaunet_deploy.names import CARD
from retinaunet_deploy.normalization import Normalization
from retinaunet_deploy.postprocess import DetectionConfig

CARD_VERSION = 1
REQUIRED_KEYS = ("card_version", "builder", "class_names", "input", "normalization")
# card_version n -> a function turning a version-n card's JSON into version n + 1's
# (card_version included). A card of an earlier version is read through these, or
# refused when one is missing. Version 1 is the first: none yet.
UPGRADES: dict[int, Callable[[dict], dict]] = {}
# The training pixel dtypes a card may record (unsigned: ``global`` normalisation; the
# others: ``zscore`` or ``ct``, `normalization`).
PIXEL_DTYPES = ("uint8", "uint16", "int8", "int16", "int32", "float16", "float32", "float64")
DEFAULT_REMEDY = ("re-train with this version ('retinaunet-deploy train'), then re-export "
                  "('retinaunet-deploy export RUN_DIR')")


@dataclass(frozen=True)
class InputSpec:
    """What an app feeds the graph (the card's ``input``).

    Attributes:
        channels: C of the (N, H, W, C) float32 input tensor `name`.
        stride: the network's total stride (2**depth), px; H and W are padded to it.
        patch_size: the training patch side, px (the per-image detection counts of
            `DetectionConfig` are set for an input of this size).
        pixel_dtype: the dtype of the training pixels: "uint8" or "uint16" (the
            ``global`` normalisation), or signed / float ("int16" CT in HU, "float32"
            MRI...; the ``zscore`` and ``ct`` normalisations) (`PIXEL_DTYPES`).
        pixel_max: uint8/uint16: the dtype's largest value (255 or 65535): raw inputs
            lie in [0, pixel_max]. Signed and float pixels: the training pixels'
            largest value rounded up (at least 1), for display only: no range is
            enforced on them (the card's normalisation decides what the graph sees).
        height, width: the graph's fixed input size, px; None: any (symbolic).
    """

    channels: int
    stride: int
    patch_size: int
    pixel_dtype: str = "uint8"
    pixel_max: int = 255
    name: str = "image"
    layout: str = "NHWC"
    dtype: str = "float32"
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        for name in ("channels", "stride", "patch_size", "pixel_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"input {name} must be a positive integer, got {value!r}")
        if self.pixel_dtype not in PIXEL_DTYPES:
            raise ConfigError(f"input pixel_dtype must be one of {list(PIXEL_DTYPES)}, got "
                              f"{self.pixel_dtype!r}")

    def to_dict(self) -> dict:
        """The card's ``input`` JSON, in the order training writes it."""
        return {"name": self.name, "layout": self.layout, "height": self.height,
                "width": self.width, "channels": self.channels, "dtype": self.dtype,
                "stride": self.stride, "patch_size": self.patch_size,
                "pixel_dtype": self.pixel_dtype, "pixel_max": self.pixel_max}

    @classmethod
    def from_dict(cls, spec: dict, builder: dict) -> InputSpec:
        """Type an ``input`` section; `stride` and `patch_size` default to the builder's
        (2**depth, the input shape's height)."""
        stride = spec.get("stride") or 2 ** builder["depth"]
        patch_size = spec.get("patch_size") or builder["input_shape"][0]
        return cls(channels=spec["channels"], stride=stride, patch_size=patch_size,
                   **{f.name: spec[f.name] for f in fields(cls)
                      if f.name not in ("channels", "stride", "patch_size")
                      and spec.get(f.name) is not None})


@dataclass(frozen=True)
class ModelCard:
    """The model card, typed (``model_card.json``; embedded in every ONNX file).

    Built by `ModelCard.from_dict` (or `load_card`, `embedded_card`) from the
    JSON; `to_dict` gives that JSON back unchanged. Frozen: an edited card is
    ``dataclasses.replace(card, ...)``, whose `to_dict` writes the replaced
    sections from their typed values and keeps every other section as read.

    Attributes:
        builder: `RetinaUNet.get_config()`, which rebuilds the architecture (read-only).
        class_names: the K mask classes, background first.
        input: `InputSpec`; normalization: `Normalization`.
        det_class_names: the detection classes (empty: no detection heads).
        anchors: `AnchorConfig`, or None without heads.
        postprocess: `DetectionConfig` as recorded, or None (see `detection_config`).
        data: the dataset source's block (``kind``, splits...; `data.sources`; read-only).
        labels: `Labels`: how the masks were read (label map, ignore index).
        preset: the architecture preset's name, or None.
        card_version: the schema version it was written in (`CARD_VERSION`).
        raw: the JSON it was read from ({} for a card built in code).
    """

    builder: dict
    class_names: tuple[str, ...]
    input: InputSpec
    normalization: Normalization = field(default_factory=Normalization)
    det_class_names: tuple[str, ...] = ()
    anchors: AnchorConfig | None = None
    postprocess: DetectionConfig | None = None
    data: dict = field(default_factory=dict)
    labels: Labels = field(default_factory=Labels)
    preset: str | None = None
    card_version: int = CARD_VERSION
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "det_class_names", tuple(self.det_class_names))

    @property
    def has_detection(self) -> bool:
        """Whether the model has detection heads (the card has anchors)."""
        return self.anchors is not None

    @property
    def num_det_classes(self) -> int | None:
        """The detection classes' count, or None without them (metrics then use K - 1)."""
        return len(self.det_class_names) or None

    @property
    def detection_config(self) -> DetectionConfig:
        """The postprocess thresholds (`DetectionConfig`'s defaults when the card has none)."""
        return self.postprocess or DetectionConfig()

    @property
    def training(self) -> dict:
        """What training recorded (options, history, seconds...); {} when absent. A copy."""
        return copy.deepcopy(self.raw.get("training", {}))

    @property
    def evaluation(self) -> dict:
        """The whole-image test figures training measured; {} when absent. A copy."""
        return copy.deepcopy(self.raw.get("evaluation", {}))

    @property
    def warnings(self) -> list[str]:
        """What a user must know about the figures (small splits...); [] when absent."""
        return list(self.raw.get("warnings", []))

    def to_dict(self) -> dict:
        """The card's JSON (a new dict): as read for every section left as read, the
        typed value's JSON for a section replaced since, in the order read (a section
        new to the JSON last)."""
        typed = self._typed_sections()
        read = self._as_read
        changed = {key for key in typed
                   if read is None or getattr(read, key) != getattr(self, key)}
        keys = [*self.raw, *(key for key in typed if key in changed and key not in self.raw)]
        return copy.deepcopy({key: typed[key] if key in changed else self.raw[key]
                              for key in keys})

    def _typed_sections(self) -> dict:
        labels = ({"labels": self.labels.to_dict()}   # optional: absent = masks as stored
                  if self.labels != Labels() or "labels" in self.raw else {})
        return {
            "card_version": self.card_version, "preset": self.preset,
            "builder": self.builder, "class_names": list(self.class_names),
            "det_class_names": list(self.det_class_names), "input": self.input.to_dict(),
            "normalization": self.normalization.to_dict(),
            "anchors": self.anchors.to_dict() if self.anchors else None,
            "postprocess": self.postprocess.to_dict() if self.postprocess else None,
            "data": self.data, **labels,
        }

    @cached_property
    def _as_read(self) -> ModelCard | None:
        """The card `raw` types to (what `to_dict` compares against), or None."""
        return ModelCard.from_dict(self.raw) if self.raw else None

    @classmethod
    def from_dict(cls, card_json: dict, source: str = "the model card",
                  remedy: str = DEFAULT_REMEDY) -> ModelCard:
        """Check and type a card's JSON; the defaults of absent optional entries are the
        dataclasses' (``pixel_max`` 255, ``mean`` 0.0...).

        Args:
            source: what the card is, for errors (a file, an ONNX file's metadata).
            remedy: what the user should do about a refused card.
        Raises:
            ArtifactError (one line naming `source` and `remedy`): not a JSON object,
                a card_version this toolkit neither reads nor upgrades, a required
                section missing (`REQUIRED_KEYS`) or a malformed one.
        """
        if not isinstance(card_json, dict):
            raise ArtifactError(f"{source} is not a JSON object; {remedy}")
        try:
            text = json.dumps(card_json)
        except (TypeError, ValueError) as error:
            raise ArtifactError(f"{source} is not JSON ({_line(error)}); {remedy}") from error
        js = _current_version(json.loads(text), source, remedy)
        missing = [key for key in REQUIRED_KEYS if key not in js]
        if missing:
            raise ArtifactError(f"{source} lacks {missing}; {remedy}")

        def section(name: str, parse: Callable[[], object]):
            try:
                return parse()
            except (KeyError, TypeError, ValueError, IndexError, ConfigError) as error:
                raise ArtifactError(f"{source} has a malformed '{name}' section "
                                    f"({_line(error)}); {remedy}") from error

        builder = section("builder", lambda: _mapping(js["builder"]))
        return cls(
            builder=builder,
            class_names=section("class_names", lambda: _names(js["class_names"])),
            input=section("input", lambda: InputSpec.from_dict(_mapping(js["input"]), builder)),
            normalization=section("normalization",
                                  lambda: Normalization.from_dict(js["normalization"])),
            det_class_names=section("det_class_names",
                                    lambda: _names(js.get("det_class_names") or [])),
            anchors=section("anchors", lambda: AnchorConfig.from_dict(_mapping(js["anchors"]))
                            if js.get("anchors") else None),
            postprocess=section("postprocess", lambda: DetectionConfig(
                **_mapping(js["postprocess"])) if js.get("postprocess") else None),
            data=section("data", lambda: _mapping(js.get("data") or {})),
            labels=section("labels", lambda: Labels.from_dict(js.get("labels"))),
            preset=js.get("preset"), card_version=js["card_version"],
            raw=json.loads(json.dumps(js)))


def _line(error: Exception) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _mapping(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _names(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise TypeError("expected a list of names")
    return tuple(value)


def _current_version(card_json: dict, source: str, remedy: str) -> dict:
    """The card upgraded to `CARD_VERSION` through `UPGRADES`, or refused in one line.
    A card without a version is left to the check of required sections."""
    if "card_version" not in card_json:
        return card_json
    version = card_json["card_version"]
    while type(version) is int and version < CARD_VERSION and version in UPGRADES:
        card_json = UPGRADES[version](card_json)
        version = card_json["card_version"]
    if type(version) is int and version == CARD_VERSION:
        return card_json
    newer = type(version) is int and version > CARD_VERSION
    raise ArtifactError(f"{source} has card_version {version!r} and this toolkit reads "
                        f"{CARD_VERSION}; {'upgrade retinaunet-deploy, or ' if newer else ''}"
                        f"{remedy}")


def run_remedy(run_dir: Path) -> str:
    """What to do about a run folder's refused card."""
    return (f"re-train with this version ('retinaunet-deploy train --out {run_dir}'), then "
            f"re-export ('retinaunet-deploy export {run_dir}')")


def save_card(run_dir: Path, card_json: dict) -> ModelCard:
    """Check `card_json` (`ModelCard.from_dict`, `card_version` added first) and write it
    as ``run_dir/model_card.json``; returns the typed card, whose `to_dict` is the JSON
    written. Raises `ArtifactError` for a card that does not type (nothing written)."""
    path = Path(run_dir) / CARD
    card = ModelCard.from_dict({"card_version": CARD_VERSION, **card_json}, str(path),
                               run_remedy(Path(run_dir)))
    write_json(path, card.to_dict())
    return card


def load_card(run_dir: Path) -> ModelCard:
    """Read, check and type ``run_dir/model_card.json``.

    Raises:
        ArtifactError (one line naming the file and what to do): missing, not JSON,
            or refused by `ModelCard.from_dict`.
    """
    path = Path(run_dir) / CARD
    if not path.is_file():
        raise ArtifactError(f"{path} not found; train a model into {run_dir} first "
                            f"('retinaunet-deploy train --out {run_dir}')")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({_line(error)}); restore it from a "
                            f"copy, or re-train ('retinaunet-deploy train --out {run_dir}')"
                            ) from error
    return ModelCard.from_dict(card, str(path), run_remedy(Path(run_dir)))


def embedded_card(path: Path, text: str | None) -> ModelCard | None:
    """The model card an ONNX file carries in its ``model_card`` metadata, typed (None:
    it has none); parsed as JSON, never evaluated.

    Raises:
        ArtifactError (one line naming the file): metadata that is not JSON, or a card
            `ModelCard.from_dict` refuses.
    """
    if text is None:
        return None
    remedy = ("re-export it from a run trained with this version "
              "('retinaunet-deploy export RUN_DIR')")
    try:
        card = json.loads(text)
    except json.JSONDecodeError as error:
        from retinaunet_deploy.remake import remedy as remake

        raise ArtifactError(f"{path} has a corrupt model_card in its metadata "
                            f"({_line(error)}); {remake(path)}") from error
    return ModelCard.from_dict(card, f"the model card embedded in {path}", remedy)
