"""Export stage: ``model.keras`` -> ``model.onnx`` with measured parity.

The ONNX graph keeps the Keras tensor names (`image` in; `mask`, `cls_logits`,
`box_deltas` out), float32 NHWC input with symbolic `batch`, `height` and
`width` axes (any multiple of the stride; outputs `mask` (batch, height, width,
K), `cls_logits` (batch, anchors, C), `box_deltas` (batch, anchors, 4)), opset 17 by
default (TensorRT 10/11 and ONNX Runtime both import it), standard ONNX
operators only (no ONNX Runtime fused ops, so the same file imports into
TensorRT), and the model card in `metadata_props`. Its other names are made
deterministic (`graph_edits.canonicalise_names`): exporting the same model.keras
again with the same tool versions writes the same bytes, so the FP16/INT8 variants
made from the first export, tied to its sha256 in the manifest, stay current.

Parity is measured on whole held-out validation images (their own, differing
sizes, padded to the stride as the Predictor pads them), with ONNX Runtime
running the file the way apps will (CPU provider, default graph
optimisations). The file is only put in place when it passes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import (
    atomic_path,
    load_onnx,
    record_artifact,
    tool_versions,
    verify_artifact,
)
from retinaunet_deploy.card import ModelCard, load_card
from retinaunet_deploy.errors import ArtifactError, ConfigError
from retinaunet_deploy.export.graph_edits import (
    canonicalise_names,
    drop_identity_transpose_crops,
)
from retinaunet_deploy.names import KERAS, ONNX
from retinaunet_deploy.strict_json import dumps_json

MIN_OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class ExportOptions:
    """Options of the export stage (recorded in the manifest).

    Attributes:
        opset: ONNX opset, >= 17 (LayerNorm-era opsets that TensorRT 10/11 import).
        parity_images: held-out validation images compared between Keras and ONNX.
        tolerance: largest accepted max |ONNX - Keras| over every output.
        simplify: run onnxslim (constant folding, standard-op fusions).
    """

    opset: int = MIN_OPSET
    parity_images: int = 64
    tolerance: float = 1e-4
    simplify: bool = True

    def __post_init__(self):
        if self.opset < MIN_OPSET:
            raise ConfigError(f"opset must be >= {MIN_OPSET} for TensorRT 10/11, got {self.opset}")
        if self.parity_images < 1:
            raise ConfigError(f"parity_images must be >= 1, got {self.parity_images}")


def keras_to_onnx(model, card: ModelCard, opset: int):
    """Convert with tf2onnx; returns an onnx.ModelProto with symbolic batch, height, width."""
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec((None, None, None, card.input.channels), tf.float32,
                               name=card.input.name)]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return proto


# Names of the symbolic axes (tf2onnx writes unk__N), by tensor rank.
AXIS_NAMES = {4: ("batch", "height", "width", None), 3: ("batch", "anchors", None)}


def name_dynamic_axes(proto) -> None:
    """Name the symbolic axes of every graph input and output (`AXIS_NAMES`)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, AXIS_NAMES.get(len(dims), ("batch",))):
            if name is not None and not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_param = name


def check_standard_ops(proto, path_hint: str) -> None:
    """Refuse non-standard operator domains (e.g. com.microsoft fused ops)."""
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node
                      if n.domain not in STANDARD_DOMAINS})
    if foreign:
        path = Path(path_hint)
        fix = (f"re-export without the graph simplification ('retinaunet-deploy export "
               f"{path.parent} --no-simplify'); if they remain, " if path.name == ONNX else "")
        raise ArtifactError(f"{path_hint} would contain non-standard ops {foreign}; TensorRT "
                            f"cannot import them; {path_hint} was not written: {fix}this is a "
                            f"bug in retinaunet-deploy: report it")


def embed_metadata(proto, card: ModelCard, parent_sha256: str) -> None:
    """Write the card's strict JSON (`ModelCard.to_dict`, keys sorted), the toolkit's version
    and the parent .keras file's sha256 into the model's ``metadata_props``."""
    import onnx

    from retinaunet_deploy import __version__

    onnx.helper.set_model_props(proto, {
        "model_card": dumps_json(card.to_dict(), sort_keys=True),
        "retinaunet_deploy_version": __version__,
        "parent_sha256": parent_sha256,
    })


def embed_calibration_range(path: Path, record: dict) -> None:
    """Add an INT8 file's calibration intensity record (`runtime.calibration_range`) to
    its ``metadata_props`` as strict JSON under ``calibration_range``, beside the card,
    so that a copied file keeps it; rewrites `path` in place (a work-folder candidate)."""
    import onnx

    from retinaunet_deploy.runtime.calibration_range import METADATA_KEY

    proto = load_onnx(path)
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_KEY] = dumps_json(record, sort_keys=True)
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, path)


def same_graph(path: Path, proto) -> bool:
    """Whether the ONNX file at `path` is `proto` but for its node and internal tensor
    names: both serialise to the same bytes once named by `canonicalise_names` after
    op types alone (same nodes in the same order, inputs, weights, attributes, shapes,
    opsets, metadata and graph I/O names). True for a model.onnx from an earlier
    export of the same model.keras with the same tools, also one written before names
    were canonical; False for a missing or unreadable file, and for one with two nodes
    of the same name (ONNX Runtime refuses it; the renaming would hide it)."""
    import onnx

    if not Path(path).is_file():
        return False
    try:
        previous = load_onnx(path)
    except ArtifactError:
        return False
    named = [node.name for node in previous.graph.node if node.name]
    if len(set(named)) != len(named):
        return False
    current = onnx.ModelProto()
    current.CopyFrom(proto)
    for model in (previous, current):
        canonicalise_names(model, layer_names=False)
    return previous.SerializeToString() == current.SerializeToString()


def _parity_remedy(run_dir: Path, error: float) -> str:
    """What to do when parity fails: export without simplification, or (for a finite
    error) accept it with a --tolerance just above it (one significant digit, up)."""
    fix = (f"retry without the graph simplification ('retinaunet-deploy export {run_dir} "
           f"--no-simplify')")
    if not np.isfinite(error):
        return fix
    digit, exponent = f"{error:.0e}".split("e")
    looser = float(f"{digit}e{exponent}")
    looser = looser if looser >= error else float(f"{int(digit) + 1}e{exponent}")
    return (f"{fix}, or accept the difference ('retinaunet-deploy export {run_dir} "
            f"--tolerance {looser:g}')")


def measure_parity(pairs) -> dict:
    """Max |candidate - reference| per output and argmax agreement of `mask`.

    Args:
        pairs: (reference, candidate) output dicts (output name -> array), one pair
            per image or batch; shapes may differ between pairs.
    """
    max_abs: dict[str, float] = {}
    same = total = 0
    for reference, candidate in pairs:
        missing = sorted(set(reference) ^ set(candidate))
        if missing:
            raise ArtifactError(f"outputs differ between Keras and ONNX: {missing} (a bug in "
                                f"retinaunet-deploy: report it)")
        for name in reference:
            error = float(np.max(np.abs(candidate[name].astype(np.float64)
                                        - reference[name].astype(np.float64))))
            max_abs[name] = max(max_abs.get(name, 0.0), error)
        same += int(np.sum(reference["mask"].argmax(-1) == candidate["mask"].argmax(-1)))
        total += reference["mask"][..., 0].size
    return {"max_abs_error": max_abs, "max_abs_error_all": max(max_abs.values()),
            "mask_argmax_agreement": same / total}


def padded_to_stride(image: np.ndarray, stride: int) -> np.ndarray:
    """(H, W, C) -> (1, H', W', C) float32, padded at the bottom and right to stride
    multiples as the Predictor pads (mirrored, `data.patches.pad_to`)."""
    from retinaunet_deploy.data.patches import pad_to

    h, w = image.shape[:2]
    return pad_to(image[None].astype(np.float32), h + -h % stride, w + -w % stride, (1, 2))


def export_onnx(run_dir: Path, options: ExportOptions | None = None, progress=None) -> dict:
    """Write ``run_dir/model.onnx`` from ``run_dir/model.keras``; returns the parity figures.

    With detection heads, also its end-to-end twin ``model.e2e.onnx`` (`export.e2e_gate`),
    gated on the test images, its figures in the manifest; `progress` (a callable, if
    given) gets its one line: what it measured, or why it was refused (model.onnx
    stays written).

    Raises `ArtifactError` (leaving any previous model.onnx untouched) when the
    input is missing or changed since training, or parity exceeds the tolerance.
    """
    import onnx

    from retinaunet_deploy.artifacts import check_writable
    from retinaunet_deploy.data.splits import load_split
    from retinaunet_deploy.normalization import normalize_image
    from retinaunet_deploy.runtime.backends import KerasBackend, OnnxRuntimeBackend

    options = options or ExportOptions()
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    check_writable(run_dir)  # a run folder (it exists)
    parent_sha = verify_artifact(run_dir, KERAS, f"retinaunet-deploy train --out {run_dir}")
    keras_backend = KerasBackend(run_dir / KERAS)

    proto = keras_to_onnx(keras_backend.model, card, options.opset)
    if options.simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    crops_removed = drop_identity_transpose_crops(proto)
    check_standard_ops(proto, str(run_dir / ONNX))
    name_dynamic_axes(proto)
    canonicalise_names(proto)  # the same model.keras gives the same bytes (the manifest's hash)
    embed_metadata(proto, card, parent_sha)
    onnx.checker.check_model(proto, full_check=True)

    samples = load_split(card, "val", options.parity_images)
    # What the graph takes: `normalization.normalize` (raw pixels for an in-graph scheme).
    images = [padded_to_stride(normalize_image(s.image, card.normalization), card.input.stride)
              for s in samples]
    # An earlier export of this very graph keeps its bytes, so the variants made from it,
    # tied to its sha256, stay current (its names may predate `canonicalise_names`).
    kept = same_graph(run_dir / ONNX, proto)
    with atomic_path(run_dir / ONNX) as tmp:
        if kept:
            shutil.copyfile(run_dir / ONNX, tmp)
        else:
            onnx.save(proto, tmp)
        onnx_backend = OnnxRuntimeBackend(tmp)
        parity = {"images": len(images), "split": "val",
                  "sizes": sorted({f"{i.shape[1]}x{i.shape[2]}" for i in images}),
                  **measure_parity((keras_backend.run(i), onnx_backend.run(i)) for i in images)}
        if not parity["max_abs_error_all"] <= options.tolerance:
            raise ArtifactError(
                f"ONNX parity failed: max |ONNX - Keras| = {parity['max_abs_error_all']:.3g} > "
                f"tolerance {options.tolerance:g} ({parity['max_abs_error']}); "
                f"{run_dir / ONNX} was not written; "
                f"{_parity_remedy(run_dir, parity['max_abs_error_all'])}")
    ops = sorted({node.op_type for node in proto.graph.node})
    record_artifact(run_dir, ONNX, "export", parent=KERAS, options=asdict(options),
                    figures={"parity": parity, "nodes": len(proto.graph.node), "op_types": ops,
                             "identity_crops_removed": crops_removed,
                             "previous_file_kept": kept},
                    tools=tool_versions("tensorflow", "tf2onnx", "onnx", "onnxslim",
                                        "onnxruntime", "onnxruntime-gpu"))
    if kept and progress:
        progress(f"{run_dir / ONNX} is the same graph as before: its bytes are kept, so "
                 f"the variants made from it stay current")
    if card.has_detection:  # its end-to-end twin, gated on the test images (`export.e2e_gate`)
        from retinaunet_deploy.data.splits import held_out_set
        from retinaunet_deploy.export.e2e_gate import write_twin

        tests = [s.image for s in held_out_set(card, options.parity_images, "test")]
        write_twin(run_dir, ONNX, card, tests, "export", say=progress or (lambda line: None))
    return parity
