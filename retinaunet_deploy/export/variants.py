"""The deployable variants: one table, in the order `calibrate` makes them.

Each entry is an `export.lifecycle.Variant`: its file, parent and precision, how
it is made, the runtime it is judged under and how, whether a refusal stops the
stage, its keep-verdict and the figures it records. `export.lifecycle.make_variant`
takes every entry through the same life (make, judge against the stored float
reference, write atomically or refuse, record in the manifest). Adding a variant
is one `register_variant(Variant(...))` plus its make function; the bench then
finds its file in the manifest.

====================  =========  =====================================  ===========
file                  precision  judged (the gate)                      a refusal
====================  =========  =====================================  ===========
model.fp16.onnx       fp16       ONNX Runtime, fused                    stops
model.int8.onnx       int8       ONNX Runtime, unfused (TensorRT's      stops
                                 arithmetic); fused figures too
model.int8.cpu.onnx   int8       ONNX Runtime, fused; kept only if      is recorded
                                 faster than Q/DQ by the margin
model.int8.tflite     int8       LiteRT (XNNPACK)                       is recorded
model.fp16.e2e.onnx   fp16       its plain twin + numpy post-process,   is recorded
model.int8.e2e.onnx   int8       ONNX Runtime (`export.e2e_gate`)       is recorded
====================  =========  =====================================  ===========

The end-to-end twins (`E2E_TWINS`) are made from the plain file of their row as it
was written in this run (their manifest parent, with its hash), only for models with
detection heads; model.e2e.onnx, the fp32 twin, is written by `export`.
"""

from __future__ import annotations

from pathlib import Path

from retinaunet_deploy.export import cpu_runtimes, cpu_variant, e2e_gate, int8
from retinaunet_deploy.export.lifecycle import Candidate, Context, Variant
from retinaunet_deploy.names import (
    FP16_ONNX,
    INT8_CPU_ONNX,
    INT8_ONNX,
    INT8_TFLITE,
    KERAS,
    ONNX,
    e2e_name,
)

VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add (or replace) a variant, keyed by its file; new ones are made last. Returns it."""
    VARIANTS[variant.file] = variant
    return variant


def unregister_variant(file: str) -> None:
    """Remove a variant (tests that add one)."""
    VARIANTS.pop(file, None)


def make_fp16(context: Context, work: Path) -> Candidate:
    """model.onnx with FP16 weights and compute, fp32 I/O (`export.precision.to_fp16`)."""
    import onnx

    from retinaunet_deploy.artifacts import load_onnx
    from retinaunet_deploy.export.precision import FP16Options, to_fp16

    context.say("FP16: converting and measuring")
    proto, blocked = to_fp16(load_onnx(context.run_dir / ONNX), FP16Options())
    path = work / "fp16.onnx"
    onnx.save(proto, path)
    return Candidate(path, {"kept_float32": blocked}, FP16Options().to_dict())


def fp16_refusal(context: Context, candidate: Candidate, agreement) -> str:
    """Why an FP16 file that misses its gate is not written (with its pixel target)."""
    target = context.options.targets_for("fp16").pixel_agreement
    return (f"FP16 variant misses its target on {agreement.images} test images: "
            f"{agreement.summary()} (target pixel agreement >= {target:.2%}); not written")


register_variant(Variant(
    FP16_ONNX, ONNX, "fp16", make_fp16, stops=True, refusal=fp16_refusal, announce=None,
    enabled=lambda options: options.extras.fp16))
register_variant(Variant(
    INT8_ONNX, ONNX, "int8", int8.make_int8, judged=int8.UNFUSED, stops=True,
    refusal=int8.int8_refusal, checks=(int8.standard_ops, int8.tensorrt_import),
    also_judged={"agreement_fused_onnxruntime_cpu": int8.FUSED},
    measure=int8.float_layer_latency, announce=int8.announce_int8))
register_variant(Variant(
    INT8_CPU_ONNX, ONNX, "int8", cpu_variant.make_cpu_variant, judged=cpu_variant.JUDGED,
    label="INT8 CPU variant", measure=cpu_variant.cpu_latency, keep=cpu_variant.keep_if_faster,
    announce=cpu_variant.announce_cpu, enabled=lambda options: options.extras.cpu_variant))
register_variant(Variant(
    INT8_TFLITE, KERAS, "int8", cpu_runtimes.make_tflite_int8, judged=cpu_runtimes.JUDGED,
    label="LiteRT int8", announce=cpu_runtimes.announce_tflite, tools=cpu_runtimes.TOOLS,
    enabled=lambda options: options.extras.tflite))


def e2e_twin(parent: str, precision: str, enabled=lambda options: True) -> Variant:
    """The `Variant` of the end-to-end twin of run file `parent` (`export.e2e`): made from
    the written parent, gated against the numpy post-process on its outputs
    (`export.e2e_gate.gate`), refused (recorded, the stage goes on) when it misses."""
    file = e2e_name(parent)

    def make(context: Context, work: Path) -> Candidate:
        from retinaunet_deploy.artifacts import verify_artifact
        from retinaunet_deploy.export.e2e import postprocess_record

        sha = verify_artifact(context.run_dir, parent, f"retinaunet-deploy calibrate "
                                                       f"{context.run_dir}")
        context.say(f"{file}: adding the post-process to {parent} and gating it")
        return Candidate(e2e_gate.make_twin(context.run_dir / parent, context.card, sha, work),
                         options=postprocess_record(context.card))

    def gate(context: Context, candidate: Candidate) -> dict:
        return e2e_gate.gate(context.run_dir / parent, candidate.path, context.card,
                             [s.image for s in context.eval_set.samples], context.options.threads)

    return Variant(file, parent, precision, make, gate=gate, label=file,
                   refusal=lambda context, candidate, figures: e2e_gate.refusal(figures),
                   announce=lambda context, variant, agreement, figures: e2e_gate.summary(
                       file, figures),
                   applies=lambda card: card.has_detection, enabled=enabled,
                   tools=("onnx", "onnxruntime"))


E2E_TWINS = (
    register_variant(e2e_twin(FP16_ONNX, "fp16", lambda options: options.extras.fp16)),
    register_variant(e2e_twin(INT8_ONNX, "int8")),
)
