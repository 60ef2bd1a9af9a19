"""Bench rows: one per (artifact, runtime) that can run here, each with a live runner.

A row whose runner cannot be built becomes "failed" with the reason; a row that
cannot run on this machine (TensorRT, GPU providers, bf16 without native bf16)
is "skipped" with the reason. Every CPU row's intra-op thread count is read
back from its runtime and must equal the one asked for (`check_threads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from retinaunet_deploy import names
from retinaunet_deploy.errors import ConfigError

REFERENCE = "keras fp32"


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
    runner: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        # Not asdict(): it would deep-copy the live runner (TF graphs cannot be copied).
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "runner"}


def tensorrt_unavailable() -> str | None:
    """Why TensorRT rows cannot run here (the build-engine message), or None when they can."""
    from retinaunet_deploy.errors import NotBuiltError
    from retinaunet_deploy.runtime.cuda import require_tensorrt

    try:
        require_tensorrt()
    except NotBuiltError as error:
        return str(error)
    return None


class KerasFastest:
    """The Keras reference as a compiled tf.function, timed with XLA if that is faster here.

    Fidelity runs the plain traced function (the reference `calibrate` uses too): XLA
    compiles once per input shape, and whole test images come in many sizes. The
    timing (`use_fastest`, called by `measure_latency`) runs one shape, XLA or not.
    """

    def __init__(self, path: Path, threads: int):
        from retinaunet_deploy.runtime.backends import (
            KerasBackend,
            tensorflow_threads,
            traced_call,
        )
        from retinaunet_deploy.timing import interleaved_latency

        self.backend = KerasBackend(path, threads=threads)
        # Every row runs with `threads`; a Keras row on TensorFlow's default pool would
        # make each speed-up over it a comparison of thread counts.
        self.threads = tensorflow_threads()
        if self.threads != threads:
            raise ConfigError(f"Keras runs with {self.threads or 'default'} intra-op threads, "
                              f"not the {threads} asked for")
        model = self.backend.model
        plain = traced_call(model)
        xla = traced_call(model, jit_compile=True)
        probe = np.zeros((1, 128, 128, model.input_shape[-1]), np.float32)
        figures = interleaved_latency({"tf.function": lambda: plain(probe),
                                       "tf.function + XLA": lambda: xla(probe)},
                                      rounds=5, warmup=2)
        self.mode = min(figures, key=lambda k: figures[k]["p50_ms"])
        self._fastest = xla if self.mode == "tf.function + XLA" else plain
        self._call = plain
        self.path = path

    def use_fastest(self) -> None:
        """Run the mode chosen for timing from now on."""
        self._call = self._fastest

    def card(self):
        return self.backend.card()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self._call(batch).items()}


def _guard(row: Row, make):
    """Build a row's runner; an error marks the row failed with its reason."""
    try:
        row.runner = make()
    except Exception as error:  # noqa: BLE001 - any backend error becomes the row's reason
        row.status, row.reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
    return row


def build_rows(run_dir: Path, card: dict, options: BenchOptions, out_dir: Path,
               calibration: np.ndarray | None) -> list[Row]:
    """Every row this run and machine allow, with runners (or failed/skipped reasons)."""
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend, TensorRTBackend

    def verified(name: str) -> Path:
        return _verified(run_dir, name)

    rows = [_guard(Row(REFERENCE, "keras", "fp32", names.KERAS),
                   lambda: KerasFastest(verified(names.KERAS), options.threads))]
    if rows[0].status == "ok":
        rows[0].notes = (f"timed as {rows[0].runner.mode}; {rows[0].runner.threads} intra-op "
                         f"thread(s), asserted")
    if "onnxruntime" in options.backends:
        for name, precision, note in (
            (names.ONNX, "fp32", ""),
            (names.FP16_ONNX, "fp16", "fp16 compute on CPU runs through casts"),
            (names.INT8_ONNX, "int8", "TensorRT form (Q/DQ), run fused by ONNX Runtime"),
            (names.INT8_CPU_ONNX, "int8", "ONNX Runtime CPU form (QOperator U8S8)"),
        ):
            if (run_dir / name).exists():
                row = Row(f"onnxruntime {precision} ({name})", "onnxruntime", precision, name,
                          notes=note)
                rows.append(_guard(row, lambda n=name: OnnxRuntimeBackend(
                    verified(n), threads=options.threads, providers=["CPUExecutionProvider"])))
        rows += _gpu_provider_rows(run_dir, options)
    if "openvino" in options.backends:
        rows += _openvino_rows(run_dir, options)
    if "tflite" in options.backends:
        rows += _tflite_rows(run_dir, options, out_dir, calibration)
    if "tensorrt" in options.backends:
        reason = tensorrt_unavailable()
        for precision in ("fp32", "fp16", "int8"):
            plan = names.plan_name(precision)
            if precision == "fp32" and not (run_dir / plan).exists():
                continue  # fp32 engines are optional: a row only when one was built
            row = Row(f"tensorrt {precision}", "tensorrt", precision, plan)
            if reason:
                row.status, row.reason = "skipped", reason
            elif not (run_dir / plan).exists():
                row.status, row.reason = "skipped", (f"{plan} not built (retinaunet-deploy "
                                                     f"build-engine --precision {precision})")
            else:
                _guard(row, lambda p=plan: TensorRTBackend(verified(p)))
            rows.append(row)
    check_threads(rows, options.threads)
    for row in rows:
        path = run_dir / row.artifact  # an absolute artifact path (TFLite) stays as it is
        if path.exists():
            row.size_bytes = path.stat().st_size
    return rows


def runner_threads(runner) -> int | None:
    """The intra-op thread count a runner reports it runs with; None on a GPU."""
    if isinstance(runner, KerasFastest):
        return runner.threads
    session = getattr(runner, "session", None)
    if session is not None:
        if any(p != "CPUExecutionProvider" for p in session.get_providers()[:1]):
            return None
        return session.get_session_options().intra_op_num_threads
    return getattr(runner, "threads", None)


def check_threads(rows: list[Row], threads: int) -> None:
    """Record each CPU row's thread count and refuse one that differs from `threads`:
    speed-ups between rows on different thread counts compare the pools, not the models."""
    for row in rows:
        if row.status != "ok":
            continue
        row.threads = runner_threads(row.runner)
        if row.threads is not None and row.threads != threads:
            raise ConfigError(f"bench row {row.name!r} runs with {row.threads} intra-op "
                              f"threads, not the {threads} asked for")


def _gpu_provider_rows(run_dir: Path, options: BenchOptions) -> list[Row]:
    """ONNX Runtime's CUDA and TensorRT providers on each ONNX file that TensorRT takes."""
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend
    from retinaunet_deploy.runtime.providers import (
        CPU,
        cuda_device_count,
        cuda_provider,
        tensorrt_provider,
    )

    if cuda_device_count() == 0:
        return [Row(f"onnxruntime {name} provider", "onnxruntime-gpu", "fp32", names.ONNX,
                    status="skipped", reason="no CUDA device on this machine")
                for name in ("CUDA", "TensorRT")]
    rows = []
    for precision, name in names.ONNX_FOR_PRECISION.items():
        if not (run_dir / name).exists():
            continue
        for label, provider in (("CUDA", cuda_provider()), ("TensorRT", tensorrt_provider(
                fp16=precision == "fp16", int8=precision == "int8",
                cache_dir=run_dir / "ort_trt_cache"))):
            row = Row(f"onnxruntime {label} {precision} ({name})", "onnxruntime-gpu", precision,
                      name, notes=f"{label} execution provider")
            rows.append(_guard(row, lambda n=name, p=provider: OnnxRuntimeBackend(
                run_dir / n, threads=options.threads, providers=[p, CPU])))
    return rows


def _tflite_rows(run_dir, options, out_dir, calibration) -> list[Row]:
    """LiteRT int8: the run's gated model.int8.tflite when calibrate wrote one, else (and
    for fp32, which is no shipped artifact) converted from model.keras into the bench
    folder, int8 calibrated on the same training patches."""
    from retinaunet_deploy.artifacts import atomic_path
    from retinaunet_deploy.runtime.backends import load_keras_model
    from retinaunet_deploy.runtime.tflite import TFLiteBackend, convert_to_tflite

    rows = []
    model = None
    for precision, images in (("fp32", None), ("int8", calibration)):
        if precision == "int8" and (run_dir / names.INT8_TFLITE).exists():
            row = Row("tflite int8", "tflite", "int8", names.INT8_TFLITE,
                      notes="the run's gated model.int8.tflite (LiteRT, XNNPACK)")
            rows.append(_guard(row, lambda: TFLiteBackend(_verified(run_dir, names.INT8_TFLITE),
                                                          threads=options.threads)))
            continue
        target = Path(out_dir) / f"model.{precision}.tflite"
        row = Row(f"tflite {precision}", "tflite", precision, str(target.resolve()),
                  notes="converted from model.keras into the bench folder" + (
                      f", full-int8 calibrated on {len(images)} training patches"
                      if images is not None else ""))

        def make(images=images, target=target):
            nonlocal model
            model = model or load_keras_model(run_dir / names.KERAS)
            with atomic_path(target) as tmp:
                tmp.write_bytes(convert_to_tflite(model, images))
            return TFLiteBackend(target, threads=options.threads)

        rows.append(_guard(row, make))
    return rows


def _openvino_rows(run_dir, options) -> list[Row]:
    """OpenVINO on the CPU: model.onnx in fp32 and with the bf16 hint, model.int8.onnx."""
    from retinaunet_deploy.runtime.openvino import OpenVINOBackend, bf16_unavailable

    rows = []
    for file, precision, note in (
            (names.ONNX, "fp32", "f32 precision hint"),
            (names.ONNX, "bf16", "bf16 precision hint, no calibration"),
            (names.INT8_ONNX, "int8", "the TensorRT-form Q/DQ file, unchanged")):
        if not (run_dir / file).exists():
            continue
        row = Row(f"openvino {precision} ({file})", "openvino", precision, file, notes=note)
        reason = bf16_unavailable() if precision == "bf16" else None
        if reason:
            row.status, row.reason = "skipped", reason
        else:
            _guard(row, lambda f=file, p=precision: OpenVINOBackend(
                _verified(run_dir, f), threads=options.threads, precision=p))
        rows.append(row)
    return rows


def _verified(run_dir: Path, name: str) -> Path:
    """The run's file, refused if it changed since its stage or its parent moved on."""
    from retinaunet_deploy.artifacts import load_manifest, remedy_for, verify_lineage

    stage = load_manifest(run_dir)["artifacts"].get(name, {}).get("stage", "train")
    verify_lineage(run_dir, name, remedy_for(run_dir, name, stage))
    return run_dir / name
