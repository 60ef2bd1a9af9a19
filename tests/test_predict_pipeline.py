"""The pipelined predict executor: the sequential run's outputs byte for byte, errors that
keep every finished image, and memory bounded by its queues."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from retinaunet_deploy.errors import DataError, InputError
from retinaunet_deploy.predict import pipeline, predict_files, stream
from retinaunet_deploy.predict.plan import InputItem

# Mixed sizes with runs of one size (batched together); with tile 64 the two largest
# images run as sliding windows, alone.
SIZES = [(40, 56), (40, 56), (40, 56), (64, 64), (70, 90), (33, 47), (33, 47), (100, 80),
         (50, 50), (50, 50), (50, 50), (50, 50)]


def _write_images(folder, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        image = rng.normal(70, 10, (h, w))
        for _ in range(2):   # a bright disk or two, so there is something to find
            cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(5, 9)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 70
        path = folder / f"im{index:02d}.png"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_pipelined_outputs_are_byte_identical_to_sequential(tiny_exported, tmp_path):
    from retinaunet_deploy.predict import open_predictor, plan_inputs

    artifact = tiny_exported[0] / "model.onnx"
    paths = _write_images(tmp_path / "in")
    with open_predictor(artifact, threads=1, tile=64) as predictor:
        groups = pipeline.plan_groups(predictor, plan_inputs(paths, predictor))
    # The run exercises batches (a run of four 50x50) and tiled images (alone).
    assert [len(g) for g in groups] == [3, 1, 1, 2, 1, 4]
    outs = {}
    for executor in ("sequential", "pipelined"):
        outs[executor] = tmp_path / executor
        predict_files(artifact, paths, outs[executor], threads=1, tile=64,
                      score_threshold=0.05, executor=executor)
    sequential, pipelined = _files(outs["sequential"]), _files(outs["pipelined"])
    assert len(sequential) == 2 * len(paths) + 2          # masks, overlays, jsonl, json
    assert sequential == pipelined
    entries = json.loads((outs["pipelined"] / "detections.json").read_text())["images"]
    assert sum(bool(e["tiled"]) for e in entries.values()) == 2
    assert sum(len(e["detections"]) for e in entries.values()) > 0


@pytest.mark.parametrize("executor", ["sequential", "pipelined"])
def test_an_image_failing_mid_run_keeps_every_image_before_it(tiny_exported, tmp_path,
                                                              executor):
    """Image 9 (inside the batch of four 50x50) changes after planning: images 0-8 are
    written, nothing after, and the error names the file."""
    from retinaunet_deploy.predict import ResultWriter, open_predictor, plan_inputs
    artifact = tiny_exported[0] / "model.onnx"
    paths = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    run = {"sequential": stream.run_sequential, "pipelined": pipeline.run_pipelined}[executor]
    with open_predictor(artifact, threads=1, tile=64) as predictor:
        items = plan_inputs(paths, predictor)
        Image.fromarray(np.zeros((60, 60), np.uint8)).save(paths[9])
        with (ResultWriter(out, header={"artifact": str(artifact)}, resume=False) as writer,
              pytest.raises(DataError, match=rf"{paths[9]} changed since it was checked")):
            run(predictor, items, writer, lambda line: None)
    lines = (out / "results.jsonl").read_text().splitlines()[1:]
    assert [json.loads(line)["path"] for line in lines] == [str(p) for p in paths[:9]]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"im{i:02d}.png"
                                                                 for i in range(9)]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [f"im{i:02d}.png"
                                                                    for i in range(9)]


def test_a_write_failure_stops_the_run_and_keeps_the_images_before_it(tiny_exported,
                                                                     tmp_path):
    from retinaunet_deploy.errors import OutputError

    artifact = tiny_exported[0] / "model.onnx"
    paths = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    (out / "overlays" / "im05.png").mkdir(parents=True)   # image 5's overlay cannot be written
    # (The message names the temporary file the overlay was being written to.)
    with pytest.raises(OutputError, match=r"overlays/\S*im05\S*: cannot write \(Is a dir"):
        predict_files(artifact, paths, out, threads=1, tile=64)
    lines = (out / "results.jsonl").read_text().splitlines()[1:]
    assert [json.loads(line)["path"] for line in lines] == [str(p) for p in paths[:5]]
    assert not (out / "detections.json").exists()


class _FakePredictor:
    """Predicts a batch by calling `predict` per image; refuses an image whose first pixel
    is 255, so a failing batch must be found again image by image."""

    batch_size = 4

    def __init__(self):
        self.calls = []

    def fits_whole(self, height, width):
        return True

    def predict(self, images):
        batch = images if images.ndim == 4 else images[None]
        self.calls.append(len(batch))
        if any(image[0, 0, 0] == 255 for image in batch):
            raise InputError("pixel 255 at (0, 0)")
        results = [int(image[0, 0, 0]) for image in batch]
        return results if images.ndim == 4 else results[0]


def _items(count, size=(16, 16)):
    return [InputItem(path=f"f{i}.png", name=f"f{i}", height=size[0], width=size[1],
                      dtype=np.dtype(np.uint8)) for i in range(count)]


def test_a_failing_batch_is_redone_image_by_image_up_to_the_culprit():
    predictor = _FakePredictor()
    items = _items(4)
    images = [np.full((16, 16, 1), v, np.uint8) for v in (1, 2, 255, 4)]
    done = []
    with pytest.raises(InputError, match=r"^f2.png: pixel 255 at \(0, 0\)$"):
        for item, _, prediction in pipeline.predict_group(predictor, items, images):
            done.append((item.name, prediction))
    assert done == [("f0", 1), ("f1", 2)]
    assert predictor.calls == [4, 1, 1, 1]     # the batch, then one by one to the culprit


class _CountingWriter:
    def __init__(self, reads):
        self.reads, self.written, self.ahead = reads, [], []

    def render(self, item, image, prediction, predictor):
        return {"warnings": [f"{item.name}: warned"] if item.name == "f3" else []}

    def commit(self, item, rendered):
        self.ahead.append(self.reads[0] - len(self.written))
        self.written.append(item.name)
        return rendered


def test_memory_is_bounded_by_the_queues_not_the_number_of_inputs(monkeypatch):
    """Images read but not yet written never exceed the queues' capacity: (DEPTH + 2)
    groups on the read side, DEPTH images queued for the writer and RENDERERS + 1 being
    rendered or waiting to be committed."""
    reads = [0]
    lock = threading.Lock()

    def read_item(item):
        with lock:
            reads[0] += 1
        return np.full((16, 16, 1), 7, np.uint8)

    monkeypatch.setattr(stream, "read_item", read_item)
    predictor = _FakePredictor()
    writer = _CountingWriter(reads)
    warnings = []
    items = _items(200)
    pipeline.run_pipelined(predictor, items, writer, warnings.append)
    assert writer.written == [item.name for item in items]
    assert warnings == ["f3: warned"]
    bound = ((pipeline.DEPTH + 2) * predictor.batch_size + pipeline.DEPTH
             + pipeline.RENDERERS + 1)
    assert max(writer.ahead) <= bound < len(items)


def test_an_end_to_end_graph_that_filled_its_rows_is_recorded_as_capped(tmp_path):
    """An e2e graph call that returned all M rows may have found more: the image's line
    says so (detections_capped, graph_calls_capped) with a warning, as for the numpy cap."""
    from types import SimpleNamespace

    from retinaunet_deploy.postprocess import Detections
    from retinaunet_deploy.predict.writer import ResultWriter
    from retinaunet_deploy.runtime.predictor import Prediction

    predictor = SimpleNamespace(class_names=["background", "disk"], det_class_names=["disk"],
                                pixel_max=255, fits_whole=lambda h, w: True)
    item = _items(1)[0]
    image = np.zeros((16, 16, 1), np.uint8)
    writer = ResultWriter(tmp_path / "out", header={}, resume=False)
    try:
        for graph_capped in (0, 2):
            boxes = np.array([[1, 1, 5, 5]], np.float32)
            detections = Detections(boxes, np.array([0.9], np.float32),
                                    np.array([0], np.int32), graph_capped=graph_capped)
            prediction = Prediction(np.zeros((16, 16), np.uint8), detections)
            entry = writer.render(item, image, prediction, predictor).entry
            assert entry["detections_capped"] is bool(graph_capped)
            assert entry.get("graph_calls_capped", 0) == graph_capped
            assert any("end-to-end" in w for w in entry["warnings"]) is bool(graph_capped)
    finally:
        writer.close()
