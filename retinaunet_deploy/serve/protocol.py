"""What a served request and its response hold, as numpy arrays (no Triton import here).

Request: one input tensor `image`, (N, H, W, C) of the card's pixel dtype (uint8 or
uint16; int16/float32... for a model that normalises outside the graph), raw pixel values
(the served Predictor applies the card's normalisation), any H and W of at least one
stride; N images of one size.

Response, per request (the end-to-end ONNX files' output names, `export/README.md`):
    labels             (N, H, W) uint8 argmax class mask, in the request image's pixels
    num_detections     (N, 1) int32
    detection_boxes    (N, M, 4) float32 y1, x1, y2, x2 in the request image's pixels
                       (pixel edges: a box over the whole image is 0, 0, H, W), clipped to it
    detection_scores   (N, M) float32 sigmoid scores, descending
    detection_classes  (N, M) int32 detection class index (`postprocess.Detections.classes`)
Entries from num_detections on are padding: boxes and scores 0, classes -1. M is the
Predictor's per-image cap for that size (`Predictor.config_for(H, W).max_detections`:
the card's `max_detections` for an image of the training patch size, scaled with the
area above it), so no detection the Predictor finds is cut; a model without detection
heads answers M = 0.
"""

from __future__ import annotations

import numpy as np

MODEL_NAME = "retinaunet"
INPUT = "image"
LABELS = "labels"
NUM_DETECTIONS = "num_detections"
BOXES = "detection_boxes"
SCORES = "detection_scores"
CLASSES = "detection_classes"
OUTPUTS = (LABELS, NUM_DETECTIONS, BOXES, SCORES, CLASSES)


def detection_slots(predictor, height: int, width: int) -> int:
    """M for an (height, width) image: the Predictor's cap, 0 without detection heads."""
    if predictor.anchor_config is None:
        return 0
    return predictor.config_for(height, width).max_detections


def encode(predictions: list, slots: int) -> dict[str, np.ndarray]:
    """The response tensors of same-size `runtime.predictor.Prediction`s, M = `slots`."""
    n = len(predictions)
    count = np.zeros((n, 1), np.int32)
    boxes = np.zeros((n, slots, 4), np.float32)
    scores = np.zeros((n, slots), np.float32)
    classes = np.full((n, slots), -1, np.int32)
    for i, prediction in enumerate(predictions):
        found = prediction.detections
        k = 0 if found is None else min(len(found), slots)
        count[i, 0] = k
        if k:
            boxes[i, :k] = found.boxes[:k]
            scores[i, :k] = found.scores[:k]
            classes[i, :k] = found.classes[:k]
    labels = np.stack([p.mask for p in predictions]).astype(np.uint8, copy=False)
    return {LABELS: labels, NUM_DETECTIONS: count, BOXES: boxes, SCORES: scores,
            CLASSES: classes}


def decode(outputs: dict[str, np.ndarray]) -> list[dict]:
    """Per image of a response: {"mask": (H, W) uint8, "boxes": (k, 4), "scores": (k,),
    "classes": (k,)} with the padding dropped (what a client keeps)."""
    result = []
    for i, k in enumerate(outputs[NUM_DETECTIONS][:, 0]):
        result.append({"mask": outputs[LABELS][i], "boxes": outputs[BOXES][i, :k],
                       "scores": outputs[SCORES][i, :k], "classes": outputs[CLASSES][i, :k]})
    return result


def answer(predictor, images: list[np.ndarray]) -> list[dict[str, np.ndarray] | str]:
    """Responses to a list of requests (each (N, H, W, C)): the tensors of `encode`, or
    for a request the input contract refuses, its one-line reason (an `InputError`'s).

    Requests of one size run together (Triton's dynamic batcher only groups requests of
    equal shape), through `Predictor.predict`, so padding, tiling and decoding are its own.
    """
    from retinaunet_deploy.errors import InputError

    results: list = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        try:
            if image.ndim != 4:
                raise InputError(f"expected a batch (N, H, W, C), got shape {image.shape}")
            predictor.check_input(image)
        except InputError as error:
            results[index] = f"{INPUT}: {error}"
            continue
        groups.setdefault((image.shape[1:], image.dtype.str), []).append(index)
    for indices in groups.values():
        batch = np.concatenate([images[i] for i in indices])
        predictions = predictor.predict(batch)
        height, width = batch.shape[1:3]
        tensors = encode(predictions, detection_slots(predictor, height, width))
        start = 0
        for i in indices:
            n = len(images[i])
            results[i] = {name: value[start:start + n] for name, value in tensors.items()}
            start += n
    return results
