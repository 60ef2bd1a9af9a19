"""The calibration stage's options, split by job.

* `QuantisationOptions`: how activation ranges are calibrated (`export.quantize`);
* targets: overrides of the gates' defaults, ``{"int8": {gate: value}, "fp16": {...}}``
  as `judge.targets.targets_for` takes them ("int8" applies to int8 and fp32
  variants, "fp16" to fp16 and bf16);
* `FallbackOptions`: whether the INT8 fallback may keep layers in float, and under
  which runtimes the Q/DQ file must pass (`export.fallback`);
* `ExtraVariants`: which optional variants are made or judged (`export.variants`).

`CalibrationOptions` holds one of each plus the evaluation images, the threads of
every runtime and the ungated flag. Each callee takes only its part.

The flat keyword form (``method=``, ``pixel_agreement=``, ``fallback=``, ...),
which the calibrate CLI options and calibration.json's ``options`` record use, is
`CalibrationOptions.from_flat` and `CalibrationOptions.record`. A gate's flat key
is its CLI option without dashes (``--fp16-pixel-agreement`` -> ``fp16_pixel_agreement``),
so a newly registered gate has one with no edit here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.export.quantize import METHODS
from retinaunet_deploy.judge.targets import GATES, targets_for

# The precisions whose targets calibration.json records (bench judges its rows with them).
RECORDED_PRECISIONS = ("fp32", "int8", "fp16", "bf16")


@dataclass(frozen=True)
class QuantisationOptions:
    """How INT8 activation ranges are calibrated.

    Attributes:
        method: "minmax", "entropy" or "percentile".
        percentile: kept by the percentile method, in (90, 100].
        calibration_images: training patches to calibrate on (>= 1).
        batch_size: patches per calibration batch.

    Raises `ConfigError` for an unknown method, a percentile out of range or no images.
    """

    method: str = "minmax"
    percentile: float = 99.999
    calibration_images: int = 128
    batch_size: int = 8

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; choose one of "
                              f"{list(METHODS)}")
        if not 90 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (90, 100], got {self.percentile}")
        if self.calibration_images < 1:
            raise ConfigError("calibration_images and eval_images must be >= 1")


@dataclass(frozen=True)
class FallbackOptions:
    """The INT8 fallback: keep the most sensitive convolutions in float until the target holds.

    Attributes:
        enabled: False fails instead of keeping layers in float.
        runtimes: the runtimes the Q/DQ file is tuned to pass under. It passes as
            TensorRT computes it (ONNX Runtime unfused) and, with a few more float
            layers at most, under OpenVINO's int8 kernels too (`export.fallback`).
    """

    enabled: bool = True
    runtimes: tuple[str, ...] = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class ExtraVariants:
    """Which variants beyond the Q/DQ INT8 file are made or judged.

    Attributes:
        fp16: make model.fp16.onnx.
        cpu_variant: make the QOperator U8S8 file (kept only if faster, see below).
        openvino: judge the OpenVINO runtime variants (int8, and bf16 where the CPU has it).
        tflite: make and judge model.int8.tflite (LiteRT).
        cpu_speedup_margin: the U8S8 file is kept only when this much faster than Q/DQ.
    """

    fp16: bool = True
    cpu_variant: bool = True
    openvino: bool = True
    tflite: bool = True
    cpu_speedup_margin: float = 0.10

    def judges(self, runtime) -> bool:
        """Whether the registered `runtime` (a `runtime.registry.Runtime`) is judged."""
        return self.openvino or runtime.backend != "openvino"


def option_key(option: str) -> str:
    """A CLI option's flat keyword: "--fp16-pixel-agreement" -> "fp16_pixel_agreement"."""
    return option.lstrip("-").replace("-", "_")


def gate_keys() -> dict[str, tuple[str, str]]:
    """Flat keyword -> (targets group, gate name), for every registered gate.

    A gate's option sets the "int8" group; its half option the "fp16" group. A
    gate with no half default and no half option is one target for every
    precision, so its option sets both groups; a gate with a half default but no
    half option keeps that default for fp16/bf16 (Dice: fp16 is not held to it).
    """
    keys: dict[str, tuple[str, str]] = {}
    for name, gate in GATES.items():
        keys[option_key(gate.option)] = ("int8", name)
        if gate.half_option:
            keys[option_key(gate.half_option)] = ("fp16", name)
    return keys


def _shared(name: str) -> bool:
    gate = GATES[name]
    return gate.half_default is None and gate.half_option is None


_PARTS = {"quantisation": QuantisationOptions, "fallback": FallbackOptions,
          "extras": ExtraVariants}
_TOP = ("eval_images", "threads", "ungated")


def _part_fields() -> dict[str, tuple[str, str]]:
    """Flat keyword -> (part, field) for the parts' fields."""
    mapping = {f.name: (part, f.name) for part in ("quantisation", "extras")
               for f in fields(_PARTS[part])}
    mapping.update(fallback=("fallback", "enabled"), fallback_runtimes=("fallback", "runtimes"))
    return mapping


def flat_keys() -> set[str]:
    """Every keyword `CalibrationOptions.from_flat` takes."""
    return set(_part_fields()) | set(_TOP) | set(gate_keys())


@dataclass(frozen=True)
class CalibrationOptions:
    """Options of the calibration stage (recorded in calibration.json and the manifest).

    Attributes:
        quantisation, fallback, extras: see their classes.
        targets: ``{"int8": {gate: value}, "fp16": {gate: value}}``; a gate left out
            takes its default (`judge.targets.targets_for`).
        eval_images: whole held-out test images every variant is judged on (>= 1).
        threads: threads of every runtime, Keras included (None: each runtime's own).
        ungated: latency-only runs on random weights (`bench --latency-only`): every
            variant is written and its figures recorded, but no target refuses it.
            Never for shipping.
    """

    quantisation: QuantisationOptions = field(default_factory=QuantisationOptions)
    targets: dict = field(default_factory=dict)
    fallback: FallbackOptions = field(default_factory=FallbackOptions)
    extras: ExtraVariants = field(default_factory=ExtraVariants)
    eval_images: int = 64
    threads: int | None = None
    ungated: bool = False

    def __post_init__(self):
        if self.eval_images < 1:
            raise ConfigError("calibration_images and eval_images must be >= 1")
        unknown = sorted(set(self.targets) - {"int8", "fp16"})
        if unknown:
            raise ConfigError(f"target groups are 'int8' and 'fp16', not {unknown}")

    def targets_for(self, precision: str):
        """The `judge.targets.Targets` a variant of `precision` must meet."""
        return targets_for(precision, self.targets)

    @classmethod
    def from_flat(cls, **flat) -> CalibrationOptions:
        """From flat keywords, as the calibrate CLI and calibration.json's ``options`` name
        them: method, percentile, calibration_images, batch_size, eval_images, threads,
        ungated, fallback, fallback_runtimes, fp16, cpu_variant, openvino, tflite,
        cpu_speedup_margin, and one per gate option (pixel_agreement, mean_dice,
        matched_fraction, max_ap_drop, fp16_pixel_agreement, ...).

        Raises `ConfigError` for a keyword that is none of these.
        """
        parts: dict[str, dict] = {part: {} for part in _PARTS}
        top, overrides = {}, {"int8": {}, "fp16": {}}
        gates, part_fields = gate_keys(), _part_fields()
        for key, value in flat.items():
            if key in gates:
                group, name = gates[key]
                overrides[group][name] = value
                if group == "int8" and _shared(name):
                    overrides["fp16"][name] = value
            elif key in part_fields:
                part, name = part_fields[key]
                parts[part][name] = tuple(value) if name == "runtimes" else value
            elif key in _TOP:
                top[key] = value
            else:
                raise ConfigError(f"unknown calibration option {key!r}")
        return cls(**{part: kind(**parts[part]) for part, kind in _PARTS.items()},
                   targets={g: v for g, v in overrides.items() if v}, **top)

    def record(self) -> dict:
        """The flat keywords of these options (calibration.json's ``options``); `from_flat`
        reads them back."""
        quantisation = asdict(self.quantisation)
        extras = asdict(self.extras)
        extras.pop("fp16")  # a calibrate() argument, not recorded before
        targets = {}
        for key, (group, name) in gate_keys().items():
            targets[key] = self.targets_for("int8" if group == "int8" else "fp16").to_dict()[name]
        return {"method": quantisation["method"], "percentile": quantisation["percentile"],
                "calibration_images": quantisation["calibration_images"],
                "eval_images": self.eval_images, **targets,
                "fallback": self.fallback.enabled,
                "fallback_runtimes": list(self.fallback.runtimes),
                **extras, "batch_size": quantisation["batch_size"], "threads": self.threads,
                "ungated": self.ungated}

    def without_fp16(self) -> CalibrationOptions:
        return replace(self, extras=replace(self.extras, fp16=False))

    def targets_by_precision(self) -> dict[str, dict]:
        """calibration.json's ``targets_by_precision``: {precision: targets as a dict}."""
        return {p: self.targets_for(p).to_dict() for p in RECORDED_PRECISIONS}


def recorded_targets(calibration: dict) -> dict:
    """The `Targets` of each recorded precision, as a calibration.json applied them.

    Reads ``targets_by_precision``; a calibration.json written before it existed is
    read through its flat ``options``; an empty dict (no calibration) gives the
    defaults. Returns {precision: Targets} for fp32, int8, fp16 and bf16.
    """
    from retinaunet_deploy.judge.targets import Targets

    by_precision = calibration.get("targets_by_precision")
    if by_precision:
        return {p: Targets.from_dict(by_precision[p])
                for p in RECORDED_PRECISIONS}
    known = flat_keys()
    options = CalibrationOptions.from_flat(**{k: v for k, v in
                                              calibration.get("options", {}).items()
                                              if k in known})
    return {p: options.targets_for(p) for p in RECORDED_PRECISIONS}

