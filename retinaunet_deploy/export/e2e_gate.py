"""Make, gate and write the end-to-end twin of a plain ONNX file (`export.e2e`).

The gate compares the end-to-end file with the numpy post-process on the same
backbone outputs: each held-out image is padded as the Predictor pads it
(`export.onnx.padded_to_stride`), the plain file and the end-to-end file run on
it in ONNX Runtime with the same session options, and the plain file's
`cls_logits` / `box_deltas` go through `postprocess.decode_detections` with the
card's postprocess *as recorded* (the graph's fixed M and pre-NMS top-k, not the
Predictor's size-scaled ones, `Predictor.config_for`), with boxes clipped to
the padded input as the graph clips them. The twin passes when, over all images:

* at least `MIN_MATCHED` of the boxes are matched one-to-one (same class,
  IoU >= `MATCH_IOU`; the fraction is matched / max(numpy boxes, graph boxes),
  so a box only one side has counts against it);
* matched scores differ by at most `SCORE_TOLERANCE`;
* ``labels`` equals the argmax of the plain file's ``mask`` at every pixel.

A twin that fails is refused with one line, never written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.card import ModelCard

MIN_MATCHED = 0.995
MATCH_IOU = 0.9
SCORE_TOLERANCE = 1e-4


def targets() -> dict:
    """The gate's targets, as recorded with its figures."""
    return {"min_matched_fraction": MIN_MATCHED, "match_iou": MATCH_IOU,
            "max_score_difference": SCORE_TOLERANCE, "labels": "identical"}


def detections_of(outputs: dict, index: int):
    """The real rows of image `index` of end-to-end outputs: (boxes (K, 4) float32,
    scores (K,) float32, classes (K,) int32), K = num_detections[index]."""
    count = int(outputs["num_detections"][index, 0])
    return (outputs["detection_boxes"][index, :count], outputs["detection_scores"][index, :count],
            outputs["detection_classes"][index, :count])


def match(ref_boxes, ref_scores, ref_classes, boxes, scores, classes,
          iou: float = MATCH_IOU) -> tuple[int, float]:
    """Greedy one-to-one matching, reference boxes by descending score, each to the
    unmatched candidate of its class with the highest IoU >= `iou`.

    Returns (matched pairs, largest |score difference| over them (0.0 with none)).
    """
    from retinaunet_deploy.model.boxes import box_iou

    overlap = box_iou(ref_boxes, boxes)
    overlap[np.asarray(ref_classes)[:, None] != np.asarray(classes)[None, :]] = 0
    used = np.zeros(len(boxes), bool)
    matched, worst = 0, 0.0
    for i in np.argsort(-np.asarray(ref_scores), kind="stable"):
        row = np.where(used, -1.0, overlap[i])
        j = int(np.argmax(row)) if row.size else -1
        if j >= 0 and row[j] >= iou:
            used[j] = True
            matched += 1
            worst = max(worst, abs(float(ref_scores[i]) - float(scores[j])))
    return matched, worst


def gate(plain: Path, e2e: Path, card: ModelCard, images: list[np.ndarray],
         threads: int | None = None) -> dict:
    """Figures of the gate (module docstring) on whole `images` ((H, W, C) pixels each).

    Returns a dict with ``images``, ``boxes_numpy``, ``boxes_graph``, ``matched``,
    ``matched_fraction``, ``max_score_difference``, ``label_pixels_differing``,
    ``at_max_detections`` (images whose graph output filled all M rows), ``targets``,
    ``passed`` and ``failures`` (one phrase each).
    """
    from retinaunet_deploy.export.onnx import padded_to_stride
    from retinaunet_deploy.model.anchors import generate_anchors
    from retinaunet_deploy.postprocess import decode_detections
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend

    config = card.detection_config
    n_ref = n_graph = matched = differing = full = 0
    worst = 0.0
    with OnnxRuntimeBackend(plain, threads) as base, OnnxRuntimeBackend(e2e, threads) as twin:
        for image in images:
            batch = padded_to_stride(np.asarray(image, np.float32), card.input.stride)
            size = batch.shape[1:3]
            raw, out = base.run(batch), twin.run(batch)
            ref = decode_detections(raw["cls_logits"], raw["box_deltas"],
                                    generate_anchors(card.anchors, size), size, config)[0]
            boxes, scores, classes = detections_of(out, 0)
            n_ref, n_graph = n_ref + len(ref), n_graph + len(scores)
            full += int(len(scores) == config.max_detections)
            pairs, diff = match(ref.boxes, ref.scores, ref.classes, boxes, scores, classes)
            matched, worst = matched + pairs, max(worst, diff)
            differing += int(np.count_nonzero(out["labels"][0] != raw["mask"][0].argmax(-1)))
    fraction = matched / max(n_ref, n_graph) if max(n_ref, n_graph) else 1.0
    failures = []
    if fraction < MIN_MATCHED:
        failures.append(f"{fraction:.2%} of boxes matched at IoU >= {MATCH_IOU} "
                        f"(target >= {MIN_MATCHED:.1%}; numpy {n_ref}, graph {n_graph})")
    if worst > SCORE_TOLERANCE:
        failures.append(f"scores differ by up to {worst:.2g} (target <= {SCORE_TOLERANCE:g})")
    if differing:
        failures.append(f"labels differ from argmax(mask) at {differing} pixels (target 0)")
    return {"images": len(images), "boxes_numpy": n_ref, "boxes_graph": n_graph,
            "matched": matched, "matched_fraction": fraction,
            "max_score_difference": worst, "label_pixels_differing": differing,
            "at_max_detections": full, "targets": targets(),
            "compared": "the plain file + numpy postprocess vs the end-to-end file, ONNX "
                        "Runtime, same padded inputs, the card's postprocess as recorded",
            "passed": not failures, "failures": failures}


def refusal(figures: dict) -> str:
    """Why an end-to-end file that missed its gate is not written (one line)."""
    return (f"misses its gate against the numpy post-process on {figures['images']} test "
            f"images: {'; '.join(figures['failures'])}; re-run the stage that wrote its plain "
            f"twin, and report it if it persists (a bug in retinaunet-deploy)")


def make_twin(plain_path: Path, card: ModelCard, parent_sha256: str, work: Path) -> Path:
    """Write the end-to-end twin of `plain_path` into `work` (`export.e2e.end_to_end_model`,
    then the standard-ops check); returns its path."""
    import onnx

    from retinaunet_deploy.export.e2e import end_to_end_model
    from retinaunet_deploy.export.onnx import check_standard_ops
    from retinaunet_deploy.names import e2e_name

    name = e2e_name(Path(plain_path).name)
    proto = end_to_end_model(plain_path, card, Path(plain_path).name, parent_sha256)
    check_standard_ops(proto, str(Path(plain_path).parent / name))
    path = Path(work) / name
    onnx.save(proto, path)
    return path


def write_twin(run_dir: Path, plain: str, card: ModelCard, images: list[np.ndarray],
               stage: str, threads: int | None = None, say=lambda message: None) -> dict:
    """Make, gate and write (or refuse) ``run_dir``'s end-to-end twin of file `plain`, and
    record it in the manifest with its parent's hash; returns its figures (with
    ``written`` and, when refused, ``reason``). A refused twin is never written, and a
    stale one from an earlier run is forgotten. Used by `export` for model.e2e.onnx.
    """
    import shutil
    import tempfile

    from retinaunet_deploy.artifacts import (
        atomic_path,
        forget_artifact,
        record_artifact,
        sha256_file,
        tool_versions,
    )
    from retinaunet_deploy.export.e2e import postprocess_record
    from retinaunet_deploy.names import e2e_name

    run_dir = Path(run_dir)
    name = e2e_name(plain)
    work = Path(tempfile.mkdtemp(prefix="e2e-"))
    try:
        candidate = make_twin(run_dir / plain, card, sha256_file(run_dir / plain), work)
        figures = gate(run_dir / plain, candidate, card, images, threads)
        if not figures["passed"]:
            reason = f"{run_dir / name} not written: {refusal(figures)}"
            forget_artifact(run_dir, name)
            say(reason)
            return {**figures, "written": False, "reason": reason}
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(candidate, tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record_artifact(run_dir, name, stage, parent=plain, options=postprocess_record(card),
                    figures=figures, tools=tool_versions("onnx", "onnxruntime"))
    say(summary(str(run_dir / name), figures))
    return {**figures, "written": True}


def summary(name: str, figures: dict) -> str:
    """One line: what the gate measured for a written twin."""
    return (f"wrote {name}: {figures['matched_fraction']:.2%} of {figures['boxes_numpy']} "
            f"boxes matched the numpy post-process, scores within "
            f"{figures['max_score_difference']:.1g}, labels identical, on "
            f"{figures['images']} test images")
