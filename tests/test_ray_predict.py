"""`predict --ray`: the streaming predict on a local Ray cluster of 2 workers gives the local
run's outputs, and a worker killed mid-run loses and duplicates no image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

COUNT = 32


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """32 small PNGs of a few sizes (consecutive ones often share a size)."""
    folder = tmp_path_factory.mktemp("ray_inputs")
    rng = np.random.default_rng(3)
    paths = []
    for index in range(COUNT):
        h, w = [(32, 48), (48, 48), (40, 64)][index // 4 % 3]
        image = rng.normal(70, 12, (h, w))
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] += 80
        paths.append(folder / f"r{index:02d}.png")
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def local_run(tiny_exported, inputs, tmp_path_factory):
    from retinaunet_deploy.predict import predict_files

    out = tmp_path_factory.mktemp("ray_local") / "out"
    predict_files(tiny_exported[0] / "model.onnx", inputs, out, threads=1,
                  score_threshold=0.05, executor="sequential")
    return out


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_ray_outputs_are_the_local_runs(ray_cluster, tiny_exported, inputs, local_run,
                                        tmp_path):
    from retinaunet_deploy.predict import predict_files

    out = tmp_path / "out"
    predict_files(tiny_exported[0] / "model.onnx", inputs, out, threads=1,
                  score_threshold=0.05, executor="ray")
    assert _files(out) == _files(local_run)
    assert len(_files(out)) == 2 * COUNT + 2
    assert not [a for a in ray.util.list_named_actors() if a.startswith("retinaunet-predict")]


def test_a_killed_actor_loses_and_duplicates_no_image(ray_cluster, tiny_exported, inputs,
                                                      local_run, tmp_path):
    from retinaunet_deploy.predict import ResultWriter, open_predictor, plan_inputs
    from retinaunet_deploy.predict.ray_runner import ACTOR_PREFIX, run_ray

    artifact = tiny_exported[0] / "model.onnx"
    header = json.loads((local_run / "results.jsonl").read_text().splitlines()[0])
    header.pop("kind")
    killed = []

    class KillingWriter(ResultWriter):
        """Kills one of the two actors (images in flight on it) after the 8th image."""

        def write(self, *args):
            entry = super().write(*args)
            if len(self.entries) == 8:
                names = sorted(a for a in ray.util.list_named_actors()
                               if a.startswith(ACTOR_PREFIX))
                assert len(names) == 2
                ray.kill(ray.get_actor(names[0]), no_restart=True)
                killed.append(names[0])
            return entry

    warnings = []
    options = {"threads": 1, "score_threshold": 0.05}
    out = tmp_path / "out"
    with open_predictor(artifact, **options) as predictor:
        items = plan_inputs(inputs, predictor)
        with KillingWriter(out, header=header, resume=False) as writer:
            run_ray(predictor, items, writer, warnings.append,
                    artifact_args={"artifact": artifact, **options})
            writer.finish(items)
    assert killed
    assert [w for w in warnings if w.startswith("a Ray actor died")] == [
        warnings[0]] and warnings[0].endswith("its images go to the 1 other(s)")
    lines = [json.loads(line)["path"]
             for line in (out / "results.jsonl").read_text().splitlines()[1:]]
    assert lines == [str(p) for p in inputs]          # each image once, in order
    assert _files(out) == _files(local_run)


def test_predict_command_runs_on_ray(ray_cluster, tiny_exported, inputs, local_run, tmp_path):
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", str(tiny_exported[0] / "model.onnx"),
                                      *map(str, inputs), "--out", str(out), "--threads", "1",
                                      "--score-threshold", "0.05", "--ray"])
    assert result.exit_code == 0, result.output
    assert _files(out) == _files(local_run)


def test_ray_taking_an_image_as_its_address_is_refused(tiny_exported, inputs, tmp_path):
    from click.testing import CliRunner

    from retinaunet_deploy.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(tiny_exported[0] / "model.onnx"),
                                      "--ray", str(inputs[0]), str(inputs[1]),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert (f"--ray took {inputs[0]} as its cluster address; put --ray after the images, or "
            f"write --ray=ADDRESS") in result.output
    assert not (tmp_path / "out").exists()


def test_an_image_pushed_back_by_a_dead_actor_and_finished_last_is_still_written(monkeypatch):
    """Replays the order that once raised "no actor left" with one actor alive: the dead
    actor's first image comes back last, after every later image in the window was done."""
    from ray.exceptions import RayActorError

    from retinaunet_deploy.predict import ray_runner, stream

    class Ref:
        def __init__(self, index, actor):
            self.index, self.actor = index, actor

    class Actor:
        def __init__(self, dead):
            self.dead = dead
            self.predict = self
            self.seen = []

        def remote(self, item, image):
            self.seen.append(item)
            return Ref(item, self)

    def get(ref):
        if ref.actor.dead:
            raise RayActorError()
        return f"prediction {ref.index}"

    # Ray may finish refs in any order: the latest-sent first is the worst case here.
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns: (
        [max(refs, key=lambda r: r.index)], []))
    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(stream, "read_item", lambda item: f"image {item}")

    written = []

    class Writer:
        def write(self, item, image, result, predictor):
            assert (image, result) == (f"image {item}", f"prediction {item}")
            written.append(item)
            return {}

    dead, alive = Actor(dead=True), Actor(dead=False)
    warnings = []
    ray_runner._schedule(list(range(12)), [dead, alive], None, Writer(), warnings.append)
    assert written == list(range(12))
    assert dead.seen and warnings == [("a Ray actor died (The actor experienced an error before "
                                       "finishing this task.); its images go to the 1 other(s)")]
