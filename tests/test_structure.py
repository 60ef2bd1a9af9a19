"""The house rules, checked: module size and the direction of imports between layers."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retinaunet_deploy"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every retinaunet_deploy module a file imports, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("retinaunet_deploy")}


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


@pytest.mark.parametrize("layer,forbidden", [
    ("export", ("retinaunet_deploy.bench", "retinaunet_deploy.train", "retinaunet_deploy.cli")),
    ("runtime", ("retinaunet_deploy.export", "retinaunet_deploy.bench",
                 "retinaunet_deploy.train", "retinaunet_deploy.cli", "retinaunet_deploy.judge")),
    # The app-facing stage reads the recommendation without the benchmark that made it.
    ("predict", ("retinaunet_deploy.bench",)),
    ("recommendation", ("retinaunet_deploy.bench",)),
    # The judging package opens files only through the runtime registry.
    ("judge", ("retinaunet_deploy.runtime.backends", "retinaunet_deploy.runtime.openvino",
               "retinaunet_deploy.runtime.tflite", "retinaunet_deploy.runtime.tensorrt",
               "retinaunet_deploy.export", "retinaunet_deploy.bench",
               "retinaunet_deploy.train", "retinaunet_deploy.cli")),
    ("data", ("retinaunet_deploy.export", "retinaunet_deploy.bench", "retinaunet_deploy.runtime",
              "retinaunet_deploy.train", "retinaunet_deploy.cli")),
    ("model", ("retinaunet_deploy.export", "retinaunet_deploy.bench",
               "retinaunet_deploy.runtime", "retinaunet_deploy.train", "retinaunet_deploy.cli")),
    ("bench", ("retinaunet_deploy.train",)),   # the bench measures, never trains
    # The server sits on the runtime (its model runs the Predictor in Triton's process).
    ("serve", ("retinaunet_deploy.export", "retinaunet_deploy.bench", "retinaunet_deploy.train",
               "retinaunet_deploy.cli", "retinaunet_deploy.judge")),
])
def test_dependencies_point_one_way(layer, forbidden):
    module = PACKAGE / f"{layer}.py"
    paths = [module] if module.is_file() else sorted((PACKAGE / layer).rglob("*.py"))
    assert paths, f"no module or package {layer!r}"
    wrong = {str(p.relative_to(PACKAGE)): sorted(i for i in _imports(p) if i.startswith(forbidden))
             for p in paths}
    assert not {k: v for k, v in wrong.items() if v}


def test_run_folder_names_are_spelled_once():
    """Artifact file names live in names.py; code elsewhere uses the constants."""
    spelled = {}
    for path in MODULES:
        if path.name == "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value in {"model.keras", "model.onnx", "model.fp16.onnx",
                                       "model.int8.onnx", "model.int8.cpu.onnx",
                                       "model.int8.tflite", "manifest.json", "model_card.json",
                                       "calibration.json"}):
                spelled.setdefault(str(path.relative_to(PACKAGE)), []).append(node.value)
    assert not spelled, spelled
