"""`predict --ray`: the streaming predict sharded over a Ray cluster's actors.

    driver:  plan -> read image i -> (object store) -> actor k: Predictor.predict -> driver:
             ResultWriter.write, in input order

Each actor holds one `Predictor`, opened once. The artifact travels through
Ray's object store (`artifact_files`: the file, the model card beside it and
any ONNX external data), so workers need not see the driver's files, only the
package and the artifact's runtime installed. Images are read on the driver
(the same reader, checks and warnings as a local run) and shipped as arrays;
predictions come back and the driver's `ResultWriter` writes them in input
order, so the outputs are those of a local run and the run is resumable the
same way.

Work is a queue, not a fixed split: each actor has at most `IN_FLIGHT` images
at a time, and the images of an actor that dies (a lost node, `ray.kill`) go
back to the front of the queue for the others, so no image is lost and none is
written twice. Results that arrive ahead of their turn wait on the driver; only
images within `window` of the next one to write are sent out, so memory is
bounded by the number of actors, not by the number of inputs.
"""

from __future__ import annotations

import heapq
import os
import shutil
import tempfile
from pathlib import Path

from retinaunet_deploy import names
from retinaunet_deploy.errors import ConfigError, RetinaUNetError

IN_FLIGHT = 2            # images per actor at a time: one running, one in transit
ACTOR_PREFIX = "retinaunet-predict-"


class PredictActor:
    """One Predictor on a Ray worker (the class `run_ray` makes remote).

    Args:
        files: relative name -> bytes of the artifact and its companions
            (`artifact_files`), written into a private temporary folder.
        name: the artifact's file name among `files`.
        options: the run's `predict.open_predictor` options (threads, runtime, tile,
            overlap, score_threshold, max_detections, ...), so every actor predicts as
            the local run does.
    """

    def __init__(self, files: dict[str, bytes], name: str, options: dict):
        from retinaunet_deploy.predict import open_predictor

        self.folder = Path(tempfile.mkdtemp(prefix="retinaunet-ray-"))
        for relative, data in files.items():
            target = self.folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.predictor = open_predictor(self.folder / name, **options)

    def predict(self, item, image):
        """`Predictor.predict` of one planned item's (H, W[, C]) pixels: a `Prediction`
        (an `InputError` names the item's file, `stream.predict_item`)."""
        from retinaunet_deploy.predict.stream import predict_item

        return predict_item(self.predictor, item, image)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Release the runtime and remove the artifact's private copy."""
        self.predictor.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def artifact_files(path: Path) -> dict[str, bytes]:
    """What an actor needs to open `path`, by name relative to its folder: the file, the
    model card beside it (`names.CARD`) and, for ONNX, its external data files.

    Raises:
        ArtifactError: an ONNX file whose external data is missing or outside its folder.
    """
    from retinaunet_deploy.errors import ArtifactError

    path = Path(path)
    files = {path.name: path.read_bytes()}
    card = path.parent / names.CARD
    if card.is_file():
        files[names.CARD] = card.read_bytes()
    if path.suffix == ".onnx":
        import onnx

        from retinaunet_deploy.artifacts import check_onnx_external_data

        model = check_onnx_external_data(path)
        for tensor in _initializers(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next(e.value for e in tensor.external_data if e.key == "location")
            if location not in files:
                if not (path.parent / location).is_file():
                    raise ArtifactError(f"{path}: its external data {location} is missing "
                                        f"beside it; re-create the file")
                files[location] = (path.parent / location).read_bytes()
    return files


def _initializers(graph):
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None:
                yield from _initializers(attribute.g)
            for sub in attribute.graphs:
                yield from _initializers(sub)


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address`, or start a local one (None or ""); returns
    whether this call started Ray (so the caller shuts it down). Already connected: kept.

    Raises:
        ConfigError: Ray is not installed, or the address cannot be reached.
    """
    try:
        import ray
    except ImportError as error:
        raise ConfigError("predict --ray needs Ray: pip install 'retinaunet-deploy[ray]'") \
            from error
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} "
                          f"({str(error).strip().splitlines()[0][:160]}); give the head's "
                          f"address (host:6379, ray://host:10001 or auto), or --ray alone for "
                          f"a local cluster") from error
    return True


def _check_reachable(address: str | None, seconds: float = 10.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address answers a TCP connection within
    `seconds` (Ray itself retries an unreachable head for minutes and ignores SIGTERM
    meanwhile). "auto", "local" and None are left to Ray.

    Raises:
        ConfigError: the head does not answer, naming the address and the OS reason.
    """
    import socket

    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r}: give the head's address as host:6379 or "
                          f"ray://host:10001 (or auto, or --ray alone for a local cluster)")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} "
                          f"({error.strerror or error}); start its head ('ray start --head') "
                          f"or check the address, or give --ray alone for a local cluster") \
            from None


def actor_count(threads: int | None) -> int:
    """Actors for the connected cluster: its CPUs over each actor's threads (at least 1)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // (threads or 1)))


def run_ray(predictor, items, writer, warn, *, artifact_args: dict,
            address: str | None = None, actors: int | None = None) -> None:
    """Predict `items` on Ray actors, writing every result with `writer` on this driver.

    Same contract as `stream.run_sequential` (the same files and results.jsonl lines
    in the same order, the same warnings), with the inference on the actors.

    Args:
        predictor: the driver's `Predictor` of the same artifact and options (the
            writer's class names and caps; it predicts nothing here).
        items: the `plan.InputItem`s still to do, in output order.
        writer: the run's `writer.ResultWriter`.
        warn: prints one warning line.
        artifact_args: ``artifact`` (the artifact file) and the run's other
            `predict.open_predictor` options, which every actor opens it with.
        address: a Ray cluster (``host:6379``, ``ray://host:10001``, ``auto``); None or
            "": a local cluster on this machine, shut down at the end.
        actors: how many Predictors (default: the cluster's CPUs over `threads`).

    Raises:
        DataError, InputError, OutputError: as the sequential run, after every image
        before the failing one was written; `RetinaUNetError` when every actor died
        (re-run with --resume); `ConfigError` when Ray is missing or unreachable.
    """
    import ray

    options = dict(artifact_args)
    path = Path(options.pop("artifact"))
    started = connect(address)
    pool = []
    try:
        count = actors or actor_count(options.get("threads"))
        remote = ray.remote(num_cpus=options.get("threads") or 1, max_restarts=0)(PredictActor)
        files = ray.put(artifact_files(path))
        pool = [remote.options(name=f"{ACTOR_PREFIX}{os.getpid()}-{index}").remote(
                    files, path.name, options) for index in range(count)]
        _wait_ready(pool, path)
        _schedule(list(items), pool, predictor, writer, warn)
    finally:
        for actor in pool:
            _stop(actor)
        if started:
            ray.shutdown()


def _wait_ready(pool, path: Path) -> None:
    """Every actor has opened its Predictor; an actor that cannot names why, in one line."""
    import ray
    from ray.exceptions import RayActorError

    try:
        ray.get([actor.pid.remote() for actor in pool])
    except RayActorError as error:
        cause = _cause(error)
        if isinstance(cause, RetinaUNetError):
            raise cause from None
        reason = next((line.strip() for line in reversed(str(cause).splitlines())
                       if line.strip()), type(cause).__name__)
        raise RetinaUNetError(f"a Ray actor cannot open {path.name} ({reason[:200]}); "
                              f"install retinaunet-deploy and the runtime that runs it on every "
                              f"worker") from None


def _stop(actor) -> None:
    """Close an actor's Predictor and remove its artifact copy, then end it (a dead one
    has nothing left to release)."""
    import contextlib

    import ray

    with contextlib.suppress(Exception):
        ray.get(actor.close.remote(), timeout=30)
    ray.kill(actor)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _schedule(todo, pool, predictor, writer, warn) -> None:
    """The work queue: smallest index first, re-queued on actor death, written in order."""
    import ray
    from ray.exceptions import RayActorError

    from retinaunet_deploy.predict.stream import read_item, report

    live = {id(actor): actor for actor in pool}
    window = len(pool) * (IN_FLIGHT + 1)
    waiting = list(range(len(todo)))           # a heap of indices to send
    images, results, in_flight = {}, {}, {}    # index -> image / Prediction or _Failure
    busy = {id(actor): 0 for actor in pool}
    next_write, failed_at = 0, None
    while True:
        # Write first, so the window below is measured from the current next_write: sent
        # against a stale one, an image pushed back by a dead actor could finish last and
        # leave nothing in flight with images still waiting (a false "no actor left").
        while next_write in results:
            result = results.pop(next_write)
            if isinstance(result, _Failure):
                raise _cause(result.error)
            report(writer.write(todo[next_write], images.pop(next_write), result, predictor),
                   warn)
            next_write += 1
        if next_write >= len(todo):
            break
        for actor in list(live.values()):
            while (busy[id(actor)] < IN_FLIGHT and waiting and waiting[0] < next_write + window
                   and (failed_at is None or waiting[0] < failed_at)):
                index = heapq.heappop(waiting)
                if index not in images:
                    try:
                        images[index] = read_item(todo[index])
                    except Exception as error:  # noqa: BLE001 - raised in input order above
                        results[index] = _Failure(error)
                        failed_at = index if failed_at is None else min(failed_at, index)
                        continue
                in_flight[actor.predict.remote(todo[index], images[index])] = (index, actor)
                busy[id(actor)] += 1
        if not in_flight:
            if next_write in results:      # a read failure found while sending: raise it above
                continue
            raise RetinaUNetError(f"{len(pool) - len(live)} of {len(pool)} Ray actors died "
                                  f"and none is left for {todo[next_write].path}; see the Ray "
                                  f"logs (/tmp/ray/session_latest/logs on each node), then run "
                                  f"the same command with --resume to finish")
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            index, actor = in_flight.pop(ref)
            busy[id(actor)] -= 1
            try:
                results[index] = ray.get(ref)
            except RayActorError as error:
                # The actor is gone with its images: they go back to the front of the queue.
                if live.pop(id(actor), None) is not None:
                    warn(f"a Ray actor died ({_first_line(error)}); its images go to the "
                         f"{len(live)} other(s)")
                heapq.heappush(waiting, index)
            except Exception as error:  # noqa: BLE001 - the image's own error, in order
                results[index] = _Failure(error)
                failed_at = index if failed_at is None else min(failed_at, index)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:160]


def _cause(error: BaseException) -> BaseException:
    """The user's error inside a Ray task error (its one line, not Ray's traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
