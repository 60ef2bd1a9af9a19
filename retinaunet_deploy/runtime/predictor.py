"""`Predictor`: one interface over every artifact, for apps and for the toolkit itself.

    predictor = Predictor.from_artifact("export/default/model.onnx")
    result = predictor.predict(image)          # (H, W) or (H, W, C) uint8/uint16/float
    result.mask, result.detections.boxes, result.detections.scores, result.detections.classes

Input contract (the model card's `input`): raw pixel values, uint8/uint16 of the
card's pixel dtype or float in [0, pixel_max] (a model of signed or float pixels:
any finite signed or float values, `normalization.check_unbounded_dtype`), with
the model's channel count, of any height and width of at least one stride;
anything else is an `InputError`. Images go through `normalization.normalize`.

How an image runs: it is padded at the bottom and right to a multiple of the
network's stride by mirroring (`data.patches.pad_to`, as training pads; a strip
of constant value made the model draw objects along it), run, and the outputs
are cropped back; anchors are made
for the padded size, boxes clipped to the image. An image whose padded height
or width exceeds `tile` (and, for an engine, its optimisation profile) runs as
a sliding window (`runtime.tiling`). Masks and boxes are always in the image's
own pixels. An end-to-end file (``*.e2e.onnx``: its post-process in the graph) runs
the same way, its decoding skipped (`runtime.e2e`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.data.patches import pad_to
from retinaunet_deploy.errors import ArtifactError, ConfigError, InputError
from retinaunet_deploy.model.anchors import generate_anchors
from retinaunet_deploy.normalization import check_unbounded_dtype, normalize
from retinaunet_deploy.postprocess import DetectionConfig, Detections, decode_detections
from retinaunet_deploy.runtime import e2e, tiling
from retinaunet_deploy.runtime.base import Backend
from retinaunet_deploy.runtime.messages import channels_form, no_card, tile_capped

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 0.25


@dataclass
class Prediction:
    """The result for one image, at the image's own size.

    Attributes:
        mask: (H, W) uint8 class indices (argmax of the probabilities).
        detections: boxes/scores/classes in image pixels, or None without heads.
        probabilities: (H, W, K) float32 softmax, only when asked for.
    """

    mask: np.ndarray
    detections: Detections | None
    probabilities: np.ndarray | None = None


class Predictor:
    """Validate, pad or tile, run in batches, postprocess; the backend only runs the graph.

    Args:
        card: the model's `card.ModelCard`, or its JSON as a dict (an app's hand-built
            card), typed once here by `ModelCard.from_dict` (`ArtifactError` when it
            does not type).
        tile: images whose padded height or width exceeds this run as a sliding window
            of tiles at most this large (a stride multiple).
        overlap: fraction of a tile shared with its neighbour.
    """

    def __init__(self, backend: Backend, card: ModelCard | dict,
                 batch_size: int | None = None, tile: int = DEFAULT_TILE,
                 overlap: float = DEFAULT_OVERLAP):
        if not isinstance(card, ModelCard):
            card = ModelCard.from_dict(card, "the card given to the Predictor")
        self.backend = backend
        self.card = card
        limits = backend.limits
        # Default: 8 images per call, or the batch the backend was tuned for (an engine's).
        self.batch_size = batch_size or limits.preferred_batch or 8
        self.channels = card.input.channels
        self.stride = card.input.stride
        self.pixel_dtype = np.dtype(card.input.pixel_dtype)
        self.pixel_max = card.input.pixel_max
        self.normalization = card.normalization
        self.class_names = card.class_names
        self.det_class_names = card.det_class_names
        self.anchor_config = card.anchors
        self.detection_config = card.detection_config
        # The backend's limits (an engine's optimisation profile) bound the tile and the
        # smallest input: `tile` is the tile used, `requested_tile` the one asked for, and
        # `tile_warning` (warned once) says when the two differ.
        self.requested_tile = tile
        tile = min(tile, limits.max_size) if limits.max_size else tile
        self.tile_warning = None if tile == self.requested_tile else tile_capped(
            getattr(backend, "path", None), self.requested_tile, tile)
        if self.tile_warning:
            warnings.warn(self.tile_warning, UserWarning, stacklevel=2)
        self.min_input = max(self.stride, limits.min_size)
        if tile < self.stride or tile % self.stride:
            raise ConfigError(f"tile {tile} must be a positive multiple of the stride "
                              f"{self.stride}")
        if not 0 <= overlap < 1:
            raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
        self.tile, self.overlap = tile, overlap
        self.patch_size = card.input.patch_size
        self._anchors: dict[tuple[int, int], np.ndarray] = {}
        self.max_detections: int | None = None   # per-image cap; None: the card's, scaled
        # An end-to-end file decodes in its graph, with the card's postprocess as built.
        self.end_to_end = e2e.runs_end_to_end(backend)
        self.graph_config = card.detection_config
        self._scale_warned = False

    @classmethod
    def from_artifact(cls, path, threads: int | None = None, providers: list[str] | None = None,
                      batch_size: int | None = None, tile: int = DEFAULT_TILE,
                      overlap: float = DEFAULT_OVERLAP, runtime: str = "auto") -> Predictor:
        """Open an artifact in a runtime (`runtime.registry`) and read its model card.

        Args:
            threads: intra-op threads of the backend (None: the library's default).
            providers: for .onnx in ONNX Runtime, providers as names or (name, options)
                pairs (`runtime.providers.tensorrt_provider()`...); None: the ones that
                can load here. Refused (`ConfigError`) with any other runtime.
            runtime: "auto" (by suffix: .keras Keras, .onnx ONNX Runtime, .plan TensorRT,
                .tflite LiteRT) or a registered runtime's name (`registry.runtime_choices()`:
                for an .onnx file "onnxruntime", "openvino" (fp32, or int8 for the Q/DQ
                file) or "openvino-bf16" (the bf16 precision hint)).

        Raises:
            ArtifactError: a missing, corrupt or unsupported file, or one without a card.
            ConfigError: an unknown runtime, or one that does not run this file.
        """
        from retinaunet_deploy.runtime.registry import open_backend, resolve

        path = Path(path)
        options = {}
        if providers is not None:
            try:
                onnxruntime = resolve(path, runtime).name == "onnxruntime"
            except (ArtifactError, ConfigError):
                onnxruntime = False
            if not onnxruntime:
                raise ConfigError(f"{path}: execution providers apply to .onnx files in ONNX "
                                  f"Runtime only; drop the provider choice")
            options["providers"] = providers
        backend = open_backend(path, runtime, threads, **options)
        card = backend.card()
        if card is None:
            backend.close()
            raise ArtifactError(no_card(path))
        return cls(backend, card, batch_size=batch_size, tile=tile, overlap=overlap)

    def close(self) -> None:
        """Release the backend's runtime (`Backend.close`); `predict` raises afterwards."""
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # === Input validation: the input contract, enforced here and only here ===

    def check_header(self, height: int, width: int, channels: int, dtype) -> None:
        """Check an image's header (size, channels, dtype) against the card's contract
        without its pixels (planning checks every input this way before reading any).

        Args:
            height, width: the image's size in pixels.
            channels: its channel count C (1 for an (H, W) image).
            dtype: its pixel dtype (anything `np.dtype` takes).

        Raises `InputError` (one line, with the value found and what to change) for a
        side smaller than one stride, another channel count than the card's, an integer
        dtype other than the card's pixel dtype, or a dtype that is neither.
        """
        dtype = np.dtype(dtype)
        if min(height, width) < self.stride:
            raise InputError(f"image size {height}x{width} is smaller than one network stride "
                             f"({self.stride} px); use a larger image")
        if channels != self.channels:
            raise InputError(f"image has {channels} channel(s), the model takes "
                             f"{self.channels}; save it as {channels_form(self.channels)}")
        if not self.normalization.in_graph:   # a model of signed or float pixels
            check_unbounded_dtype(dtype, self.normalization, self.pixel_dtype)
        elif dtype.kind in "ui":
            if dtype != self.pixel_dtype:
                raise InputError(f"integer images must be {self.pixel_dtype} (the model was "
                                 f"trained on {self.pixel_dtype} pixels, 0..{self.pixel_max}), "
                                 f"got {dtype}; save it as {self.pixel_dtype} (0.."
                                 f"{self.pixel_max}, scaled as the training images were), or "
                                 f"train a model on {dtype} images ('retinaunet-deploy train "
                                 f"--data DIR')")
        elif dtype.type not in FLOAT_DTYPES:
            raise InputError(f"unsupported image dtype {dtype}; use {self.pixel_dtype} "
                             f"or float pixel values in [0, {self.pixel_max}]")

    def check_input(self, images) -> None:
        """Check one image (H, W) / (H, W, C) or a batch (N, H, W, C) against the card's
        input contract: `check_header`, then the values. Pixel values must be raw values
        in [0, pixel_max] (255 for 8-bit, 65535 for 16-bit data; any value for a ``zscore``
        or ``ct`` model), finite for floats.

        Raises `InputError` (one line naming the value found) for anything outside it: a
        non-array, a wrong rank, an empty batch, what `check_header` refuses, NaN or
        Inf, or a value below 0 or above pixel_max (e.g. a float image scaled x257,
        0..65535, fed to an 8-bit model, or a normalised one with negative values).
        """
        self._checked(images)

    def _checked(self, images) -> tuple[np.ndarray, bool]:
        """`check_input`; returns the images as (N, H, W, C), as given, and whether a
        single image was given."""
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
        self.check_header(h, w, c, images.dtype)
        self._check_values(images, single)
        return images, single

    def _check_values(self, images: np.ndarray, single: bool) -> None:
        """NaN/Inf and the range [0, pixel_max], with the value found (two passes)."""
        if images.dtype.kind == "u" and self.pixel_max >= np.iinfo(images.dtype).max:
            return  # every value of the card's pixel dtype is in range
        low, high = images.min(), images.max()
        which = "image" if single else f"the batch of {len(images)}"
        if images.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
            bad = ~np.isfinite(images)
            index = np.unravel_index(int(np.argmax(bad)), images.shape)
            where = f"row {index[1]}, column {index[2]}" + ("" if single else
                                                           f" of image {index[0]}")
            raise InputError(f"{which} contains NaN or Inf ({int(bad.sum())} value(s), the "
                             f"first {images[index]} at {where}); replace them before "
                             f"prediction")
        if self.normalization.in_graph and (low < 0 or high > self.pixel_max):
            value = low if low < 0 else high
            side = "below 0" if low < 0 else f"above pixel_max {self.pixel_max}"
            raise InputError(
                f"{which} holds pixel value {float(value):g} ({side}; its values span "
                f"{float(low):g}..{float(high):g}); the model takes raw pixel values in "
                f"[0, {self.pixel_max}] ({self.pixel_dtype}, as it was trained): pass the raw "
                f"{self.pixel_dtype} pixels, or float values rescaled into that range")

    def prepare(self, images) -> tuple[np.ndarray, bool]:
        """Check images against the input contract (`check_input`).

        Returns (N, H, W, C) float32 through `normalization.normalize` (raw values for a
        model that normalises in its graph) and whether a single image was given.
        """
        images, single = self._checked(images)
        return np.ascontiguousarray(normalize(images, self.normalization)), single

    # === Running ===

    def anchors_for(self, height: int, width: int) -> np.ndarray | None:
        """Anchors of a (padded) input size, cached per size."""
        if self.anchor_config is None:
            return None
        if (height, width) not in self._anchors:
            self._anchors[(height, width)] = generate_anchors(self.anchor_config, (height, width))
        return self._anchors[(height, width)]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs of the graph for an (N, H, W, C) float32 batch whose H and W are
        stride multiples, in chunks of `batch_size`."""
        chunks = [self.backend.run(batch[i:i + self.batch_size])
                  for i in range(0, len(batch), self.batch_size)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def config_for(self, height: int, width: int) -> DetectionConfig:
        """The card's postprocess, its per-image counts scaled to an input of this size.

        `max_detections` and `pre_nms_top_k` are set for an input of the training
        patch size; an image k times larger holds about k times the objects (a
        512x512 nuclei image has 125, over the card's 100), so both scale by k.
        `max_detections` (when set) replaces the scaled cap: at most that many per image.
        """
        factor = max(1, math.ceil(height * width / self.patch_size**2))
        config = self.detection_config
        cap = self.max_detections or config.max_detections * factor
        return dataclasses.replace(config, max_detections=cap,
                                   pre_nms_top_k=max(config.pre_nms_top_k * factor, cap))

    def decode(self, outputs: dict[str, np.ndarray],
               image_size: tuple[int, int] | None = None) -> list[Detections] | None:
        """Per-image detections from raw outputs of one input size (the shared postprocess),
        boxes clipped to `image_size` (default: the input size); None without heads.
        End-to-end outputs are read as `runtime.e2e.detections` reads them."""
        if self.end_to_end:
            warning = e2e.scale_warning(getattr(self.backend, "path", None),
                                        outputs["labels"].shape[1:3], self.patch_size,
                                        self.graph_config)
            if warning and not self._scale_warned:
                self._scale_warned = True
                warnings.warn(warning, UserWarning, stacklevel=2)
            size = image_size or outputs["labels"].shape[1:3]
            return e2e.detections(outputs, size, self.graph_config, self.config_for(*size))
        if self.anchor_config is None or "cls_logits" not in outputs:
            return None
        height, width = outputs["mask"].shape[1:3]
        return decode_detections(outputs["cls_logits"], outputs["box_deltas"],
                                 self.anchors_for(height, width), image_size or (height, width),
                                 self.config_for(*(image_size or (height, width))))

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an (height, width) image is padded to: stride multiples, at least
        the backend's smallest input."""
        return tuple(max(self.min_input, -(-d // self.stride) * self.stride)
                     for d in (height, width))

    def _padded(self, batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[1:3]
        ph, pw = self.padded_size(h, w)
        return pad_to(batch, ph, pw, axes=(1, 2))

    def fits_whole(self, height: int, width: int) -> bool:
        padded = [-(-d // self.stride) * self.stride for d in (height, width)]
        return max(padded) <= self.tile

    def _whole(self, batch: np.ndarray):
        """(probabilities (N, H, W, K), detections or None) for a same-size batch."""
        h, w = batch.shape[1:3]
        outputs = self.run(self._padded(batch))
        detections = self.decode(outputs, (h, w))
        if self.end_to_end:  # labels, not probabilities; the graph's M, the scaled cap
            cap = self.config_for(h, w).max_detections
            labels = np.asarray(outputs["labels"][:, :h, :w], np.uint8)  # (TensorRT: float)
            return labels, [e2e.capped(d, cap) for d in detections]
        return outputs["mask"][:, :h, :w], detections

    def tile_layout(self, height: int, width: int) -> tiling.TileLayout:
        """The tiles `predict` runs an (height, width) image as (one tile when it fits)."""
        return tiling.tile_layout(*self.padded_size(height, width), self.tile, self.overlap,
                                  self.stride)

    def _tiled(self, image: np.ndarray):
        """(probabilities (H, W, K), detections or None) of one (H, W, C) image, by tiles."""
        h, w = image.shape[:2]
        window = e2e.sliding_window_labels if self.end_to_end else tiling.sliding_window
        probabilities, per_tile, layout = window(
            self._padded(image[None])[0], self.backend.run, self.tile, self.overlap,
            self.stride, self.batch_size, decode=self.decode)
        probabilities = probabilities[:h, :w]
        if not per_tile:
            return probabilities, None
        merged = tiling.merge_tile_detections(
            per_tile, layout.origins, layout.cores, (h, w),
            self.detection_config.iou_threshold, self.config_for(h, w).max_detections)
        return probabilities, merged

    def predict(self, images, probabilities: bool = False):
        """Masks and detections for one image, a batch, or a list of images of any sizes.

        Returns a `Prediction` for a single image, a list of them otherwise. Raises
        `ConfigError` for `probabilities` with an end-to-end file (it returns labels).
        """
        if isinstance(images, (list, tuple)):
            odd = next((type(i).__name__ for i in images if not isinstance(i, np.ndarray)), None)
            if odd is not None:
                raise InputError(f"images must be a numpy array or a list of them, got a "
                                 f"{type(images).__name__} holding a {odd}")
            return [self.predict(image, probabilities) for image in images]
        if probabilities and self.end_to_end:
            raise ConfigError(f"{getattr(self.backend, 'path', 'this model')} is an end-to-end "
                              f"file: it returns labels, not probabilities; use its plain "
                              f".onnx twin for probabilities")
        batch, single = self.prepare(images)
        h, w = batch.shape[1:3]
        if self.fits_whole(h, w):
            probs, detections = self._whole(batch)
            detections = detections or [None] * len(batch)
        else:
            pairs = [self._tiled(image) for image in batch]
            probs = [p for p, _ in pairs]
            detections = [d for _, d in pairs]
        results = [Prediction(p if self.end_to_end else p.argmax(-1).astype(np.uint8), dets,
                              np.asarray(p, np.float32) if probabilities else None)
                   for p, dets in zip(probs, detections)]
        return results[0] if single else results
