"""Engine stage: an ONNX variant -> ``model.<precision>.plan`` with TensorRT.

Precision is a property of the ONNX file (TensorRT 11 networks are always
strongly typed and have no FP16/INT8 builder flags; on 10.x we ask for
``STRONGLY_TYPED`` to get the same behaviour), so ``--precision`` only picks
the file: fp32 -> model.onnx, fp16 -> model.fp16.onnx, int8 -> model.int8.onnx
(the Q/DQ form; the QOperator CPU form is not for TensorRT).

An engine only runs on the TensorRT version and GPU it was built for, so the
manifest records both, and `check_engine_target` refuses a mismatch with that
explanation before TensorRT is asked to deserialise anything.

TensorRT and CUDA Python are imported lazily: this module imports (and its
pure parts are tested) on machines without them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from retinaunet_deploy.artifacts import (
    atomic_path,
    record_artifact,
    tool_versions,
    verify_lineage,
)
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.names import ONNX_FOR_PRECISION, TIMING_CACHE, plan_name
from retinaunet_deploy.runtime.cuda import device_target, recording_logger, require_tensorrt


@dataclass
class EngineOptions:
    """Options of the engine build (recorded in the manifest).

    Attributes:
        precision: which ONNX variant to compile: fp32, fp16 or int8.
        min_batch, opt_batch, max_batch: the optimisation profile on the batch axis
            (TensorRT tunes kernels for opt_batch; the engine accepts min..max).
        min_size, opt_size, max_size: the profile on height and width (multiples of
            the stride). The Predictor pads smaller images up to min_size and runs
            larger ones as tiles of at most max_size.
        workspace_mib: the builder's scratch memory limit.
        timing_cache: reuse and update RUN_DIR/tensorrt.timing.cache across builds.
    """

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    min_size: int = 64
    opt_size: int = 256
    max_size: int = 1024
    workspace_mib: int = 1024
    timing_cache: bool = True

    def __post_init__(self):
        if self.precision not in ONNX_FOR_PRECISION:
            raise ConfigError(f"precision must be one of {sorted(ONNX_FOR_PRECISION)}, "
                              f"got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"need 1 <= min_batch <= opt_batch <= max_batch, got "
                              f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if not 16 <= self.min_size <= self.opt_size <= self.max_size or any(
                s % 16 for s in (self.min_size, self.opt_size, self.max_size)):
            raise ConfigError(f"need 16 <= min_size <= opt_size <= max_size, multiples of 16 "
                              f"(the stride), got {self.min_size}, {self.opt_size}, "
                              f"{self.max_size}")
        if self.workspace_mib < 1:
            raise ConfigError(f"workspace_mib must be >= 1, got {self.workspace_mib}")


def attach_timing_cache(config, cache_path: Path, say) -> None:
    """Give the builder config the run's timing cache, or a fresh one.

    `create_timing_cache` returns None for an unreadable or foreign cache, and
    `set_timing_cache(None, ...)` raises; a cache timed on another GPU would
    mislead kernel choice (`ignore_mismatch=False` refuses it). Both start afresh.
    """
    data = cache_path.read_bytes() if cache_path.exists() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if data:
        say(f"{cache_path} is unreadable or was timed on another GPU or TensorRT; starting a "
            f"new cache")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def profile_shapes(options: EngineOptions, channels: int):
    """(min, opt, max) NHWC input shapes of the engine's optimisation profile.

    Height and width are symbolic in every exported file: one engine serves the
    range min_size..max_size, and the Predictor pads below it and tiles beyond it.
    """
    return tuple((batch, size, size, channels) for batch, size in (
        (options.min_batch, options.min_size), (options.opt_batch, options.opt_size),
        (options.max_batch, options.max_size)))


# === The build ===

def build_engine(run_dir: Path, options: EngineOptions | None = None, progress=None) -> dict:
    """Compile RUN_DIR's ONNX variant for `options.precision` into model.<precision>.plan.

    The input must match its manifest record (lineage) and pass the static
    TensorRT import check; the engine is written atomically and recorded with
    the TensorRT version, GPU and compute capability it is tied to.

    Returns the manifest entry of the engine.
    """
    from retinaunet_deploy.export.trt_check import check_tensorrt_import

    options = options or EngineOptions()
    run_dir = Path(run_dir)
    say = progress or (lambda message: None)
    onnx_name = ONNX_FOR_PRECISION[options.precision]
    remedy = ("retinaunet-deploy export" if options.precision == "fp32"
              else "retinaunet-deploy calibrate")
    verify_lineage(run_dir, onnx_name, f"{remedy} {run_dir}")  # changed, or of an older parent
    static = check_tensorrt_import(run_dir / onnx_name)
    if not static.ok:
        raise ArtifactError(f"{run_dir / onnx_name} would not import into TensorRT: "
                            f"{static.problems[0]} ({len(static.problems)} problem(s); run "
                            f"'retinaunet-deploy check-trt' for all)")
    trt = require_tensorrt()
    target = device_target()
    logger = recording_logger(trt)

    say(f"parsing {onnx_name} (TensorRT {trt.__version__}, {target['gpu']})")
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        # Required on 10.x for precision to come from the ONNX; ignored (always on) in 11.x.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(run_dir / onnx_name)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT could not parse {run_dir / onnx_name}: "
                            + " | ".join(errors or [logger.tail()]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        channels = tuple(tensor.shape)[3]
        if len(tensor.shape) != 4 or channels < 0:
            raise ArtifactError(f"{run_dir / onnx_name}: input {tensor.name} is "
                                f"{tuple(tensor.shape)}; expected NHWC with fixed channels: "
                                f"re-export it")
        profile.set_shape(tensor.name, *profile_shapes(options, channels))
    config.add_optimization_profile(profile)

    cache_path = run_dir / TIMING_CACHE
    if options.timing_cache:
        attach_timing_cache(config, cache_path, say)

    say(f"building the {options.precision} engine (batch {options.min_batch}.."
        f"{options.max_batch}, tuned for {options.opt_batch}; height and width "
        f"{options.min_size}..{options.max_size}, tuned for {options.opt_size}); this takes "
        f"minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {run_dir / onnx_name}; "
                            f"builder log:\n{logger.tail()}")

    target_name = plan_name(options.precision)
    with atomic_path(run_dir / target_name) as tmp:
        tmp.write_bytes(bytes(serialized))
    if options.timing_cache:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    entry = record_artifact(run_dir, target_name, "build-engine", parent=onnx_name,
                            options=asdict(options), tools=tool_versions("tensorrt",
                                                                         "cuda-python"),
                            target=target)
    say(f"wrote {run_dir / target_name} ({entry['size'] / 2**20:.1f} MiB)")
    return entry
