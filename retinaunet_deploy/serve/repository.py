"""The model repository `serve` hands to `tritonserver`, in a temporary folder:

    ROOT/repository/retinaunet/config.pbtxt       backend "python", dynamic batching
    ROOT/repository/retinaunet/1/model.py         re-exports `serve.triton_model`
    ROOT/repository/retinaunet/1/retinaunet_deploy -> this package (a symbolic link)
    ROOT/backends/python/                          the wheel's Python backend, with the
                                                   stub for the serve environment's Python

Why these pieces:
- The nvidia-pytriton wheel ships `tritonserver` (2.51), `backends/python/` without a
  stub, and stubs per Python version under `python_backend_stubs/X.Y/`; the backend
  looks for `triton_python_backend_stub` in its own folder only, so a backend folder of
  links with the serve environment's stub is assembled here.
- The stub returns empty output tensors under numpy 2 (correct ones under 1.26), and this
  project's main environment needs numpy 2 for TensorFlow; so the model runs in its own
  virtual environment, given as the Python backend's `EXECUTION_ENV_PATH` (a folder: the
  backend sources its `bin/activate` and the stub's embedded Python takes the venv's
  site-packages). The stub links the system's libpython of its version, so the venv must
  be made with that Python (`make serve-env` uses python3.11).
- The package itself is linked into the version folder (first on `sys.path` of the
  model), so the server runs the very code of the `serve` command: the environment holds
  only third-party packages, never a stale copy of this one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.postprocess import APP_SCORE_THRESHOLD
from retinaunet_deploy.serve import protocol

PACKAGE = Path(__file__).resolve().parents[1]          # retinaunet_deploy/
SERVE_ENV_VARIABLE = "RETINAUNET_SERVE_ENV"
BUILD_ENV = "build it with 'make serve-env' in a clone of retinaunet-deploy"
SERVED_RUNTIMES = ("auto", "onnxruntime", "openvino", "openvino-bf16")
# The request tensor's Triton type per card pixel dtype: 8/16-bit unsigned images, and the
# signed and float pixels of models that normalise outside the graph (CT, MRI: issue 21).
PIXEL_TYPES = {"uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "int8": "TYPE_INT8",
               "int16": "TYPE_INT16", "int32": "TYPE_INT32", "float16": "TYPE_FP16",
               "float32": "TYPE_FP32", "float64": "TYPE_FP64"}
SHIM = ('"""Triton\'s entry point: the served model is retinaunet_deploy.serve.triton_model."""\n'
        "import os\nimport sys\n\n"
        "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
        "from retinaunet_deploy.serve.triton_model import TritonPythonModel  # noqa: E402,F401\n")


@dataclass
class ServeOptions:
    """How the model is served (config.pbtxt and the Predictor in each instance).

    Attributes:
        max_batch_size: most images Triton's dynamic batcher puts into one execution
            (requests of equal shape only), and the Predictor's batch.
        max_queue_delay_us: how long (microseconds) a request may wait for others.
        max_queue_size: requests waiting beyond this are refused at once ("Exceeds
            maximum queue size"): the bounded queue.
        instances: model instances (processes), each running one batch at a time.
        threads: intra-op threads per instance (0: the runtime's default).
        tile, overlap: the Predictor's sliding window for large images.
        score_threshold: detections scoring below this are not returned (as `predict`'s
            --score-threshold; None: the card's, 0.05 on the demo, for evaluation).
    """

    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    max_queue_size: int = 64
    instances: int = 1
    threads: int = 0
    tile: int = 1024
    overlap: float = 0.25
    score_threshold: float | None = APP_SCORE_THRESHOLD

    def __post_init__(self):
        if min(self.max_batch_size, self.instances, self.max_queue_size) < 1:
            raise ConfigError("max_batch_size, instances and max_queue_size must be >= 1")
        if self.score_threshold is not None and not 0 <= self.score_threshold <= 1:
            raise ConfigError(f"--score-threshold must be in [0, 1], got "
                              f"{self.score_threshold}")
        if self.threads < 0 or self.max_queue_delay_us < 0:
            raise ConfigError("threads and max_queue_delay_us must be >= 0")


def default_env() -> Path:
    """The serve environment: $RETINAUNET_SERVE_ENV, else .serve-env beside the package
    (where `make serve-env` writes it in a clone)."""
    named = os.environ.get(SERVE_ENV_VARIABLE)
    return Path(named) if named else PACKAGE.parent / ".serve-env"


def triton_home() -> Path:
    """The nvidia-pytriton wheel's `tritonserver/` folder (bin/, backends/, stubs)."""
    spec = importlib.util.find_spec("pytriton")
    home = Path(next(iter(spec.submodule_search_locations))) / "tritonserver" if spec else None
    if home is None or not (home / "bin" / "tritonserver").is_file():
        raise ConfigError("the tritonserver binary is not installed (it comes with the "
                          "nvidia-pytriton wheel); pip install 'retinaunet-deploy[serve]'")
    return home


def env_python_version(env: Path) -> str:
    """The serve environment's Python as "X.Y", checked to be usable.

    Raises `ConfigError` (one line, with how to build it) when it is missing or broken.
    """
    config = env / "pyvenv.cfg"
    if not (config.is_file() and (env / "bin" / "activate").is_file()):
        raise ConfigError(f"the serve environment {env} is missing; {BUILD_ENV} (or name "
                          f"another with --env or ${SERVE_ENV_VARIABLE})")
    fields = {key.strip(): value.strip() for key, value in
              (line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)}
    version = fields.get("version_info", fields.get("version", "")).strip()
    major_minor = ".".join(version.split(".")[:2])
    if not major_minor:
        raise ConfigError(f"{config} names no Python version; {BUILD_ENV} again")
    return major_minor


def served_card(path: Path):
    """The model card embedded in the .onnx file to serve (`card.embedded_card`)."""
    from retinaunet_deploy.artifacts import check_onnx_external_data
    from retinaunet_deploy.card import embedded_card

    if path.suffix != ".onnx":
        raise ConfigError(f"{path}: serve runs .onnx files (in OpenVINO or ONNX Runtime); name "
                          f"one of the run's .onnx variants with --artifact")
    metadata = {p.key: p.value for p in check_onnx_external_data(path).metadata_props}
    card = embedded_card(path, metadata.get("model_card"))
    if card is None:
        raise ArtifactError(f"{path} has no model card in its metadata; serve a file its run's "
                            f"export or calibrate wrote")
    return card


def model_config(artifact: Path, runtime: str, card, env: Path, options: ServeOptions):
    """config.pbtxt as Triton's own `ModelConfig` protobuf (tritonclient's class)."""
    from tritonclient.grpc import model_config_pb2 as pb

    pixel = PIXEL_TYPES.get(str(card.input.pixel_dtype))
    if pixel is None:
        raise ConfigError(f"{artifact}: serve takes images of {', '.join(PIXEL_TYPES)}, the "
                          f"model's card says {card.input.pixel_dtype}")
    config = pb.ModelConfig(name=protocol.MODEL_NAME, backend="python",
                            max_batch_size=options.max_batch_size)
    config.input.add(name=protocol.INPUT, data_type=pb.DataType.Value(pixel),
                     dims=[-1, -1, card.input.channels])
    for name, data_type, dims in ((protocol.LABELS, "TYPE_UINT8", [-1, -1]),
                                  (protocol.NUM_DETECTIONS, "TYPE_INT32", [1]),
                                  (protocol.BOXES, "TYPE_FP32", [-1, 4]),
                                  (protocol.SCORES, "TYPE_FP32", [-1]),
                                  (protocol.CLASSES, "TYPE_INT32", [-1])):
        config.output.add(name=name, data_type=pb.DataType.Value(data_type), dims=dims)
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = options.max_queue_delay_us
    batching.default_queue_policy.max_queue_size = options.max_queue_size
    config.instance_group.add(count=options.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    for key, value in (("EXECUTION_ENV_PATH", str(env)), ("artifact", str(artifact)),
                       ("runtime", runtime), ("threads", str(options.threads)),
                       ("tile", str(options.tile)), ("overlap", repr(options.overlap)),
                       ("score_threshold", "" if options.score_threshold is None
                        else repr(options.score_threshold))):
        config.parameters[key].string_value = value
    return config


def write_repository(root: Path, artifact: Path, runtime: str, env: Path,
                     options: ServeOptions) -> tuple[Path, Path]:
    """Write ROOT/repository and ROOT/backends (layout above); returns both folders.

    Raises `ConfigError` for a runtime the server does not run, a missing serve
    environment or a Python with no stub in the wheel; `ArtifactError` for a file without
    a card.
    """
    from google.protobuf import text_format

    if runtime not in SERVED_RUNTIMES:
        raise ConfigError(f"serve runs {artifact.name} in one of {list(SERVED_RUNTIMES)}, not "
                          f"{runtime!r}; pass --runtime")
    artifact, env = Path(artifact).resolve(), Path(env).absolute()
    version = env_python_version(env)
    home = triton_home()
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ConfigError(f"the serve environment {env} runs Python {version}, for which "
                          f"nvidia-pytriton ships no stub; {BUILD_ENV} (python3.11)")
    card = served_card(artifact)
    backend = root / "backends" / "python"
    backend.mkdir(parents=True)
    for source in (*sorted((home / "backends" / "python").glob("*.so")),
                   home / "backends" / "python" / "triton_python_backend_utils.py", stub):
        os.symlink(source, backend / source.name)
    model = root / "repository" / protocol.MODEL_NAME
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(SHIM)
    os.symlink(PACKAGE, model / "1" / PACKAGE.name)
    (model / "config.pbtxt").write_text(text_format.MessageToString(
        model_config(artifact, runtime, card, env, options)))
    return root / "repository", root / "backends"


def remove(root: Path) -> None:
    """Delete a folder `write_repository` wrote (links are removed, never followed)."""
    shutil.rmtree(root, ignore_errors=True)
