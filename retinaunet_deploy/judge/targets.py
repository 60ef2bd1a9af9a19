"""The gates: one definition per judged figure, and the targets a variant must meet.

A `Gate` says which figure of an `Agreement` it reads, which way passes, its
default target per precision, the calibrate CLI option that sets it, and how a
miss reads. `Targets` holds one value per gate (keyword-only, unknown names
refused, so a new gate can never shift the others), and `targets_for(precision)`
is the one place a precision's defaults are chosen. Adding a gate is one
`register_gate(Gate(...))`: `Agreement.failures`, the interval check, the
calibrate options, calibration.json and the bench's gate columns follow.

Defaults: int8/fp32 targets from the trained small model's measured headroom
(README, "Gates"); fp16 and bf16 keep every pixel decision but one in a
thousand and are not held to Dice (their few flips sit on thin rings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from retinaunet_deploy.errors import ConfigError

# Precisions whose default targets are the "half float" ones (no calibration, tiny drift).
HALF_PRECISIONS = ("fp16", "bf16")


@dataclass(frozen=True)
class Gate:
    """One gated figure.

    Attributes:
        name: the `Targets` keyword and the recorded target's key.
        label: how the figure is named in a miss, an interval miss and the summary.
        figure: ``figure(agreement) -> float | None`` (None: not measured, e.g. no
            detection heads); the value compared with the target.
        at_least: True: the figure must be >= the target; False: <= the target.
        default: the target for int8 and fp32 variants.
        half_default: the target for fp16 and bf16 variants (None: `default`).
        option: the calibrate CLI option setting it for int8/fp32 (e.g. "--pixel-agreement").
        half_option: the option setting it for fp16/bf16 (None: `option` sets both).
        interval: ``interval(intervals) -> float | None``: the unfavourable end of the
            figure's 95% bootstrap interval (None: no interval for it).
        fmt: how the figure prints in a miss and the summary.
        target_fmt: how the target prints in a miss ("{}": as the number was given).
        interval_fmt: how the interval's end prints in an interval miss.
        miss_label: the label in a miss, formatted with ``match_iou`` (None: `label`).
        kind: "mask" or "detections": the summary prints mask figures, then the mean
            probability difference, then detection figures.
        summary: ``summary(agreement) -> str | None``: its part of `Agreement.summary`
            (None: "label value" when measured).
        help: the option's help text.
    """

    name: str
    label: str
    figure: Callable[[object], float | None]
    at_least: bool
    default: float
    option: str
    help: str
    half_default: float | None = None
    half_option: str | None = None
    interval: Callable[[dict], float | None] = field(default=lambda intervals: None)
    fmt: str = "{:.4f}"
    target_fmt: str = "{}"
    interval_fmt: str = "{:.4f}"
    miss_label: str | None = None
    kind: str = "mask"
    summary: Callable[[object], str | None] | None = None

    def target(self, precision: str) -> float:
        """The default target of a `precision` (fp32, int8, fp16, bf16) variant."""
        if precision in HALF_PRECISIONS and self.half_default is not None:
            return self.half_default
        return self.default

    def misses(self, value: float | None, target: float) -> bool:
        """Whether `value` misses `target` (an unmeasured figure, None, never does)."""
        if value is None:
            return False
        return value < target if self.at_least else value > target

    def failure(self, value: float, target: float, match_iou: float = 0.5) -> str:
        """How a miss reads, e.g. "pixel agreement 99.3000% < 99.50%"."""
        sign = "<" if self.at_least else ">"
        label = (self.miss_label or self.label).format(match_iou=match_iou)
        return f"{label} {self.fmt.format(value)} {sign} {self.target_fmt.format(target)}"

    def interval_failure(self, end: float, target: float) -> str:
        """How an interval miss reads, e.g. "Dice vs float 95% interval starts at 0.9700 <
        0.98"."""
        where = "starts at" if self.at_least else "reaches"
        sign = "<" if self.at_least else ">"
        return f"{self.label} 95% interval {where} {self.interval_fmt.format(end)} {sign} {target}"

    def summary_part(self, agreement) -> str | None:
        """Its part of the one-line summary, or None when not measured."""
        if self.summary is not None:
            return self.summary(agreement)
        value = self.figure(agreement)
        return None if value is None else f"{self.label} {self.fmt.format(value)}"


GATES: dict[str, Gate] = {}


def register_gate(gate: Gate) -> Gate:
    """Add (or replace) a gate; every `Targets` made after this knows it."""
    GATES[gate.name] = gate
    return gate


def unregister_gate(name: str) -> None:
    """Remove a gate (tests that plant one); `Targets` made after this no longer know it."""
    GATES.pop(name, None)


def _lower(name):
    return lambda intervals: intervals[name][0] if name in intervals else None


def _ap_drop(agreement) -> float | None:
    diff = agreement.detections.get("map@0.1_diff")
    return None if diff is None else -diff


def _ap_drop_interval(intervals: dict) -> float | None:
    return -intervals["map@0.1_diff"][0] if "map@0.1_diff" in intervals else None


def _ap_diff_summary(agreement) -> str | None:
    diff = agreement.detections.get("map@0.1_diff")
    return None if diff is None else f"AP@0.1 diff {diff:+.3f}"


register_gate(Gate(
    "pixel_agreement", "pixel agreement", lambda a: a.pixel_agreement, True, 0.995,
    "--pixel-agreement", "INT8/fp32 target: fraction of pixels whose class matches the float "
    "model.", half_default=0.999, half_option="--fp16-pixel-agreement",
    interval=_lower("pixel_agreement"), fmt="{:.4%}", target_fmt="{:.2%}"))
register_gate(Gate(
    "mean_dice_vs_reference", "Dice vs float", lambda a: a.mean_dice_vs_reference, True, 0.98,
    "--mean-dice", "INT8/fp32 target: mean foreground Dice between the variant's and the "
    "float model's masks.", half_default=0.0, interval=_lower("mean_dice_vs_reference")))
register_gate(Gate(
    "matched_fraction", "confident boxes matched", lambda a: a.detections.get("matched_fraction"),
    True, 0.95, "--matched-fraction", "Target: fraction of the float model's boxes scoring "
    ">= 0.5 that the variant matches (same class, IoU >= 0.5).",
    interval=_lower("matched_fraction"), fmt="{:.1%}", target_fmt="{:.0%}",
    miss_label="confident boxes matched (IoU >= {match_iou})", kind="detections"))
register_gate(Gate(
    "max_ap_drop", "AP@0.1 drop", _ap_drop, False, 0.02, "--max-ap-drop",
    "Target: largest AP@0.1 drop (float minus variant, against ground truth).",
    interval=_ap_drop_interval, fmt="{:.3f}", interval_fmt="{:.3f}", kind="detections",
    summary=_ap_diff_summary))

# Not a gate: the IoU at which a candidate box matches a reference box.
DEFAULT_MATCH_IOU = 0.5


class Targets:
    """One target per gate, keyword-only; unnamed gates take their int8/fp32 default.

    ``Targets(pixel_agreement=0.99)``; ``targets.pixel_agreement``; ``targets.to_dict()``.
    ``match_iou`` (default 0.5) is the box-matching IoU, not a gate.
    Raises `ConfigError` for a name that is no registered gate.
    """

    __slots__ = ("_values", "match_iou")

    def __init__(self, *, match_iou: float = DEFAULT_MATCH_IOU, **values: float):
        unknown = sorted(set(values) - set(GATES))
        if unknown:
            raise ConfigError(f"unknown gate(s) {unknown}; the gates are {sorted(GATES)}")
        object.__setattr__(self, "_values", {name: float(values.get(name, gate.default))
                                             for name, gate in GATES.items()})
        object.__setattr__(self, "match_iou", float(match_iou))

    def __getattr__(self, name: str) -> float:
        if name in GATES or name in object.__getattribute__(self, "_values"):
            return self.get(name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("Targets are frozen; make new ones with Targets(...)")

    def __eq__(self, other) -> bool:
        return (isinstance(other, Targets) and self._values == other._values
                and self.match_iou == other.match_iou)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self._values.items())), self.match_iou))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._values.items())
        return f"Targets({inner}, match_iou={self.match_iou})"

    def __reduce__(self):  # copy, deepcopy and pickle rebuild through the constructor
        return (Targets.from_dict, (self.to_dict(),))

    def items(self):
        """(gate name, target) pairs, in gate registration order."""
        return self._values.items()

    def get(self, name: str) -> float:
        """The target of gate `name`; a gate registered after these targets were made
        takes its int8/fp32 default."""
        values = object.__getattribute__(self, "_values")
        return values[name] if name in values else GATES[name].default

    def to_dict(self) -> dict:
        """JSON-ready: every gate's target, then ``match_iou``."""
        return {**self._values, "match_iou": self.match_iou}

    @classmethod
    def from_dict(cls, values: dict) -> Targets:
        """From `to_dict()` output; keys of gates no longer registered are ignored."""
        known = {k: v for k, v in values.items() if k in GATES}
        return cls(match_iou=values.get("match_iou", DEFAULT_MATCH_IOU), **known)


def targets_for(precision: str, overrides: dict | None = None) -> Targets:
    """The targets of a variant of `precision` (fp32, fp16, bf16, int8).

    Args:
        overrides: ``{key: {gate: value, "match_iou": value}}``, where a key is a
            precision (calibration.json's ``targets_by_precision``: fp32, int8, fp16,
            bf16, each a `Targets.to_dict()`) or a group as the calibrate options
            set them: "int8" for int8 and fp32, "fp16" for fp16 and bf16. The
            precision's own entry wins over its group's; missing gates take their
            precision default, and names of gates no longer registered are ignored.
    """
    group = "fp16" if precision in HALF_PRECISIONS else "int8"
    overrides = overrides or {}
    chosen = {**overrides.get(group, {}), **overrides.get(precision, {})}
    values = {name: float(chosen.get(name, gate.target(precision)))
              for name, gate in GATES.items()}
    return Targets(match_iou=chosen.get("match_iou", DEFAULT_MATCH_IOU), **values)
