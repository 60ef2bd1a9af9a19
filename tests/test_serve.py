"""`retinaunet-deploy serve`: the bundled tritonserver serving a tiny run's artifact over
KServe v2 (HTTP and gRPC), against the Predictor on the same file.

The served model runs in the serve environment (`make serve-env`; `make test` builds it):
numpy 1.26 and the runtimes, no TensorFlow installed, so a model that imported TensorFlow
would fail to load here.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import InputError
from retinaunet_deploy.serve import protocol
from retinaunet_deploy.serve.load import ServerProcess, connect, free_ports, infer, run_clients
from retinaunet_deploy.serve.repository import default_env

ROOT = Path(__file__).resolve().parents[1]
TILE = 64   # the tiny model's patch: the larger request sizes run as a sliding window
SIZES = [(64, 64), (40, 56), (96, 80), (33, 130), (128, 128)]

needs_env = pytest.mark.skipif(not (default_env() / "pyvenv.cfg").is_file(),
                               reason="no serve environment: run 'make serve-env'")


CARD_SCORE_THRESHOLD = 0.05   # the tiny card's, the `predictor` fixture's: compared as is


def _serve(run_dir, artifact="model.onnx", *options):
    """`serve` on a file of the tiny run, this checkout's code, tiles of TILE px, keeping
    every detection the Predictor keeps (the card's threshold, not serve's default 0.5)."""
    return ServerProcess(run_dir, "--artifact", artifact, "--tile", str(TILE),
                         "--threads", "2", "--score-threshold", str(CARD_SCORE_THRESHOLD),
                         *options, pythonpath=ROOT)


@pytest.fixture(scope="module")
def predictor(tiny_exported):
    from retinaunet_deploy.runtime.predictor import Predictor

    with Predictor.from_artifact(tiny_exported[0] / "model.onnx", tile=TILE, threads=2) as p:
        yield p


@pytest.fixture(scope="module")
def server(tiny_exported):
    if not (default_env() / "pyvenv.cfg").is_file():
        pytest.skip("no serve environment: run 'make serve-env'")
    served = _serve(tiny_exported[0])
    yield served
    served.stop()


def _images(count, seed=0):
    """Synthetic-looking uint8 images of the SIZES, cycling (some tile, some pad)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        image = rng.normal(40, 10, (h, w, 1))
        for _ in range(3):  # a few bright discs, the synthetic data's objects
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 10)
            yy, xx = np.ogrid[:h, :w]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 150
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def _expected(predictor, image):
    prediction = predictor.predict(image)
    return protocol.encode([prediction], protocol.detection_slots(predictor, *image.shape[:2]))


def _assert_same(outputs, expected):
    for name in protocol.OUTPUTS:
        np.testing.assert_array_equal(outputs[name], expected[name], err_msg=name)


def test_answer_refuses_bad_requests_one_by_one(predictor):
    """The served model's logic without Triton: a bad request gets its reason, the good
    ones of the same execution their results."""
    good = _images(2)
    results = protocol.answer(predictor, [good[0][None], np.zeros((1, 8, 8, 1), np.uint8),
                                          good[1][None]])
    assert "smaller than one network stride" in results[1]
    _assert_same(results[0], _expected(predictor, good[0]))
    _assert_same(results[2], _expected(predictor, good[1]))
    with pytest.raises(InputError):
        predictor.check_input(np.full((1, 32, 32, 1), np.nan, np.float32))
    assert "NaN" in protocol.answer(predictor, [np.full((1, 32, 32, 1), np.nan, np.float32)])[0]


@needs_env
def test_200_mixed_requests_from_4_clients_match_the_predictor(server, predictor):
    images = _images(200)
    # Every fourth request over gRPC, the rest over HTTP; sizes mixed so the dynamic
    # batcher groups only the equal ones.
    requests = [(image[None], "grpc" if i % 4 == 3 else "http") for i, image in
                enumerate(images)]
    outcomes = run_clients(requests, 4, "127.0.0.1", server.http, server.grpc)
    assert [o.error for o in outcomes if o.error] == []
    for image, outcome in zip(images, outcomes):
        _assert_same(outcome.outputs, _expected(predictor, image))
    assert {o.kind for o in outcomes} == {"http", "grpc"}
    assert any(int(o.outputs[protocol.NUM_DETECTIONS][0, 0]) for o in outcomes)
    # Its startup line names the runtime that runs it, never "auto".
    assert any("model.onnx (onnxruntime) as model" in line for line in server.lines)


@needs_env
def test_an_end_to_end_file_serves_the_same_answers_as_its_predictor(tiny_exported):
    """model.e2e.onnx (detections decoded in the graph) behind `serve` answers as the
    Predictor on the same file does, whole and tiled images alike."""
    from retinaunet_deploy.runtime.predictor import Predictor

    run = tiny_exported[0]
    served = _serve(run, "model.e2e.onnx")
    try:
        images = _images(20, seed=1)
        outcomes = run_clients([(image[None], "http") for image in images], 2, "127.0.0.1",
                               served.http, served.grpc)
    finally:
        assert served.stop() == 0
    with Predictor.from_artifact(run / "model.e2e.onnx", tile=TILE, threads=2) as e2e:
        for image, outcome in zip(images, outcomes):
            assert outcome.error is None, outcome.error
            _assert_same(outcome.outputs, _expected(e2e, image))


@needs_env
def test_the_queue_is_bounded(tiny_exported, predictor):
    """Beyond --max-queue-size waiting requests, Triton refuses at once; the rest answer."""
    served = _serve(tiny_exported[0], "model.onnx", "--max-queue-size", "1",
                    "--max-batch-size", "1", "--max-queue-delay-us", "0")
    try:
        image = _images(5)[4]                    # 128 x 128: 9 tiles
        outcomes = run_clients([(image[None], "http")] * 48, 12, "127.0.0.1", served.http,
                               served.grpc)
    finally:
        assert served.stop() == 0
    refused = [o.error for o in outcomes if o.error]
    assert refused and all("Exceeds maximum queue size" in e for e in refused), refused[:3]
    answered = [o.outputs for o in outcomes if o.outputs is not None]
    assert answered
    for outputs in answered:
        _assert_same(outputs, _expected(predictor, image))


@needs_env
@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, predictor, kind):
    client = connect(kind, "127.0.0.1", server.http, server.grpc)
    bad = {"smaller than one network stride": np.zeros((1, 8, 8, 1), np.uint8),
           "expects 'UINT8'": np.full((1, 32, 32, 1), np.nan, np.float32),   # NaN: float
           "Expected [-1,-1,-1,1], got [1,32,32,3]": np.zeros((1, 32, 32, 3), np.uint8),
           "got [1,32,32]": np.zeros((1, 32, 32), np.uint8)}                 # wrong rank
    for reason, batch in bad.items():
        with pytest.raises(Exception, match=None) as refused:
            infer(client, kind, batch)
        assert reason in str(refused.value), str(refused.value)
        if reason.startswith("smaller"):   # the served model's own check: a client error
            assert refused.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), (
                refused.value.status())
        image = _images(1)[0]
        _assert_same(infer(client, kind, image[None]), _expected(predictor, image))
    client.close()


@needs_env
def test_sigterm_drains_accepted_requests_and_exits_0(tiny_exported, predictor):
    served = _serve(tiny_exported[0])
    image = _images(5)[4]                        # 128 x 128: 9 tiles, the longest to run
    requests = [(image[None], "grpc" if i % 2 else "http") for i in range(400)]
    outcomes = []
    load = threading.Thread(target=lambda: outcomes.extend(
        run_clients(requests, 4, "127.0.0.1", served.http, served.grpc)))
    load.start()
    time.sleep(3)
    signalled = time.monotonic()
    assert served.stop() == 0, "".join(served.lines)
    load.join()
    expected = _expected(predictor, image)
    answered = [o for o in outcomes if o.outputs is not None]
    for outcome in answered:
        _assert_same(outcome.outputs, expected)
    # Requests in flight at the signal were answered after it; the rest were refused,
    # never lost (no timeout, no empty or wrong answer).
    assert any(o.finished > signalled and o.started < signalled for o in answered)
    assert len(answered) < len(outcomes)         # and the drain did not serve the rest
    # Refused: the model is unloading (serve's drain), or the server is gone.
    refusals = ("Request for unknown model: 'retinaunet' has no available versions",
                "Connection refused", "failed to connect", "UNAVAILABLE")
    odd = [o.error for o in outcomes if o.error and not any(r in o.error for r in refusals)]
    assert odd == []
    assert "drained and stopped" in "".join(served.lines)


def test_serve_says_how_to_build_a_missing_environment(tiny_exported, tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tiny_exported[0]), "--artifact", "model.onnx",
                                      "--env", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "make serve-env" in lines[0], result.output


def test_triton_repository_serves_the_end_to_end_twin(run_copy, tmp_path):
    """The `triton` command's repository serves model.e2e.onnx (export writes it) when the
    run has it (final detections for a GPU Triton client), its config.pbtxt typed by
    Triton's ModelConfig; --raw-outputs serves the plain file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    assert (run_copy / "model.e2e.onnx").is_file()
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["triton", str(run_copy), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "serving model.e2e.onnx" in result.output
    folder = out / "retinaunet"
    assert (folder / "1" / "model.onnx").read_bytes() == (run_copy / "model.e2e.onnx").read_bytes()
    config = text_format.Parse((folder / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    dims = {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims))
            for o in config.output}
    assert dims == {"num_detections": ("TYPE_INT32", [1]),
                    "detection_boxes": ("TYPE_FP32", [100, 4]),
                    "detection_scores": ("TYPE_FP32", [100]),
                    "detection_classes": ("TYPE_INT32", [100]),
                    "labels": ("TYPE_UINT8", [-1, -1])}
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [-1, -1, 1])]

    result = CliRunner().invoke(cli, ["triton", str(run_copy), "--out", str(out),
                                      "--raw-outputs"])
    assert result.exit_code == 0, result.output
    assert (folder / "1" / "model.onnx").read_bytes() == (run_copy / "model.onnx").read_bytes()


@needs_env
def test_a_taken_port_is_one_line_naming_it(tiny_exported):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(tiny_exported[0]), "--artifact",
                                          "model.onnx", "--port", str(port), "--grpc-port",
                                          str(free_ports(1)[0])])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}' already in use" in lines[0], result.output


def test_a_model_of_signed_pixels_is_served_with_their_dtype(tiny_exported, tmp_path):
    """A CT model (card pixel dtype int16, normalised outside the graph) takes int16
    requests: the config declares TYPE_INT16, and the served logic answers an int16 image
    as the Predictor does (it applies the card's normalisation)."""
    import dataclasses

    from retinaunet_deploy.normalization import Normalization
    from retinaunet_deploy.runtime.predictor import Predictor
    from retinaunet_deploy.serve.repository import ServeOptions, model_config, served_card

    run, _ = tiny_exported
    card = served_card(run / "model.onnx")
    ct = Normalization(scheme="ct", in_graph=False, mean=40.0, std=300.0, clip_low=-200.0,
                       clip_high=600.0)
    card = dataclasses.replace(card, normalization=ct,
                               input=dataclasses.replace(card.input, pixel_dtype="int16"))
    config = model_config(run / "model.onnx", "openvino", card, tmp_path, ServeOptions())
    from tritonclient.grpc import model_config_pb2 as pb

    assert config.input[0].data_type == pb.DataType.Value("TYPE_INT16")
    with Predictor.from_artifact(run / "model.onnx", runtime="openvino", threads=2) as plain:
        predictor = Predictor(plain.backend, card)
        image = (_images(1)[0].astype(np.int16) * 4 - 300)
        result = protocol.answer(predictor, [image[None]])[0]
        _assert_same(result, _expected(predictor, image))


def test_serve_keeps_what_predict_keeps_by_default(tiny_exported, tmp_path):
    """serve's default --score-threshold is predict's (0.5), passed to the served
    Predictor; an out-of-range one is refused; the tiny card's own threshold is 0.05."""
    from retinaunet_deploy.errors import ConfigError
    from retinaunet_deploy.postprocess import APP_SCORE_THRESHOLD
    from retinaunet_deploy.serve.repository import ServeOptions, model_config, served_card

    run, _ = tiny_exported
    card = served_card(run / "model.onnx")
    assert card.detection_config.score_threshold == CARD_SCORE_THRESHOLD
    config = model_config(run / "model.onnx", "openvino", card, tmp_path, ServeOptions())
    assert float(config.parameters["score_threshold"].string_value) == APP_SCORE_THRESHOLD == 0.5
    with pytest.raises(ConfigError, match="--score-threshold must be in"):
        ServeOptions(score_threshold=1.5)
