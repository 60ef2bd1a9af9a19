"""ONNX export: names, dynamic batch, metadata, parity, manifest, failure leaves nothing."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.artifacts import load_manifest, sha256_file
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.export.onnx import ExportOptions, export_onnx


def test_onnx_names_axes_opset_and_standard_ops(tiny_exported):
    import onnx

    run_dir, _ = tiny_exported
    model = onnx.load(run_dir / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["image"]
    assert sorted(o.name for o in model.graph.output) == ["box_deltas", "cls_logits", "mask"]
    image_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in image_dims[:3]] == ["batch", "height", "width"]
    assert image_dims[3].dim_value == 1
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
               for o in model.graph.output}
    assert outputs == {"mask": ["batch", "height", "width", 3],
                       "cls_logits": ["batch", "anchors", 2],
                       "box_deltas": ["batch", "anchors", 4]}
    assert {op.domain: op.version for op in model.opset_import}[""] >= 17
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}


def test_onnx_metadata_carries_the_model_card(tiny_exported, tiny_trained):
    import onnx

    run_dir, _ = tiny_exported
    props = {p.key: p.value for p in onnx.load(run_dir / "model.onnx").metadata_props}
    assert json.loads(props["model_card"]) == tiny_trained[1]
    assert props["parent_sha256"] == sha256_file(run_dir / "model.keras")


def test_parity_is_measured_and_recorded(tiny_exported):
    run_dir, parity = tiny_exported
    assert parity["images"] == 8 and parity["split"] == "val"
    assert parity["max_abs_error_all"] <= 1e-4
    assert 0 < parity["max_abs_error"]["mask"] <= 1e-5
    assert parity["mask_argmax_agreement"] == 1.0
    entry = load_manifest(run_dir)["artifacts"]["model.onnx"]
    assert entry["figures"]["parity"] == parity
    assert entry["parent"] == {"file": "model.keras",
                               "sha256": sha256_file(run_dir / "model.keras")}
    assert entry["sha256"] == sha256_file(run_dir / "model.onnx")
    assert "tf2onnx" in entry["tools"] and entry["options"]["opset"] == 17


def test_dynamic_batch_runs_in_onnxruntime(tiny_exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_exported[0] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for n in (1, 3):
        outputs = session.run(["mask"], {"image": np.zeros((n, 64, 64, 1), np.float32)})
        assert outputs[0].shape == (n, 64, 64, 3)


def test_failed_parity_leaves_nothing_behind(run_copy):
    before = sha256_file(run_copy / "model.onnx")
    files = sorted(p.name for p in run_copy.iterdir())
    with pytest.raises(ArtifactError, match=r"ONNX parity failed: .* > tolerance 1e-30 .*"
                                            r"model.onnx was not written"):
        export_onnx(run_copy, ExportOptions(tolerance=1e-30))
    assert sorted(p.name for p in run_copy.iterdir()) == files  # no temp file left
    assert sha256_file(run_copy / "model.onnx") == before


def test_export_refuses_a_model_changed_since_training(run_copy):
    (run_copy / "model.keras").write_bytes(b"replaced")
    with pytest.raises(ArtifactError, match=r"model.keras changed since 'train' recorded it .* "
                                            r"re-run 'retinaunet-deploy train"):
        export_onnx(run_copy)


def test_export_without_a_trained_model(tmp_path):
    with pytest.raises(ArtifactError, match="model_card.json not found; train a model"):
        export_onnx(tmp_path)


def test_export_options_are_checked():
    with pytest.raises(ConfigError, match="opset must be >= 17"):
        ExportOptions(opset=13)


def test_cli_export_prints_parity(run_copy):
    result = CliRunner().invoke(cli, ["export", str(run_copy), "--parity-images", "4"])
    assert result.exit_code == 0, result.output
    assert "parity on 4 validation images" in result.output
    assert "mask argmax agreement 100.00%" in result.output
