"""`Predictor`: one interface over every artifact, for apps and for the toolkit itself.

    predictor = Predictor.from_artifact("export/default/model.onnx")
    result = predictor.predict(image)          # (H, W) or (H, W, C) uint8/uint16/float
    result.mask, result.detections.boxes, result.detections.scores, result.detections.classes

Input contract (the model card's `input`): raw pixel values, uint8/uint16 of the
card's pixel dtype or float in [0, pixel_max], of exactly the model's height,
width and channels. The normalisation is inside the graph, so no other
preprocessing is applied; anything else is an `InputError` naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import ArtifactError, ConfigError, InputError
from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors
from retinaunet_deploy.postprocess import DetectionConfig, Detections, decode_detections

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class Prediction:
    """The result for one image.

    Attributes:
        mask: (H, W) uint8 class indices (argmax of the probabilities).
        detections: boxes/scores/classes, or None for a model without heads.
        probabilities: (H, W, K) float32 softmax, only when asked for.
    """

    mask: np.ndarray
    detections: Detections | None
    probabilities: np.ndarray | None = None


class Predictor:
    """Validate, run in batches, postprocess; the backend only runs the graph."""

    def __init__(self, backend, card: dict, batch_size: int = 8):
        self.backend = backend
        self.card = card
        self.batch_size = batch_size
        spec = card["input"]
        self.height, self.width, self.channels = spec["height"], spec["width"], spec["channels"]
        self.pixel_dtype = np.dtype(spec.get("pixel_dtype", "uint8"))
        self.pixel_max = spec.get("pixel_max", 255)
        self.class_names = card["class_names"]
        self.det_class_names = card.get("det_class_names") or []
        self.anchor_config = AnchorConfig.from_dict(card["anchors"]) if card.get("anchors") else None
        self.detection_config = DetectionConfig(**(card.get("postprocess") or {}))
        self.anchors = (generate_anchors(self.anchor_config, (self.height, self.width))
                        if self.anchor_config else None)

    @classmethod
    def from_artifact(cls, path, threads: int | None = None, providers: list[str] | None = None,
                      batch_size: int = 8) -> Predictor:
        """Pick the backend from the suffix (.keras, .onnx, .plan) and read the model card.

        Args:
            threads: intra-op threads of the backend (None: the library's default).
            providers: for .onnx, ONNX Runtime providers as names or (name, options)
                pairs (`runtime.providers.tensorrt_provider()`...); None: the ones that
                can load here.
        """
        from retinaunet_deploy.runtime.backends import BACKENDS

        path = Path(path)
        if path.suffix not in BACKENDS:
            raise ArtifactError(f"{path}: unsupported artifact type {path.suffix!r}; use one of "
                                f"{sorted(BACKENDS)}")
        backend_class = BACKENDS[path.suffix]
        kwargs = {"threads": threads}
        if providers is not None:
            if path.suffix != ".onnx":
                raise ConfigError(f"{path}: execution providers apply to .onnx files only; "
                                  f"drop the provider choice for a {path.suffix} artifact")
            kwargs["providers"] = providers
        backend = backend_class(path, **kwargs)
        card = backend.card()
        if card is None:
            raise ArtifactError(f"{path} has no model card (embedded or model_card.json beside "
                                f"it); export it from a trained run")
        return cls(backend, card, batch_size=batch_size)

    # === Input validation ===

    def prepare(self, images) -> tuple[np.ndarray, bool]:
        """Check images against the input contract.

        Returns (N, H, W, C) float32 and whether a single image was given.
        """
        if not isinstance(images, np.ndarray):
            raise InputError(f"images must be a numpy array, got {type(images).__name__}")
        single = images.ndim in (2, 3)
        if images.ndim == 2:
            images = images[:, :, None]
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise InputError(f"expected one image (H, W) or (H, W, C) or a batch (N, H, W, C), "
                             f"got an array of shape {images.shape}")
        n, h, w, c = images.shape
        if n == 0:
            raise InputError("the batch is empty (N = 0)")
        if (h, w) != (self.height, self.width):
            raise InputError(f"image size {h}x{w} does not match the model's "
                             f"{self.height}x{self.width}; resize or crop the image first")
        if c != self.channels:
            raise InputError(f"image has {c} channel(s), the model takes {self.channels}; "
                             f"convert the image first")
        if images.dtype.kind in "ui":
            if images.dtype != self.pixel_dtype:
                raise InputError(f"integer images must be {self.pixel_dtype} (the model was "
                                 f"trained on {self.pixel_dtype} pixels, 0..{self.pixel_max}), "
                                 f"got {images.dtype}; convert or pass float pixel values")
        elif images.dtype.type in FLOAT_DTYPES:
            if not np.all(np.isfinite(images)):
                raise InputError("images contain NaN or Inf; replace them before prediction")
        else:
            raise InputError(f"unsupported image dtype {images.dtype}; use {self.pixel_dtype} "
                             f"or float pixel values in [0, {self.pixel_max}]")
        return np.ascontiguousarray(images, dtype=np.float32), single

    # === Running ===

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs of the graph for a prepared (N, H, W, C) float32 batch, in chunks."""
        chunks = [self.backend.run(batch[i:i + self.batch_size])
                  for i in range(0, len(batch), self.batch_size)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def decode(self, outputs: dict[str, np.ndarray]) -> list[Detections] | None:
        """Per-image detections from raw outputs (the shared postprocess), or None
        for a model without detection heads."""
        if self.anchors is None or "cls_logits" not in outputs:
            return None
        return decode_detections(outputs["cls_logits"], outputs["box_deltas"], self.anchors,
                                 (self.height, self.width), self.detection_config)

    def predict(self, images, probabilities: bool = False):
        """Masks and detections for one image or a batch.

        Returns a `Prediction` for a single image, a list of them for a batch.
        """
        batch, single = self.prepare(images)
        outputs = self.run(batch)
        masks = outputs["mask"].argmax(-1).astype(np.uint8)
        detections = self.decode(outputs) or [None] * len(batch)
        results = [Prediction(mask, dets, probs.astype(np.float32) if probabilities else None)
                   for mask, dets, probs in zip(masks, detections, outputs["mask"])]
        return results[0] if single else results
