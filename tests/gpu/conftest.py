"""GPU tests: they run only where TensorRT imports and a CUDA device answers."""

import pytest


def pytest_collection_modifyitems(config, items):
    from retinaunet_deploy.runtime.registry import runtime_named

    reason = runtime_named("tensorrt").unavailable()
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
