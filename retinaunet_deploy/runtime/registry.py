"""The runtimes: one registration each, and everything else derives from this table.

`Predictor.from_artifact(..., runtime=NAME)`, `predict --runtime`, the bench
rows, the calibration gates' runtime variants and the recommendation's
candidates all read `RUNTIMES`. Adding a runtime is one `register(Runtime(...))`
(Ultralytics' export-format table, without its positional dispatch).

Each entry says which files it runs (suffixes), whether it is the default
("auto") runtime of a suffix, CPU or GPU, why it cannot run here
(`unavailable()`), and how to open a file (`open(path, threads, **options)`
-> a `runtime.base.Backend`). Concrete runtimes are imported lazily, inside
their openers, so a machine without OpenVINO, LiteRT or TensorRT still lists
them and says why each cannot run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from retinaunet_deploy import names
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.runtime.providers import CPU

AUTO = "auto"


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class Runtime:
    """One way to run an artifact.

    Attributes:
        name: what `--runtime` and `Predictor.from_artifact(runtime=...)` call it.
        suffixes: file suffixes it runs (".onnx", ".keras", ...).
        opener: ``opener(path, threads=None, **options) -> Backend``.
        device: "cpu" or "gpu" (GPU runtimes report no thread count).
        family: the bench's backend column (openvino and openvino-bf16 are one family).
        precision: a precision the runtime imposes (openvino-bf16: "bf16"); None: the
            file's own (fp32, fp16 or int8 by its name).
        auto_for: suffixes it is the default ("auto") runtime of.
        bench_files: run-folder files the bench times and judges in it, when present;
            None: every file the run's manifest records with one of `suffixes` (so a
            new variant file gets its bench rows with no edit).
        bench_label: its bench rows' names, formatted with backend, precision and file.
        bench_notes: the bench's note on a row, by run-folder file.
        bench_options: what the bench opens its files with, besides threads.
        judged_files: run-folder files `calibrate` judges in it as runtime variants
            (recorded in the manifest's ``runtime_variants``, written as no file).
        check: ``check() -> reason | None``: why it cannot run on this machine.
        recommendable: whether `predict RUN_DIR` may be sent to it.
    """

    name: str
    suffixes: tuple[str, ...]
    opener: Callable[..., object]
    device: str = "cpu"
    family: str = ""
    precision: str | None = None
    auto_for: tuple[str, ...] = ()
    bench_files: tuple[str, ...] | None = ()
    judged_files: tuple[str, ...] = ()
    check: Callable[[], str | None] = field(default=_always)
    recommendable: bool = True
    bench_label: str = "{backend} {precision} ({file})"
    bench_notes: Mapping[str, str] = field(default_factory=dict, compare=False)
    bench_options: Mapping[str, object] = field(default_factory=dict, compare=False)

    @property
    def backend(self) -> str:
        return self.family or self.name

    def unavailable(self) -> str | None:
        """Why this runtime cannot run here, or None when it can."""
        return self.check()

    def precision_of(self, file: str) -> str:
        """The precision a run-folder file runs at in this runtime."""
        return self.precision or file_precision(file)

    def row_name(self, file: str) -> str:
        """The bench row of `file` in this runtime ("onnxruntime int8 (model.int8.onnx)")."""
        return self.bench_label.format(backend=self.backend, precision=self.precision_of(file),
                                       file=file)

    def open(self, path: Path, threads: int | None = None, **options):
        """Open `path`; raises `ConfigError` for a file it does not run, `ArtifactError`
        for a missing or corrupt one."""
        path = Path(path)
        if path.suffix not in self.suffixes:
            others = [r.name for r in RUNTIMES.values() if path.suffix in r.suffixes]
            raise ConfigError(f"{path}: runtime {self.name!r} runs {'/'.join(self.suffixes)} "
                              f"files, not {path.suffix or 'files without a suffix'}; use "
                              f"--runtime auto" + (f" or one of {others}" if others else ""))
        return self.opener(path, threads=threads, **options)


def file_precision(file: str) -> str:
    """fp32, fp16 or int8, from a run-folder file name (model.int8.onnx -> int8)."""
    name = Path(file).name
    for precision in ("int8", "fp16", "bf16"):
        if f".{precision}." in name:
            return precision
    return "fp32"


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Add (or replace) a runtime; returns it."""
    if runtime.name == AUTO:
        raise ConfigError(f"{AUTO!r} is not a runtime name")
    RUNTIMES[runtime.name] = runtime
    return runtime


def unregister(name: str) -> None:
    """Remove a runtime (tests that register a fake one)."""
    RUNTIMES.pop(name, None)


def runtime_choices() -> tuple[str, ...]:
    """What `--runtime` accepts: "auto" then every registered name."""
    return (AUTO, *RUNTIMES)


def runtime_named(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}; choose one of {list(runtime_choices())}")
    return RUNTIMES[name]


def auto_runtime(path: Path) -> Runtime:
    """The default runtime of a file, by its suffix."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder; give an artifact file (a run folder's "
                            f"recommended one: 'retinaunet-deploy predict {path} IMAGES', or "
                            f"recommendation.recommended_artifact({str(path)!r}))")
    for runtime in RUNTIMES.values():
        if path.suffix in runtime.auto_for:
            return runtime
    known = sorted({s for r in RUNTIMES.values() for s in r.auto_for})
    raise ArtifactError(f"{path}: unsupported artifact type {path.suffix!r}; use one of {known}")


def resolve(path: Path, runtime: str = AUTO) -> Runtime:
    """The runtime that runs `path` under the name given ("auto": by suffix)."""
    return auto_runtime(path) if runtime == AUTO else runtime_named(runtime)


def open_backend(path: Path, runtime: str = AUTO, threads: int | None = None, **options):
    """Open `path` in `runtime` ("auto": by suffix); see `Runtime.open`."""
    return resolve(path, runtime).open(path, threads=threads, **options)


def runtime_suffixes() -> tuple[str, ...]:
    """Every suffix some registered runtime runs."""
    return tuple(sorted({s for r in RUNTIMES.values() for s in r.suffixes}))


# === The built-in runtimes. Openers import their runtime lazily. ===

def _open_keras(path, threads=None, fastest_timing: bool = False):
    """`fastest_timing`: the bench's Keras runner, timed with XLA when that is faster here
    (`backends.KerasFastest`); fidelity still runs the plain reference function."""
    from retinaunet_deploy.runtime.backends import KerasBackend, KerasFastest

    return (KerasFastest if fastest_timing else KerasBackend)(path, threads=threads)


def _open_onnxruntime(path, threads=None, providers=None, optimize: bool = True):
    """`providers`: ONNX Runtime execution providers (names or (name, options) pairs;
    None: those that load here); `optimize`: its graph optimisations."""
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, threads=threads, providers=providers, optimize=optimize)


def _open_openvino(precision):
    def opener(path, threads=None):
        from retinaunet_deploy.runtime.openvino import OpenVINOBackend

        return OpenVINOBackend(path, threads=threads, precision=precision)
    return opener


def _open_tflite(path, threads=None):
    from retinaunet_deploy.runtime.tflite import TFLiteBackend

    return TFLiteBackend(path, threads=threads)


def _open_tensorrt(path, threads=None, device: int = 0):
    from retinaunet_deploy.runtime.tensorrt import TensorRTBackend

    return TensorRTBackend(path, threads=threads, device=device)


def _openvino_unavailable() -> str | None:
    from retinaunet_deploy.runtime.openvino import openvino_unavailable

    return openvino_unavailable()


def _bf16_unavailable() -> str | None:
    from retinaunet_deploy.runtime.openvino import bf16_unavailable

    return bf16_unavailable()


def _tflite_unavailable() -> str | None:
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return "LiteRT is not installed (pip install ai-edge-litert)"
    return None


def _tensorrt_unavailable() -> str | None:
    from retinaunet_deploy.errors import NotBuiltError
    from retinaunet_deploy.runtime.cuda import require_tensorrt

    try:
        require_tensorrt()
    except NotBuiltError as error:
        return str(error)
    return None


# The bench's order of rows is this order (and within a runtime, its files').
register(Runtime("keras", (".keras",), _open_keras, auto_for=(".keras",),
                 bench_files=(names.KERAS,), recommendable=False,
                 bench_label="{backend} {precision}", bench_options={"fastest_timing": True}))
register(Runtime("onnxruntime", (".onnx",), _open_onnxruntime, auto_for=(".onnx",),
                 bench_files=None, bench_options={"providers": [CPU]},
                 bench_notes={names.FP16_ONNX: "fp16 compute on CPU runs through casts",
                              names.INT8_ONNX: "TensorRT form (Q/DQ), run fused by ONNX Runtime",
                              names.INT8_CPU_ONNX: "ONNX Runtime CPU form (QOperator U8S8)"}))
register(Runtime("openvino", (".onnx",), _open_openvino(None), check=_openvino_unavailable,
                 bench_files=(names.ONNX, names.INT8_ONNX), judged_files=(names.INT8_ONNX,),
                 bench_notes={names.ONNX: "f32 precision hint",
                              names.INT8_ONNX: "the TensorRT-form Q/DQ file, unchanged"}))
register(Runtime("openvino-bf16", (".onnx",), _open_openvino("bf16"), family="openvino",
                 precision="bf16", check=_bf16_unavailable, bench_files=(names.ONNX,),
                 judged_files=(names.ONNX,),
                 bench_notes={names.ONNX: "bf16 precision hint, no calibration"}))
register(Runtime("tflite", (".tflite",), _open_tflite, auto_for=(".tflite",),
                 check=_tflite_unavailable, bench_files=(names.INT8_TFLITE,),
                 bench_label="{backend} {precision}",
                 bench_notes={names.INT8_TFLITE: "the run's gated model.int8.tflite (LiteRT, "
                                                 "XNNPACK)"}))
register(Runtime("tensorrt", (".plan",), _open_tensorrt, device="gpu", auto_for=(".plan",),
                 check=_tensorrt_unavailable, bench_label="{backend} {precision}",
                 bench_files=tuple(names.plan_name(p) for p in names.ONNX_FOR_PRECISION)))
