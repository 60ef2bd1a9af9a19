"""The pipelined executor of a predict run: reading, inference and writing overlap.

    reader thread ──(DEPTH groups)──► inference (the calling thread) ──(DEPTH images)──► writer thread
    read_item                         Predictor.predict, batched        ResultWriter.commit, in order
                                                                             ▲
                                                 RENDERERS threads: ResultWriter.render (draw, encode)

A group is a run of consecutive inputs of the same height, width and dtype that
run whole (not tiled), at most the predictor's `batch_size` long; it runs as one
`Predictor.predict` call on the stacked images, every other image alone. A batch
gives each image the same result as a call of its own (the backends run each image
of a batch independently; `tests/test_predict_pipeline.py` checks it), so the
outputs are byte-identical to `stream.run_sequential`'s. Grouping is decided from
the plan (sizes from the headers), so it never waits for an image to arrive.

The writer thread hands each image to a small pool that draws its overlay and encodes
both PNGs (Pillow and zlib release the GIL, so this runs beside inference), and commits
the rendered images (files renamed into place, results.jsonl line) one by one in input
order. Memory is bounded by the queues: at most `DEPTH` groups waiting to be predicted,
`DEPTH` images waiting for the writer, `RENDERERS` + 1 being rendered or waiting to be
committed, one group being read and one being predicted, whatever the number of inputs.

Errors stop the run cleanly, as in the sequential loop: the images before the one
that failed (to read, to predict or to write) are written and the error is raised
after the writer finished them; nothing after it is written.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Through the module, so the sequential and pipelined runs share one definition of each
# step (and a test's stand-in for one reaches both).
from retinaunet_deploy.predict import stream

DEPTH = 2        # groups (images, on the write side) waiting between two stages
RENDERERS = 2    # threads drawing and encoding outputs (measured: bench/README.md)
_DONE = object()


class _Stopped(Exception):
    """Another stage failed: this one stops without an error of its own."""


def plan_groups(predictor, items: list) -> list[list]:
    """`items` cut into the groups predicted together: consecutive items of one size and
    dtype that run whole, at most `predictor.batch_size` each; every other item alone."""
    groups: list[list] = []
    for item in items:
        last = groups[-1] if groups else None
        key = _batch_key(predictor, item)
        if (last is not None and key is not None and len(last) < predictor.batch_size
                and _batch_key(predictor, last[0]) == key):
            last.append(item)
        else:
            groups.append([item])
    return groups


def _batch_key(predictor, item):
    if not predictor.fits_whole(item.height, item.width):
        return None
    return item.height, item.width, np.dtype(item.dtype).str


def predict_group(predictor, group: list, images: list):
    """Yield (item, image, `Prediction`) for each of a group, in order.

    A group of several runs as one batch; when the batch call fails, its images run one
    by one, so the images before the culprit are yielded and its own error (naming it,
    `stream.predict_item`) is raised in its place.
    """
    if len(group) > 1:
        try:
            predictions = predictor.predict(np.stack(images))
        except Exception:  # noqa: BLE001 - found again image by image, below
            predictions = None
        if predictions is not None:
            yield from zip(group, images, predictions)
            return
    for item, image in zip(group, images):
        yield item, image, stream.predict_item(predictor, item, image)


def run_pipelined(predictor, items: list, writer, warn: Callable[[str], None]) -> None:
    """Read, predict and write `items` with the three stages overlapped (module doc).

    Same contract as `stream.run_sequential`: the same files and results.jsonl lines,
    byte for byte, in the same order, and the same warnings (printed by the writer
    thread as each image is written).

    Args:
        predictor: an open `runtime.Predictor` (called from this thread only).
        items: the `plan.InputItem`s still to do.
        writer: the run's `writer.ResultWriter`: ``render`` in the pool's threads,
            ``commit`` from the writer thread only, in input order.
        warn: prints one warning line.
    Raises:
        DataError, InputError: an image that cannot be read or predicted (naming it);
        OutputError: an output that cannot be written. Every image before the failing
        one is written first; none after it.
    """
    stop = threading.Event()
    reads: queue.Queue = queue.Queue(DEPTH)
    writes: queue.Queue = queue.Queue(DEPTH)
    write_errors: list[BaseException] = []
    reader = threading.Thread(target=_read_all, args=(plan_groups(predictor, items), reads, stop),
                              name="predict-reader", daemon=True)
    writer_thread = threading.Thread(
        target=_write_all, args=(writes, writer, predictor, warn, stop, write_errors),
        name="predict-writer", daemon=True)
    reader.start()
    writer_thread.start()
    failure: BaseException | None = None
    try:
        while (got := _get(reads, stop)) is not _DONE:
            group, images, read_error = got
            for result in predict_group(predictor, group, images):
                writes.put(result)   # the writer thread drains to the end, so this returns
                if stop.is_set():
                    raise _Stopped
            del got, group, images
            if read_error is not None:
                raise read_error
    except BaseException as error:  # noqa: BLE001 - re-raised below, after the writer
        failure = error
    finally:
        writes.put(_DONE)
        writer_thread.join()    # every image handed over is written (or the writer failed)
        stop.set()
        _drain(reads)
        reader.join()
    if write_errors:            # the writer's failure comes first in input order
        raise write_errors[0]
    if failure is not None and not isinstance(failure, _Stopped):
        raise failure


def _read_all(groups: list[list], reads: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: (group, images, None) per group; a group cut at an unreadable image
    carries its error instead, and nothing follows it."""
    try:
        for group in groups:
            images = []
            for item in group:
                try:
                    images.append(stream.read_item(item))
                except Exception as error:  # noqa: BLE001 - raised by the inference stage
                    _put(reads, (group[:len(images)], images, error), stop)
                    return
            _put(reads, (group, images, None), stop)
            del images
        _put(reads, _DONE, stop)
    except _Stopped:
        return


def _write_all(writes: queue.Queue, writer, predictor, warn, stop: threading.Event,
               errors: list) -> None:
    """Writer thread: render each result in the pool, commit them in order until _DONE;
    after a failure, drain without rendering or committing more."""
    pending: collections.deque = collections.deque()   # (item, future of its Rendered)

    def commit_oldest() -> None:
        item, rendered = pending.popleft()
        if errors:
            return
        try:
            stream.report(writer.commit(item, rendered.result()), warn)
        except BaseException as error:  # noqa: BLE001 - re-raised by run_pipelined
            errors.append(error)
            stop.set()

    with ThreadPoolExecutor(RENDERERS, thread_name_prefix="predict-render") as pool:
        while (got := writes.get()) is not _DONE:
            if errors:
                continue
            item, image, prediction = got
            del got
            pending.append((item, pool.submit(writer.render, item, image, prediction,
                                              predictor)))
            del item, image, prediction
            while pending and (len(pending) > RENDERERS or pending[0][1].done()):
                commit_oldest()
        while pending:
            commit_oldest()


def _put(target: queue.Queue, value, stop: threading.Event) -> None:
    while True:
        try:
            target.put(value, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped from None


def _get(source: queue.Queue, stop: threading.Event):
    while True:
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None


def _drain(source: queue.Queue) -> None:
    while True:
        try:
            source.get_nowait()
        except queue.Empty:
            return
