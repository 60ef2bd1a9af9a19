"""End-to-end files: the post-process in the graph (export/e2e.py, export/e2e_gate.py,
runtime/e2e.py, the e2e twins of calibrate, check-trt and the bench section)."""

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest

from retinaunet_deploy import names
from retinaunet_deploy.artifacts import load_manifest, load_onnx, verify_lineage
from retinaunet_deploy.card import load_card
from retinaunet_deploy.export.e2e_gate import match
from retinaunet_deploy.model.anchors import generate_anchors
from retinaunet_deploy.postprocess import DetectionConfig, Detections, decode_detections

OUTPUTS = {"num_detections": np.int32, "detection_boxes": np.float32,
           "detection_scores": np.float32, "detection_classes": np.int32,
           "labels": np.uint8}


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, batch):
    return dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {"image": batch})))


@pytest.fixture(scope="module")
def exported(tiny_exported):
    run, _ = tiny_exported
    return run, load_card(run)


def _test_images(card, count=6):
    from retinaunet_deploy.data.splits import held_out_set

    return [s.image for s in held_out_set(card, count, "test")]


def test_export_writes_a_gated_twin_tied_to_its_parent(exported):
    run, card = exported
    assert names.is_end_to_end(run / names.E2E_ONNX) and not names.is_end_to_end(run / "a.onnx")
    entry = load_manifest(run)["artifacts"][names.E2E_ONNX]
    assert entry["stage"] == "export"
    assert entry["parent"] == {"file": names.ONNX,
                               "sha256": load_manifest(run)["artifacts"][names.ONNX]["sha256"]}
    figures = entry["figures"]
    assert figures["passed"] and figures["matched_fraction"] >= 0.995
    assert figures["label_pixels_differing"] == 0 and figures["max_score_difference"] <= 1e-4
    assert figures["images"] == 64 and figures["boxes_numpy"] > 0
    verify_lineage(run, names.E2E_ONNX, "retinaunet-deploy export RUN")
    proto = load_onnx(run / names.E2E_ONNX)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["retinaunet_deploy.e2e"] == "1"
    assert json.loads(props["e2e_postprocess"])["max_detections"] == 100
    assert json.loads(props["e2e_parent"])["file"] == names.ONNX
    assert json.loads(props["model_card"]) == card.to_dict()
    session = _session(run / names.E2E_ONNX)
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(outputs) == list(OUTPUTS)
    assert outputs["detection_boxes"] == ["batch", 100, 4]
    assert outputs["labels"] == ["batch", "height", "width"]


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (96, 144)])
def test_graph_detections_are_the_numpy_postprocess(exported, size):
    """Batch of 2 at sizes from one stride (fewer (anchor, class) pairs than the top-k)
    up: the same boxes, scores, classes and labels as decode_detections on the plain
    file's outputs; padding rows are 0 / -1."""
    from retinaunet_deploy.data.patches import pad_to

    run, card = exported
    image = _test_images(card, 1)[0].astype(np.float32)
    image = pad_to(image, max(size[0], image.shape[0]), max(size[1], image.shape[1]),
                   axes=(0, 1))[:size[0], :size[1]]
    batch = np.stack([image, image[::-1, ::-1] * 0.7]).astype(np.float32)
    plain = _run(_session(run / names.ONNX), batch)
    e2e = _run(_session(run / names.E2E_ONNX), batch)
    assert {k: v.dtype for k, v in e2e.items()} == {k: np.dtype(t) for k, t in OUTPUTS.items()}
    reference = decode_detections(plain["cls_logits"], plain["box_deltas"],
                                  generate_anchors(card.anchors, size), size,
                                  card.detection_config)
    for i, dets in enumerate(reference):
        n = int(e2e["num_detections"][i, 0])
        assert n == len(dets)
        np.testing.assert_allclose(e2e["detection_boxes"][i, :n], dets.boxes, atol=1e-3)
        np.testing.assert_allclose(e2e["detection_scores"][i, :n], dets.scores, atol=1e-5)
        np.testing.assert_array_equal(e2e["detection_classes"][i, :n], dets.classes)
        assert np.all(e2e["detection_classes"][i, n:] == -1)
        assert not e2e["detection_boxes"][i, n:].any() and not e2e["detection_scores"][i, n:].any()
        np.testing.assert_array_equal(e2e["labels"][i], plain["mask"][i].argmax(-1))


def test_openvino_runs_the_file_like_onnx_runtime_with_its_dtypes(exported):
    from retinaunet_deploy.runtime.openvino import OpenVINOBackend

    run, card = exported
    image = _test_images(card, 1)[0][:64, :80].astype(np.float32)[None]
    expected = _run(_session(run / names.E2E_ONNX), image)
    with OpenVINOBackend(run / names.E2E_ONNX, threads=2) as backend:
        outputs = backend.run(image)
    assert {k: v.dtype for k, v in outputs.items()} == {k: v.dtype for k, v in expected.items()}
    n = int(expected["num_detections"][0, 0])
    assert n > 0 and int(outputs["num_detections"][0, 0]) == n
    np.testing.assert_array_equal(outputs["detection_classes"], expected["detection_classes"])
    np.testing.assert_allclose(outputs["detection_boxes"], expected["detection_boxes"], atol=1e-3)
    np.testing.assert_allclose(outputs["detection_scores"], expected["detection_scores"],
                               atol=1e-5)
    assert (outputs["labels"] == expected["labels"]).mean() > 0.999


def test_a_twin_that_misses_its_gate_is_refused_and_its_stale_file_forgotten(
        run_copy, monkeypatch):
    """A graph made with another IoU threshold than the card's is refused in one line;
    the model.e2e.onnx of the earlier export is gone from disk and manifest."""
    from retinaunet_deploy.export import e2e_gate

    card = load_card(run_copy)
    assert (run_copy / names.E2E_ONNX).exists()
    wrong = dataclasses.replace(card, postprocess=DetectionConfig(iou_threshold=0.05,
                                                                  score_threshold=0.05))
    real_make = e2e_gate.make_twin
    monkeypatch.setattr(e2e_gate, "make_twin",
                        lambda plain, _card, sha, work: real_make(plain, wrong, sha, work))
    lines = []
    figures = e2e_gate.write_twin(run_copy, names.ONNX, card, _test_images(card), "export",
                                  say=lines.append)
    assert not figures["written"] and not figures["passed"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "model.e2e.onnx not written: misses its gate" in lines[0]
    assert "boxes matched" in lines[0]
    assert not (run_copy / names.E2E_ONNX).exists()
    assert names.E2E_ONNX not in load_manifest(run_copy)["artifacts"]


def test_check_trt_accepts_e2e_files_and_checks_the_nms_limits(exported, tmp_path):
    import onnx
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli
    from retinaunet_deploy.export.e2e import add_postprocess
    from retinaunet_deploy.export.trt_check import check_tensorrt_import

    run, card = exported
    check = check_tensorrt_import(run / names.E2E_ONNX)
    assert check.ok, check.problems
    assert check.nms_boxes == card.detection_config.pre_nms_top_k
    assert {"NonMaxSuppression", "TopK", "ScatterND"} <= set(check.op_types)
    result = CliRunner().invoke(cli, ["check-trt", str(run / names.E2E_ONNX)])
    top_k = card.detection_config.pre_nms_top_k
    assert result.exit_code == 0 and f"NMS on {top_k} boxes" in result.output
    # The same graph under a plain name: NonMaxSuppression is not allowed there.
    renamed = tmp_path / "model.onnx"
    shutil.copyfile(run / names.E2E_ONNX, renamed)
    assert any("NonMaxSuppression" in p for p in check_tensorrt_import(renamed).problems)
    # A pre-NMS top-k past TensorRT's TopK (3840) and NMS box (5000) limits.
    large = dataclasses.replace(card, postprocess=DetectionConfig(pre_nms_top_k=6000))
    path = tmp_path / "model.big.e2e.onnx"
    onnx.save(add_postprocess(load_onnx(run / names.ONNX), large), path)
    problems = check_tensorrt_import(path).problems
    assert any("3840" in p for p in problems) and any("5000" in p for p in problems)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_predictor_gives_the_plain_files_detections(exported, runtime):
    """On whole images of the patch size and on larger images tiled at the patch size
    (where the graph's caps are the card's), ONNX Runtime and OpenVINO: the same
    detections as the plain file; labels identical on whole images."""
    from retinaunet_deploy.runtime.predictor import Predictor

    run, card = exported
    patch = card.input.patch_size
    images = _test_images(card, 4)
    images = [images[0][:patch, :patch], images[1][:50, :37]] + images[2:]
    kwargs = {"runtime": runtime, "threads": 2, "tile": patch}
    plain = Predictor.from_artifact(run / names.ONNX, **kwargs)
    e2e = Predictor.from_artifact(run / names.E2E_ONNX, **kwargs)
    assert e2e.end_to_end and not plain.end_to_end
    total = matched = 0
    for index, image in enumerate(images):
        a, b = plain.predict(image), e2e.predict(image)
        assert b.mask.shape == image.shape[:2] and b.mask.dtype == np.uint8
        pairs, worst = match(a.detections.boxes, a.detections.scores, a.detections.classes,
                             b.detections.boxes, b.detections.scores, b.detections.classes)
        total, matched = total + max(len(a.detections), len(b.detections)), matched + pairs
        assert worst <= 1e-4
        assert (b.detections.boxes[:, 2:] <= np.array(image.shape[:2])).all()
        if index < 2:   # whole: the same labels
            np.testing.assert_array_equal(a.mask, b.mask)
        else:           # tiled: labels by core ownership against blended probabilities
            assert (a.mask == b.mask).mean() > 0.99
    assert total > 20 and matched / total >= 0.995


def test_the_predictor_warns_about_calls_over_the_patch_size_and_refuses_what_it_lacks(
        exported):
    from retinaunet_deploy.errors import ConfigError
    from retinaunet_deploy.runtime.predictor import Predictor

    run, card = exported
    predictor = Predictor.from_artifact(run / names.E2E_ONNX, threads=2)
    image = _test_images(card, 1)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor.predict(image)
        predictor.predict(image)
    lines = [str(w.message) for w in caught if "per call" in str(w.message)]
    assert len(lines) == 1 and f"--tile {card.input.patch_size}" in lines[0]
    with pytest.raises(ConfigError, match="labels, not probabilities"):
        predictor.predict(image, probabilities=True)
    predictor.detection_config = dataclasses.replace(predictor.detection_config,
                                                     score_threshold=0.01)
    with pytest.raises(ConfigError, match="plain .onnx twin"):
        predictor.predict(image)


def test_a_call_that_fills_all_m_rows_is_flagged():
    from retinaunet_deploy.runtime.e2e import capped, detections

    graph = DetectionConfig(max_detections=3)
    boxes = np.array([[[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 9, 9]],
                      [[0, 0, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    outputs = {"num_detections": np.array([[3], [1]], np.int32), "detection_boxes": boxes,
               "detection_scores": np.array([[0.9, 0.8, 0.7], [0.6, 0, 0]], np.float32),
               "detection_classes": np.array([[0, 1, 0], [1, -1, -1]], np.int32),
               "labels": np.zeros((2, 8, 8), np.uint8)}
    full, partial = detections(outputs, (8, 8), graph, graph)
    assert full.graph_capped == 1 and full.capped and len(full) == 3
    assert full.boxes[2].tolist() == [2, 2, 8, 8]           # clipped to the image
    assert partial.graph_capped == 0 and not partial.capped and len(partial) == 1
    cut = capped(full, 2)
    assert len(cut) == 2 and cut.dropped == 1 and cut.graph_capped == 1
    higher = dataclasses.replace(graph, score_threshold=0.75)
    assert len(detections(outputs, (8, 8), graph, higher)[0]) == 2


def test_tiled_labels_come_from_the_tile_that_owns_each_pixel():
    from retinaunet_deploy.runtime import tiling
    from retinaunet_deploy.runtime.e2e import sliding_window_labels

    image = np.zeros((160, 224, 1), np.float32)
    calls = []

    def run(batch):
        first = sum(calls)
        calls.append(len(batch))
        labels = np.stack([np.full(batch.shape[1:3], first + i + 1, np.uint8)
                           for i in range(len(batch))])
        return {"labels": labels}

    labels, per_tile, layout = sliding_window_labels(image, run, 96, 0.25, 16, 2, None)
    assert per_tile == [] and len(layout.origins) > 2 and (labels > 0).all()
    for index, (y_lo, y_hi, x_lo, x_hi) in enumerate(layout.cores):
        rows = (np.arange(160) + 0.5 >= y_lo) & (np.arange(160) + 0.5 < y_hi)
        cols = (np.arange(224) + 0.5 >= x_lo) & (np.arange(224) + 0.5 < x_hi)
        assert (labels[np.ix_(rows, cols)] == index + 1).all()
    assert layout == tiling.tile_layout(160, 224, 96, 0.25, 16)


def test_calibrate_writes_a_gated_twin_of_every_variant(tiny_calibrated):
    from retinaunet_deploy import remake

    run, report = tiny_calibrated
    manifest = load_manifest(run)["artifacts"]
    for plain in (names.FP16_ONNX, names.INT8_ONNX):
        twin = names.e2e_name(plain)
        assert (run / twin).exists()
        figures = report["variants"][twin]
        assert figures["passed"] and figures["written"] and figures["matched_fraction"] >= 0.995
        assert manifest[twin]["parent"] == {"file": plain, "sha256": manifest[plain]["sha256"]}
        assert manifest[twin]["stage"] == "calibrate"
        assert report["tensorrt_import_check"][twin]["ok"]
        assert remake.command_for(run / twin) == f"retinaunet-deploy calibrate {run}"
        verify_lineage(run, twin, f"retinaunet-deploy calibrate {run}")
    assert names.plain_name(names.INT8_E2E_ONNX) == names.INT8_ONNX


def test_bench_times_the_graph_against_numpy_and_leaves_e2e_files_out_of_the_rows(
        tiny_calibrated, tmp_path):
    from retinaunet_deploy.bench.e2e import markdown_section, measure_end_to_end
    from retinaunet_deploy.bench.rows import _bench_files
    from retinaunet_deploy.runtime.registry import runtime_named

    run = tmp_path / "run"
    shutil.copytree(tiny_calibrated[0], run)
    (run / names.FP16_ONNX).write_bytes(b"\x08\x07not an onnx model")
    card = load_card(run)
    recorded = list(load_manifest(run)["artifacts"])
    assert not any(names.is_end_to_end(f)
                   for f in _bench_files(runtime_named("onnxruntime"), run, recorded))
    patch = card.input.patch_size
    images = np.stack([i[:patch, :patch] for i in _test_images(card, 2)]).astype(np.float32)
    figures = measure_end_to_end(run, card, images, (1,), threads=2, rounds=2, min_seconds=0)
    assert {p["e2e"] for p in figures["pairs"]} == {names.E2E_ONNX, names.FP16_E2E_ONNX,
                                                    names.INT8_E2E_ONNX}
    pairs = {p["e2e"]: p for p in figures["pairs"]}
    assert "model.fp16.onnx changed since" in pairs[names.FP16_E2E_ONNX]["failed"]
    timed = pairs[names.INT8_E2E_ONNX]["latency"]["1"]
    assert timed["network + graph"]["runs"] >= 2 and "graph_ms" in timed
    lines = markdown_section(figures)
    assert lines[1] == "## Post-processing in the graph vs numpy" and len(lines) == 10
    assert any("failed: " in line for line in lines)


def test_detections_of_an_e2e_file_keep_the_capped_contract():
    dets = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                      np.zeros(0, np.int32), graph_capped=2)
    assert dets.capped and len(dets) == 0


def test_calibrate_prints_a_line_for_each_twin(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli
    from retinaunet_deploy.export import calibration

    figures = {"images": 16, "matched_fraction": 0.999, "max_score_difference": 1e-7,
               "label_pixels_differing": 0, "passed": True, "written": True}
    report = {"variants": {names.INT8_E2E_ONNX: figures}, "evaluation": {"warning": None}}
    monkeypatch.setattr(calibration, "calibrate", lambda *args, **kwargs: report)
    result = CliRunner().invoke(cli, ["calibrate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (f"{names.INT8_E2E_ONNX} (written; vs the numpy post-process; 16 whole test "
            f"images): 99.90% of boxes matched") in result.output
