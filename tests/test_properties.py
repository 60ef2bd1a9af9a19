"""Property tests (hypothesis): input validation and the postprocess on random data.

* `Predictor.prepare` / `predict`: any array (any rank, size, dtype, NaN/Inf, values
  outside [0, pixel_max]) either gives a valid batch or raises `InputError`, never
  anything else; every valid input is accepted.
* `nms` / `batched_nms`: the result is a subset of the input without repeats, by
  descending score; kept boxes of one class overlap by at most the threshold, and
  every dropped box overlaps a kept one of its class scoring at least as high.
* `decode_detections`: any logits and deltas (huge, tiny, NaN) give boxes inside
  the image with positive size, scores above the threshold in descending order,
  at most `max_detections`; mismatched shapes raise `InputError`.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retinaunet_deploy.errors import InputError
from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors
from retinaunet_deploy.model.boxes import batched_nms, box_iou, nms
from retinaunet_deploy.postprocess import DetectionConfig, decode_detections
from retinaunet_deploy.runtime.base import BackendBase
from retinaunet_deploy.runtime.predictor import Predictor

SIZE = 32
ANCHORS = AnchorConfig()
CARD = {"card_version": 1, "builder": {}, "normalization": {},
        "input": {"height": None, "width": None, "channels": 1, "stride": 16, "patch_size": 32,
                  "pixel_dtype": "uint8", "pixel_max": 255},
        "class_names": ["background", "disk", "ring"], "det_class_names": ["disk", "ring"],
        "anchors": ANCHORS.to_dict(), "postprocess": DetectionConfig().to_dict()}
NUM_ANCHORS = len(generate_anchors(ANCHORS, (SIZE, SIZE)))
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class RandomHeads(BackendBase):
    """A backend whose outputs are random but well-formed, seeded by the input."""

    def run(self, batch):
        rng = np.random.default_rng(int(batch.sum()) % 2**32)
        n, h, w = batch.shape[:3]
        assert h % 16 == 0 and w % 16 == 0, "the Predictor pads to the stride"
        logits = rng.normal(0, 4, (n, h, w, 3)).astype(np.float32)
        mask = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        anchors = ANCHORS.num_anchors((h, w))
        return {"mask": mask, "cls_logits": rng.normal(-2, 3, (n, anchors, 2)),
                "box_deltas": rng.normal(0, 2, (n, anchors, 4))}


PREDICTOR = Predictor(RandomHeads(), CARD)

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float16,
                          np.float32, np.float64, np.bool_, np.complex64])
RIGHT_SHAPES = st.sampled_from([(SIZE, SIZE), (SIZE, SIZE, 1), (1, SIZE, SIZE, 1),
                                (3, SIZE, SIZE, 1)])
ANY_SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=SIZE + 1)


@st.composite
def images(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(st.one_of(RIGHT_SHAPES, ANY_SHAPES))
    if dtype.kind == "f":
        width = min(64, dtype.itemsize * 8)
        if draw(st.booleans()):  # half of them inside the contract's [0, pixel_max]
            return draw(hnp.arrays(dtype, shape, elements=st.floats(0, 255, width=width)))
        elements = st.one_of(st.floats(-1e4, 1e4, width=width),
                             st.sampled_from([np.nan, np.inf, -np.inf]))
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


def _is_valid(array: np.ndarray) -> bool:
    """Any height and width of at least one stride (16), one channel, a non-empty batch;
    uint8 or finite float values in [0, pixel_max = 255]."""
    image = {2: array.shape + (1,), 3: array.shape}.get(array.ndim)
    if array.ndim == 4:
        image = array.shape[1:] if len(array) else None
    shape_ok = image is not None and image[2] == 1 and min(image[:2]) >= 16
    if array.dtype == np.uint8:
        return shape_ok
    return (shape_ok and array.dtype.kind == "f" and bool(np.all(np.isfinite(array)))
            and bool(np.all((array >= 0) & (array <= 255))))


@FAST
@given(images())
def test_prepare_accepts_exactly_the_contract(array):
    try:
        batch, single = PREDICTOR.prepare(array)
    except InputError:
        assert not _is_valid(array), f"valid input refused: {array.dtype} {array.shape}"
        return
    assert _is_valid(array), f"invalid input accepted: {array.dtype} {array.shape}"
    assert batch.dtype == np.float32 and batch.shape[3] == 1 and min(batch.shape[1:3]) >= 16
    assert single == (array.ndim in (2, 3))


@settings(max_examples=40, deadline=None)
@given(images())
def test_predict_never_fails_except_with_input_error(array):
    try:
        result = PREDICTOR.predict(array)
    except InputError:
        return
    batch_shape = PREDICTOR.prepare(array)[0].shape[1:3]   # the image's own size
    for prediction in (result if isinstance(result, list) else [result]):
        boxes = prediction.detections.boxes
        assert np.all(boxes[:, 2] <= batch_shape[0]) and np.all(boxes[:, 3] <= batch_shape[1])
        assert prediction.mask.shape == batch_shape and prediction.mask.dtype == np.uint8
        assert prediction.detections is not None


@pytest.mark.parametrize("value", [None, [[1, 2], [3, 4]], "image", 3.0])
def test_non_arrays_are_input_errors(value):
    with pytest.raises(InputError, match="must be a numpy array"):
        PREDICTOR.prepare(value)


# === NMS ===

@st.composite
def boxes_and_scores(draw, max_boxes=40):
    n = draw(st.integers(0, max_boxes))
    coords = draw(hnp.arrays(np.float32, (n, 4), elements=st.floats(0, 64, width=32)))
    # Half the time order the corners (real boxes); otherwise keep degenerate/inverted ones.
    if draw(st.booleans()):
        coords = np.concatenate([np.minimum(coords[:, :2], coords[:, 2:]),
                                 np.maximum(coords[:, :2], coords[:, 2:])], axis=1)
    scores = draw(hnp.arrays(np.float32, (n,), elements=st.floats(0, 1, width=32)))
    classes = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    return coords, scores, classes


@FAST
@given(boxes_and_scores(), st.floats(0, 1))
def test_nms_keeps_a_sorted_non_overlapping_subset(data, threshold):
    boxes, scores, _ = data
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    assert len(set(keep.tolist())) == len(keep) and all(0 <= k < len(boxes) for k in keep)
    assert np.all(np.diff(scores[keep]) <= 0)
    if len(keep) > 1:
        overlaps = box_iou(boxes[keep], boxes[keep])
        np.fill_diagonal(overlaps, 0)
        assert overlaps.max() <= threshold
    dropped = np.setdiff1d(np.arange(len(boxes)), keep)
    for index in dropped:  # each was suppressed by a kept box scoring at least as high
        overlaps = box_iou(boxes[index][None], boxes[keep])[0]
        assert np.any((overlaps > threshold) & (scores[keep] >= scores[index]))


@FAST
@given(boxes_and_scores(), st.floats(0, 1))
def test_batched_nms_never_suppresses_across_classes(data, threshold):
    boxes, scores, classes = data
    keep = batched_nms(boxes, scores, classes, threshold)
    assert len(set(keep.tolist())) == len(keep)
    assert np.all(np.diff(scores[keep]) <= 0)
    for c in np.unique(classes):  # per class, exactly what nms of that class keeps
        members = np.flatnonzero(classes == c)
        expected = set(members[nms(boxes[members], scores[members], threshold)].tolist())
        assert expected == {k for k in keep.tolist() if classes[k] == c}


# === Decoding ===

@st.composite
def head_outputs(draw):
    n = draw(st.integers(0, 3))
    values = st.one_of(st.floats(-1e6, 1e6, width=32), st.just(np.nan))
    logits = draw(hnp.arrays(np.float32, (n, NUM_ANCHORS, 2), elements=values))
    deltas = draw(hnp.arrays(np.float32, (n, NUM_ANCHORS, 4), elements=values))
    return logits, deltas


@FAST
@given(head_outputs(), st.floats(0, 0.99), st.integers(1, 50))
def test_decode_gives_valid_sorted_boxes_inside_the_image(outputs, score_threshold, max_dets):
    logits, deltas = outputs
    config = DetectionConfig(score_threshold=score_threshold, max_detections=max_dets)
    anchors = generate_anchors(ANCHORS, (SIZE, SIZE))
    results = decode_detections(logits, deltas, anchors, (SIZE, SIZE), config)
    assert len(results) == len(logits)
    for detections in results:
        boxes, scores = detections.boxes, detections.scores
        assert len(detections) <= max_dets
        assert np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))
        assert np.all((boxes >= 0) & (boxes <= SIZE))
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all(scores > score_threshold) and np.all(scores <= 1)
        assert np.all(np.diff(scores) <= 0)
        assert np.all((detections.classes >= 0) & (detections.classes < 2))


@FAST
@given(st.integers(1, 3), st.integers(1, 50), st.integers(1, 4), st.integers(1, 5))
def test_decode_refuses_mismatched_shapes(n, a, c, last):
    anchors = generate_anchors(ANCHORS, (SIZE, SIZE))
    logits = np.zeros((n, a, c), np.float32)
    deltas = np.zeros((n, a, last), np.float32)
    if a == NUM_ANCHORS and last == 4:
        return  # a matching pair: covered above
    with pytest.raises(InputError):
        decode_detections(logits, deltas, anchors, (SIZE, SIZE))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.integers(1, 80),
       st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9]))
def test_tile_layout_covers_every_pixel_on_the_stride_with_the_overlap(strides, tile_strides,
                                                                        overlap):
    import itertools

    from retinaunet_deploy.runtime.tiling import axis_layout

    length, tile = 16 * strides, 16 * tile_strides
    size, starts = axis_layout(length, tile, overlap, 16)
    assert size % 16 == 0 and all(s % 16 == 0 for s in starts)
    assert size <= max(tile, length) and starts[0] == 0 and starts[-1] + size == length
    for a, b in itertools.pairwise(starts):
        assert 0 < b - a <= max(16, size * (1 - overlap))   # no hole, overlap kept


@settings(max_examples=60, deadline=None)
@given(st.integers(256, 1500), st.integers(0, 2**31 - 1),
       st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_local_nms_equals_plain_greedy_nms(count, seed, threshold):
    """The windowed NMS for many boxes keeps exactly what plain greedy NMS keeps."""
    from retinaunet_deploy.model import boxes as box_module

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 400, (count, 2))
    sizes = rng.uniform(1, 40, (count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    boxes[: count // 20] = boxes[: count // 20, [2, 3, 0, 1]]   # some inverted
    scores = rng.choice(rng.random(count // 3 + 1), count).astype(np.float32)  # with ties
    fast = nms(boxes, scores, threshold)
    original, box_module.LOCAL_NMS_FROM = box_module.LOCAL_NMS_FROM, 10**9
    try:
        plain = nms(boxes, scores, threshold)
    finally:
        box_module.LOCAL_NMS_FROM = original
    np.testing.assert_array_equal(fast, plain)
