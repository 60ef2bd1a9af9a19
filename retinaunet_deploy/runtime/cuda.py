"""CUDA and TensorRT on this machine: lazy imports, the device, and engine records.

Used by the engine builder (`export.tensorrt`) and the engine runner
(`runtime.tensorrt`). TensorRT and CUDA Python are imported lazily, so this
module imports (and its pure parts are tested) on machines without them.
"""

from __future__ import annotations

import functools
from pathlib import Path

from retinaunet_deploy.artifacts import load_manifest, remedy_for, verify_artifact
from retinaunet_deploy.errors import ArtifactError, NotBuiltError
from retinaunet_deploy.names import MANIFEST

INSTALL_HINT = ("TensorRT and an NVIDIA GPU are needed: on a machine with a GPU and its driver, "
                "pip install -e '.[tensorrt]'")


def require_tensorrt():
    """Import and return the `tensorrt` module, or raise one clear line."""
    from retinaunet_deploy.runtime.providers import cuda_device_count

    try:
        import tensorrt
    except ImportError:
        raise NotBuiltError(f"TensorRT is not installed. {INSTALL_HINT}") from None
    if cuda_device_count() == 0:
        raise NotBuiltError(f"no CUDA device on this machine. {INSTALL_HINT}")
    return tensorrt


@functools.lru_cache(maxsize=1)  # cuda_call uses it on every copy of the hot path
def cudart():
    """CUDA Python's runtime module (`cuda.bindings.runtime`; `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise NotBuiltError(f"CUDA Python is not installed. {INSTALL_HINT}") from None
    return runtime


def cuda_call(result):
    """Unpack a CUDA Python call's (error, *values); raise on an error code."""
    runtime = cudart()
    error, values = result[0], result[1:]
    if error != runtime.cudaError_t.cudaSuccess:
        name = runtime.cudaGetErrorName(error)[1]
        raise ArtifactError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def device_target(device: int = 0) -> dict:
    """What an engine built or run here is tied to: TensorRT version, GPU, compute capability."""
    trt = require_tensorrt()
    props = cuda_call(cudart().cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"tensorrt": trt.__version__, "gpu": name.rstrip("\x00").strip(),
            "compute_capability": f"{props.major}.{props.minor}"}


def engine_mismatch(recorded: dict, current: dict) -> str | None:
    """Why an engine recorded with `recorded` target cannot run on `current`, or None.

    TensorRT engines are specific to the TensorRT version and the GPU model
    (compute capability), so both must match exactly.
    """
    problems = []
    if recorded.get("tensorrt") != current.get("tensorrt"):
        problems.append(f"built with TensorRT {recorded.get('tensorrt')}, this machine has "
                        f"{current.get('tensorrt')}")
    if (recorded.get("gpu"), recorded.get("compute_capability")) != (
            current.get("gpu"), current.get("compute_capability")):
        problems.append(f"built for {recorded.get('gpu')} (compute capability "
                        f"{recorded.get('compute_capability')}), this machine has "
                        f"{current.get('gpu')} ({current.get('compute_capability')})")
    return "; ".join(problems) or None


def engine_record(plan: Path) -> dict:
    """The engine's manifest record, after checking the file still has its recorded hash.

    Needs no TensorRT, so a replaced, truncated or unrecorded engine is refused
    on any machine.
    """
    plan = Path(plan)
    remedy = remedy_for(plan.parent, plan.name, "build-engine")
    record = load_manifest(plan.parent)["artifacts"].get(plan.name)
    if record is None or "target" not in record:
        raise ArtifactError(f"{plan} has no build record in {plan.parent / MANIFEST}, so "
                            f"its TensorRT version and GPU are unknown; rebuild it on this "
                            f"machine with '{remedy}'")
    verify_artifact(plan.parent, plan.name, remedy)
    return record


def check_engine_target(plan: Path, current: dict, record: dict | None = None) -> dict:
    """Refuse `plan` unless its manifest record matches `current`; return the record.

    The record lives in the manifest beside the engine (its run folder); pass the
    one `engine_record` returned to avoid hashing the engine a second time.
    """
    plan = Path(plan)
    remedy = remedy_for(plan.parent, plan.name, "build-engine")
    record = record or engine_record(plan)
    reason = engine_mismatch(record["target"], current)
    if reason:
        raise ArtifactError(f"{plan} cannot run here: {reason}. TensorRT engines only run on "
                            f"the TensorRT version and GPU they were built for; rebuild with "
                            f"'{remedy}'")
    return record


def recording_logger(trt):
    """A TensorRT logger that keeps every message, so failures can quote the log."""

    class RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []
            severity = trt.ILogger.Severity
            self.kept = {severity.INTERNAL_ERROR, severity.ERROR, severity.WARNING}

        def log(self, severity, msg):
            if severity in self.kept:
                self.messages.append(f"[{severity.name}] {msg}")

        def tail(self, lines: int = 20) -> str:
            return "\n".join(self.messages[-lines:]) or "(TensorRT logged nothing)"

    return RecordingLogger()
