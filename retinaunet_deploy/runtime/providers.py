"""Which ONNX Runtime execution providers can actually load here.

onnxruntime-gpu lists the CUDA and TensorRT providers as available even on a
machine without an NVIDIA driver, then logs an error when a session asks for
them. So a GPU provider is only requested when the CUDA driver answers with at
least one device.
"""

from __future__ import annotations

import ctypes
import functools

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices the driver reports; 0 without a driver or device."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def default_providers() -> list[str]:
    """CUDA (when a device is present and the provider is installed), then CPU.

    The TensorRT provider is left to explicit requests: it compiles an engine on
    first use, which takes minutes.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [CUDA] if cuda_device_count() > 0 and CUDA in available else []
    return providers + [CPU]


def provider_name(entry) -> str:
    """The name of a provider given as a name or as a (name, options) pair."""
    return entry[0] if isinstance(entry, tuple) else entry


def cuda_provider(device: int = 0) -> tuple[str, dict]:
    """ONNX Runtime's CUDA provider on `device`, with its options."""
    return CUDA, {"device_id": device}


def precision_of(path) -> str:
    """The precision an ONNX file of a run carries, from its name: fp32, fp16 or int8."""
    name = str(path)
    return "int8" if ".int8." in name else "fp16" if ".fp16." in name else "fp32"


def tensorrt_provider(fp16: bool = False, cache_dir=None, device: int = 0,
                      int8: bool = False) -> tuple[str, dict]:
    """ONNX Runtime's TensorRT provider, with its options.

    ONNX Runtime builds *weakly typed* TensorRT networks, so a file's precision
    must be switched on too: `int8` for a Q/DQ file (without it TensorRT refuses
    or ignores the Q/DQ nodes), `fp16` for an fp16 file (or to let TensorRT pick
    FP16 kernels for an fp32 one). `precision_of(path)` says which a file needs.

    Args:
        cache_dir: keep built engines and timing caches here; the first session
            builds the engine (minutes), later ones load it.
    """
    options = {"device_id": device, "trt_fp16_enable": fp16, "trt_int8_enable": int8}
    if cache_dir is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
    return TENSORRT, options


def check_providers(requested: list) -> list:
    """Refuse providers that cannot load here, naming what can.

    Args:
        requested: provider names or (name, options) pairs, in priority order.
    """
    import onnxruntime as ort

    from retinaunet_deploy.errors import ConfigError

    available = ort.get_available_providers()
    usable = [p for p in available if p == CPU or cuda_device_count() > 0]
    bad = [provider_name(p) for p in requested if provider_name(p) not in usable]
    if bad:
        raise ConfigError(f"execution provider(s) {bad} cannot load on this machine "
                          f"(usable: {usable}); GPU providers need an NVIDIA driver and device")
    return list(requested)


def check_session_providers(path, requested: list, loaded: list[str]) -> None:
    """Refuse a session that silently dropped a requested provider.

    ONNX Runtime falls back to the next provider when one fails to load (CUDA
    without cuDNN, say) and only logs it; a run asked to measure the GPU would
    then measure the CPU.
    """
    from retinaunet_deploy.errors import ArtifactError

    missing = [provider_name(p) for p in requested if provider_name(p) not in loaded]
    if missing:
        raise ArtifactError(f"{path}: ONNX Runtime could not start {missing} (running on "
                            f"{loaded} instead); check the CUDA, cuDNN and TensorRT libraries, "
                            f"or ask for the CPU provider")
