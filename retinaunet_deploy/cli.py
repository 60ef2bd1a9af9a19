"""`retinaunet-deploy`: a thin click CLI. Commands parse options and call library functions.

Nothing heavy is imported at module level, so `--help` answers instantly on a
machine without a GPU. Toolkit errors (`RetinaUNetError`) become one-line
messages with exit code 1, usage errors exit 2; any other exception (a bug) is
one line too, saying so. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from retinaunet_deploy import __version__
from retinaunet_deploy.errors import ArtifactError, RetinaUNetError
from retinaunet_deploy.train import TrainOptions

PRESET_NAMES = ("seed", "small", "tiny")  # retinaunet_deploy.model.PRESETS, kept import-free
TRAIN_DEFAULTS = TrainOptions()


class ToolkitGroup(click.Group):
    """A click group that reports `RetinaUNetError`s as one line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except RetinaUNetError as error:
            if ctx.meta.get("retinaunet_deploy.debug"):
                raise
            raise click.ClickException(str(error)) from error
        except Exception as error:  # a bug, not bad input: still one line, with how to see more
            if ctx.meta.get("retinaunet_deploy.debug"):
                raise
            first = (str(error).splitlines() or [""])[0][:300]
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {first} (a bug in retinaunet-deploy; "
                f"re-run with --debug for the traceback and report it)") from error


@click.group(cls=ToolkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retinaunet-deploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """Take a Keras RetinaUNet to the edge: train, export to ONNX, make FP16/INT8 and
    TensorRT variants, and prove each against the float model."""
    ctx.meta["retinaunet_deploy.debug"] = debug
    # TensorFlow's C++ start-up chatter (oneDNN, "failed call to cuInit") is noise on a
    # machine without an NVIDIA driver; where there is one, keep its errors visible.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                          "2" if os.path.exists("/dev/nvidiactl") else "3")


@cli.command()
@click.argument("run_dir", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="small", show_default=True,
              help="Architecture preset.")
@click.option("--size", type=int, default=128, show_default=True,
              help="Input height and width in pixels (a multiple of 16).")
@click.option("--channels", type=int, default=1, show_default=True, help="Input channels.")
@click.option("--classes", "num_classes", type=int, default=3, show_default=True,
              help="Mask classes including background.")
@click.option("--no-detection", is_flag=True, help="Drop the RetinaNet heads (plain U-Net).")
def info(run_dir, preset, size, channels, num_classes, no_detection):
    """Show a preset's architecture: parameters, GFLOPs per image, outputs and anchors.

    With RUN_DIR: show the run's artifacts and their lineage, verifying every hash;
    exit 1 if any artifact is missing, changed, stale or unrecorded.
    """
    from rich.console import Console
    from rich.table import Table

    if run_dir is not None:
        _show_lineage(run_dir)
        return
    from retinaunet_deploy.model import RetinaUNet

    builder = RetinaUNet.from_preset(preset, (size, size, channels), num_classes,
                                     detection=not no_detection)
    summary = builder.summary()

    console = Console()
    table = Table(title=f"RetinaUNet preset '{preset}', input {size}x{size}x{channels}, "
                        f"{num_classes} mask classes")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs / image", justify="right")
    table.add_row("U-Net (segmentation)", f"{summary.unet_params:,}", f"{summary.unet_gflops:.2f}")
    if builder.has_detection:
        table.add_row("RetinaNet heads", f"{summary.head_params:,}", f"{summary.head_gflops:.2f}")
    table.add_row("total", f"{summary.total_params:,}", f"{summary.total_gflops:.2f}")
    console.print(table)

    outputs = Table(title="outputs (float32, NHWC input 'image')")
    outputs.add_column("name")
    outputs.add_column("shape")
    for name, shape in summary.outputs.items():
        outputs.add_row(name, "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")")
    console.print(outputs)
    if builder.has_detection:
        anchors = builder.anchor_config
        console.print(f"anchors: {summary.num_anchors:,} = {anchors.anchors_per_position} per "
                      f"position on strides {list(anchors.strides)} (scales "
                      f"{[round(s, 3) for s in anchors.scales]}, ratios {list(anchors.ratios)})")


def _console():
    """A rich console; in logs and CI (not a terminal) wide enough that tables do not wrap."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=170)


def _show_lineage(run_dir: Path):
    from rich.table import Table

    from retinaunet_deploy.artifacts import run_lineage

    rows = run_lineage(run_dir)
    console = _console()
    table = Table(title=f"{run_dir}: artifacts and lineage (every hash verified now)")
    for column in ("file", "made by", "from", "sha256", "MB", "measured", "status"):
        table.add_column(column)
    for row in rows:
        size = f"{row['size'] / 1e6:.2f}" if row["size"] is not None else ""
        table.add_row(row["file"], row["stage"] or "", row["parent"] or "",
                      (row["sha256"] or "")[:12], size, row["figure"],
                      row["status"] if row["status"] == "ok" else f"[red]{row['status']}[/red]")
    console.print(table)
    problems = [row for row in rows if row["status"] != "ok"]
    for row in problems:  # plain echo: one unwrapped line per problem, for logs and grep
        click.echo(f"{row['file']}: {row['problem']}")
    if not rows:
        raise ArtifactError(f"{run_dir} has no recorded artifacts; train a model into it first")
    if problems:
        raise ArtifactError(f"{len(problems)} of {len(rows)} artifact(s) in {run_dir} failed "
                            f"verification (see above)")


@cli.command()
@click.option("--data", default="synthetic", show_default=True,
              help="'synthetic' (embedded, generated from --seed) or a folder with images/, "
                   "masks/ and optional instances/ (PNG or TIFF, any sizes, matching names).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="small", show_default=True)
@click.option("--size", type=int, default=TRAIN_DEFAULTS.size, show_default=True,
              help="Training patch height and width (a multiple of 16); images of any size "
                   "are cut into patches of this size.")
@click.option("--epochs", type=int, default=TRAIN_DEFAULTS.epochs, show_default=True)
@click.option("--steps-per-epoch", type=int, default=TRAIN_DEFAULTS.steps_per_epoch,
              show_default=True, help="Batches per epoch, whatever the dataset's size.")
@click.option("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size, show_default=True)
@click.option("--train-images", type=int, default=TRAIN_DEFAULTS.train_images, show_default=True,
              help="Synthetic training images (validation and test splits are separate).")
@click.option("--val-images", type=int, default=TRAIN_DEFAULTS.val_images, show_default=True,
              help="Synthetic validation images.")
@click.option("--test-images", type=int, default=TRAIN_DEFAULTS.test_images, show_default=True,
              help="Synthetic test images.")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help='A folder dataset\'s splits as JSON {"train": [names], '
                                 '"val": [...], "test": [...]} [default: a seeded shuffle].')
@click.option("--lr", "learning_rate", type=float, default=TRAIN_DEFAULTS.learning_rate,
              show_default=True, help="Peak learning rate (Adam, cosine decay).")
@click.option("--seed", type=int, default=TRAIN_DEFAULTS.seed, show_default=True)
@click.option("--no-detection", is_flag=True, help="Train the plain U-Net, without heads.")
@click.option("--no-flips", is_flag=True, help="No random flips or 90-degree rotations.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("export/default"), show_default=True, help="Run folder to write.")
def train(data, preset, size, epochs, steps_per_epoch, batch_size, train_images, val_images,
          test_images, splits_file, learning_rate, seed, no_detection, no_flips, out_dir):
    """Train a RetinaUNet; write OUT/model.keras and OUT/model_card.json."""
    from retinaunet_deploy.train import TrainOptions
    from retinaunet_deploy.train import train as run_training

    options = TrainOptions(data=data, preset=preset, size=size, epochs=epochs,
                           steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           train_images=train_images, val_images=val_images,
                           test_images=test_images, splits=splits_file,
                           learning_rate=learning_rate, seed=seed, detection=not no_detection,
                           flips=not no_flips, rotations=not no_flips)
    card = run_training(options, out_dir)
    _print_evaluation(card, out_dir)


@cli.command("import-data")
@click.argument("source", type=click.Choice(["stardist-nuclei"]))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def import_data(source, out_dir):
    """Write a real labelled image set that ships inside a package as a folder dataset.

    stardist-nuclei: the DSB 2018 fluorescence nuclei image (512x512, 16-bit
    instance labels) shipped in StarDist's wheel (pip install -e '.[realdata]'),
    cut into crops of mixed sizes.
    """
    from retinaunet_deploy.data.real import import_stardist_nuclei

    written = import_stardist_nuclei(out_dir)
    click.echo(f"wrote {len(written)} image(s) with masks and instance labels to {out_dir}/ "
               f"(sizes {', '.join(sorted({f'{h}x{w}' for h, w in written.values()}))}); "
               f"train with: retinaunet-deploy train --data {out_dir}")


def _print_evaluation(card: dict, out_dir: Path):
    from rich.console import Console
    from rich.table import Table

    evaluation = card["evaluation"]
    table = Table(title=f"held-out {evaluation['split']} split, {evaluation['images']} whole "
                        f"images, {evaluation.get('objects', 0)} objects")
    columns = ["dice", "iou"] + [k for k in evaluation if k.startswith("ap@")]
    table.add_column("class")
    for column in columns:
        table.add_column(column, justify="right")
    for name in evaluation["dice"]:
        values = [evaluation[c][name] for c in columns]
        table.add_row(name, *("n/a" if v is None else f"{v:.3f}" for v in values))
    means = [evaluation["mean_dice"], evaluation["mean_iou"]] + [
        evaluation["m" + c] for c in columns[2:]]
    table.add_row("mean", *(f"{v:.3f}" for v in means))
    console = Console()
    console.print(table)
    for warning in card.get("warnings", []):
        console.print(f"[bold yellow]{warning}[/bold yellow]")
    console.print(f"trained {card['training']['epochs_run']} epochs in "
                  f"{card['training']['seconds']:.0f} s; wrote {out_dir / 'model.keras'} and "
                  f"{out_dir / 'model_card.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--opset", type=int, default=17, show_default=True,
              help="ONNX opset (>= 17; TensorRT 10/11 and ONNX Runtime import it).")
@click.option("--parity-images", type=int, default=64, show_default=True,
              help="Validation images compared between Keras and ONNX Runtime.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest accepted max |ONNX - Keras|; worse parity writes no file.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim graph simplification.")
def export(run_dir, opset, parity_images, tolerance, no_simplify):
    """Export RUN_DIR/model.keras to RUN_DIR/model.onnx, with measured parity."""
    from retinaunet_deploy.export.onnx import ExportOptions, export_onnx

    parity = export_onnx(run_dir, ExportOptions(opset=opset, parity_images=parity_images,
                                                tolerance=tolerance, simplify=not no_simplify))
    errors = ", ".join(f"{name} {value:.2e}" for name, value in parity["max_abs_error"].items())
    click.echo(f"wrote {run_dir / 'model.onnx'}: parity on {parity['images']} validation images: "
               f"max |ONNX - Keras| {errors}; mask argmax agreement "
               f"{parity['mask_argmax_agreement']:.2%}")


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("predictions"), show_default=True)
@click.option("--threads", type=int, default=None, help="Inference threads [default: library's].")
@click.option("--score-threshold", type=float, default=0.5, show_default=True,
              help="Keep detections scoring at least this. (The model card's 0.05 is for "
                   "evaluation, where AP needs the low-score tail.)")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
              default="auto", show_default=True,
              help="ONNX Runtime execution provider for an .onnx ARTIFACT (auto: CUDA when a "
                   "GPU is present, else CPU). 'tensorrt' caches its engines beside ARTIFACT.")
@click.option("--tile", type=int, default=1024, show_default=True,
              help="Images larger than this (padded height or width) run as a sliding window "
                   "of tiles at most this large (a multiple of 16; an engine's profile caps it).")
@click.option("--overlap", type=float, default=0.25, show_default=True,
              help="Fraction of a tile shared with its neighbour.")
def predict(artifact, images, out_dir, threads, score_threshold, provider, tile, overlap):
    """Run ARTIFACT (.keras, .onnx or .plan) on PNG or TIFF IMAGES of any size; write masks,
    overlays and detections.json."""
    from retinaunet_deploy.predict import predict_files
    from retinaunet_deploy.runtime import providers as ort_providers

    chosen = {"auto": None, "cpu": [ort_providers.CPU],
              "cuda": [ort_providers.cuda_provider(), ort_providers.CPU],
              "tensorrt": [ort_providers.tensorrt_provider(
                  fp16=ort_providers.precision_of(artifact) == "fp16",
                  int8=ort_providers.precision_of(artifact) == "int8",
                  cache_dir=artifact.parent / "ort_trt_cache"), ort_providers.CPU]}[provider]
    results = predict_files(artifact, list(images), out_dir, threads, score_threshold, chosen,
                            tile, overlap)
    for path, entry in results.items():
        found = entry.get("detections", [])
        summary = ", ".join(f"{d['class']} {d['score']:.2f}" for d in found[:5])
        size = "x".join(map(str, entry["size"])) + (", tiled" if entry["tiled"] else "")
        click.echo(f"{path} ({size}): {len(found)} detection(s)"
                   f"{': ' + summary if found else ''}")
    click.echo(f"wrote {out_dir}/masks/, {out_dir}/overlays/ and {out_dir}/detections.json")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="Activation range calibration.")
@click.option("--percentile", type=float, default=99.999, show_default=True,
              help="Percentile kept by --method percentile.")
@click.option("--calibration-images", type=int, default=128, show_default=True,
              help="Training patches used to calibrate activation ranges.")
@click.option("--eval-images", type=int, default=64, show_default=True,
              help="Whole held-out test images measuring agreement with the float model.")
@click.option("--target", "pixel_agreement", type=float, default=0.995, show_default=True,
              help="Pixel agreement with the float mask each INT8 variant must reach.")
@click.option("--min-dice", "mean_dice", type=float, default=0.98, show_default=True,
              help="Mean foreground Dice vs the float mask each INT8 variant must reach.")
@click.option("--min-matched", "matched_fraction", type=float, default=0.95, show_default=True,
              help="Fraction of the float model's confident boxes (score >= 0.5) each "
                   "variant must reproduce.")
@click.option("--max-ap-drop", type=float, default=0.02, show_default=True,
              help="Largest accepted AP@0.1 drop against ground truth.")
@click.option("--no-fallback", is_flag=True,
              help="Fail instead of keeping sensitive layers in float.")
@click.option("--no-cpu-variant", is_flag=True, help="Skip the QOperator U8S8 CPU variant.")
@click.option("--no-fp16", is_flag=True, help="Skip the FP16 variant.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads.")
def calibrate(run_dir, method, percentile, calibration_images, eval_images, pixel_agreement,
              mean_dice, matched_fraction, max_ap_drop, no_fallback, no_cpu_variant, no_fp16,
              threads):
    """Make RUN_DIR's FP16 and calibrated INT8 variants of model.onnx, each gated against
    the float model; write calibration.json."""
    from retinaunet_deploy.export.calibration import CalibrationOptions
    from retinaunet_deploy.export.calibration import calibrate as run_calibration

    options = CalibrationOptions(method=method, percentile=percentile,
                                 calibration_images=calibration_images, eval_images=eval_images,
                                 pixel_agreement=pixel_agreement, mean_dice=mean_dice,
                                 matched_fraction=matched_fraction, max_ap_drop=max_ap_drop,
                                 fallback=not no_fallback, cpu_variant=not no_cpu_variant,
                                 threads=threads)
    report = run_calibration(run_dir, options, fp16=not no_fp16, progress=click.echo)
    for name, figures in report["variants"].items():
        agreement = figures["agreement"]
        state = "written" if figures.get("written", True) else "not written"
        click.echo(f"{name} ({state}; {figures['evaluated'].split(' (')[0]}; "
                   f"{agreement['images']} whole test images): pixel agreement "
                   f"{agreement['pixel_agreement']:.4%}, Dice vs float "
                   f"{agreement['mean_dice_vs_reference']:.4f}"
                   + (f", kept in float: {len(figures['kept_float'])} layer(s)"
                      if figures.get("kept_float") else ""))
    warning = report["evaluation"].get("warning")
    if warning:
        click.secho(warning, fg="yellow", bold=True)
    click.echo(f"wrote {run_dir / 'calibration.json'}")


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
            click.echo(f"{path}: OK ({len(result.op_types)} op types, {result.qdq_nodes} Q/DQ "
                       f"nodes)")
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


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return values


@cli.command()
@click.argument("run_dir", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Report folder [default: bench/default, or bench/<preset>-"
                                 "latency with --latency-only].")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="With --latency-only: the architecture to time on random weights.")
@click.option("--latency-only", is_flag=True,
              help="Time a random-weights --preset at --sizes (no fidelity figures).")
@click.option("--sizes", default="128,256", show_default=True, callback=_int_list,
              help="Input sizes of the --latency-only sweep.")
@click.option("--images", type=int, default=64, show_default=True,
              help="Held-out images for the fidelity figures.")
@click.option("--batch-sizes", default=None, callback=_int_list,
              help="Comma-separated batch sizes [default: 1,8; 1 with --latency-only].")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--rounds", type=int, default=20, show_default=True,
              help="Minimum timed runs per row and batch size.")
@click.option("--min-seconds", type=float, default=5.0, show_default=True,
              help="Minimum timed seconds per row and batch size (shared by its "
                   "inference-only and end-to-end figures).")
@click.option("--backends", default="keras,onnxruntime,tflite,tensorrt", show_default=True,
              help="Comma-separated backends to include.")
@click.option("--sweep-sizes", default="128,256,512,1024", show_default=True,
              callback=_int_list, help="With RUN_DIR: image sizes of the cost-vs-size sweep of "
                                       "model.onnx, whole, plus tiled at the largest.")
@click.option("--sweep-tile", type=int, default=None,
              help="Tile of the sweep's tiled run [default: half the largest size].")
@click.option("--no-size-sweep", is_flag=True, help="Skip the cost-vs-size sweep.")
def bench(run_dir, out_dir, preset, latency_only, sizes, images, batch_sizes, threads, rounds,
          min_seconds, backends, sweep_sizes, sweep_tile, no_size_sweep):
    """Benchmark every artifact of RUN_DIR against the Keras float reference.

    With --latency-only --preset P, time P on random weights at --sizes instead.
    """
    from rich.progress import Progress
    from rich.table import Table

    from retinaunet_deploy.bench.harness import BenchOptions, run_bench
    from retinaunet_deploy.bench.report import header, table_rows
    from retinaunet_deploy.bench.sweep import latency_sweep

    if latency_only != (preset is not None) or latency_only == (run_dir is not None):
        raise click.UsageError("give either RUN_DIR, or --latency-only with --preset")
    batch_sizes = batch_sizes or ((1,) if latency_only else (1, 8))
    options = BenchOptions(images=images, batch_sizes=batch_sizes, threads=threads,
                           rounds=rounds, min_seconds=min_seconds,
                           backends=tuple(b.strip() for b in backends.split(",")))
    out_dir = out_dir or Path("bench/default" if run_dir else f"bench/{preset}-latency")
    console = _console()
    if latency_only:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("sweep", total=None)
            latency_sweep(out_dir, preset, sizes, options,
                          progress=lambda message: progress.update(task, description=message))
        console.print((out_dir / "report.md").read_text(), markup=False)
        return
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=None)
        report = run_bench(run_dir, out_dir, options,
                           progress=lambda message: progress.update(task, description=message))
    table = Table(title=f"{run_dir}: {report['images']} held-out images, "
                        f"{report['machine']['cpu']}, {threads} threads")
    for column in header(report):
        table.add_column(column)
    for cells in table_rows(report):
        table.add_row(*cells)
    console.print(table)
    for row in report["rows"]:
        if row["status"] != "ok":
            console.print(f"{row['name']}: {row['status']}: {row['reason']}", markup=False)
    console.print(f"wrote {out_dir}/report.json, report.md, latency_vs_agreement.png, "
                  f"overlays.png")
    if no_size_sweep:
        return
    from retinaunet_deploy.bench.sweep import size_sweep

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("size sweep", total=None)
        size_sweep(run_dir, out_dir, sweep_sizes, tile=sweep_tile, threads=threads,
                   progress=lambda message: progress.update(task, description=message))
    console.print((out_dir / "size_sweep.md").read_text(), markup=False)


@cli.command("build-engine")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16",
              show_default=True, help="Which ONNX variant to compile: model.onnx, "
                                      "model.fp16.onnx or model.int8.onnx (Q/DQ).")
@click.option("--min-batch", type=int, default=1, show_default=True)
@click.option("--opt-batch", type=int, default=1, show_default=True,
              help="The batch size TensorRT tunes kernels for.")
@click.option("--max-batch", type=int, default=8, show_default=True)
@click.option("--min-size", type=int, default=64, show_default=True,
              help="Smallest height/width the engine takes (smaller images are padded).")
@click.option("--opt-size", type=int, default=256, show_default=True,
              help="The height/width TensorRT tunes kernels for.")
@click.option("--max-size", type=int, default=1024, show_default=True,
              help="Largest height/width the engine takes (larger images run as tiles).")
@click.option("--workspace-mib", type=int, default=1024, show_default=True,
              help="Builder scratch memory limit.")
@click.option("--no-timing-cache", is_flag=True,
              help="Do not reuse or update RUN_DIR/tensorrt.timing.cache.")
def build_engine(run_dir, precision, min_batch, opt_batch, max_batch, min_size, opt_size,
                 max_size, workspace_mib, no_timing_cache):
    """Compile RUN_DIR's ONNX variant into a TensorRT engine, model.<precision>.plan (GPU)."""
    from retinaunet_deploy.export.tensorrt import EngineOptions
    from retinaunet_deploy.export.tensorrt import build_engine as run_build

    options = EngineOptions(precision=precision, min_batch=min_batch, opt_batch=opt_batch,
                            max_batch=max_batch, min_size=min_size, opt_size=opt_size,
                            max_size=max_size, workspace_mib=workspace_mib,
                            timing_cache=not no_timing_cache)
    entry = run_build(run_dir, options, progress=click.echo)
    target = entry["target"]
    click.echo(f"engine for TensorRT {target['tensorrt']} on {target['gpu']} (compute "
               f"capability {target['compute_capability']}); recorded in "
               f"{run_dir / 'manifest.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("triton"), show_default=True, help="Model repository folder.")
@click.option("--model", default="model.onnx", show_default=True,
              help="The run's file to serve: an .onnx variant or a .plan engine.")
@click.option("--max-batch-size", type=int, default=8, show_default=True)
@click.option("--preferred-batch-sizes", default="4,8", show_default=True, callback=_int_list,
              help="Batch sizes Triton's dynamic batcher aims for.")
@click.option("--max-queue-delay-us", type=int, default=2000, show_default=True,
              help="How long a request may wait to be batched with others.")
@click.option("--instances", type=int, default=1, show_default=True)
@click.option("--kind", type=click.Choice(["auto", "gpu", "cpu"]), default="auto",
              show_default=True, help="Where instances run (a .plan is always gpu).")
def triton(run_dir, out_dir, model, max_batch_size, preferred_batch_sizes, max_queue_delay_us,
           instances, kind):
    """Write a Triton model repository OUT/retinaunet/ serving one of RUN_DIR's artifacts."""
    from retinaunet_deploy.export.triton import TritonOptions, write_triton_repository

    options = TritonOptions(model=model, max_batch_size=max_batch_size,
                            preferred_batch_sizes=preferred_batch_sizes,
                            max_queue_delay_us=max_queue_delay_us, instances=instances,
                            kind=kind)
    folder = write_triton_repository(run_dir, out_dir, options)
    click.echo(f"wrote {folder}/config.pbtxt and {folder}/1/; serve it with: tritonserver "
               f"--model-repository={out_dir.resolve()}")


def main():
    cli(prog_name="retinaunet-deploy")


if __name__ == "__main__":
    main()
