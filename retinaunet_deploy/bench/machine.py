"""The machine a figure was measured on: CPU model, the instruction sets that decide
which kernels a runtime picks, cores, threads, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info(threads: int) -> dict:
    from retinaunet_deploy.artifacts import tool_versions

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": tool_versions("tensorflow", "keras", "onnx", "onnxruntime",
                                      "onnxruntime-gpu", "tf2onnx", "onnxslim")}


# The instruction-set extensions that decide which int8/bf16/fp32 kernels a runtime picks.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
             "amx_bf16", "asimddp", "sve")


def cpu_flags() -> list[str]:
    """The `CPU_FLAGS` this CPU reports in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    present = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            present.update(line.split(":", 1)[1].split())
    return [flag for flag in CPU_FLAGS if flag in present]
