"""Commands that run a model: predict, bench."""

from __future__ import annotations

from pathlib import Path

import click

from retinaunet_deploy import names
from retinaunet_deploy.bench.rows import BenchOptions
from retinaunet_deploy.cli.group import POSITIVE_INT, cli, comma_text, console, int_list
from retinaunet_deploy.cli.model_commands import PRESET_NAMES
from retinaunet_deploy.postprocess import APP_SCORE_THRESHOLD
from retinaunet_deploy.runtime.predictor import DEFAULT_OVERLAP, DEFAULT_TILE
from retinaunet_deploy.runtime.registry import runtime_choices

BENCH = BenchOptions()


class RegisteredRuntimes(click.Choice):
    """`--runtime`'s choices: "auto" and every runtime registered when the command runs
    (`runtime.registry`), so a runtime registered after import is offered too."""

    def __init__(self):
        super().__init__(runtime_choices())

    @property
    def choices(self) -> tuple[str, ...]:
        return runtime_choices()

    @choices.setter
    def choices(self, value) -> None:
        """click.Choice sets its list once; the registry is read on every use instead."""


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Predict on a Ray cluster's actors (one Predictor each; outputs as a local "
                   "run's): the cluster at ADDRESS (host:6379, ray://host:10001, auto), or "
                   "alone (or 'local') a local one. Put it after IMAGES or write --ray=ADDRESS.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("predictions"), show_default=True)
@click.option("--threads", type=POSITIVE_INT, default=None, help="Inference threads [default: library's].")
@click.option("--score-threshold", type=float, default=APP_SCORE_THRESHOLD, show_default=True,
              help="Keep detections scoring at least this. (The model card's 0.05 is for "
                   "evaluation, where AP needs the low-score tail.)")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
              default="auto", show_default=True,
              help="ONNX Runtime execution provider for an .onnx ARTIFACT (auto: CUDA when a "
                   "GPU is present, else CPU). 'tensorrt' caches its engines beside ARTIFACT.")
@click.option("--runtime", type=RegisteredRuntimes(), default="auto", show_default=True,
              help="How to run ARTIFACT: auto (by suffix: .onnx in ONNX Runtime) or a "
                   "registered runtime; for an .onnx file onnxruntime, openvino (fp32, or "
                   "int8 for model.int8.onnx) or openvino-bf16 (bf16 hint).")
@click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True,
              help="Images larger than this (padded height or width) run as a sliding window "
                   "of tiles at most this large (a multiple of 16; an engine's profile caps it).")
@click.option("--overlap", type=float, default=DEFAULT_OVERLAP, show_default=True,
              help="Fraction of a tile shared with its neighbour.")
@click.option("--max-detections", type=click.IntRange(min=1), default=None,
              help="At most this many detections per image [default: the model card's "
                   "count per training patch, scaled with the image's area]. An image that "
                   "hits the cap is warned about and recorded (detections_capped).")
@click.option("--resume", is_flag=True,
              help="Keep the images an earlier run into --out finished (same artifact and "
                   "options, outputs unchanged since) and do the rest.")
@click.option("--level", type=click.IntRange(min=0), default=None,
              help="Whole-slide images: the pyramid level to predict (0 = full resolution) "
                   "[default: 0].")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Whole-slide images: predict the level of this resolution, micrometres "
                   "per pixel (within 10%; from the file's metadata).")
@click.option("--overlays/--no-overlays", default=True, show_default=True,
              help="Write overlays/NAME.png (image, mask colours, boxes) for each image. "
                   "On a large folder of small images, drawing and encoding them is most "
                   "of the writing time.")
def predict(artifact, images, out_dir, threads, score_threshold, provider, runtime, tile,
            overlap, max_detections, resume, ray_address, level, mpp, overlays):
    """Run ARTIFACT (.keras, .onnx, .tflite or .plan) on PNG or TIFF IMAGES of any size;
    write masks, overlays, results.jsonl (one line per image, as each finishes) and
    detections.json (the summary, at the end).

    IMAGES may also be volumes (.nii, .nii.gz, a DICOM series folder or .dcm file, a
    multi-page TIFF stack): predicted slice by slice into masks/NAME.nii.gz on the
    input's grid (and seg/NAME.dcm for DICOM, detections/NAME.json with 3D boxes).
    Whole-slide images (tiled pyramidal TIFF/OME-TIFF, or formats OpenSlide reads: .svs,
    .ndpi, .mrxs...) are predicted at --level or --mpp tile by tile, background skipped,
    into masks/NAME.ome.tif (a label pyramid) and detections/NAME.geojson (QuPath).

    ARTIFACT may be a run folder: then the variant its bench recommended runs (the
    fastest that passed its gate on this machine, with its runtime).
    """
    from retinaunet_deploy.predict import predict_files
    from retinaunet_deploy.runtime import providers as ort_providers

    if level is not None and mpp is not None:
        raise click.UsageError("give --level or --mpp, not both")
    if provider != "auto" and (runtime != "auto" or artifact.is_dir()):
        raise click.UsageError("--provider applies to an .onnx file in ONNX Runtime only")
    chosen = {"auto": None, "cpu": [ort_providers.CPU],
              "cuda": [ort_providers.cuda_provider(), ort_providers.CPU],
              "tensorrt": [ort_providers.tensorrt_provider(
                  fp16=ort_providers.precision_of(artifact) == "fp16",
                  int8=ort_providers.precision_of(artifact) == "int8",
                  cache_dir=artifact.parent / "ort_trt_cache"), ort_providers.CPU]}[provider]
    results = predict_files(artifact, list(images), out_dir, threads, score_threshold, chosen,
                            tile, overlap, runtime, resume=resume,
                            max_detections=max_detections, echo=click.echo,
                            level=level, mpp=mpp, overlays=overlays,
                            **_ray_executor(ray_address))
    for path, entry in results.items():
        found = entry.get("detections", [])
        summary = ", ".join(f"{d['class']} {d['score']:.2f}" for d in found[:5])
        size = "x".join(map(str, entry["size"])) + (", tiled" if entry["tiled"] else "")
        if entry.get("kind") == "slide":
            tiles = entry["tiles"]
            size += (f", level {entry['level']}, {tiles['predicted']} of {tiles['total']} "
                     f"tiles run, {tiles['skipped_background']} background")
        click.echo(f"{path} ({size}): {entry.get('detection_count', len(found))} "
                   f"detection(s){': ' + summary if found else ''}")
    from retinaunet_deploy.predict.writer import OUTPUT_FOLDERS

    folders = [f"{out_dir}/{name}/" for name in OUTPUT_FOLDERS
               if (out_dir / name).is_dir() and any((out_dir / name).iterdir())]
    click.echo(f"wrote {', '.join(folders + [f'{out_dir}/results.jsonl'])} and "
               f"{out_dir}/detections.json")


def _ray_executor(address: str | None) -> dict:
    """predict_files' executor options for --ray [ADDRESS] (none without it)."""
    if address is None:
        return {}
    if Path(address).is_file():
        raise click.UsageError(f"--ray took {address} as its cluster address; put --ray after "
                               f"the images, or write --ray=ADDRESS")
    return {"executor": "ray", "ray_address": None if address == "local" else address}


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
@click.option("--sizes", default="128,256", show_default=True, callback=int_list,
              help="Input sizes of the --latency-only sweep.")
@click.option("--images", type=int, default=BENCH.images, show_default=True,
              help="Held-out images for the fidelity figures.")
@click.option("--batch-sizes", default=None, callback=int_list,
              help=f"Comma-separated batch sizes [default: {comma_text(BENCH.batch_sizes)}; 1 "
                   f"with --latency-only].")
@click.option("--threads", type=POSITIVE_INT, default=BENCH.threads, show_default=True,
              help="Intra-op threads of every CPU row, Keras included (asserted).")
@click.option("--rounds", type=int, default=BENCH.rounds, show_default=True,
              help="Minimum timed runs per row and batch size.")
@click.option("--min-seconds", type=float, default=BENCH.min_seconds, show_default=True,
              help="Minimum timed seconds per row and batch size (shared by its "
                   "inference-only and end-to-end figures).")
@click.option("--backends", default=comma_text(BENCH.backends), show_default=True,
              help="Comma-separated backends to include.")
@click.option("--no-limits", is_flag=True,
              help="Skip measuring this CPU's int8/bf16/fp32 limits (the 'share of limit').")
@click.option("--sweep-sizes", default="128,256,512,1024", show_default=True,
              callback=int_list, help="With RUN_DIR: image sizes of the cost-vs-size sweep of "
                                       "model.onnx, whole, plus tiled at the largest.")
@click.option("--sweep-tile", type=int, default=None,
              help="Tile of the sweep's tiled run [default: half the largest size].")
@click.option("--no-size-sweep", is_flag=True, help="Skip the cost-vs-size sweep.")
@click.option("--folder-throughput", is_flag=True,
              help="Also measure `predict` end to end on a folder of --folder-images demo-sized "
                   "PNGs against the same artifact's inference-only batch-8 throughput, "
                   "interleaved (a report section; about 1 min per artifact on 2 cores).")
@click.option("--folder-artifacts", default="recommended", show_default=True,
              help="With --folder-throughput: run files as FILE[:RUNTIME], comma-separated; "
                   "'recommended' is the run's recommendation.")
@click.option("--folder-images", type=click.IntRange(min=8), default=256, show_default=True,
              help="With --folder-throughput: images in the folder.")
@click.option("--soak", is_flag=True,
              help="Soak RUN_DIR's --soak-artifact instead: --callers threads share one "
                   "Predictor for --soak-minutes; fails unless RSS stays within 5% and every "
                   "result is identical.")
@click.option("--soak-minutes", type=float, default=5.0, show_default=True,
              help="With --soak: how long.")
@click.option("--callers", type=int, default=2, show_default=True,
              help="With --soak: concurrent callers, one call in flight each.")
@click.option("--soak-artifact", default=names.ONNX, show_default=True,
              help="With --soak: the file of RUN_DIR to soak.")
@click.option("--serve-load", is_flag=True,
              help="Measure `serve` under 1, 4 and 16 loopback clients against the same "
                   "artifact's in-process batch-8 throughput instead (OUT/serve_load.md).")
@click.option("--serve-artifact", default=None,
              help="With --serve-load: FILE[:RUNTIME] of RUN_DIR [default: the recommendation].")
@click.option("--serve-images", type=click.IntRange(min=8), default=192, show_default=True,
              help="With --serve-load: requests per client level and round.")
@click.option("--serve-options", default="",
              help="With --serve-load: extra `serve` options, e.g. '--instances 2'.")
def bench(run_dir, out_dir, preset, latency_only, sizes, images, batch_sizes, threads, rounds,
          min_seconds, backends, no_limits, sweep_sizes, sweep_tile, no_size_sweep, soak,
          soak_minutes, callers, soak_artifact, folder_throughput, folder_artifacts,
          folder_images, serve_load, serve_artifact, serve_images, serve_options):
    """Benchmark every artifact of RUN_DIR against the Keras float reference.

    With --latency-only --preset P, time P on random weights at --sizes instead.
    With --soak, soak one file of RUN_DIR under concurrent callers instead.
    With --serve-load, measure `serve` under 1, 4 and 16 loopback clients instead.
    """
    from rich.progress import Progress
    from rich.table import Table

    from retinaunet_deploy.bench.harness import run_bench
    from retinaunet_deploy.bench.recommend import recommendation_line
    from retinaunet_deploy.bench.report import header, table_rows
    from retinaunet_deploy.latency_sweep import latency_sweep

    if latency_only != (preset is not None) or latency_only == (run_dir is not None):
        raise click.UsageError("give either RUN_DIR, or --latency-only with --preset")
    _refuse_unused_options(click.get_current_context())
    if soak:
        _soak(run_dir, out_dir or Path("bench/soak"), soak_artifact, soak_minutes, threads,
              callers)
        return
    if serve_load:
        _serve_load(run_dir, out_dir or Path("bench/serve"), serve_artifact, serve_images,
                    serve_options, threads)
        return
    batch_sizes = batch_sizes or ((1,) if latency_only else BENCH.batch_sizes)
    options = BenchOptions(images=images, batch_sizes=batch_sizes, threads=threads,
                           rounds=rounds, min_seconds=min_seconds, peak=not no_limits,
                           backends=tuple(b.strip() for b in backends.split(",")),
                           **_folder_options(folder_throughput, folder_artifacts, folder_images))
    out_dir = out_dir or Path("bench/default" if run_dir else f"bench/{preset}-latency")
    out = console()
    if latency_only:
        with Progress(console=out, transient=True) as progress:
            task = progress.add_task("sweep", total=None)
            latency_sweep(out_dir, preset, sizes, options,
                          progress=lambda message: progress.update(task, description=message))
        out.print((out_dir / "report.md").read_text(), markup=False)
        return
    with Progress(console=out, transient=True) as progress:
        task = progress.add_task("benchmark", total=None)
        report = run_bench(run_dir, out_dir, options,
                           progress=lambda message: progress.update(task, description=message))
    table = Table(title=f"{run_dir}: {report['images']} held-out images, "
                        f"{report['machine']['cpu']}, {threads} threads")
    for column in header(report):
        table.add_column(column)
    for cells in table_rows(report):
        table.add_row(*cells)
    out.print(table)
    for row in report["rows"]:
        if row["status"] != "ok":
            out.print(f"{row['name']}: {row['status']}: {row['reason']}", markup=False)
    for fault in report.get("limit_faults", []):
        out.print(f"limit measurement disturbed: {fault['note']}", markup=False)
    if "folder_throughput" in report:
        from retinaunet_deploy.bench.throughput import summary_lines

        for line in summary_lines(report["folder_throughput"]):
            out.print(line, markup=False)
    out.print(f"wrote {out_dir}/report.json, report.md, latency_vs_agreement.png, "
              f"overlays.png")
    if not no_size_sweep:
        _size_sweep(out, run_dir, out_dir, sweep_sizes, sweep_tile, threads)
    # The last line of the bench: what to ship here (also in RUN_DIR/recommendation.json).
    out.print(recommendation_line(report["recommendation"]).replace("RUN_DIR", str(run_dir)),
              markup=False)


def _folder_options(on: bool, artifacts: str, images: int) -> dict:
    """BenchOptions' folder-throughput fields for --folder-throughput (none without it;
    `_refuse_unused_options` has refused it with --latency-only)."""
    from retinaunet_deploy.bench.throughput import folder_artifacts

    if not on:
        return {}
    return {"folder_artifacts": folder_artifacts(artifacts), "folder_images": images}


# What each bench mode reads, so that an option it would ignore is refused, not dropped.
_COMMON = {"run_dir", "out_dir", "threads"}
_TIMING = {"batch_sizes", "rounds", "min_seconds", "backends", "no_limits"}
_BENCH_MODES = {
    "soak": _COMMON | {"soak_minutes", "callers", "soak_artifact"},
    "serve_load": _COMMON | {"serve_artifact", "serve_images", "serve_options"},
    "latency_only": _COMMON | _TIMING | {"preset", "sizes"},
    None: _COMMON | _TIMING | {"images", "sweep_sizes", "sweep_tile", "no_size_sweep",
                               "folder_throughput", "folder_artifacts", "folder_images"},
}


def _refuse_unused_options(ctx: click.Context) -> None:
    """A UsageError naming the options the chosen bench mode (--soak, --serve-load,
    --latency-only, or the full bench) would ignore, or two modes given at once."""
    from click.core import ParameterSource

    modes = [mode for mode in _BENCH_MODES if mode and ctx.params[mode]]
    flag = {param.name: param.opts[0] for param in ctx.command.params}
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(flag[m] for m in modes)} are separate bench "
                               f"modes; run them one at a time")
    mode = modes[0] if modes else None
    ignored = [flag[name] for name in ctx.params
               if name not in _BENCH_MODES[mode] and name != mode
               and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if ignored:
        what = f"with {flag[mode]}" if mode else "without --soak, --serve-load or --latency-only"
        raise click.UsageError(f"{', '.join(ignored)} would be ignored {what}; leave "
                               f"{'it' if len(ignored) == 1 else 'them'} out")


def _soak(run_dir, out_dir, artifact, minutes, threads, callers):
    import json

    from rich.progress import Progress

    from retinaunet_deploy.bench.soak import failures, run_soak

    if callers < 1 or minutes <= 0:
        raise click.UsageError("--callers must be at least 1 and --soak-minutes positive")
    out = console()
    with Progress(console=out, transient=True) as progress:
        task = progress.add_task("soak", total=None)
        result = run_soak(run_dir / artifact, out_dir, minutes, threads, callers,
                          progress=lambda message: progress.update(task, description=message))
    summary = {k: result[k] for k in ("calls", "mismatched_results", "rss_first_mib",
                                      "rss_last_mib", "rss_growth", "call_ms", "passed")}
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"wrote {out_dir}/result.json and rss.png")
    if not result["passed"]:
        raise click.ClickException("the soak failed: " + "; ".join(failures(result)))


def _serve_load(run_dir, out_dir, artifact, count, server_options, threads):
    import shlex

    from retinaunet_deploy.bench import serve_load

    file, runtime = (artifact.partition(":")[::2] if artifact else (None, ""))
    figures = serve_load.serve_load(run_dir, file, runtime or "auto", threads, count,
                                    server_args=tuple(shlex.split(server_options)),
                                    progress=lambda message: click.echo(message, err=True))
    serve_load.write(out_dir, figures)
    click.echo("\n".join(serve_load.markdown(figures)))
    click.echo(f"wrote {out_dir}/serve_load.json and serve_load.md")


def _size_sweep(out, run_dir, out_dir, sweep_sizes, sweep_tile, threads):
    from rich.progress import Progress

    from retinaunet_deploy.bench.sweep import size_sweep

    with Progress(console=out, transient=True) as progress:
        task = progress.add_task("size sweep", total=None)
        size_sweep(run_dir, out_dir, sweep_sizes, tile=sweep_tile, threads=threads,
                   progress=lambda message: progress.update(task, description=message))
    out.print((out_dir / "size_sweep.md").read_text(), markup=False)
