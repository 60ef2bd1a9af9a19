"""GPU tests: they run only where TensorRT imports and a CUDA device answers."""

import pytest


def _gpu_missing() -> str | None:
    from retinaunet_deploy.bench.harness import tensorrt_unavailable

    return tensorrt_unavailable()


def pytest_collection_modifyitems(config, items):
    reason = _gpu_missing()
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
