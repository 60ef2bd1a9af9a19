"""ONNX export: names, dynamic batch, metadata, parity, manifest, failure leaves nothing."""

import json
import shutil

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


def test_the_up_convolutions_feed_their_concats_directly(tiny_exported):
    """tf2onnx's run-time 'same' crop after each 2x2 stride-2 ConvTranspose is empty
    and is removed (parity, measured by the export, still holds)."""
    import onnx

    run_dir, _ = tiny_exported
    graph = onnx.load(run_dir / "model.onnx").graph
    producers = {out: node for node in graph.node for out in node.output}
    concats = [node for node in graph.node if node.op_type == "Concat"
               and any(producers.get(i) is not None and producers[i].op_type == "ConvTranspose"
                       for i in node.input)]
    assert len(concats) == 4  # depth 4: one per decoder level
    assert not any(node.op_type in ("Slice", "Pad") and producers.get(node.input[0]) is not None
                   and producers[node.input[0]].op_type == "ConvTranspose" for node in graph.node)
    entry = load_manifest(run_dir)["artifacts"]["model.onnx"]
    assert entry["figures"]["identity_crops_removed"] == 4


def _up_conv_graph(kernel: int, crop_end: int):
    """x (1, 2, H, W) -> ConvTranspose(kernel, stride 2) -> Slice[..., :crop_end] -> Pad(0) -> Relu."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(2, 3, kernel, kernel)).astype(np.float32)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["up"], kernel_shape=[kernel] * 2,
                         strides=[2, 2]),
        helper.make_node("Shape", ["up"], ["up_shape"]),
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["cropped"]),
        helper.make_node("Pad", ["cropped", "pads"], ["padded"]),
        helper.make_node("Relu", ["padded"], ["y"]),
        helper.make_node("Cast", ["up_shape"], ["shape_out"], to=TensorProto.INT64),
    ]
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
             numpy_helper.from_array(np.array([crop_end] * 2, np.int64), "ends"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.zeros(8, np.int64), "pads")]
    graph = helper.make_graph(
        nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("shape_out", TensorProto.INT64, None)], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8)


@pytest.mark.parametrize("kernel, crop_end, removed", [(2, 2**30, 1), (3, -1, 0)])
def test_only_an_empty_up_convolution_crop_is_removed(kernel, crop_end, removed):
    import onnxruntime as ort

    from retinaunet_deploy.export.graph_edits import drop_identity_transpose_crops

    model = _up_conv_graph(kernel, crop_end)
    before = model.SerializeToString()
    assert drop_identity_transpose_crops(model) == removed
    assert {n.op_type for n in model.graph.node} >= ({"Relu", "Shape"} if removed
                                                     else {"Slice", "Pad"})
    x = np.random.default_rng(1).normal(size=(1, 2, 5, 7)).astype(np.float32)
    run = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})
           for m in (before, model.SerializeToString())]
    for expected, edited in zip(*run):
        np.testing.assert_array_equal(expected, edited)
    if removed:
        assert not {"Slice", "Pad"} & {n.op_type for n in model.graph.node}


def test_onnx_metadata_carries_the_model_card(tiny_exported, tiny_trained):
    import onnx

    run_dir, _ = tiny_exported
    props = {p.key: p.value for p in onnx.load(run_dir / "model.onnx").metadata_props}
    assert json.loads(props["model_card"]) == tiny_trained[1].to_dict()
    # byte for byte the run's model_card.json, keys sorted
    assert props["model_card"] == json.dumps(
        json.loads((run_dir / "model_card.json").read_text()), sort_keys=True)
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
                                            r"model.onnx was not written; retry without the "
                                            r"graph simplification \('retinaunet-deploy export "
                                            r".* --no-simplify'\), or accept the difference "
                                            r"\('retinaunet-deploy export .* --tolerance "):
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


def _number_names_like_tf2onnx(path) -> None:
    """Rewrite an ONNX file with tf2onnx-style numbered names ("Relu__1041") for every
    node and internal tensor; the graph's inputs and outputs keep theirs."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    kept = {v.name for v in graph.input} | {v.name for v in graph.output}
    renames = {}
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}__{1000 + index}"
        for name in list(node.input) + list(node.output):
            if name and name not in kept and name not in renames:
                renames[name] = f"{node.op_type}__{2000 + len(renames)}:0"
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for item in list(graph.initializer) + list(graph.value_info):
        item.name = renames.get(item.name, item.name)
    onnx.save(model, path)


def test_re_exporting_the_same_model_writes_the_same_bytes(tiny_calibrated, tmp_path):
    """tf2onnx's names carry a process-wide counter and a hash-ordered choice; the export
    makes them deterministic, so re-running export on a calibrated run leaves its
    FP16/INT8 variants (tied to model.onnx's sha256) current; a model.onnx with
    tf2onnx's names is kept as it is. A different graph (here without the
    simplification) still makes them stale, naming calibrate."""
    from retinaunet_deploy.artifacts import record_artifact, run_lineage, runtime_variants

    run = tmp_path / "run"
    shutil.copytree(tiny_calibrated[0], run)
    before = {name: sha256_file(run / name) for name in ("model.onnx", "model.e2e.onnx")}
    judged = sorted(runtime_variants(run))
    for name in before:  # written afresh, not kept (see below)
        (run / name).unlink()
    export_onnx(run, ExportOptions(parity_images=4))
    assert {name: sha256_file(run / name) for name in before} == before
    status = {row["file"]: row["status"] for row in run_lineage(run)}
    assert {"model.fp16.onnx", "model.int8.onnx", "calibration.json"} <= set(status)
    assert set(status.values()) == {"ok"}, status
    assert sorted(runtime_variants(run)) == judged
    result = CliRunner().invoke(cli, ["info", str(run)])
    assert result.exit_code == 0, result.output
    assert not load_manifest(run)["artifacts"]["model.onnx"]["figures"]["previous_file_kept"]

    # A model.onnx from before the names were canonical: the same graph, so its bytes stay.
    _number_names_like_tf2onnx(run / "model.onnx")
    record_artifact(run, "model.onnx", "export", parent="model.keras")
    numbered = sha256_file(run / "model.onnx")
    result = CliRunner().invoke(cli, ["export", str(run), "--parity-images", "4"])
    assert result.exit_code == 0, result.output
    assert f"{run / 'model.onnx'} is the same graph as before: its bytes are kept" in \
        result.output
    assert sha256_file(run / "model.onnx") == numbered
    assert load_manifest(run)["artifacts"]["model.onnx"]["figures"]["previous_file_kept"]

    export_onnx(run, ExportOptions(parity_images=4, simplify=False))
    assert sha256_file(run / "model.onnx") != before["model.onnx"]
    status = {row["file"]: row for row in run_lineage(run)}
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        assert status[name]["status"] == "stale"
        assert f"re-run 'retinaunet-deploy calibrate {run}'" in status[name]["problem"]
    result = CliRunner().invoke(cli, ["info", str(run)])
    assert result.exit_code == 1 and "made from an older model.onnx" in result.output


def _counted_graph(counter: int, shared: str):
    """y = If(flag, then: x_relu + c, else: x_relu) with tf2onnx-style names: node and
    tensor names numbered from `counter`, a shared constant named `shared`, symbolic
    dims unk__<counter>; the branches read the outer tensors."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    relu, added = f"Relu__{counter}:0", f"Add__{counter + 1}:0"
    then = helper.make_graph(
        [helper.make_node("Add", [relu, shared], [added], name=f"Add__{counter + 1}")],
        "then", [], [helper.make_tensor_value_info(added, TensorProto.FLOAT, None)])
    orelse = helper.make_graph(
        [helper.make_node("Identity", [relu], [f"Id__{counter + 2}:0"])],
        "else", [], [helper.make_tensor_value_info(f"Id__{counter + 2}:0", TensorProto.FLOAT,
                                                   None)])
    nodes = [helper.make_node("Relu", ["x"], [relu], name=f"Relu__{counter}"),
             helper.make_node("Mul", [relu, shared], [f"Mul__{counter + 3}:0"],
                              name=f"Mul__{counter + 3}"),
             helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=orelse,
                              name=f"If__{counter + 4}"),
             helper.make_node("Add", [f"Mul__{counter + 3}:0", "y"], ["z"],
                              name=f"Add__{counter + 5}")]
    symbol = f"unk__{counter}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [symbol, 3]),
                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [symbol, 3])],
        [numpy_helper.from_array(np.array([1, 2, 3], np.float32), shared)],
        value_info=[helper.make_tensor_value_info(f"Gone__{counter + 9}:0", TensorProto.FLOAT,
                                                  [symbol]),
                    helper.make_tensor_value_info(relu, TensorProto.FLOAT,
                                                  [f"({symbol}//2)", 3])])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=8)


def test_canonical_names_do_not_depend_on_tf2onnx_counters():
    import onnx
    import onnxruntime as ort

    from retinaunet_deploy.export.graph_edits import canonicalise_names

    first, second = _counted_graph(874, "const_axes__216"), _counted_graph(1283, "Const__94")
    assert first.SerializeToString() != second.SerializeToString()
    for model in (first, second):
        assert canonicalise_names(model) == 6  # 5 node outputs, the constant; not x, flag, z
        onnx.checker.check_model(model, full_check=True)
    assert first.SerializeToString() == second.SerializeToString()
    graph = first.graph
    assert [n.name for n in graph.node] == ["Relu", "Mul", "If", "Add"]
    assert [i.name for i in graph.input] == ["x", "flag"] and graph.output[0].name == "z"
    assert [init.name for init in graph.initializer] == ["Mul:in1"]
    branches = {a.name: a.g for a in graph.node[2].attribute}
    assert [(n.name, list(n.input), list(n.output)) for n in branches["then_branch"].node] == [
        ("Add", ["Relu:0", "Mul:in1"], ["If/then_branch/Add:0"])]
    assert branches["else_branch"].output[0].name == "If/else_branch/Identity:0"
    assert [(v.name, v.type.tensor_type.shape.dim[0].dim_param) for v in graph.value_info] == [
        ("Relu:0", "(unk__0//2)")]  # the removed tensor's entry is dropped
    x = np.array([[-1, 0, 2]], np.float32)
    session = ort.InferenceSession(first.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag, expected in ((True, [[1, 2, 11]]), (False, [[0, 0, 8]])):
        z, = session.run(None, {"x": x, "flag": np.array(flag)})
        np.testing.assert_array_equal(z, expected)
    assert canonicalise_names(first) == 0  # already canonical: nothing to do


def test_same_graph_ignores_names_only(tmp_path):
    import onnx
    from onnx import numpy_helper

    from retinaunet_deploy.export.graph_edits import canonicalise_names
    from retinaunet_deploy.export.onnx import same_graph

    path = tmp_path / "model.onnx"
    onnx.save(_counted_graph(874, "const_axes__216"), path)  # as tf2onnx named it
    fresh = _counted_graph(1283, "Const__94")
    for node in fresh.graph.node:
        node.name = f"layer/{node.name}"  # other layer names too
    canonicalise_names(fresh)
    assert same_graph(path, fresh)
    weight = fresh.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 1, weight.name))
    assert not same_graph(path, fresh)
    assert not same_graph(tmp_path / "missing.onnx", fresh)
    twice = _counted_graph(874, "const_axes__216")
    twice.graph.node[1].name = twice.graph.node[0].name  # ONNX Runtime refuses the file
    onnx.save(twice, path)
    assert not same_graph(path, _counted_graph(874, "const_axes__216"))
    path.write_bytes(b"not an onnx file")
    assert not same_graph(path, fresh)
