"""The GPU end, as far as it runs without a GPU: engine build refusal, engine target
checks, Triton repository, ONNX Runtime GPU provider options."""

import importlib

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.artifacts import load_manifest, record_artifact
from retinaunet_deploy.cli import cli
from retinaunet_deploy.errors import ArtifactError, ConfigError

try:
    import tensorrt  # noqa: F401

    HAVE_TENSORRT = True
except ImportError:
    HAVE_TENSORRT = False

MODULES = ["retinaunet_deploy.export.tensorrt", "retinaunet_deploy.export.triton",
           "retinaunet_deploy.runtime.tensorrt", "retinaunet_deploy.runtime.backends",
           "retinaunet_deploy.runtime.providers", "retinaunet_deploy.runtime.cuda",
           "retinaunet_deploy.bench.harness"]


@pytest.mark.parametrize("module", MODULES)
def test_every_gpu_module_imports_without_tensorrt(module):
    importlib.import_module(module)


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_is_one_clear_line(tiny_calibrated):
    run, _ = tiny_calibrated
    for precision in ("fp32", "fp16", "int8"):
        result = CliRunner().invoke(cli, ["build-engine", str(run), "--precision", precision])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert lines == [("Error: TensorRT is not installed. TensorRT and an NVIDIA GPU are "
                          "needed: on a machine with a GPU and its driver, pip install -e "
                          "'.[tensorrt]'")]
    assert not list(run.glob("*.plan"))


def test_build_engine_refuses_a_replaced_onnx_before_needing_tensorrt(run_copy):
    (run_copy / "model.onnx").write_bytes((run_copy / "model.onnx").read_bytes() + b"\0")
    result = CliRunner().invoke(cli, ["build-engine", str(run_copy), "--precision", "fp32"])
    assert result.exit_code == 1
    assert "model.onnx changed since 'export' recorded it" in result.output
    assert "re-run 'retinaunet-deploy export" in result.output


def test_build_engine_refuses_a_variant_of_an_older_onnx(tiny_calibrated, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_calibrated[0], run)
    (run / "model.onnx").write_bytes((run / "model.onnx").read_bytes() + b" ")
    record_artifact(run, "model.onnx", "export", parent="model.keras")  # re-exported
    result = CliRunner().invoke(cli, ["build-engine", str(run), "--precision", "fp16"])
    assert result.exit_code == 1
    assert "model.fp16.onnx was made from an older model.onnx" in result.output
    assert f"re-run 'retinaunet-deploy calibrate {run}'" in result.output


def test_build_engine_refuses_a_file_tensorrt_would_not_import(tiny_calibrated, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_calibrated[0], run)
    # An ONNX Runtime-only fused op, which TensorRT's parser does not know.
    import onnx

    model = onnx.load(run / "model.int8.onnx")
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.op_type, conv.domain = "FusedConv", "com.microsoft"
    onnx.save(model, run / "model.int8.onnx")
    record_artifact(run, "model.int8.onnx", "calibrate", parent="model.onnx")
    result = CliRunner().invoke(cli, ["build-engine", str(run), "--precision", "int8"])
    assert result.exit_code == 1
    assert "would not import into TensorRT" in result.output


@pytest.mark.parametrize("bad", [{"min_batch": 4, "opt_batch": 2}, {"precision": "int4"},
                                 {"max_batch": 0}, {"workspace_mib": 0},
                                 {"min_size": 100}, {"min_size": 512, "opt_size": 256},
                                 {"max_size": 8, "min_size": 8, "opt_size": 8}])
def test_engine_options_are_checked(bad):
    from retinaunet_deploy.export.tensorrt import EngineOptions

    with pytest.raises(ConfigError):
        EngineOptions(**bad)


def test_profile_covers_sizes_and_batches():
    from retinaunet_deploy.export.tensorrt import EngineOptions, profile_shapes

    options = EngineOptions(min_batch=1, opt_batch=4, max_batch=8, min_size=64, opt_size=256,
                            max_size=1024)
    assert profile_shapes(options, 3) == ((1, 64, 64, 3), (4, 256, 256, 3), (8, 1024, 1024, 3))


TARGET = {"tensorrt": "10.13.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}


def test_engine_mismatch_names_version_and_gpu():
    from retinaunet_deploy.runtime.cuda import engine_mismatch

    assert engine_mismatch(TARGET, dict(TARGET)) is None
    version = engine_mismatch(TARGET, {**TARGET, "tensorrt": "11.1.0"})
    assert version == "built with TensorRT 10.13.0, this machine has 11.1.0"
    gpu = engine_mismatch(TARGET, {**TARGET, "gpu": "NVIDIA A100", "compute_capability": "8.0"})
    assert gpu == ("built for NVIDIA L4 (compute capability 8.9), this machine has "
                   "NVIDIA A100 (8.0)")


def test_check_engine_target_refuses_mismatched_and_unrecorded_engines(tmp_path):
    from retinaunet_deploy.runtime.cuda import check_engine_target

    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"not really an engine")
    with pytest.raises(ArtifactError, match="has no build record"):
        check_engine_target(plan, TARGET)
    record_artifact(tmp_path, plan.name, "build-engine", target=TARGET)
    assert check_engine_target(plan, TARGET)["target"] == TARGET
    with pytest.raises(ArtifactError, match=r"cannot run here: built for NVIDIA L4 .*rebuild "
                                            r"with 'retinaunet-deploy build-engine .* "
                                            r"--precision fp16'"):
        check_engine_target(plan, {**TARGET, "gpu": "Tesla T4", "compute_capability": "7.5"})
    plan.write_bytes(b"replaced")
    with pytest.raises(ArtifactError, match="changed since 'build-engine' recorded it"):
        check_engine_target(plan, TARGET)


def test_plan_is_a_predictor_artifact_checked_before_tensorrt(tmp_path):
    from retinaunet_deploy.errors import NotBuiltError
    from retinaunet_deploy.runtime import Predictor

    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(ArtifactError, match="has no build record"):
        Predictor.from_artifact(plan)
    record_artifact(tmp_path, plan.name, "build-engine", target=TARGET)
    plan.write_bytes(b"engi")  # truncated after the build
    with pytest.raises(ArtifactError, match="changed since 'build-engine' recorded it"):
        Predictor.from_artifact(plan)
    if not HAVE_TENSORRT:
        plan.write_bytes(b"engine")
        with pytest.raises(NotBuiltError, match="TensorRT is not installed"):
            Predictor.from_artifact(plan)


def _engine_without_gpu(min_batch, opt_batch, max_batch):
    """A TensorRTBackend whose one engine call is a fake that checks the profile: the
    chunking and padding logic, without a GPU."""
    from retinaunet_deploy.runtime.tensorrt import TensorRTBackend

    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.path, backend.channels = "fake.plan", 1
    backend.min_size, backend.max_size = 16, 64
    backend.min_batch, backend.opt_batch, backend.max_batch = min_batch, opt_batch, max_batch
    calls = []

    def execute(batch):
        assert min_batch <= len(batch) <= max_batch, f"batch {len(batch)} outside the profile"
        calls.append(len(batch))
        return {"mask": batch.sum(axis=(1, 2, 3)) * 2, "cls_logits": batch[:, :2, :2]}

    backend._execute = execute
    return backend, calls


@pytest.mark.parametrize("count,expected_calls", [(1, [2]), (2, [2]), (7, [3, 3, 2]),
                                                   (10, [3, 3, 3, 2]), (9, [3, 3, 3])])
def test_engine_batches_are_chunked_and_padded_to_its_profile(count, expected_calls):
    backend, calls = _engine_without_gpu(min_batch=2, opt_batch=3, max_batch=3)
    batch = np.arange(count * 32 * 32, dtype=np.float32).reshape(count, 32, 32, 1)
    outputs = backend.run(batch)
    assert calls == expected_calls
    assert np.array_equal(outputs["mask"], batch.sum(axis=(1, 2, 3)) * 2)  # order and count
    assert outputs["cls_logits"].shape == (count, 2, 2, 1)


def test_an_input_outside_the_profile_names_the_build_command_that_takes_it(tmp_path):
    from retinaunet_deploy.errors import InputError

    backend, _ = _engine_without_gpu(min_batch=1, opt_batch=1, max_batch=2)
    backend.path = tmp_path / "model.fp16.plan"
    with pytest.raises(InputError, match=r"H and W in 16\.\.64 \(its optimisation profile\), "
                                         r"got \(1, 128, 32, 1\); rebuild it with "
                                         r"'retinaunet-deploy build-engine .* --precision fp16 "
                                         r"--min-size 16 --max-size 128'"):
        backend.run(np.zeros((1, 128, 32, 1), np.float32))


def test_predictor_feeds_an_engine_its_tuned_batch():
    from retinaunet_deploy.runtime.predictor import Predictor

    backend, _ = _engine_without_gpu(min_batch=1, opt_batch=4, max_batch=8)
    card = {"card_version": 1, "normalization": {},
            "input": {"channels": 1, "stride": 16, "patch_size": 32}, "class_names": ["bg"],
            "builder": {"depth": 4, "input_shape": [32, 32, 1]}}
    predictor = Predictor(backend, card)
    assert predictor.batch_size == 4
    assert Predictor(backend, card, batch_size=2).batch_size == 2


# === Triton ===

def _model_config(text: str):
    """Parse config.pbtxt with Triton's own ModelConfig schema (from tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_repository_matches_the_onnx_model(tiny_calibrated, tmp_path):
    import onnx

    run, _ = tiny_calibrated
    out = tmp_path / "repo"
    # The raw outputs' repository (the end-to-end twin's: tests/test_serve.py).
    result = CliRunner().invoke(cli, ["triton", str(run), "--out", str(out), "--raw-outputs"])
    assert result.exit_code == 0, result.output
    folder = out / "retinaunet"
    assert (folder / "1" / "model.onnx").read_bytes() == (run / "model.onnx").read_bytes()
    assert (folder / "model_card.json").exists()
    config = _model_config((folder / "config.pbtxt").read_text())
    assert config.name == "retinaunet" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].count == 1

    graph = onnx.load(run / "model.onnx").graph
    triton_type = {onnx.TensorProto.FLOAT: "TYPE_FP32"}

    def expected(values):
        # A symbolic ONNX axis (height, width, anchors) is Triton's -1.
        return [(v.name, triton_type[v.type.tensor_type.elem_type],
                 [d.dim_value if d.HasField("dim_value") else -1
                  for d in v.type.tensor_type.shape.dim][1:]) for v in values]

    def actual(tensors):
        from tritonclient.grpc import model_config_pb2

        return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims))
                for t in tensors]

    assert actual(config.input) == expected(graph.input)
    assert actual(config.output) == expected(graph.output)
    assert sorted(name for name, _, _ in actual(config.output)) == ["box_deltas", "cls_logits", "mask"]
    assert actual(config.input) == [("image", "TYPE_FP32", [-1, -1, 1])]
    assert {n: d for n, _, d in actual(config.output)} == {
        "mask": [-1, -1, 3], "cls_logits": [-1, 2], "box_deltas": [-1, 4]}


def test_triton_rewrite_replaces_the_whole_folder(tiny_calibrated, tmp_path):
    from retinaunet_deploy.export.triton import TritonOptions, write_triton_repository

    run, _ = tiny_calibrated
    out = tmp_path / "repo"
    write_triton_repository(run, out)
    (out / "retinaunet" / "stale.txt").write_text("old")
    folder = write_triton_repository(run, out, TritonOptions(model="model.int8.onnx",
                                                             instances=2, kind="cpu"))
    assert not (folder / "stale.txt").exists()
    config = _model_config((folder / "config.pbtxt").read_text())
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert sorted(p.name for p in out.iterdir()) == ["retinaunet"]  # no staging left


def test_triton_refuses_bad_options_and_stale_files(run_copy, tmp_path):
    from retinaunet_deploy.export.triton import TritonOptions, write_triton_repository

    with pytest.raises(ConfigError, match="preferred batch sizes"):
        TritonOptions(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ConfigError, match=r"\.onnx or \.plan"):
        TritonOptions(model="model.keras")
    (run_copy / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="changed since 'export' recorded it"):
        write_triton_repository(run_copy, tmp_path / "repo")
    assert not (tmp_path / "repo" / "retinaunet").exists()


def test_triton_plan_takes_engine_batch_limit(run_copy, tmp_path):
    from retinaunet_deploy.export.triton import TritonOptions, write_triton_repository

    plan = run_copy / "model.fp32.plan"
    plan.write_bytes(b"engine bytes")
    record_artifact(run_copy, plan.name, "build-engine", parent="model.onnx",
                    options={"max_batch": 4}, target=TARGET)
    with pytest.raises(ConfigError, match="accepts batches up to 4"):
        write_triton_repository(run_copy, tmp_path / "repo", TritonOptions(model=plan.name))
    folder = write_triton_repository(run_copy, tmp_path / "repo", TritonOptions(
        model=plan.name, max_batch_size=4, preferred_batch_sizes=(2, 4)))
    config = _model_config((folder / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert (folder / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert [t.name for t in config.input] == ["image"]


# === ONNX Runtime GPU providers ===

def test_gpu_provider_options_and_refusal_without_a_gpu():
    from retinaunet_deploy.runtime.providers import (
        CPU,
        check_providers,
        cuda_device_count,
        tensorrt_provider,
    )

    name, options = tensorrt_provider(fp16=True, cache_dir="/tmp/cache")
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] and options["trt_engine_cache_path"] == "/tmp/cache"
    assert check_providers([(CPU, {})]) == [(CPU, {})]
    if cuda_device_count() == 0:
        with pytest.raises(ConfigError, match=r"\['TensorrtExecutionProvider'\] cannot load"):
            check_providers([tensorrt_provider(), CPU])


def test_manifest_keeps_engine_target(tmp_path):
    (tmp_path / "model.fp16.plan").write_bytes(b"x")
    record_artifact(tmp_path, "model.fp16.plan", "build-engine", target=TARGET)
    assert load_manifest(tmp_path)["artifacts"]["model.fp16.plan"]["target"] == TARGET


class FakeBuilderConfig:
    """TensorRT's IBuilderConfig timing-cache calls, as the bindings behave."""

    def __init__(self, foreign: bool = False):
        self.foreign, self.attached = foreign, []

    def create_timing_cache(self, data: bytes):
        if data and not data.startswith(b"cache"):
            return None                       # unreadable: the binding returns None
        return {"data": data}

    def set_timing_cache(self, cache, ignore_mismatch: bool):
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments")
        assert ignore_mismatch is False
        if cache["data"] and self.foreign:
            return False                      # timed on another GPU: refused
        self.attached.append(cache)
        return True


@pytest.mark.parametrize("stored, foreign, expected, said", [
    (None, False, b"", False),                # no cache yet: a fresh one
    (b"cache from this GPU", False, b"cache from this GPU", False),
    (b"\x00garbage", False, b"", True),       # unreadable: a fresh one, never None
    (b"cache from an A100", True, b"", True),  # another GPU's: refused, a fresh one
])
def test_timing_cache_is_reused_or_started_afresh(tmp_path, stored, foreign, expected, said):
    from retinaunet_deploy.export.tensorrt import attach_timing_cache

    path = tmp_path / "tensorrt.timing.cache"
    if stored is not None:
        path.write_bytes(stored)
    config, messages = FakeBuilderConfig(foreign), []
    attach_timing_cache(config, path, messages.append)
    assert [c["data"] for c in config.attached] == [expected]
    assert bool(messages) == said


def test_tensorrt_provider_switches_on_the_files_precision():
    from retinaunet_deploy.runtime.providers import precision_of, tensorrt_provider

    assert [precision_of(f"run/model{s}.onnx") for s in ("", ".fp16", ".int8")] == [
        "fp32", "fp16", "int8"]
    _, options = tensorrt_provider(int8=True, cache_dir="c")
    assert options["trt_int8_enable"] and not options["trt_fp16_enable"]
    _, options = tensorrt_provider(fp16=True)
    assert options["trt_fp16_enable"] and not options["trt_int8_enable"]


def test_a_silently_dropped_provider_is_refused():
    from retinaunet_deploy.runtime.providers import (
        CPU,
        CUDA,
        check_session_providers,
        cuda_provider,
    )

    check_session_providers("m.onnx", [cuda_provider(), CPU], [CUDA, CPU])   # loaded: fine
    with pytest.raises(ArtifactError, match=r"m.onnx: ONNX Runtime could not start "
                                            r"\['CUDAExecutionProvider'\] \(running on "
                                            r"\['CPUExecutionProvider'\] instead\)"):
        check_session_providers("m.onnx", [cuda_provider(), CPU], [CPU])


def test_make_gpu_check_says_in_one_line_that_there_is_no_gpu():
    import shutil
    import subprocess
    from pathlib import Path

    from retinaunet_deploy.runtime.providers import cuda_device_count

    root = Path(__file__).resolve().parent.parent
    if cuda_device_count() > 0 or shutil.which("make") is None:
        pytest.skip("a GPU answers here (make gpu-check would run), or no make")
    if not (root / ".venv" / ".installed").exists():
        pytest.skip("the Makefile's .venv is not installed in this checkout")
    result = subprocess.run(["make", "-s", "gpu-check"], cwd=root, capture_output=True, check=False,
                            text=True, timeout=120)
    assert result.returncode != 0
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("gpu-check: no NVIDIA GPU answers on this machine")
    assert not (root / "bench" / "gpu").exists()
