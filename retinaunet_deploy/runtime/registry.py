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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retinaunet_deploy import names
from retinaunet_deploy.errors import ArtifactError, ConfigError

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
        bench_files: run-folder files the bench times and judges in it, when present.
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
    bench_files: tuple[str, ...] = ()
    judged_files: tuple[str, ...] = ()
    check: Callable[[], str | None] = field(default=_always)
    recommendable: bool = True

    @property
    def backend(self) -> str:
        return self.family or self.name

    def unavailable(self) -> str | None:
        """Why this runtime cannot run here, or None when it can."""
        return self.check()

    def precision_of(self, file: str) -> str:
        """The precision a run-folder file runs at in this runtime."""
        return self.precision or file_precision(file)

    def open(self, path: Path, threads: int | None = None, **options):
        """Open `path`; raises `ConfigError` for a file it does not run, `ArtifactError`
        for a missing or corrupt one."""
        path = Path(path)
        if path.suffix not in self.suffixes:
            raise ConfigError(f"{path}: runtime {self.name!r} runs {'/'.join(self.suffixes)} "
                              f"files, not {path.suffix or 'files without a suffix'}")
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

def _open_keras(path, threads=None, **options):
    from retinaunet_deploy.runtime.backends import KerasBackend

    return KerasBackend(path, threads=threads, **options)


def _open_onnxruntime(path, threads=None, **options):
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, threads=threads, **options)


def _open_openvino(precision):
    def opener(path, threads=None, **options):
        from retinaunet_deploy.runtime.openvino import OpenVINOBackend

        return OpenVINOBackend(path, threads=threads, precision=precision, **options)
    return opener


def _open_tflite(path, threads=None, **options):
    from retinaunet_deploy.runtime.tflite import TFLiteBackend

    return TFLiteBackend(path, threads=threads, **options)


def _open_tensorrt(path, threads=None, **options):
    from retinaunet_deploy.runtime.tensorrt import TensorRTBackend

    return TensorRTBackend(path, threads=threads, **options)


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


register(Runtime("keras", (".keras",), _open_keras, auto_for=(".keras",),
                 bench_files=(names.KERAS,), recommendable=False))
register(Runtime("onnxruntime", (".onnx",), _open_onnxruntime, auto_for=(".onnx",),
                 bench_files=(names.ONNX, names.FP16_ONNX, names.INT8_ONNX,
                              names.INT8_CPU_ONNX)))
register(Runtime("openvino", (".onnx",), _open_openvino(None), check=_openvino_unavailable,
                 bench_files=(names.ONNX, names.INT8_ONNX), judged_files=(names.INT8_ONNX,)))
register(Runtime("openvino-bf16", (".onnx",), _open_openvino("bf16"), family="openvino",
                 precision="bf16", check=_bf16_unavailable, bench_files=(names.ONNX,),
                 judged_files=(names.ONNX,)))
register(Runtime("tflite", (".tflite",), _open_tflite, auto_for=(".tflite",),
                 check=_tflite_unavailable, bench_files=(names.INT8_TFLITE,)))
register(Runtime("tensorrt", (".plan",), _open_tensorrt, device="gpu", auto_for=(".plan",),
                 check=_tensorrt_unavailable,
                 bench_files=tuple(names.plan_name(p) for p in names.ONNX_FOR_PRECISION)))
