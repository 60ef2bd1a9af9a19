"""Commands that make and check deployable variants: calibrate, check-trt, build-engine,
triton."""

from __future__ import annotations

from pathlib import Path

import click

from retinaunet_deploy import names
from retinaunet_deploy.cli.group import NON_NEGATIVE_INT, POSITIVE_INT, cli, comma_text, int_list
from retinaunet_deploy.cli.target_options import GateTargetsCommand
from retinaunet_deploy.export.options import CalibrationOptions
from retinaunet_deploy.export.quantize import METHODS
from retinaunet_deploy.export.tensorrt import EngineOptions
from retinaunet_deploy.export.triton import INSTANCE_KINDS, TritonOptions

CAL, ENGINE, TRITON = CalibrationOptions(), EngineOptions(), TritonOptions()
QUANT = CAL.quantisation


def _dice(agreement: dict) -> str:
    """The Dice vs float of an agreement's JSON; "n/a" when null (no class in either mask)."""
    dice = agreement["mean_dice_vs_reference"]
    return "n/a" if dice is None else f"{dice:.4f}"


@cli.command(cls=GateTargetsCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--method", type=click.Choice(list(METHODS)), default=QUANT.method,
              show_default=True, help="Activation range calibration.")
@click.option("--percentile", type=float, default=QUANT.percentile, show_default=True,
              help="Percentile kept by --method percentile.")
@click.option("--calibration-images", type=int, default=QUANT.calibration_images,
              show_default=True,
              help="Training patches used to calibrate activation ranges.")
@click.option("--eval-images", type=int, default=CAL.eval_images, show_default=True,
              help="Whole held-out test images measuring agreement with the float model.")
@click.option("--no-fallback", is_flag=True,
              help="Fail instead of keeping sensitive layers in float.")
@click.option("--no-cpu-variant", is_flag=True, help="Skip the QOperator U8S8 CPU variant.")
@click.option("--no-fp16", is_flag=True, help="Skip the FP16 variant.")
@click.option("--no-openvino", is_flag=True,
              help="Skip judging OpenVINO int8 (model.int8.onnx) and bf16 (model.onnx).")
@click.option("--no-tflite", is_flag=True, help="Skip the LiteRT model.int8.tflite.")
@click.option("--threads", type=POSITIVE_INT, default=CAL.threads,
              help="Threads of every runtime, Keras included [default: each runtime's own].")
def calibrate(run_dir, method, percentile, calibration_images, eval_images, no_fallback,
              no_cpu_variant, no_fp16, no_openvino, no_tflite, threads, **targets):
    """Make RUN_DIR's FP16 and calibrated INT8 variants, each gated against the float
    model as its runtime runs it; write calibration.json.

    The target options (one per gate) follow the others."""
    from retinaunet_deploy.export.calibration import calibrate as run_calibration

    source = click.get_current_context().get_parameter_source("percentile")
    if method != "percentile" and source is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(f"--percentile applies to --method percentile only, not "
                               f"{method}; add --method percentile or drop --percentile")
    options = CalibrationOptions.from_flat(
        method=method, percentile=percentile, calibration_images=calibration_images,
        eval_images=eval_images, fallback=not no_fallback, cpu_variant=not no_cpu_variant,
        openvino=not no_openvino, tflite=not no_tflite, threads=threads, **targets)
    report = run_calibration(run_dir, options, fp16=not no_fp16, progress=click.echo)
    for name, figures in report["variants"].items():
        state = "written" if figures.get("written", True) else "not written"
        if "agreement" not in figures:   # an end-to-end twin, gated on its parent's outputs
            click.echo(f"{name} ({state}; vs the numpy post-process; {figures['images']} whole "
                       f"test images): {figures['matched_fraction']:.2%} of boxes matched, "
                       f"scores within {figures['max_score_difference']:.1g}, "
                       f"{figures['label_pixels_differing']} label pixels differ")
            continue
        agreement = figures["agreement"]
        click.echo(f"{name} ({state}; {figures['evaluated'].split(' (')[0]}; "
                   f"{agreement['images']} whole test images): pixel agreement "
                   f"{agreement['pixel_agreement']:.4%}, Dice vs float "
                   f"{_dice(agreement)}"
                   + (f", kept in float: {len(figures['kept_float'])} layer(s)"
                      if figures.get("kept_float") else ""))
    warning = report["evaluation"].get("warning")
    if warning:
        click.secho(warning, fg="yellow", bold=True)
    for name, figures in report.get("runtime_variants", {}).items():
        if "skipped" in figures:
            click.echo(f"{name}: skipped: {figures['skipped']}")
            continue
        agreement = figures["agreement"]
        click.echo(f"{name} ({figures['file']}; {'passes' if figures['passed'] else 'misses'}; "
                   f"{agreement['images']} whole test images): pixel agreement "
                   f"{agreement['pixel_agreement']:.4%}, Dice vs float "
                   f"{_dice(agreement)}")
    click.echo(f"wrote {run_dir / names.CALIBRATION}")


@cli.command("check-trt")
@click.argument("artifacts", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check_trt(artifacts):
    """Check ONNX ARTIFACTS against TensorRT's import rules (no TensorRT needed)."""
    from retinaunet_deploy.export.trt_check import check_tensorrt_import

    failed = 0
    for path in artifacts:
        result = check_tensorrt_import(path)
        if result.ok:
            nms = f", NMS on {result.nms_boxes} boxes" if result.nms_boxes else ""
            click.echo(f"{path}: OK ({len(result.op_types)} op types, {result.qdq_nodes} Q/DQ "
                       f"nodes{nms})")
            continue
        failed += 1
        click.echo(f"{path}: {len(result.problems)} problem(s) TensorRT would refuse:")
        for problem in result.problems[:10]:
            click.echo(f"  - {problem}")
        if len(result.problems) > 10:
            click.echo(f"  ... and {len(result.problems) - 10} more")
    if failed:
        raise click.ClickException(f"{failed} of {len(artifacts)} file(s) would not import "
                                   f"into TensorRT")


@cli.command("build-engine")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(list(names.ONNX_FOR_PRECISION)),
              default=ENGINE.precision,
              show_default=True, help="Which ONNX variant to compile: model.onnx, "
                                      "model.fp16.onnx or model.int8.onnx (Q/DQ).")
@click.option("--min-batch", type=int, default=ENGINE.min_batch, show_default=True)
@click.option("--opt-batch", type=int, default=ENGINE.opt_batch, show_default=True,
              help="The batch size TensorRT tunes kernels for.")
@click.option("--max-batch", type=int, default=ENGINE.max_batch, show_default=True)
@click.option("--min-size", type=int, default=ENGINE.min_size, show_default=True,
              help="Smallest height/width the engine takes (smaller images are padded).")
@click.option("--opt-size", type=int, default=ENGINE.opt_size, show_default=True,
              help="The height/width TensorRT tunes kernels for.")
@click.option("--max-size", type=int, default=ENGINE.max_size, show_default=True,
              help="Largest height/width the engine takes (larger images run as tiles).")
@click.option("--workspace-mib", type=int, default=ENGINE.workspace_mib, show_default=True,
              help="Builder scratch memory limit.")
@click.option("--no-timing-cache", is_flag=True,
              help="Do not reuse or update RUN_DIR/tensorrt.timing.cache.")
def build_engine(run_dir, precision, min_batch, opt_batch, max_batch, min_size, opt_size,
                 max_size, workspace_mib, no_timing_cache):
    """Compile RUN_DIR's ONNX variant into a TensorRT engine, model.<precision>.plan (GPU)."""
    from retinaunet_deploy.export.tensorrt import build_engine as run_build

    options = EngineOptions(precision=precision, min_batch=min_batch, opt_batch=opt_batch,
                            max_batch=max_batch, min_size=min_size, opt_size=opt_size,
                            max_size=max_size, workspace_mib=workspace_mib,
                            timing_cache=not no_timing_cache)
    entry = run_build(run_dir, options, progress=click.echo)
    target = entry["target"]
    click.echo(f"engine for TensorRT {target['tensorrt']} on {target['gpu']} (compute "
               f"capability {target['compute_capability']}); recorded in "
               f"{run_dir / names.MANIFEST}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("triton"), show_default=True, help="Model repository folder.")
@click.option("--model", default=TRITON.model, show_default=True,
              help="The run's file to serve: an .onnx variant or a .plan engine.")
@click.option("--max-batch-size", type=int, default=TRITON.max_batch_size, show_default=True)
@click.option("--preferred-batch-sizes", default=comma_text(TRITON.preferred_batch_sizes),
              show_default=True, callback=int_list,
              help="Batch sizes Triton's dynamic batcher aims for.")
@click.option("--max-queue-delay-us", type=NON_NEGATIVE_INT, default=TRITON.max_queue_delay_us,
              show_default=True,
              help="How long a request may wait to be batched with others.")
@click.option("--instances", type=int, default=TRITON.instances, show_default=True)
@click.option("--kind", type=click.Choice(INSTANCE_KINDS), default=TRITON.kind,
              show_default=True, help="Where instances run (a .plan is always gpu).")
@click.option("--raw-outputs", is_flag=True,
              help="Serve the .onnx file itself, not its end-to-end twin (final detections).")
def triton(run_dir, out_dir, model, max_batch_size, preferred_batch_sizes, max_queue_delay_us,
           instances, kind, raw_outputs):
    """Write a Triton model repository OUT/retinaunet/ serving one of RUN_DIR's artifacts
    (an .onnx file's end-to-end twin when the run has one)."""
    from retinaunet_deploy.export.triton import (
        end_to_end_twin,
        served_model,
        write_triton_repository,
    )

    options = TritonOptions(model=model, max_batch_size=max_batch_size,
                            preferred_batch_sizes=preferred_batch_sizes,
                            max_queue_delay_us=max_queue_delay_us, instances=instances,
                            kind=kind, end_to_end=not raw_outputs)
    folder = write_triton_repository(run_dir, out_dir, options)
    served = served_model(run_dir, options)
    if model.endswith(".onnx") and not raw_outputs and served == model:
        click.echo(f"{run_dir} has no {end_to_end_twin(model)}: serving {model}'s raw outputs "
                   f"(decode them as its model card says); 'retinaunet-deploy export {run_dir}' "
                   f"and 'calibrate' write the end-to-end twins")
    else:
        click.echo(f"serving {served}")
    click.echo(f"wrote {folder}/config.pbtxt and {folder}/1/; serve it with: tritonserver "
               f"--model-repository={out_dir.resolve()}")
