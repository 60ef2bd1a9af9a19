"""Bench rows: one per (run file, registered runtime), each with a live runner.

The rows derive from `runtime.registry.RUNTIMES`: for each runtime whose name or
family is in `BenchOptions.backends` (the Keras reference always, first), one
row per file of its `bench_files` present in the run, named, noted and opened
as its entry says. A few rows belong to one runtime only and are made beside
it (`EXTRA_ROWS`): ONNX Runtime's GPU providers, LiteRT models converted into
the bench folder, TensorRT engines not built.

A row whose runner cannot be built becomes "failed" with the reason; a row that
cannot run on this machine (its runtime's `unavailable()`: TensorRT, GPU
providers, bf16 without native bf16) is "skipped" with the reason. Every CPU
row's intra-op thread count is read back from its runtime (`Backend.threads`)
and must equal the one asked for (`check_threads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from retinaunet_deploy import names
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.runtime.registry import RUNTIMES, Runtime, file_precision, runtime_named

REFERENCE = "keras fp32"
REFERENCE_RUNTIME = "keras"
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")


@dataclass
class BenchOptions:
    images: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)
    threads: int = 2
    rounds: int = 20
    min_seconds: float = 5.0
    backends: tuple[str, ...] = ("keras", "onnxruntime", "openvino", "tflite", "tensorrt")
    overlay_images: int = 3
    peak: bool = True         # measure this CPU's int8/bf16/fp32 limits (`bench.peak`)
    # `bench.throughput`: predict end to end on a folder vs inference only; () = off,
    # else (file, runtime) pairs, ("recommended", "auto") for the run's recommendation.
    folder_artifacts: tuple = ()
    folder_images: int = 256


@dataclass
class Row:
    """One line of the report."""

    name: str
    backend: str
    precision: str
    artifact: str
    status: str = "ok"            # ok | failed | skipped
    reason: str = ""
    size_bytes: int | None = None
    fidelity: dict = field(default_factory=dict)
    ground_truth: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    notes: str = ""
    threads: int | None = None    # intra-op threads the runtime reports it runs with
    runtime: str | None = None    # the registered runtime that runs it as `predict` would
    runner: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        # Not asdict(): it would deep-copy the live runner (TF graphs cannot be copied).
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "runner"}


def _guard(row: Row, make):
    """Build a row's runner; an error marks the row failed with its reason."""
    try:
        row.runner = make()
    except Exception as error:  # noqa: BLE001 - any backend error becomes the row's reason
        row.status, row.reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
    return row


def build_rows(run_dir: Path, card: ModelCard, options: BenchOptions, out_dir: Path,
               calibration: np.ndarray | None) -> list[Row]:
    """Every row this run and machine allow, with runners (or failed/skipped reasons):
    the Keras reference first, then each registered runtime's family in registry order.

    Raises `ConfigError` when a CPU row runs with other threads than `options.threads`.
    """
    from retinaunet_deploy.artifacts import load_manifest

    run_dir = Path(run_dir)
    recorded = list(load_manifest(run_dir)["artifacts"])
    context = {"run_dir": run_dir, "options": options, "out_dir": Path(out_dir),
               "calibration": calibration}
    rows = []
    for family in _families(options.backends):
        files = {runtime.name: _bench_files(runtime, run_dir, recorded) for runtime in family}
        order = list(dict.fromkeys(f for runtime in family for f in files[runtime.name]))
        reasons = {runtime.name: runtime.unavailable() for runtime in family}
        pairs = sorted(((file, index, runtime) for index, runtime in enumerate(family)
                        for file in files[runtime.name]),
                       key=lambda pair: (order.index(pair[0]), pair[1]))
        family_rows = [_file_row(runtime, file, run_dir, options, reasons[runtime.name])
                       for file, _, runtime in pairs]
        for runtime in family:
            if runtime.name in EXTRA_ROWS:
                family_rows = EXTRA_ROWS[runtime.name](family_rows, reasons[runtime.name],
                                                       **context)
        rows += family_rows
    check_threads(rows, options.threads)
    for row in rows:
        path = run_dir / row.artifact  # an absolute artifact path (TFLite) stays as it is
        if path.exists():
            row.size_bytes = path.stat().st_size
    return rows


def _families(backends: tuple[str, ...]) -> list[list[Runtime]]:
    """The runtimes to bench, grouped by family (the backend column), in registry order:
    the reference's first, then those named (by name or family) in `backends`."""
    chosen = [r for r in RUNTIMES.values()
              if r.name == REFERENCE_RUNTIME or r.name in backends or r.backend in backends]
    chosen.sort(key=lambda r: r.name != REFERENCE_RUNTIME)
    families: dict[str, list[Runtime]] = {}
    for runtime in chosen:
        families.setdefault(runtime.backend, []).append(runtime)
    return list(families.values())


def _bench_files(runtime: Runtime, run_dir: Path, recorded: list[str]) -> list[str]:
    """The run's files this runtime is benched on: its `bench_files` present in the run,
    or (None) every file the manifest records with one of its suffixes, by precision
    (fp32, fp16, bf16, int8), the plain name before its longer forms. The reference's
    file always has its row (failed when missing: the bench cannot run without it)."""
    if runtime.name == REFERENCE_RUNTIME:
        return list(runtime.bench_files)
    if runtime.bench_files is None:
        # End-to-end files return labels, not the probabilities a row is judged on; the
        # bench times them against the numpy post-process in its own section (`bench.e2e`).
        files = sorted((f for f in recorded if Path(f).suffix in runtime.suffixes
                        and not names.is_end_to_end(f)),
                       key=lambda f: (PRECISION_ORDER.index(file_precision(f)), len(f), f))
    else:
        files = list(runtime.bench_files)
    return [f for f in files if (run_dir / f).is_file()]


def _file_row(runtime: Runtime, file: str, run_dir: Path, options: BenchOptions,
              reason: str | None) -> Row:
    """The row of one run file in one runtime: skipped when the runtime cannot run here,
    else opened (verified unchanged) as the runtime's entry says."""
    row = Row(runtime.row_name(file), runtime.backend, runtime.precision_of(file), file,
              notes=runtime.bench_notes.get(file, ""), runtime=runtime.name)
    if reason:
        row.status, row.reason = "skipped", reason
        return row
    _guard(row, lambda: runtime.open(_verified(run_dir, file), threads=options.threads,
                                     **runtime.bench_options))
    if row.status == "ok" and row.runner.timing_note:
        row.notes = "; ".join(filter(None, (row.notes, row.runner.timing_note)))
    return row


def check_threads(rows: list[Row], threads: int) -> None:
    """Record each CPU row's thread count and refuse one that differs from `threads`:
    speed-ups between rows on different thread counts compare the pools, not the models."""
    for row in rows:
        if row.status != "ok":
            continue
        row.threads = row.runner.threads
        if row.threads is not None and row.threads != threads:
            raise ConfigError(f"bench row {row.name!r} runs with {row.threads} intra-op "
                              f"threads, not the {threads} asked for")


# === Rows that belong to one runtime: EXTRA_ROWS[name](its family's rows, its
# unavailable() reason, run_dir=, options=, out_dir=, calibration=) -> the family's rows.

def _gpu_provider_rows(rows: list[Row], reason, run_dir: Path, options: BenchOptions,
                       **_) -> list[Row]:
    """ONNX Runtime's CUDA and TensorRT providers on each ONNX file that TensorRT takes.

    Their `runtime` is None: `predict` chooses its own providers, so it cannot be sent
    to run one of these as it was timed.
    """
    from retinaunet_deploy.runtime.providers import (
        CPU,
        cuda_device_count,
        cuda_provider,
        tensorrt_provider,
    )

    if cuda_device_count() == 0:
        return rows + [Row(f"onnxruntime {name} provider", "onnxruntime-gpu", "fp32",
                           names.ONNX, status="skipped", reason="no CUDA device on this machine")
                       for name in ("CUDA", "TensorRT")]
    onnxruntime = runtime_named("onnxruntime")
    rows = list(rows)
    for precision, name in names.ONNX_FOR_PRECISION.items():
        if not (run_dir / name).exists():
            continue
        for label, provider in (("CUDA", cuda_provider()), ("TensorRT", tensorrt_provider(
                fp16=precision == "fp16", int8=precision == "int8",
                cache_dir=run_dir / "ort_trt_cache"))):
            row = Row(f"onnxruntime {label} {precision} ({name})", "onnxruntime-gpu", precision,
                      name, notes=f"{label} execution provider")
            rows.append(_guard(row, lambda n=name, p=provider: onnxruntime.open(
                run_dir / n, threads=options.threads, providers=[p, CPU])))
    return rows


def _converted_tflite_rows(rows: list[Row], reason, run_dir: Path, options: BenchOptions,
                           out_dir: Path, calibration, **_) -> list[Row]:
    """LiteRT fp32 (no shipped artifact) converted from model.keras into the bench folder,
    then int8: the run's gated model.int8.tflite when calibrate wrote one (`rows`), else
    converted too, full-int8 calibrated on the same training patches."""
    from retinaunet_deploy.artifacts import atomic_path
    from retinaunet_deploy.runtime.backends import load_keras_model
    from retinaunet_deploy.runtime.tflite import convert_to_tflite

    tflite = runtime_named("tflite")
    converted = []
    model = None
    wanted = [("fp32", None)] + ([] if rows else [("int8", calibration)])
    for precision, images in wanted:
        target = out_dir / f"model.{precision}.tflite"
        row = Row(f"tflite {precision}", "tflite", precision, str(target.resolve()),
                  notes="converted from model.keras into the bench folder" + (
                      f", full-int8 calibrated on {len(images)} training patches"
                      if images is not None else ""), runtime=tflite.name)
        if reason:
            row.status, row.reason = "skipped", reason
            converted.append(row)
            continue

        def make(images=images, target=target):
            nonlocal model
            model = model or load_keras_model(run_dir / names.KERAS)
            with atomic_path(target) as tmp:
                tmp.write_bytes(convert_to_tflite(model, images))
            return tflite.open(target, threads=options.threads)

        converted.append(_guard(row, make))
    return converted[:1] + list(rows) + converted[1:]


def _absent_engine_rows(rows: list[Row], reason, **_) -> list[Row]:
    """A skipped row for each fp16 and int8 engine not built (fp32 engines are optional:
    a row only when one was built), in precision order."""
    tensorrt = runtime_named("tensorrt")
    present = {row.artifact: row for row in rows}
    out = []
    for precision in names.ONNX_FOR_PRECISION:
        plan = names.plan_name(precision)
        if plan in present:
            out.append(present[plan])
        elif precision != "fp32":
            out.append(Row(tensorrt.row_name(plan), tensorrt.backend, precision, plan,
                           runtime=tensorrt.name, status="skipped", reason=reason or (
                               f"{plan} not built (retinaunet-deploy build-engine "
                               f"--precision {precision})")))
    return out


EXTRA_ROWS = {"onnxruntime": _gpu_provider_rows, "tflite": _converted_tflite_rows,
              "tensorrt": _absent_engine_rows}


def _verified(run_dir: Path, name: str) -> Path:
    """The run's file, refused if it changed since its stage or its parent moved on."""
    from retinaunet_deploy.artifacts import load_manifest, remedy_for, verify_lineage

    stage = load_manifest(run_dir)["artifacts"].get(name, {}).get("stage", "train")
    verify_lineage(run_dir, name, remedy_for(run_dir, name, stage))
    return run_dir / name
