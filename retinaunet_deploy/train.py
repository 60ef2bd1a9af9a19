"""Training stage: data -> ``model.keras`` + ``model_card.json`` in a run folder.

The run folder receives an uncompiled inference model (built-in layers only, so
it loads with ``safe_mode=True`` without this package) and its model card with
the held-out evaluation. Both are written atomically at the end; nothing under
those names exists while training runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import record_artifact, tool_versions
from retinaunet_deploy.card import CARD_NAME, save_card
from retinaunet_deploy.errors import ConfigError, DataError

MODEL_NAME = "model.keras"


@dataclass
class TrainOptions:
    """Everything that decides a training run (recorded in the model card).

    `data` is "synthetic" or a folder path; the synthetic counts apply to the
    embedded dataset only. A folder dataset is split by a seeded shuffle into
    train / validation (`val_fraction`) / test (`test_fraction`).
    """

    data: str = "synthetic"
    preset: str = "small"
    size: int | None = None       # synthetic: 128 when None; folder: the images' own size
    detection: bool = True
    epochs: int = 8
    batch_size: int = 8
    train_images: int = 640
    val_images: int = 64
    test_images: int = 128
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    learning_rate: float = 2e-3
    dice_weight: float = 1.0
    loss_weights: dict = field(default_factory=lambda: {"mask": 1.0, "cls_logits": 1.0,
                                                        "box_deltas": 1.0})
    flips: bool = True
    patience: int = 4
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "train_images", "val_images", "test_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, "
                                  f"got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning rate must be in (0, 1), got {self.learning_rate}")


@dataclass
class Splits:
    """Raw uint8/uint16 NHWC images and (N, H, W) masks per split, plus their description."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: list[str]
    description: dict


def load_splits(options: TrainOptions) -> Splits:
    """The embedded synthetic splits, or a folder dataset split by a seeded shuffle."""
    if options.data == "synthetic":
        from retinaunet_deploy.data.synthetic import (
            CLASS_NAMES,
            SyntheticConfig,
            synthetic_dataset,
        )

        config = SyntheticConfig(size=options.size or 128)
        splits = {name: synthetic_dataset(config, count, options.seed, name) for name, count in
                  (("train", options.train_images), ("val", options.val_images),
                   ("test", options.test_images))}
        description = {"kind": "synthetic", "seed": options.seed, "config": config.to_dict(),
                       "counts": {name: len(s[1]) for name, s in splits.items()}}
        return Splits(splits["train"], splits["val"], splits["test"], list(CLASS_NAMES),
                      description)

    from retinaunet_deploy.data.folder import load_folder_dataset

    dataset = load_folder_dataset(Path(options.data))
    n = len(dataset.names)
    n_val = max(1, round(n * options.val_fraction))
    n_test = max(1, round(n * options.test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"{options.data} has {n} image pairs; training needs at least 3 "
                        f"(train, validation and test each get one or more)")
    order = np.random.default_rng(options.seed).permutation(n)
    parts = np.split(order, [n - n_val - n_test, n - n_test])
    pick = [(dataset.images[idx], dataset.masks[idx]) for idx in parts]
    class_names = ["background"] + [f"class_{c}" for c in range(1, dataset.num_classes)]
    description = {"kind": "folder", "path": str(Path(options.data).resolve()),
                   "seed": options.seed,
                   "files": {name: [dataset.names[i] for i in idx]
                             for name, idx in zip(("train", "val", "test"), parts)}}
    return Splits(pick[0], pick[1], pick[2], class_names, description)


def _evaluation_callback(model_outputs, val_images, val_masks, class_names, anchor_config):
    """Keras callback: validation figures into the epoch logs; keeps the best weights.

    The selection score is the validation mean foreground Dice, averaged with
    mAP@0.1 when the model has detection heads: Dice saturates epochs before the
    heads do, so Dice alone would keep an epoch whose detections are still weak.
    """
    import keras

    from retinaunet_deploy.evaluate import evaluate_outputs

    class ValidationFigures(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_score, self.best_epoch, self.best_weights = -1.0, -1, None

        def on_epoch_end(self, epoch, logs=None):
            report = evaluate_outputs(model_outputs(self.model, val_images), val_masks,
                                      class_names, anchor_config)
            logs["val_dice"] = report["mean_dice"]
            logs["val_score"] = report["mean_dice"]
            if "map@0.1" in report:
                logs["val_ap10"] = report["map@0.1"]
                logs["val_score"] = (report["mean_dice"] + report["map@0.1"]) / 2
            if logs["val_score"] > self.best_score:
                self.best_score, self.best_epoch = logs["val_score"], epoch
                self.best_weights = self.model.get_weights()

    return ValidationFigures()


def train(options: TrainOptions, out_dir: Path, verbose: int | None = None) -> dict:
    """Train a RetinaUNet and write ``out_dir/model.keras`` and ``model_card.json``.

    Returns the model card (a dict), whose ``evaluation`` holds the test-split figures.
    `verbose` is Keras's: None shows a progress bar on a terminal and one line per
    epoch otherwise (logs, CI).
    """
    import keras
    import tensorflow as tf

    from retinaunet_deploy.artifacts import atomic_path
    from retinaunet_deploy.data.pipeline import make_dataset
    from retinaunet_deploy.evaluate import evaluate_outputs, keras_outputs
    from retinaunet_deploy.model import RetinaUNet
    from retinaunet_deploy.model.losses import FocalLoss, MaskLoss, SmoothL1Loss
    from retinaunet_deploy.postprocess import DetectionConfig

    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    keras.utils.set_random_seed(options.seed)
    splits = load_splits(options)
    train_images, train_masks = splits.train
    height, width, channels = train_images.shape[1:]
    if options.data != "synthetic" and options.size is not None and options.size != height:
        raise DataError(f"images in {options.data} are {height}x{width} but --size is "
                        f"{options.size}; omit --size to train at the images' own size")
    num_classes = len(splits.class_names)

    # Normalisation from the training pixels, applied in-graph: x * scale + offset.
    pixels = train_images.astype(np.float64)
    mean, std = float(pixels.mean()), float(pixels.std()) or 1.0
    builder = RetinaUNet.from_preset(options.preset, (height, width, channels), num_classes,
                                     detection=options.detection, input_scale=1.0 / std,
                                     input_offset=-mean / std)
    anchor_config = builder.anchor_config

    gpus = tf.config.list_physical_devices("GPU")
    strategy = (tf.distribute.MirroredStrategy() if len(gpus) > 1
                else tf.distribute.get_strategy())
    steps_per_epoch = int(np.ceil(len(train_images) / options.batch_size))
    with strategy.scope():
        model = builder.build_model()
        schedule = keras.optimizers.schedules.CosineDecay(
            options.learning_rate, decay_steps=steps_per_epoch * options.epochs, alpha=0.02,
            warmup_target=None)
        losses = {"mask": MaskLoss(num_classes, options.dice_weight)}
        if builder.has_detection:
            losses.update(cls_logits=FocalLoss(), box_deltas=SmoothL1Loss())
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=losses,
                      loss_weights={k: options.loss_weights[k] for k in losses})

    dataset = make_dataset(train_images, train_masks, num_classes, options.batch_size,
                           anchor_config, builder.num_det_classes, flips=options.flips,
                           seed=options.seed)
    figures = _evaluation_callback(keras_outputs, *splits.val, splits.class_names, anchor_config)
    early_stop = keras.callbacks.EarlyStopping(monitor="val_score", mode="max",
                                               patience=options.patience)
    history = model.fit(dataset, epochs=options.epochs, callbacks=[figures, early_stop],
                        shuffle=False,  # the tf.data pipeline shuffles, seeded
                        verbose=verbose)
    train_seconds = time.perf_counter() - started

    # Restore the best epoch into a fresh, uncompiled model: the saved file then
    # needs no custom loss classes and loads with safe_mode=True anywhere.
    inference_model = builder.build_model()
    inference_model.set_weights(figures.best_weights or model.get_weights())
    evaluation = evaluate_outputs(keras_outputs(inference_model, splits.test[0]), splits.test[1],
                                  splits.class_names, anchor_config)

    out_dir = Path(out_dir)
    with atomic_path(out_dir / MODEL_NAME) as tmp:
        inference_model.save(tmp)
    card = {
        "preset": options.preset,
        "builder": builder.get_config(),
        "class_names": splits.class_names,
        "det_class_names": splits.class_names[1:] if builder.has_detection else [],
        "input": {"name": "image", "layout": "NHWC", "height": height, "width": width,
                  "channels": channels, "dtype": "float32",
                  "pixel_dtype": str(train_images.dtype),
                  "pixel_max": int(np.iinfo(train_images.dtype).max)},
        "normalization": {"in_graph": True, "mean": mean, "std": std,
                          "scale": builder.input_scale, "offset": builder.input_offset},
        "anchors": anchor_config.to_dict() if anchor_config else None,
        "postprocess": DetectionConfig().to_dict() if anchor_config else None,
        "data": splits.description,
        "training": {
            "options": asdict(options),
            "epochs_run": len(history.history["loss"]),
            "best_epoch": figures.best_epoch + 1,
            "best_val_score": round(float(figures.best_score), 4),
            "seconds": round(train_seconds, 1),
            "history": {k: [round(float(v), 5) for v in vals]
                        for k, vals in history.history.items()},
            "tensorflow": tf.__version__, "keras": keras.__version__,
        },
        "evaluation": {"split": "test", **evaluation},
    }
    card = save_card(out_dir, card)
    record_artifact(out_dir, MODEL_NAME, "train", options=asdict(options),
                    figures={"test": evaluation}, tools=tool_versions("tensorflow", "keras"))
    record_artifact(out_dir, CARD_NAME, "train", parent=MODEL_NAME)
    return card


def card_split(card: dict, split: str):
    """Re-create one split of the data a model was trained on, from its card.

    Returns (images, masks) as in `Splits`; `split` is "train", "val" or "test".
    """
    options = TrainOptions(**card["training"]["options"])
    return getattr(load_splits(options), split)
