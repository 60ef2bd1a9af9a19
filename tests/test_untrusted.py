"""Untrusted artifacts: nothing the toolkit loads can run code or read outside its folder.

The ONNX external-data refusals are in test_bad_inputs.py; here: Keras files with
code in them, and a scan of the package for loaders that could execute data.
"""

import re
from pathlib import Path

import pytest

from retinaunet_deploy.errors import ArtifactError

PACKAGE = Path(__file__).resolve().parent.parent / "retinaunet_deploy"


def test_keras_file_with_a_python_lambda_is_refused(tmp_path):
    import keras

    from retinaunet_deploy.runtime.backends import load_keras_model

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "code.keras")
    with pytest.raises(ArtifactError, match=r"cannot load .*code\.keras"):
        load_keras_model(tmp_path / "code.keras")


def _sources():
    return {path: path.read_text() for path in PACKAGE.rglob("*.py")}


def test_no_loader_in_the_package_can_execute_data():
    problems = []
    for path, text in _sources().items():
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{number}"
            if re.search(r"\bpickle\b|\beval\(|\bexec\(|yaml\.load\(|allow_pickle\s*=\s*True", code):
                problems.append(f"{where}: {line.strip()}")
            if re.search(r"\bnp\.load\(|numpy\.load\(", code) and "allow_pickle=False" not in code:
                problems.append(f"{where}: np.load without allow_pickle=False")
            if "load_model(" in code and "safe_mode=True" not in code:
                problems.append(f"{where}: load_model without safe_mode=True")
            if re.search(r"\bonnx\.load\(", code) and path.name != "artifacts.py":
                problems.append(f"{where}: onnx.load outside artifacts.load_onnx (external "
                                f"data unchecked)")
            if "safe_mode=False" in code or "enable_unsafe_deserialization" in code:
                problems.append(f"{where}: unsafe Keras deserialisation")
    assert problems == []


def test_onnx_metadata_is_parsed_as_json_never_evaluated(run_copy):
    import onnx

    from retinaunet_deploy.runtime import Predictor

    model = onnx.load(run_copy / "model.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    props["model_card"] = "__import__('os').system('touch " + str(run_copy / "pwned") + "')"
    onnx.helper.set_model_props(model, props)
    onnx.save(model, run_copy / "meta.onnx")
    with pytest.raises(ArtifactError, match="corrupt model_card in its metadata"):
        Predictor.from_artifact(run_copy / "meta.onnx")
    assert not (run_copy / "pwned").exists()
