"""Training stage: data -> ``model.keras`` + ``model_card.json`` in a run folder.

Training reads patches of `size` cut from images of any size (`data.patches`);
an epoch is `steps_per_epoch` batches whatever the dataset's size. Validation
(best-epoch choice) and the test figures score whole images through the same
`Predictor` that apps use. The splits are decided here, once, and recorded in
the model card (`data.splits`); every later stage reads them back. Mask values
must be the classes 0..K-1 (`data.labels`): `label_map` and `ignore_index`
(``--label-map``, ``--ignore-index``) say how other values are read, are
recorded in the card's ``labels``, and void pixels count in no loss and no
figure. A training split without a foreground pixel is refused before training.

The run folder receives an uncompiled inference model with symbolic height and
width (built-in layers only, so it loads with ``safe_mode=True`` without this
package) and its model card. Both are written atomically at the end; nothing
under those names exists while training runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import record_artifact, tool_versions
from retinaunet_deploy.card import CARD_VERSION, ModelCard, save_card
from retinaunet_deploy.data.sources import Splits, source_for
from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.label_rules import Labels
from retinaunet_deploy.names import CARD, KERAS
from retinaunet_deploy.normalization import CHOICES


@dataclass
class TrainOptions:
    """Everything that decides a training run (recorded in the model card).

    `data` names a dataset source (`data.sources`): "synthetic", or a folder
    path; the synthetic counts apply to the embedded dataset only. A folder dataset is split by a seeded shuffle into
    train / validation (`val_fraction`) / test (`test_fraction`), or as the JSON
    file `splits` says. `label_map` (stored mask value -> class) and `ignore_index`
    (the stored value of void pixels) are the label rules of a dataset read from
    mask files (`label_rules.Labels`, the `labels` property).
    """

    data: str = "synthetic"
    preset: str = "small"
    size: int = 128                # training patch height and width (a multiple of 16)
    detection: bool = True
    epochs: int = 8
    steps_per_epoch: int = 80
    batch_size: int = 8
    train_images: int = 160
    val_images: int = 32
    test_images: int = 64
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    splits: str | None = None
    label_map: dict = field(default_factory=dict)
    ignore_index: int | None = None
    learning_rate: float = 2e-3
    dice_weight: float = 1.0
    loss_weights: dict = field(default_factory=lambda: {"mask": 1.0, "cls_logits": 1.0,
                                                        "box_deltas": 1.0})
    flips: bool = True
    rotations: bool = True
    foreground_fraction: float = 1 / 3
    intensity_jitter: float = 0.1
    border_fraction: float = 0.0   # patches reaching past the image edge (`data.patches`)
    patience: int = 4
    seed: int = 0
    normalization: str = "auto"    # `normalization.CHOICES`: auto, global, zscore, ct
    axis: int | None = None        # volume datasets: the slicing axis (None: 2)

    def __post_init__(self):
        for name in ("epochs", "steps_per_epoch", "batch_size", "train_images", "val_images",
                     "test_images", "size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, "
                                  f"got {getattr(self, name)}")
        if self.size % 16:
            raise ConfigError(f"--size must be a multiple of 16 (the network's stride), got "
                              f"{self.size}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.foreground_fraction <= 1:
            raise ConfigError(f"foreground fraction must be in [0, 1], got "
                              f"{self.foreground_fraction}")
        if self.normalization not in CHOICES:
            raise ConfigError(f"--normalization must be one of {list(CHOICES)}, got "
                              f"{self.normalization!r}")
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise ConfigError(f"--axis must be 0, 1 or 2 (the volume's array axis the 2D "
                              f"slices are taken along), got {self.axis}")
        self.labels  # noqa: B018 (checks the label rules)

    @property
    def labels(self) -> Labels:
        """The label rules (`label_rules.Labels`) of `label_map` and `ignore_index`."""
        return Labels(self.label_map, self.ignore_index)


def load_splits(options: TrainOptions) -> Splits:
    """The samples of each split and the card's ``data`` block, from the source that
    ``options.data`` names (`data.sources`: synthetic, or a folder split once and
    recorded).

    Raises ConfigError for label rules given to a source that makes its masks as
    classes (synthetic), and DataError for a training split without foreground.
    """
    from retinaunet_deploy.data.labels import check_training_split

    source = source_for(options.data)
    if options.labels != Labels() and not source.takes_labels:
        raise ConfigError(f"--label-map and --ignore-index apply to masks read from files; "
                          f"--data {options.data} makes its masks as classes 0..K-1: leave "
                          f"them out")
    if options.axis is not None and not source.takes_axis:
        raise ConfigError(f"--axis applies to volume datasets; --data {options.data} holds 2D "
                          f"images: leave it out")
    splits = source.split(options)
    check_training_split(splits.train, options.labels,
                         splits.description.get("path") or options.data)
    return splits


def selection_score(report: dict) -> float | None:
    """The best-epoch score of a validation report: the mean foreground Dice, averaged
    with mAP@0.1 when the model has detection heads and the split has a box; None when
    neither is defined (no foreground in truth or prediction)."""
    parts = [report["mean_dice"]] + ([report["map@0.1"]] if "map@0.1" in report else [])
    parts = [part for part in parts if part is not None]
    return sum(parts) / len(parts) if parts else None


def whole_image_figures(predictor, samples, class_names, num_det_classes) -> dict:
    """Figures of a predictor on whole images (the path apps use)."""
    from retinaunet_deploy.judge.ground_truth import evaluate_predictions

    predictions = predictor.predict([s.image for s in samples])
    return evaluate_predictions(predictions, samples, class_names, num_det_classes)


def _validation_callback(card: ModelCard, val_samples, num_det_classes):
    """Keras callback: whole-image validation figures into the epoch logs; keeps the best
    weights.

    The selection score is the validation mean foreground Dice, averaged with
    mAP@0.1 when the model has detection heads: Dice saturates epochs before the
    heads do, so Dice alone would keep an epoch whose detections are still weak.
    """
    import keras

    from retinaunet_deploy.runtime.backends import KerasBackend
    from retinaunet_deploy.runtime.predictor import Predictor

    class ValidationFigures(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_score, self.best_epoch, self.best_weights = None, None, None
            self.predictor = None

        def on_epoch_end(self, epoch, logs=None):
            if self.predictor is None:  # one traced function for every epoch
                self.predictor = Predictor(KerasBackend.from_model(self.model, card), card)
            report = whole_image_figures(self.predictor, val_samples, card.class_names,
                                         num_det_classes)
            score = selection_score(report)
            if score is None:     # not with a foreground pixel in the split (train checks)
                return
            logs["val_dice"] = report["mean_dice"]
            if report.get("map@0.1") is not None:
                logs["val_ap10"] = report["map@0.1"]
            logs["val_score"] = score
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best_epoch = score, epoch
                self.best_weights = self.model.get_weights()

    return ValidationFigures()


NO_SELECTION = ("the validation split has no foreground pixel, so no epoch could be chosen by "
                "its figures: the last epoch's weights were kept")


def finite_history(history: dict) -> dict:
    """The card's ``history`` (5 decimals per epoch), a non-finite value (a diverged loss)
    as null with ``history_reason`` beside it: the card stays strict JSON."""
    rounded = {k: [round(float(v), 5) if np.isfinite(v) else None for v in vals]
               for k, vals in history.items()}
    if any(v is None for vals in rounded.values() for v in vals):
        return {"history": rounded, "history_reason": "null: not finite (NaN or Inf) in that "
                "epoch; training diverged: lower --lr"}
    return {"history": rounded}


def data_warnings(splits: Splits, options: TrainOptions, evaluation: dict) -> list[str]:
    """What a user must know about the figures: small splits, boxes that merge, silence."""
    from retinaunet_deploy.data.labels import foreground_pixels, label_map_warnings
    from retinaunet_deploy.data.splits import few_images_warning

    warnings = [w for w in (few_images_warning(len(splits.val), "validation (best epoch)"),
                            few_images_warning(len(splits.test), "the test figures"))
                if w]
    if not splits.description.get("instances"):
        warnings.append("no instances/ folder: boxes are connected components of the mask, so "
                        "touching objects of one class share one box; add 16-bit instance "
                        "labels to separate them")
    void = options.labels.void
    if void is not None and not any((s.mask == void).any()
                                    for part in (splits.train, splits.val, splits.test)
                                    for s in part):
        warnings.append(f"--ignore-index {options.labels.ignore_index}: no mask holds that "
                        f"value, so no pixel is void; check the value")
    warnings += label_map_warnings(splits.description, options.labels)
    if splits.description.get("split_by") == "slab":
        slab = splits.description["slab"]
        warnings.append(f"one or two volumes: split in slabs of {slab['slices']} slices along "
                        f"axis {splits.description['axis']} ({slab['gap']} slices left out next "
                        f"to a slab of another split): the held-out slices come from the same "
                        f"subject as the training slices, so the figures measure generalisation "
                        f"across slices, not across subjects")
    consequence = {"validation": "no epoch was chosen by validation figures (the last "
                                 "epoch's weights are kept)",
                   "test": "the test figures have no object to measure (Dice n/a, or 0 for "
                           "false positives; AP n/a)"}
    for name, samples in (("validation", splits.val), ("test", splits.test)):
        if not any(foreground_pixels(s.mask, options.labels) for s in samples):
            warnings.append(f"the {name} split has no foreground pixel: {consequence[name]}; "
                            f"give it images with labelled objects (--splits FILE)")
    if evaluation.get("objects") and evaluation.get("map@0.1") == 0:
        warnings.append(f"the detector found none of the {evaluation['objects']} test objects "
                        f"(AP@0.1 = 0): train longer (--epochs, --steps-per-epoch) or check "
                        f"the labels")
    return warnings


def train(options: TrainOptions, out_dir: Path, verbose: int | None = None) -> ModelCard:
    """Train a RetinaUNet and write ``out_dir/model.keras`` and ``model_card.json``.

    Returns the model card (`card.ModelCard`), whose ``evaluation`` holds the whole-image
    test-split figures. `verbose` is Keras's: None shows a progress bar on a
    terminal and one line per epoch otherwise (logs, CI).
    Raises `OutputError` before any work when `out_dir` cannot be written.
    """
    from retinaunet_deploy.artifacts import check_writable

    check_writable(out_dir)  # before the data and the training, not after them
    import keras
    import tensorflow as tf

    from retinaunet_deploy.artifacts import atomic_path
    from retinaunet_deploy.data.labels import foreground_pixels
    from retinaunet_deploy.data.patches import PatchBatches, PatchOptions
    from retinaunet_deploy.data.splits import normalized_samples
    from retinaunet_deploy.data.volume_source import split_counts
    from retinaunet_deploy.model import RetinaUNet
    from retinaunet_deploy.model.anchors import generate_anchors
    from retinaunet_deploy.model.losses import FocalLoss, MaskLoss, SmoothL1Loss
    from retinaunet_deploy.normalization import choose_scheme, fit_normalization, pixel_max_for
    from retinaunet_deploy.postprocess import DetectionConfig
    from retinaunet_deploy.runtime.backends import KerasBackend
    from retinaunet_deploy.runtime.predictor import Predictor

    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    keras.utils.set_random_seed(options.seed)
    splits = load_splits(options)
    first = splits.train[0].image
    channels, pixel_dtype = first.shape[2], first.dtype
    num_classes = len(splits.class_names)

    # The normalisation scheme (`normalization`): for 8/16-bit images the training pixels'
    # mean and std, applied in-graph (x * scale + offset); otherwise applied before the
    # graph by `normalization.normalize`, so the training patches are cut from whole
    # images normalised by it, as every runtime and the calibration normalise them.
    norm = fit_normalization(choose_scheme(options.normalization, pixel_dtype),
                             [s.image for s in splits.train], [s.mask for s in splits.train],
                             options.labels.void, options.seed)
    builder = RetinaUNet.from_preset(options.preset, (options.size, options.size, channels),
                                     num_classes, detection=options.detection,
                                     input_scale=norm.scale if norm.in_graph else None,
                                     input_offset=norm.offset if norm.in_graph else None)
    anchor_config = builder.anchor_config
    card_json = {
        "card_version": CARD_VERSION,
        "preset": options.preset,
        "builder": builder.get_config(),
        "class_names": splits.class_names,
        "det_class_names": splits.class_names[1:] if builder.has_detection else [],
        "input": {"name": "image", "layout": "NHWC", "height": None, "width": None,
                  "channels": channels, "dtype": "float32", "stride": builder.stride,
                  "patch_size": options.size, "pixel_dtype": str(pixel_dtype),
                  "pixel_max": pixel_max_for(pixel_dtype, [s.image for s in splits.train])},
        "normalization": norm.to_dict(),
        "anchors": anchor_config.to_dict() if anchor_config else None,
        "postprocess": DetectionConfig().to_dict() if anchor_config else None,
        "data": splits.description,
        "labels": options.labels.to_dict(),
    }
    card = ModelCard.from_dict(card_json, "the model card being trained")  # for validation

    gpus = tf.config.list_physical_devices("GPU")
    strategy = (tf.distribute.MirroredStrategy() if len(gpus) > 1
                else tf.distribute.get_strategy())
    with strategy.scope():
        model = builder.build_model(any_size=True)
        schedule = keras.optimizers.schedules.CosineDecay(
            options.learning_rate, decay_steps=options.steps_per_epoch * options.epochs,
            alpha=0.02, warmup_target=None)
        losses = {"mask": MaskLoss(num_classes, options.dice_weight, options.labels.void)}
        if builder.has_detection:
            losses.update(cls_logits=FocalLoss(), box_deltas=SmoothL1Loss())
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=losses,
                      loss_weights={k: options.loss_weights[k] for k in losses})

    patch_options = PatchOptions(options.size, options.foreground_fraction, options.flips,
                                 options.rotations, options.intensity_jitter,
                                 options.border_fraction, builder.stride)
    anchors = (generate_anchors(anchor_config, (options.size, options.size))
               if anchor_config else None)
    batches = PatchBatches(normalized_samples(splits.train, norm), patch_options,
                           options.batch_size, anchors, builder.num_det_classes,
                           *((norm.mean, norm.std, card.input.pixel_max) if norm.in_graph
                             else (0.0, 1.0, None)), seed=options.seed)
    # A validation split without foreground cannot choose an epoch (its Dice is n/a or 0
    # whatever the model): then no selection and no early stop; the card says why.
    figures, callbacks = None, []
    if any(foreground_pixels(s.mask, options.labels) for s in splits.val):
        figures = _validation_callback(card, splits.val, builder.num_det_classes)
        callbacks = [figures, keras.callbacks.EarlyStopping(monitor="val_score", mode="max",
                                                            patience=options.patience)]
    history = model.fit(batches.dataset(options.steps_per_epoch * options.epochs),
                        epochs=options.epochs, steps_per_epoch=options.steps_per_epoch,
                        callbacks=callbacks, shuffle=False, verbose=verbose)
    train_seconds = time.perf_counter() - started

    # Restore the best epoch into a fresh, uncompiled model: the saved file then
    # needs no custom loss classes and loads with safe_mode=True anywhere.
    inference_model = builder.build_model(any_size=True)
    chosen = figures is not None and figures.best_epoch is not None
    inference_model.set_weights(figures.best_weights if chosen else model.get_weights())
    predictor = Predictor(KerasBackend.from_model(inference_model, card), card)
    evaluation = whole_image_figures(predictor, splits.test, splits.class_names,
                                     builder.num_det_classes)

    history_block = finite_history(history.history)
    warnings = data_warnings(splits, options, evaluation)
    if "history_reason" in history_block:
        warnings.append("a training loss was not finite (NaN or Inf) in some epoch: training "
                        "diverged; retrain with a lower --lr")
    out_dir = Path(out_dir)
    with atomic_path(out_dir / KERAS) as tmp:
        inference_model.save(tmp)
    card = save_card(out_dir, {
        **card_json,
        "training": {
            "options": asdict(options),
            "patches": asdict(patch_options),
            "images": {name: len(getattr(splits, name)) for name in ("train", "val", "test")},
            **({"volumes_and_slices": splits.description["counts"]}
               if "counts" in splits.description and "axis" in splits.description else {}),
            "epochs_run": len(history.history["loss"]),
            "best_epoch": figures.best_epoch + 1 if chosen else None,
            "best_val_score": round(float(figures.best_score), 4) if chosen else None,
            **({} if chosen else {"best_epoch_reason": NO_SELECTION}),
            "seconds": round(train_seconds, 1),
            **history_block,
            "tensorflow": tf.__version__, "keras": keras.__version__,
        },
        "evaluation": {"split": "test", "whole_images": True,
                       **split_counts(splits.description, splits.test), **evaluation},
        "warnings": warnings,
    })
    record_artifact(out_dir, KERAS, "train", options=asdict(options),
                    figures={"test": evaluation}, tools=tool_versions("tensorflow", "keras"))
    record_artifact(out_dir, CARD, "train", parent=KERAS)
    return card
