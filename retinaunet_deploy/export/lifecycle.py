"""One lifecycle for every deployable variant: make, judge, write or refuse, record.

A `Variant` (an entry of `export.variants.VARIANTS`) says how its file is made,
the runtime it is judged under, and what a refusal does. `make_variant` is the
one place a variant goes through its life:

1. **make**: ``variant.make(context, work) -> path | Candidate`` writes the candidate
   file into the work folder (never under the artifact's name);
2. **judge**: the candidate runs in ``variant.judged.runtime`` on the whole
   held-out test images, through the `Predictor` as apps run it, against the
   stored float reference and the targets of its precision (an entry with its own
   ``gate``, an end-to-end twin, is judged by that instead);
3. **write or refuse**: a candidate that passes (and the structural checks and
   keep-verdict of its entry) is copied atomically under its name; a refused one
   is not, and a stale file of that name from an earlier run is forgotten. A
   refusal stops the stage (raises `ArtifactError`) when the entry says so, and
   is otherwise recorded with its reason while the stage goes on;
4. **record**: the written file, with its parent, options, figures and tool
   versions, in the manifest; its figures in calibration.json.

Ways of *running* a file that are no file of their own (OpenVINO int8 on
model.int8.onnx, bf16 on model.onnx) are `judge_runtime_variants`: every
registered runtime with ``judged_files`` that is available here is judged on
them and recorded with `artifacts.record_runtime_variant`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import (
    atomic_path,
    forget_artifact,
    record_artifact,
    record_runtime_variant,
    tool_versions,
)
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.export.options import CalibrationOptions
from retinaunet_deploy.judge.gates import (
    EvalSet,
    judge,
    run_predictor,
    runtime_options,
    variant_figures,
)

ONNX_TOOLS = ("onnx", "onnxruntime", "onnxruntime-gpu", "onnxconverter-common")
# How figures and progress lines name a runtime family.
RUNTIME_LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tflite": "LiteRT",
                  "keras": "Keras", "tensorrt": "TensorRT"}


@dataclass
class Context:
    """What every variant of one calibrate run shares.

    Attributes:
        run_dir: the run folder.
        card: the model card.
        calib: calibration patches from the training split, (N, H, W, C) float32 pixels.
        eval_set: whole held-out test images with the stored float reference.
        options: the stage's options; a make function hands each callee its part.
        warning: the few-images warning every figure carries (None: enough images).
        say: receives one-line progress messages.
        report: calibration.json as it grows (``variants``, ``runtime_variants``, ...).
    """

    run_dir: Path
    card: ModelCard
    calib: np.ndarray
    eval_set: EvalSet
    options: CalibrationOptions
    warning: str | None = None
    say: Callable[[str], None] = lambda message: None
    report: dict = field(default_factory=dict)

    def targets(self, precision: str):
        """The targets a variant of `precision` is judged against."""
        return self.options.targets_for(precision)

    def figures_of(self, file: str) -> dict:
        """The figures this run recorded for `file` so far ({} if none)."""
        return self.report.get("variants", {}).get(file, {})


@dataclass
class Candidate:
    """What a make function returns: the candidate file in the work folder, and what it
    knows about how it was made.

    Attributes:
        path: the candidate file (in the work folder).
        figures: extra figures to record with the judged ones (e.g. ``kept_float``).
        options: the manifest's ``options`` of the written file.
        report: top-level sections it adds to calibration.json (e.g. ``activation_ranges``).
    """

    path: Path
    figures: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Judged:
    """How a variant is judged: the registered runtime it runs in, its open options (ONNX
    Runtime ``optimize=False`` runs every Q/DQ as written), and how figures name it."""

    runtime: str = "onnxruntime"
    evaluated: str = "fused (as ONNX Runtime runs it)"
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        from retinaunet_deploy.runtime.registry import runtime_named

        family = runtime_named(self.runtime).backend
        return RUNTIME_LABELS.get(family, family)


def _announce(context: Context, variant: Variant, agreement, figures: dict) -> str:
    return f"{variant.file} ({variant.judged.evaluated.split(' (')[0]}): {agreement.summary()}"


@dataclass(frozen=True)
class Variant:
    """One deployable variant: an entry of `export.variants.VARIANTS`.

    Attributes:
        file: its run-folder file name (a `names` constant).
        parent: the run-folder file it is made from (recorded as its lineage).
        precision: fp32, fp16, bf16 or int8: chooses its targets (`judge.targets`).
        make: ``make(context, work) -> Path | Candidate``: write the candidate into `work`.
        judged: the runtime and mode whose agreement is its gate.
        stops: a refusal stops the stage (`ArtifactError`); False: it is recorded
            (``written: False`` and ``reason``) and the stage goes on.
        label: how progress lines name it ("<label> not written: <reason>").
        enabled: ``enabled(options) -> bool``: whether this calibrate makes it.
        refusal: ``refusal(context, candidate, agreement) -> message`` for a missed gate
            (None: "misses the agreement target as <runtime> runs it: <failures>").
        checks: ``check(context, candidate) -> problem | None``, structural refusals run
            after the gate passed (they hold even in an ungated run).
        also_judged: figure key -> another `Judged`: agreement recorded as a figure only.
        measure: ``measure(context, candidate) -> figures`` (latency), after the judging.
        keep: ``keep(context, agreement, figures) -> reason | None``: the keep-verdict of
            a file that passed (the U8S8 speed margin).
        announce: ``announce(context, variant, agreement, figures) -> line`` said once it
            is written (None: nothing said).
        tools: distributions whose versions the manifest records with it.
        gate: ``gate(context, candidate) -> figures`` (with ``passed``) replaces the judging
            against the float reference (and `also_judged`, `checks`, `measure`, `keep`):
            an end-to-end twin is gated against the numpy post-process of its parent
            (`export.e2e_gate`); its `refusal` then gets those figures for `agreement`.
        applies: ``applies(card) -> bool``: whether the model can have it at all (an
            end-to-end twin needs detection heads); checked with `enabled`.
    """

    file: str
    parent: str
    precision: str
    make: Callable[[Context, Path], Path | Candidate]
    judged: Judged = field(default_factory=Judged)
    stops: bool = False
    label: str = ""
    enabled: Callable[[CalibrationOptions], bool] = lambda options: True
    refusal: Callable[[Context, Candidate, object], str] | None = None
    checks: tuple[Callable[[Context, Candidate], str | None], ...] = ()
    also_judged: Mapping[str, Judged] = field(default_factory=dict)
    measure: Callable[[Context, Candidate], dict] | None = None
    keep: Callable[[Context, object, dict], str | None] | None = None
    announce: Callable[[Context, Variant, object, dict], str] | None = _announce
    tools: tuple[str, ...] = ONNX_TOOLS
    gate: Callable[[Context, Candidate], dict] | None = None
    applies: Callable[[ModelCard], bool] = lambda card: True


def judge_file(context: Context, path: Path, judged: Judged, precision: str):
    """The `Agreement` of `path` run in `judged.runtime` on the context's test images
    against the float reference and the targets of `precision`, with 95% intervals."""
    from retinaunet_deploy.runtime.registry import open_backend

    backend = open_backend(path, judged.runtime, threads=context.options.threads,
                           **judged.options)
    # Stored by file hash, runtime and options, so `bench` re-judges an unchanged file
    # from these predictions without running it (`judge.store`).
    options = {**runtime_options(judged.runtime, fused=True), **judged.options}
    with backend:
        predictions = run_predictor(backend, context.card, context.eval_set,
                                    store=context.eval_set.store, runtime=judged.runtime,
                                    options=options)
    return judge(context.eval_set, predictions, context.card, context.targets(precision),
                 intervals=True)


def make_variant(context: Context, variant: Variant, work: Path) -> dict:
    """Make, judge, write or refuse, and record one variant; returns its figures.

    Raises `ArtifactError` when a variant whose refusal stops the stage is refused
    (its stale file forgotten first).
    """
    made = variant.make(context, work)
    candidate = made if isinstance(made, Candidate) else Candidate(Path(made))
    context.report.update(candidate.report)
    if variant.gate is not None:
        figures = {**variant.gate(context, candidate), **candidate.figures}
        verdict = None if figures["passed"] else _refusal(context, variant, candidate, figures)
        return _write_or_refuse(context, variant, candidate, figures, verdict, None, figures)
    agreement = judge_file(context, candidate.path, variant.judged, variant.precision)
    figures = variant_figures(agreement, context.eval_set, variant.judged.evaluated,
                              context.warning, **candidate.figures,
                              ungated=context.options.ungated)
    verdict = None if agreement.passed else _refusal(context, variant, candidate, agreement)
    if verdict and variant.stops and not context.options.ungated:
        _refuse(context, variant, verdict)
    problem = next(filter(None, (check(context, candidate) for check in variant.checks)), None)
    if problem is None:
        for key, judged in variant.also_judged.items():
            figures[key] = judge_file(context, candidate.path, judged, variant.precision).to_dict()
        if variant.measure is not None:
            figures.update(variant.measure(context, candidate))
        if verdict is None and variant.keep is not None:
            verdict = variant.keep(context, agreement, figures)
    return _write_or_refuse(context, variant, candidate, figures, verdict, problem, agreement)


def _write_or_refuse(context: Context, variant: Variant, candidate: Candidate, figures: dict,
                     verdict: str | None, problem: str | None, agreement) -> dict:
    """Steps 3 and 4 of the lifecycle for a judged candidate (module docstring)."""
    if context.options.ungated:  # a latency-only run writes every form; the verdict is kept
        figures["verdict_if_gated"], verdict = verdict, None
    reason = problem or verdict
    context.report.setdefault("variants", {})[variant.file] = figures
    if reason is not None:
        if variant.stops:
            _refuse(context, variant, reason)
        figures.update(written=False, reason=reason)
        forget_artifact(context.run_dir, variant.file)  # a stale one from an earlier run must go
        context.say(f"{variant.label or variant.file} not written: {reason}")
        return figures
    with atomic_path(context.run_dir / variant.file) as tmp:
        shutil.copyfile(candidate.path, tmp)
    record_artifact(context.run_dir, variant.file, "calibrate", parent=variant.parent,
                    options=candidate.options, figures=figures,
                    tools=tool_versions(*variant.tools))
    if not variant.stops:
        figures["written"] = True
    if variant.announce is not None:
        context.say(variant.announce(context, variant, agreement, figures))
    return figures


def _refusal(context: Context, variant: Variant, candidate: Candidate, agreement) -> str:
    if variant.refusal is not None:
        return variant.refusal(context, candidate, agreement)
    return (f"misses the agreement target as {variant.judged.label} runs it: "
            + "; ".join(agreement.failures))


def _refuse(context: Context, variant: Variant, reason: str):
    forget_artifact(context.run_dir, variant.file)  # a stale one from an earlier run must go
    raise ArtifactError(reason)


def judge_runtime_variants(context: Context) -> dict:
    """Judge every registered runtime with ``judged_files`` on each of those files that
    exists, as it runs them; record each in the manifest's ``runtime_variants``.

    Named "<family> <precision>" ("openvino int8", "openvino bf16"). A runtime that
    cannot run here is listed as ``skipped`` with its reason. Runtimes the options
    leave out (`ExtraVariants.judges`) are not judged. Each is held to the targets
    of the file it runs (the int8/fp32 ones for model.int8.onnx and model.onnx).
    Returns name -> figures (with ``passed``), or ``{"skipped": reason}``.
    """
    from retinaunet_deploy.runtime.registry import file_precision

    results = {}
    for runtime in judged_runtimes(context.options):
        for file in runtime.judged_files:
            if not (context.run_dir / file).exists():
                continue
            precision = runtime.precision_of(file)
            name = f"{runtime.backend} {precision}"
            reason = runtime.unavailable()
            if reason:
                results[name] = {"skipped": reason}
                context.say(f"{name}: skipped: {reason}")
                continue
            agreement = judge_file(context, context.run_dir / file, Judged(runtime.name),
                                   file_precision(file))
            label = RUNTIME_LABELS.get(runtime.backend, runtime.backend)
            figures = variant_figures(
                agreement, context.eval_set,
                f"{label} {runtime.device.upper()}, {precision} (as it runs)", context.warning,
                file=file, runtime=runtime.backend, precision_hint=precision)
            figures["passed"] = agreement.passed
            record_runtime_variant(context.run_dir, name, file, runtime.name, agreement.passed,
                                   figures, tool_versions(runtime.backend))
            results[name] = figures
            context.say(f"{name} ({file}): {'passes' if agreement.passed else 'misses'}: "
                        f"{agreement.summary()}")
    return results


def judged_runtimes(options: CalibrationOptions) -> list:
    """The registered runtimes (`runtime.registry.Runtime`) with ``judged_files`` that
    these options judge, in registration order."""
    from retinaunet_deploy.runtime.registry import RUNTIMES

    return [runtime for runtime in RUNTIMES.values()
            if runtime.judged_files and options.extras.judges(runtime)]
