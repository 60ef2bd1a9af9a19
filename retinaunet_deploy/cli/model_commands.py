"""Commands on the model: info, train, import-data, export."""

from __future__ import annotations

from pathlib import Path

import click

from retinaunet_deploy import names
from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.cli.group import cli, console
from retinaunet_deploy.data.sources import SOURCES, importable
from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.export.onnx import ExportOptions
from retinaunet_deploy.model import PRESETS
from retinaunet_deploy.normalization import CHOICES as NORMALIZATIONS
from retinaunet_deploy.train import TrainOptions

PRESET_NAMES = tuple(PRESETS)
TRAIN, EXPORT = TrainOptions(), ExportOptions()


@cli.command()
@click.argument("run_dir", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=TRAIN.preset, show_default=True,
              help="Architecture preset.")
@click.option("--size", type=int, default=TRAIN.size, show_default=True,
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

    out = Console()
    table = Table(title=f"RetinaUNet preset '{preset}', input {size}x{size}x{channels}, "
                        f"{num_classes} mask classes")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs / image", justify="right")
    table.add_row("U-Net (segmentation)", f"{summary.unet_params:,}", f"{summary.unet_gflops:.2f}")
    if builder.has_detection:
        table.add_row("RetinaNet heads", f"{summary.head_params:,}", f"{summary.head_gflops:.2f}")
    table.add_row("total", f"{summary.total_params:,}", f"{summary.total_gflops:.2f}")
    out.print(table)

    outputs = Table(title="outputs (float32, NHWC input 'image')")
    outputs.add_column("name")
    outputs.add_column("shape")
    for name, shape in summary.outputs.items():
        outputs.add_row(name, "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")")
    out.print(outputs)
    if builder.has_detection:
        anchors = builder.anchor_config
        out.print(f"anchors: {summary.num_anchors:,} = {anchors.anchors_per_position} per "
                      f"position on strides {list(anchors.strides)} (scales "
                      f"{[round(s, 3) for s in anchors.scales]}, ratios {list(anchors.ratios)})")


def _show_lineage(run_dir: Path):
    from rich.table import Table

    from retinaunet_deploy.artifacts import run_lineage

    rows = run_lineage(run_dir)
    out = console()
    table = Table(title=f"{run_dir}: artifacts and lineage (every hash verified now)")
    for column in ("file", "made by", "from", "sha256", "MB", "measured", "status"):
        table.add_column(column)
    for row in rows:
        size = f"{row['size'] / 1e6:.2f}" if row["size"] is not None else ""
        table.add_row(row["file"], row["stage"] or "", row["parent"] or "",
                      (row["sha256"] or "")[:12], size, row["figure"],
                      row["status"] if row["status"] == "ok" else f"[red]{row['status']}[/red]")
    out.print(table)
    problems = [row for row in rows if row["status"] != "ok"]
    for row in problems:  # plain echo: one unwrapped line per problem, for logs and grep
        click.echo(f"{row['file']}: {row['problem']}")
    if not rows:
        raise ArtifactError(f"{run_dir} has no recorded artifacts; train a model into it first")
    if problems:
        raise ArtifactError(f"{len(problems)} of {len(rows)} artifact(s) in {run_dir} failed "
                            f"verification (see above)")


@cli.command()
@click.option("--data", default=TRAIN.data, show_default=True,
              help="'synthetic' (embedded, generated from --seed) or a folder with images/, "
                   "masks/ and optional instances/ (PNG or TIFF, any sizes, matching names).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=TRAIN.preset, show_default=True)
@click.option("--size", type=int, default=TRAIN.size, show_default=True,
              help="Training patch height and width (a multiple of 16); images of any size "
                   "are cut into patches of this size.")
@click.option("--epochs", type=int, default=TRAIN.epochs, show_default=True)
@click.option("--steps-per-epoch", type=int, default=TRAIN.steps_per_epoch,
              show_default=True, help="Batches per epoch, whatever the dataset's size.")
@click.option("--batch-size", type=int, default=TRAIN.batch_size, show_default=True)
@click.option("--train-images", type=int, default=TRAIN.train_images, show_default=True,
              help="Synthetic training images (validation and test splits are separate).")
@click.option("--val-images", type=int, default=TRAIN.val_images, show_default=True,
              help="Synthetic validation images.")
@click.option("--test-images", type=int, default=TRAIN.test_images, show_default=True,
              help="Synthetic test images.")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help='A folder dataset\'s splits as JSON {"train": [names], '
                                 '"val": [...], "test": [...]} [default: a seeded shuffle].')
@click.option("--label-map", default=None, metavar="STORED:CLASS[,...]",
              help="Map stored mask values to classes 0..K-1, e.g. 255:1 for masks saved as "
                   "0/255 (a folder dataset's masks must hold classes 0..K-1).")
@click.option("--ignore-index", type=click.IntRange(min=0), default=None,
              help="A stored mask value marking void pixels (e.g. 255, a VOC border), left "
                   "out of the losses and of every figure.")
@click.option("--lr", "learning_rate", type=float, default=TRAIN.learning_rate,
              show_default=True, help="Peak learning rate (Adam, cosine decay).")
@click.option("--seed", type=int, default=TRAIN.seed, show_default=True)
@click.option("--no-detection", is_flag=True, help="Train the plain U-Net, without heads.")
@click.option("--no-flips", is_flag=True, help="No random flips or 90-degree rotations.")
@click.option("--axis", type=click.IntRange(0, 2), default=None,
              help="Volume datasets: the voxel axis the 2D slices are taken along [default: "
                   "2, axial for a RAS NIfTI].")
@click.option("--normalization", type=click.Choice(NORMALIZATIONS), default=TRAIN.normalization,
              show_default=True,
              help="Intensity normalisation: auto (8/16-bit unsigned: global, in the graph; "
                   "signed or float: zscore per image), global, zscore, or ct (clip to the "
                   "0.5-99.5 percentiles of the training foreground, z-score with its mean "
                   "and std).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("export/default"), show_default=True, help="Run folder to write.")
def train(data, preset, size, epochs, steps_per_epoch, batch_size, train_images, val_images,
          test_images, splits_file, label_map, ignore_index, learning_rate, seed, no_detection,
          no_flips, axis, normalization, out_dir):
    """Train a RetinaUNet; write OUT/model.keras and OUT/model_card.json."""
    from retinaunet_deploy.label_rules import parse_label_map
    from retinaunet_deploy.train import train as run_training

    options = TrainOptions(data=data, preset=preset, size=size, epochs=epochs,
                           steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                           train_images=train_images, val_images=val_images,
                           test_images=test_images, splits=splits_file,
                           label_map=parse_label_map(label_map), ignore_index=ignore_index,
                           learning_rate=learning_rate, seed=seed, detection=not no_detection,
                           flips=not no_flips, rotations=not no_flips, axis=axis,
                           normalization=normalization)
    card = run_training(options, out_dir)
    _print_evaluation(card, out_dir)


@cli.command("import-data")
@click.argument("source", type=click.Choice(importable()))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def import_data(source, out_dir):
    """Write a real labelled image set that ships inside a package as a folder dataset.

    stardist-nuclei: the DSB 2018 fluorescence nuclei image (512x512, 16-bit
    instance labels) shipped in StarDist's wheel (pip install -e '.[realdata]'),
    cut into crops of mixed sizes.

    mni152-tissue: nilearn's MNI152 2009 T1 template (197x233x189, 1 mm) with
    background / grey matter / white matter labels from its tissue maps, as a
    volume dataset (one NIfTI volume; see DIR/TERMS.txt for the data's terms).
    """
    written = SOURCES[source].write_folder(out_dir)
    volumes = any(len(shape) == 3 for shape in written.values())
    what = "volume(s) with label volumes" if volumes else "image(s) with masks and instance labels"
    sizes = ", ".join(sorted({"x".join(map(str, shape)) for shape in written.values()}))
    click.echo(f"wrote {len(written)} {what} to {out_dir}/ (sizes {sizes}); train with: "
               f"retinaunet-deploy train --data {out_dir}")


def _print_evaluation(card: ModelCard, out_dir: Path):
    from rich.console import Console
    from rich.table import Table

    evaluation = card.evaluation
    units = (f"{evaluation['slices']} slices of {evaluation['volumes']} volume(s)"
             if "volumes" in evaluation else f"{evaluation['images']} whole images")
    table = Table(title=f"held-out {evaluation['split']} split, {units}, "
                        f"{evaluation.get('objects', 0)} objects")
    columns = ["dice", "iou"] + [k for k in evaluation if k.startswith("ap@")]
    table.add_column("class")
    for column in columns:
        table.add_column(column, justify="right")
    for name in evaluation["dice"]:
        values = [evaluation[c][name] for c in columns]
        table.add_row(name, *("n/a" if v is None else f"{v:.3f}" for v in values))
    means = [evaluation["mean_dice"], evaluation["mean_iou"]] + [
        evaluation["m" + c] for c in columns[2:]]
    table.add_row("mean", *("n/a" if v is None else f"{v:.3f}" for v in means))
    out = Console()
    out.print(table)
    for warning in card.warnings:
        out.print(f"[bold yellow]{warning}[/bold yellow]")
    training = card.training
    out.print(f"trained {training['epochs_run']} epochs in "
                  f"{training['seconds']:.0f} s; wrote {out_dir / names.KERAS} and "
                  f"{out_dir / names.CARD}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--opset", type=int, default=EXPORT.opset, show_default=True,
              help="ONNX opset (>= 17; TensorRT 10/11 and ONNX Runtime import it).")
@click.option("--parity-images", type=int, default=EXPORT.parity_images, show_default=True,
              help="Validation images compared between Keras and ONNX Runtime.")
@click.option("--tolerance", type=float, default=EXPORT.tolerance, show_default=True,
              help="Largest accepted max |ONNX - Keras|; worse parity writes no file.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim graph simplification.")
def export(run_dir, opset, parity_images, tolerance, no_simplify):
    """Export RUN_DIR/model.keras to RUN_DIR/model.onnx, with measured parity, and its
    end-to-end twin RUN_DIR/model.e2e.onnx (post-process in the graph), gated."""
    from retinaunet_deploy.export.onnx import ExportOptions, export_onnx

    parity = export_onnx(run_dir, ExportOptions(opset=opset, parity_images=parity_images,
                                                tolerance=tolerance, simplify=not no_simplify),
                         progress=click.echo)
    errors = ", ".join(f"{name} {value:.2e}" for name, value in parity["max_abs_error"].items())
    click.echo(f"wrote {run_dir / names.ONNX}: parity on {parity['images']} validation images: "
               f"max |ONNX - Keras| {errors}; mask argmax agreement "
               f"{parity['mask_argmax_agreement']:.2%}")
