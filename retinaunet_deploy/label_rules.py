"""How a dataset's mask files become classes 0..K-1: the model card's ``labels`` section.

``train --label-map 255:1`` maps stored mask values to classes; ``--ignore-index
255`` marks void pixels (a VOC border), left out of the losses, of every metric
and of the ground-truth boxes. Both are recorded in the card (`Labels`) and
applied by every stage that reads ground truth (`data.labels.apply_labels`).
In a loaded sample's mask (`data.sample.Sample`) void pixels hold `VOID_LABEL`,
so a dataset with an ignore index has at most 255 classes (0..254).
"""

from __future__ import annotations

from dataclasses import dataclass

from retinaunet_deploy.errors import ConfigError

VOID_LABEL = 255


@dataclass(frozen=True)
class Labels:
    """The card's ``labels``: ``{"map": {"255": 1}, "ignore_index": null}``.

    Attributes:
        map: ((stored value, class), ...) sorted by stored value: a mask pixel holding
            a stored value becomes that class; values not in the map are classes as
            stored. A dict is accepted and stored as pairs.
        ignore_index: a stored mask value marking void pixels, or None. Never a
            stored value of `map`.
    Raises:
        ConfigError: a negative or non-integer value, a class >= `VOID_LABEL`, or an
            ignore index that is also mapped.
    """

    map: tuple[tuple[int, int], ...] = ()
    ignore_index: int | None = None

    def __post_init__(self):
        pairs = dict(self.map)
        values = [*pairs, *pairs.values()]
        if self.ignore_index is not None:
            values.append(self.ignore_index)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"mask values and classes are integers >= 0, got {value!r}")
        if any(target >= VOID_LABEL for target in pairs.values()):
            raise ConfigError(f"--label-map maps to class {max(pairs.values())}; classes are "
                              f"0..{VOID_LABEL - 1}")
        if self.ignore_index is not None and self.ignore_index in pairs:
            raise ConfigError(f"--ignore-index {self.ignore_index} is also mapped by "
                              f"--label-map; a stored value is either a class or void")
        object.__setattr__(self, "map", tuple(sorted(pairs.items())))

    @property
    def void(self) -> int | None:
        """The value void pixels hold in a loaded mask (`VOID_LABEL`), or None without an
        ignore index."""
        return None if self.ignore_index is None else VOID_LABEL

    def describe(self) -> str:
        """The options that give these rules: "--label-map 255:1 --ignore-index 254"."""
        parts = []
        if self.map:
            parts.append("--label-map " + ",".join(f"{k}:{v}" for k, v in self.map))
        if self.ignore_index is not None:
            parts.append(f"--ignore-index {self.ignore_index}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        """The card's ``labels`` JSON (map keys are strings, as JSON keys are)."""
        return {"map": {str(k): v for k, v in self.map}, "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, labels: dict | None) -> Labels:
        """Type a ``labels`` section (None or {}: masks read as stored, nothing void).
        Raises TypeError or ConfigError for a malformed one."""
        labels = labels or {}
        if not isinstance(labels, dict) or set(labels) - {"map", "ignore_index"}:
            raise TypeError("expected {\"map\": {stored value: class}, \"ignore_index\": "
                            "value or null}")
        mapping = labels.get("map") or {}
        if not isinstance(mapping, dict) or not all(str(k).isdigit() for k in mapping):
            raise TypeError("map must be {stored value: class} of integers")
        return cls(tuple((int(k), v) for k, v in mapping.items()), labels.get("ignore_index"))


AS_STORED = Labels()   # no map, no void: masks read as stored (a card without ``labels``)


def parse_label_map(text: str | None) -> dict[int, int]:
    """``"255:1,128:2"`` -> {255: 1, 128: 2} (the ``--label-map`` option); None or "" -> {}.

    Raises ConfigError naming the bad entry and the expected form.
    """
    mapping: dict[int, int] = {}
    for entry in (text or "").replace(" ", "").split(","):
        if not entry:
            continue
        source, _, target = entry.partition(":")
        if not (source.isdigit() and target.isdigit()):
            raise ConfigError(f"--label-map entry {entry!r} is not STORED:CLASS; give e.g. "
                              f"--label-map 255:1 or --label-map 128:1,255:2")
        if int(source) in mapping:
            raise ConfigError(f"--label-map maps {source} twice; give each stored value once")
        mapping[int(source)] = int(target)
    return mapping
