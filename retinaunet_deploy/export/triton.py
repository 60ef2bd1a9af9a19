"""Triton stage: a run's ONNX file or TensorRT engine -> a Triton model repository.

    OUT/retinaunet/config.pbtxt
    OUT/retinaunet/model_card.json      (for clients: preprocessing, classes, anchors)
    OUT/retinaunet/1/model.onnx         (platform onnxruntime_onnx), or
    OUT/retinaunet/1/model.plan         (platform tensorrt_plan)

An .onnx file is served as its end-to-end twin when the run has one (model.onnx ->
model.e2e.onnx, model.int8.onnx -> model.int8.e2e.onnx: detections decoded and
suppressed in the graph, `export/README.md`), so a Triton client gets final detections
(num_detections, detection_boxes, detection_scores, detection_classes, labels); the
caller pads the float32 input to stride multiples. `end_to_end=False` serves the raw
outputs. A .plan serves what it was built from (an engine of an e2e file is end to end).

The config's tensors come from the ONNX graph itself (for an engine: the ONNX
it was built from), so names, dtypes and dims cannot drift from the model.
Triton's dims leave out the batch axis; `max_batch_size` covers it. The
repository is assembled in a temporary folder and renamed into place, so a
failure never leaves a half-written model folder for Triton to load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retinaunet_deploy import names
from retinaunet_deploy.artifacts import check_onnx_external_data, load_manifest, verify_lineage
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.strict_json import dumps_json

MODEL_NAME = "retinaunet"
# ONNX TensorProto element types -> Triton data types.
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16",
                5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL",
                10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
INSTANCE_KINDS = ("auto", "gpu", "cpu")


@dataclass
class TritonOptions:
    """What goes into config.pbtxt.

    Attributes:
        model: the run's file to serve: model.onnx (or another .onnx variant) or a .plan.
        max_batch_size: largest batch Triton forms; an engine's profile caps it.
        preferred_batch_sizes: batch sizes the dynamic batcher aims for.
        max_queue_delay_us: how long a request may wait for others to batch with.
        instances: model instances (each runs one batch at a time).
        kind: auto (GPU if Triton has one, else CPU), gpu or cpu; a .plan is always gpu.
        end_to_end: serve an .onnx file's end-to-end twin when the run has it.
    """

    model: str = names.ONNX
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "auto"
    end_to_end: bool = True

    def __post_init__(self):
        if not self.model.endswith((".onnx", ".plan")):
            raise ConfigError(f"Triton serves a .onnx or .plan file of the run, got {self.model}")
        if self.kind not in INSTANCE_KINDS:
            raise ConfigError(f"kind must be one of {INSTANCE_KINDS}, got {self.kind!r}")
        if self.max_batch_size < 1 or self.instances < 1:
            raise ConfigError("max_batch_size and instances must be >= 1")
        if any(b < 1 or b > self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes {self.preferred_batch_sizes} must lie in "
                              f"1..max_batch_size ({self.max_batch_size})")


def end_to_end_twin(name: str) -> str:
    """The end-to-end twin's file name of a run's .onnx file (itself when it is one)."""
    return name if names.is_end_to_end(name) else names.e2e_name(name)


def served_model(run_dir: Path, options: TritonOptions) -> str:
    """The run's file the repository serves: `options.model`, or its end-to-end twin when
    `options.end_to_end` and the run has it."""
    model = options.model
    if options.end_to_end and model.endswith(".onnx"):
        twin = end_to_end_twin(model)
        if (Path(run_dir) / twin).is_file():
            return twin
    return model


def onnx_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph: name, Triton data type, dims without batch
    (-1 for a variable one: image height and width, the anchor count)."""
    graph = check_onnx_external_data(path).graph  # names, types and dims need no weights
    initializers = {t.name for t in graph.initializer}

    def describe(value):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if tensor.elem_type not in TRITON_TYPES:
            raise ArtifactError(f"{path}: tensor {value.name} has ONNX type {tensor.elem_type}, "
                                f"which Triton does not serve")
        return {"name": value.name, "data_type": TRITON_TYPES[tensor.elem_type],
                "dims": dims[1:]}

    # Height, width and the anchor count are symbolic: Triton serves them as -1.
    inputs = [describe(v) for v in graph.input if v.name not in initializers]
    outputs = [describe(v) for v in graph.output]
    return inputs, outputs


def model_config(platform: str, inputs: list[dict], outputs: list[dict],
                 options: TritonOptions, kind: str):
    """Triton's `ModelConfig` message for the repository (tritonclient's own protobuf
    class, so every field name and enum is Triton's, checked as it is set)."""
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=MODEL_NAME, platform=platform,
                            max_batch_size=options.max_batch_size)
    for tensors, add in ((inputs, config.input.add), (outputs, config.output.add)):
        for tensor in tensors:
            add(name=tensor["name"], data_type=pb.DataType.Value(tensor["data_type"]),
                dims=tensor["dims"])
    config.dynamic_batching.preferred_batch_size.extend(options.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.instance_group.add(count=options.instances,
                              kind=pb.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    return config


def config_pbtxt(platform: str, inputs: list[dict], outputs: list[dict],
                 options: TritonOptions, kind: str) -> str:
    """The text of config.pbtxt: `model_config` in protobuf text format."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_config(platform, inputs, outputs, options, kind))


def write_triton_repository(run_dir: Path, out_dir: Path,
                            options: TritonOptions | None = None) -> Path:
    """Write OUT/retinaunet/ for RUN_DIR's `served_model`; returns the model folder."""
    options = options or TritonOptions()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model = served_model(run_dir, options)
    is_plan = model.endswith(".plan")
    stage = "build-engine" if is_plan else (
        "export" if model in (names.ONNX, names.E2E_ONNX) else "calibrate")
    remedy = f"retinaunet-deploy {stage} {run_dir}"
    if model != options.model:  # a twin of a file changed since is stale with it
        verify_lineage(run_dir, options.model, remedy)
    sha256 = verify_lineage(run_dir, model, remedy)
    kind = options.kind
    if is_plan:
        record = load_manifest(run_dir)["artifacts"][model]
        onnx_source = record["parent"]["file"]
        engine_max = record.get("options", {}).get("max_batch")
        if engine_max is not None and options.max_batch_size > engine_max:
            raise ConfigError(f"{run_dir / model} accepts batches up to {engine_max}; use "
                              f"--max-batch-size {engine_max} or rebuild the engine with "
                              f"--max-batch {options.max_batch_size}")
        if kind == "cpu":
            raise ConfigError("a TensorRT engine runs on a GPU only; use --kind gpu or serve an "
                              ".onnx file on CPU")
        kind = "gpu"
        platform = "tensorrt_plan"
    else:
        onnx_source = model
        platform = "onnxruntime_onnx"
        if model in (names.INT8_CPU_ONNX, end_to_end_twin(names.INT8_CPU_ONNX)) and kind == "auto":
            kind = "cpu"  # the QOperator CPU form is tuned for ONNX Runtime's CPU kernels
    inputs, outputs = onnx_io(run_dir / onnx_source)

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.", dir=out_dir))
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the model from Triton's user
    try:
        (staging / "1").mkdir()
        # Triton's default file name in a version folder: model.onnx or model.plan.
        shutil.copyfile(run_dir / model, staging / "1" / f"model{Path(model).suffix}")
        card = run_dir / names.CARD
        if card.exists():
            shutil.copyfile(card, staging / names.CARD)
        (staging / "config.pbtxt").write_text(config_pbtxt(platform, inputs, outputs, options,
                                                           kind))
        (staging / "source.json").write_text(dumps_json(
            {"run": str(run_dir), "file": model, "sha256": sha256}, indent=2) + "\n")
        target = out_dir / MODEL_NAME
        if target.exists():  # swap: the old folder is replaced only by a complete new one
            old = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.old.", dir=out_dir))
            os.replace(target, old / MODEL_NAME)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
