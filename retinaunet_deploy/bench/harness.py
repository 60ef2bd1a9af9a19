"""The benchmark: every artifact x every backend that can run here, side by side.

One row per (artifact, backend). For each row, on the same held-out images:

* fidelity against the Keras float reference (`compare`) and against ground
  truth (`evaluate_outputs`);
* latency per batch size, interleaved across rows (`timing.interleaved_latency`),
  both inference-only and end to end (input checks + inference + decode/NMS);
* size: file bytes, parameters, GFLOPs per image.

The Keras reference is timed its fastest way: a compiled tf.function, with
XLA when that is faster here. A row whose backend fails becomes a row marked
"failed" with the reason. Rows that cannot run on this machine (TensorRT, GPU
providers) are marked "skipped" with the reason. Only a failing reference
makes the bench fail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from retinaunet_deploy import names
from retinaunet_deploy.bench.machine import machine_info
from retinaunet_deploy.errors import ArtifactError

REFERENCE = "keras fp32"


@dataclass
class BenchOptions:
    images: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)
    threads: int = 2
    rounds: int = 20
    min_seconds: float = 5.0
    backends: tuple[str, ...] = ("keras", "onnxruntime", "tflite", "tensorrt")
    overlay_images: int = 3


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
        from retinaunet_deploy.runtime.backends import KerasBackend, traced_call
        from retinaunet_deploy.timing import interleaved_latency

        self.backend = KerasBackend(path, threads=threads)
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
    from retinaunet_deploy.artifacts import load_manifest, remedy_for, verify_lineage
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend, TensorRTBackend

    def verified(name: str) -> Path:
        """The run's file, refused if it changed since its stage or its parent moved on."""
        stage = load_manifest(run_dir)["artifacts"].get(name, {}).get("stage", "train")
        verify_lineage(run_dir, name, remedy_for(run_dir, name, stage))
        return run_dir / name

    rows = [_guard(Row(REFERENCE, "keras", "fp32", names.KERAS),
                   lambda: KerasFastest(verified(names.KERAS), options.threads))]
    if rows[0].status == "ok":
        rows[0].notes = f"timed as {rows[0].runner.mode}"
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
    if "tflite" in options.backends:
        rows += _tflite_rows(run_dir, card, options, out_dir, calibration)
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
    for row in rows:
        path = run_dir / row.artifact  # an absolute artifact path (TFLite) stays as it is
        if path.exists():
            row.size_bytes = path.stat().st_size
    return rows


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


def _tflite_rows(run_dir, card, options, out_dir, calibration) -> list[Row]:
    """TFLite fp32 and full-int8, converted from the same Keras model into the bench folder."""
    from retinaunet_deploy.artifacts import atomic_path
    from retinaunet_deploy.runtime.backends import load_keras_model
    from retinaunet_deploy.runtime.tflite import TFLiteBackend, convert_to_tflite

    rows = []
    model = None
    for precision, images in (("fp32", None), ("int8", calibration)):
        target = Path(out_dir) / f"model.{precision}.tflite"
        row = Row(f"tflite {precision}", "tflite", precision, str(target.resolve()),
                  notes="converted from model.keras" + (f", full-int8 calibrated on "
                                                        f"{len(images)} training images"
                                                        if images is not None else ""))

        def make(images=images, target=target):
            nonlocal model
            model = model or load_keras_model(run_dir / names.KERAS)
            with atomic_path(target) as tmp:
                tmp.write_bytes(convert_to_tflite(model, images))
            return TFLiteBackend(target, list(model.output_names), threads=options.threads)

        rows.append(_guard(row, make))
    return rows


def measure_fidelity(rows: list[Row], card: dict, samples: list):
    """Fill each ok row's fidelity (vs the reference) and ground-truth figures, on whole
    images through the Predictor (padding, tiling, decoding), as apps run them.

    Returns every row's masks (for the overlays).
    """
    from retinaunet_deploy.compare import compare
    from retinaunet_deploy.evaluate import evaluate_predictions, sample_truths
    from retinaunet_deploy.runtime.predictor import Predictor

    truths = sample_truths(samples)
    num_det = len(card.get("det_class_names") or []) or None
    images = [s.image for s in samples]
    reference = None
    masks_by_row = {}
    for row in rows:
        if row.status != "ok":
            continue
        try:
            predictions = Predictor(row.runner, card).predict(images, probabilities=True)
            if reference is None:
                reference = predictions
            agreement = compare(reference, predictions, card["class_names"], truths,
                                num_det_classes=num_det)
            row.fidelity = agreement.to_dict()
            row.ground_truth = evaluate_predictions(predictions, samples, card["class_names"],
                                                    num_det, truths)
            masks_by_row[row.name] = [p.mask for p in predictions]
        except Exception as error:  # a backend that fails on these images: the row says why
            if row.name == REFERENCE:
                raise
            row.status, row.reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
    return masks_by_row


def measure_latency(rows: list[Row], card: dict, images: np.ndarray, options: BenchOptions,
                    progress=None):
    """Interleaved latency of every ok row, per batch size, inference-only and end to end.

    Each candidate is called once first; one that raises marks its row failed and
    is left out, so a broken backend never stops the timing of the others.
    """
    from retinaunet_deploy.runtime.predictor import Predictor
    from retinaunet_deploy.timing import interleaved_latency

    for row in rows:
        if isinstance(row.runner, KerasFastest):
            row.runner.use_fastest()
    for batch_size in options.batch_sizes:
        batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])),
                                     dtype=np.float32)
        raw = batch.astype(card["input"].get("pixel_dtype", "uint8"))
        candidates = {}
        for row in [r for r in rows if r.status == "ok"]:
            predictor = Predictor(row.runner, card, batch_size=batch_size)
            pair = {f"{row.name}|inference": lambda r=row, b=batch: r.runner.run(b),
                    f"{row.name}|end_to_end": lambda p=predictor, x=raw: p.predict(x)}
            try:
                for call in pair.values():
                    call()
            except Exception as error:  # the row says why; the others still run
                if row.name == REFERENCE:
                    raise
                row.status, row.reason = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
                continue
            candidates.update(pair)
        # min_seconds is per row and batch size, shared by its two modes.
        figures = interleaved_latency(candidates, rounds=options.rounds, warmup=2,
                                      min_seconds=options.min_seconds / 2,
                                      batch_size=batch_size, progress=progress)
        for row in rows:
            if row.status == "ok":
                row.latency[str(batch_size)] = {
                    mode: figures[f"{row.name}|{mode}"] for mode in ("inference", "end_to_end")}


def speedups(rows: list[Row]) -> None:
    """Speed-up of every row over the reference, per batch size (p50 end to end)."""
    reference = next((r for r in rows if r.name == REFERENCE and r.latency), None)
    if reference is None:
        return
    for row in rows:
        for batch, figures in row.latency.items():
            base = reference.latency[batch]["end_to_end"]["p50_ms"]
            figures["speedup_vs_reference"] = base / figures["end_to_end"]["p50_ms"]


def run_bench(run_dir: Path, out_dir: Path, options: BenchOptions | None = None,
              progress=None) -> dict:
    """Benchmark a run folder; writes report.json, report.md and the plots into `out_dir`.

    Raises `ArtifactError` only if the reference (model.keras) cannot run.
    """
    from retinaunet_deploy.artifacts import write_json
    from retinaunet_deploy.bench.report import write_markdown, write_plots
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import calibration_images, few_images_warning, held_out_set
    from retinaunet_deploy.model import RetinaUNet

    options = options or BenchOptions()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = load_card(run_dir)
    samples = held_out_set(card, options.images)
    # Latency is timed on patches of the training size (one shape for every batch size).
    calibration = calibration_images(card, 32)

    say = progress or (lambda message: None)
    say(f"building rows for {run_dir}")
    rows = build_rows(run_dir, card, options, out_dir, calibration)
    if rows[0].status != "ok":
        raise ArtifactError(f"the reference {run_dir / names.KERAS} cannot run: "
                            f"{rows[0].reason}")
    say(f"fidelity on {len(samples)} whole held-out images")
    masks_by_row = measure_fidelity(rows, card, samples)
    say(f"latency, batch sizes {list(options.batch_sizes)}, rows interleaved")
    measure_latency(rows, card, calibration[:8], options)
    speedups(rows)

    summary = RetinaUNet.from_config(card["builder"]).summary()
    report = {
        "run": str(run_dir), "machine": machine_info(options.threads),
        "options": asdict(options), "images": len(samples), "split": "test",
        "whole_images": True,
        "image_sizes": (f"{min(s.image.shape[0] for s in samples)}-"
                        f"{max(s.image.shape[0] for s in samples)} x "
                        f"{min(s.image.shape[1] for s in samples)}-"
                        f"{max(s.image.shape[1] for s in samples)} px"),
        "few_images_warning": few_images_warning(len(samples),
                                                                       "every figure"),
        "latency_input": f"{calibration.shape[1]}x{calibration.shape[2]} training patches",
        "model": {"preset": card.get("preset"), "parameters": summary.total_params,
                  "gflops_per_image": round(summary.total_gflops, 3),
                  "input": card["input"]},
        "rows": [row.to_dict() for row in rows],
    }
    write_json(out_dir / "report.json", report)
    write_markdown(out_dir / "report.md", report)
    write_plots(out_dir, report, [s.image for s in samples[:options.overlay_images]],
                {name: m[:options.overlay_images] for name, m in masks_by_row.items()},
                card)
    return report
