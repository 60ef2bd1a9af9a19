"""Predict stage: an artifact + image files -> masks, overlays, results.jsonl, detections.json.

A run, streaming and resumable:

1. plan (`plan.plan_inputs`): every input checked by its header against the model's
   input contract, all bad files named in one error, and each input's output name
   decided (unique for any set of inputs, also on case-insensitive file systems)
   before anything is written;
2. the output folder checked writable (`outputs.check_writable`);
3. an executor reads, predicts and writes the images (`stream.run_sequential`: one at a
   time, so memory does not grow with their number), each image's files written
   atomically and its line appended to ``results.jsonl`` (`writer.ResultWriter`);
4. ``detections.json``, the summary, written at the end.

With ``resume``, images an earlier run of the same artifact and options finished
(line present, files with the recorded sha256) are kept and the rest done; the
result is byte-identical to a run that was never interrupted. The output layout is
in `writer`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from retinaunet_deploy.predict.plan import InputItem, output_names, plan_inputs
from retinaunet_deploy.predict.stream import run_sequential
from retinaunet_deploy.predict.writer import DETECTIONS, OUTPUT_FOLDERS, RESULTS, ResultWriter

__all__ = ["DETECTIONS", "EXECUTORS", "RESULTS", "InputItem", "ResultWriter", "open_predictor",
           "output_names", "plan_inputs", "predict_files", "run_sequential"]

EXECUTORS = ("pipelined", "sequential", "ray")


def open_predictor(artifact: Path, threads: int | None = None, providers: list | None = None,
                   tile: int | None = None, overlap: float | None = None,
                   runtime: str = "auto", score_threshold: float | None = None,
                   max_detections: int | None = None):
    """A `Predictor` of `artifact` with a run's options (what every executor's workers open).

    Args:
        score_threshold: replaces the card's (None: the card's).
        max_detections: at most this many detections per image (None: the card's
            count, scaled with the image's area, `Predictor.config_for`).
    A tile capped by the backend is not warned about here: its line is the predictor's
    ``tile_warning``.

    Raises:
        ConfigError: max_detections below 1 or score_threshold outside [0, 1].
    """
    import dataclasses
    import warnings

    from retinaunet_deploy.errors import ConfigError
    from retinaunet_deploy.runtime import Predictor
    from retinaunet_deploy.runtime.predictor import DEFAULT_OVERLAP, DEFAULT_TILE

    if max_detections is not None and max_detections < 1:
        raise ConfigError(f"--max-detections must be at least 1, got {max_detections}")
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise ConfigError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.from_artifact(
            artifact, threads=threads, providers=providers, tile=tile or DEFAULT_TILE,
            overlap=DEFAULT_OVERLAP if overlap is None else overlap, runtime=runtime)
    for warning in caught:   # a capped tile is said by `predict_files`, as one line
        if str(warning.message) != predictor.tile_warning:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    if score_threshold is not None:
        predictor.detection_config = dataclasses.replace(predictor.detection_config,
                                                         score_threshold=score_threshold)
    predictor.max_detections = max_detections
    return predictor


def _calibration_range(artifact: Path):
    """The INT8 artifact's `CalibrationRange` (None for other files, or an INT8 file made
    without the record)."""
    from retinaunet_deploy.runtime.calibration_range import CalibrationRange

    return CalibrationRange.for_artifact(Path(artifact))


def predict_files(artifact: Path, image_paths: list[Path], out_dir: Path,
                  threads: int | None = None, score_threshold: float | None = None,
                  providers: list | None = None, tile: int | None = None,
                  overlap: float | None = None, runtime: str = "auto", *,
                  resume: bool = False, max_detections: int | None = None,
                  executor: str = "pipelined", ray_address: str | None = None,
                  echo: Callable[[str], None] | None = None, level: int | None = None,
                  mpp: float | None = None, overlays: bool = True) -> dict:
    """Run `artifact` on image files and write the outputs (`writer`); returns the
    per-image entries by path, in the order of `image_paths`.

    Args:
        artifact: a file, or a run folder: then the file and runtime its bench
            recommended (``recommendation.json``: the fastest that passed its gate here),
            said through `echo`.
        image_paths: PNG/TIFF (any registered format) files of any size, and volumes
            (NIfTI, DICOM series folders or files, TIFF stacks: `predict.volumes`, run
            slice by slice on this process's predictor whatever the executor).
        providers: ONNX Runtime providers for an .onnx artifact (None: what loads here).
        tile, overlap: the sliding window (None: the Predictor's defaults).
        runtime: "auto" (by suffix) or a registered runtime's name
            (`runtime.registry.runtime_choices()`).
        resume: keep the images an earlier run into `out_dir` finished (same artifact and
            options; refused otherwise) and do the rest.
        max_detections: per-image cap (None: the card's, scaled with the image's area);
            an image that hits it is recorded (``detections_capped``) and warned about.
        executor: how images are read, predicted and written (`EXECUTORS`): "pipelined"
            (`pipeline.run_pipelined`: reading, batched inference and writing overlap),
            "sequential" (`stream.run_sequential`) or "ray" (`ray_runner.run_ray`: on
            the actors of the Ray cluster at `ray_address`, None: a local one).
        echo: prints a console line (None: stderr); warnings start with "warning: ".
        level, mpp: the level of whole-slide inputs to predict, by index or by micrometres
            per pixel (`data.slides.choose_level`; default level 0); slides are
            predicted after the images, one at a time, on this process
            (`predict.slides`); other inputs ignore them.
        overlays: write overlays/<name>.png for each image (False: masks and results
            only, recorded in the header's options, so --resume keeps to it).
    Raises:
        InputError, DataError: bad inputs (all of them named, before anything is written).
        OutputError: the output folder or a file in it cannot be written.
        ConfigError: a resume over another run's options; an unknown executor.
        ArtifactError: the artifact cannot be opened.
    """
    from retinaunet_deploy.artifacts import sha256_file
    from retinaunet_deploy.errors import ConfigError, InputError
    from retinaunet_deploy.runtime.registry import resolve

    echo = echo or (lambda line: print(line, file=sys.stderr))
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if Path(artifact).is_dir():
        from retinaunet_deploy.recommendation import recommended_artifact

        if runtime != "auto":
            raise InputError(f"{artifact} is a run folder: its recommendation names the "
                             f"runtime; give a file to choose one with --runtime")
        artifact, runtime = recommended_artifact(artifact)
        echo(f"running {artifact} in {runtime} (the run's recommendation.json)")
    options = {"threads": threads, "providers": providers, "tile": tile, "overlap": overlap,
               "runtime": runtime, "score_threshold": score_threshold,
               "max_detections": max_detections}
    with open_predictor(artifact, **options) as predictor:
        if predictor.tile_warning:
            echo(f"warning: {predictor.tile_warning}")
        items = plan_inputs(list(image_paths), predictor, level=level, mpp=mpp)
        _refuse_inputs_among_outputs(items, Path(out_dir))
        from retinaunet_deploy.errors import ConfigError

        if (level is not None or mpp is not None) and not any(
                getattr(item, "kind", "image") == "slide" for item in items):
            raise ConfigError(f"{'--level' if level is not None else '--mpp'} chooses a level "
                              f"of a whole-slide image (a tiled pyramidal TIFF, or a file "
                              f"OpenSlide reads), and none of the {len(items)} input(s) is "
                              f"one; leave it out")
        header = {"artifact": str(artifact), "artifact_sha256": sha256_file(Path(artifact)),
                  "runtime": resolve(Path(artifact), runtime).name,
                  "options": {"score_threshold": predictor.detection_config.score_threshold,
                              "max_detections": max_detections, "tile": predictor.tile,
                              "overlap": predictor.overlap,
                              "providers": None if providers is None else repr(providers),
                              **({"level": level} if level is not None else {}),
                              **({"mpp": mpp} if mpp is not None else {}),
                              **({} if overlays else {"overlays": False})}}
        with ResultWriter(Path(out_dir), header=header, resume=resume,
                          calibration_range=_calibration_range(artifact),
                          overlays=overlays) as writer:
            todo = [item for item in items if not writer.is_done(item)]
            if resume and len(todo) < len(items):
                echo(f"resuming: {len(items) - len(todo)} of {len(items)} images already "
                     f"done in {out_dir}")
            volumes = [item for item in todo if getattr(item, "kind", "image") == "volume"]
            slides = [item for item in todo if getattr(item, "kind", "image") == "slide"]
            images = [item for item in todo
                      if getattr(item, "kind", "image") not in ("volume", "slide")]
            warn = lambda line: echo(f"warning: {line}")
            if images or not (volumes or slides):
                _executor(executor, artifact, options, ray_address)(
                    predictor, images, writer, warn)
            if volumes:   # slice by slice on this predictor (`predict.volumes`)
                from retinaunet_deploy.predict.volumes import run_volumes

                run_volumes(predictor, volumes, writer, warn)
            if slides:    # tile by tile, background skipped (`predict.slides`)
                from retinaunet_deploy.predict.slides import run_slides

                run_slides(predictor, slides, writer, Path(out_dir), warn)
            return writer.finish(items)


def _refuse_inputs_among_outputs(items, out_dir: Path) -> None:
    """An input where this run writes its outputs (OUT's output folders, results.jsonl,
    detections.json) would be overwritten by them: refused, naming it."""
    from retinaunet_deploy.errors import InputError

    out = out_dir.resolve()
    places = [out / name for name in OUTPUT_FOLDERS]
    for item in items:
        path = Path(item.path).resolve()
        if path in (out / RESULTS, out / DETECTIONS) or any(
                path.is_relative_to(place) for place in places):
            raise InputError(f"{item.path} is inside {out_dir}'s outputs, which this run "
                             f"writes (masks/, overlays/, seg/, detections/); copy it "
                             f"elsewhere or give another --out")


def _executor(name: str, artifact: Path, options: dict, ray_address: str | None):
    """The executor called as ``run(predictor, items, writer, warn)``."""
    if name == "ray":
        import functools

        from retinaunet_deploy.predict.ray_runner import run_ray

        return functools.partial(run_ray, artifact_args={"artifact": artifact, **options},
                                 address=ray_address)
    from retinaunet_deploy.predict.pipeline import run_pipelined

    return {"pipelined": run_pipelined, "sequential": run_sequential}[name]
