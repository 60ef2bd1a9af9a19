"""Anchors and box coding (plain numpy), shared by training, evaluation and runtimes.

Conventions used everywhere in the toolkit:

* Boxes are float32 ``(y1, x1, y2, x2)`` in input-image pixels, where a box
  covering pixel rows ``r0..r1`` inclusive has ``y1 = r0`` and ``y2 = r1 + 1``.
* Anchors of one level are centred on its grid cells: ``((i + 0.5) * stride,
  (j + 0.5) * stride)`` for row ``i`` and column ``j``.
* **Anchor order** (the order of the ``A`` axis of ``cls_logits`` and
  ``box_deltas``): levels by ascending stride; within a level, rows ``i``
  (top to bottom), then columns ``j`` (left to right), then anchor shape
  ``k = ratio_index * len(scales) + scale_index``.
* An anchor of stride ``s``, scale ``c`` and ratio ``r`` (height / width) has
  area ``(size_factor * s * c) ** 2``, height ``size * sqrt(r)`` and width
  ``size / sqrt(r)``.
* Box deltas are ``(dy, dx, dh, dw) = ((cy - acy) / ah / 0.1, (cx - acx) / aw / 0.1,
  log(h / ah) / 0.2, log(w / aw) / 0.2)``, the variances in `BOX_VARIANCES`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from retinaunet_deploy.errors import ConfigError

BOX_VARIANCES = np.array([0.1, 0.1, 0.2, 0.2], dtype=np.float32)
# Clamp on decoded log-size deltas so exp() cannot overflow (as in torchvision / Detectron).
MAX_LOG_SIZE_DELTA = math.log(1000.0 / 16.0)


@dataclass(frozen=True)
class AnchorConfig:
    """Where anchors are and what shapes they have.

    Attributes:
        strides: decoder strides that carry detection heads, ascending (e.g. (4, 8, 16)).
        scales: size multipliers per position (RetinaNet: 2**0, 2**(1/3), 2**(2/3)).
        ratios: height / width ratios per position (RetinaNet: 0.5, 1, 2).
        size_factor: anchor base size = size_factor * stride (RetinaNet: 4).
    """

    strides: tuple[int, ...] = (4, 8, 16)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    size_factor: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if list(self.strides) != sorted(set(self.strides)):
            raise ConfigError(f"anchor strides must be ascending and distinct, got {self.strides}")
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"anchor scales must be positive and non-empty, got {self.scales}")
        if not self.ratios or min(self.ratios) <= 0:
            raise ConfigError(f"anchor ratios must be positive and non-empty, got {self.ratios}")
        if self.size_factor <= 0:
            raise ConfigError(f"anchor size_factor must be positive, got {self.size_factor}")

    @property
    def anchors_per_position(self) -> int:
        return len(self.scales) * len(self.ratios)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, config: dict) -> AnchorConfig:
        return cls(**config)

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        """Total anchors A over all levels for an (H, W) input."""
        h, w = image_size
        return sum((h // s) * (w // s) for s in self.strides) * self.anchors_per_position


def anchor_shapes(config: AnchorConfig, stride: int) -> np.ndarray:
    """(K, 2) float32 anchor (height, width) for one level, in anchor-shape order k."""
    shapes = []
    for ratio in config.ratios:
        for scale in config.scales:
            size = config.size_factor * stride * scale
            shapes.append((size * math.sqrt(ratio), size / math.sqrt(ratio)))
    return np.asarray(shapes, dtype=np.float32)


def generate_anchors(config: AnchorConfig, image_size: tuple[int, int]) -> np.ndarray:
    """All anchors for an (H, W) input, in the head-output order (module docstring).

    Returns:
        (A, 4) float32 ``(y1, x1, y2, x2)`` pixel boxes; may extend past the image.
    """
    h, w = image_size
    per_level = []
    for stride in config.strides:
        if h % stride or w % stride:
            raise ConfigError(f"input size {h}x{w} is not a multiple of anchor stride {stride}")
        cy = (np.arange(h // stride, dtype=np.float32) + 0.5) * stride
        cx = (np.arange(w // stride, dtype=np.float32) + 0.5) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")                 # (Hs, Ws), row-major
        centres = np.stack([cy, cx], axis=-1)[:, :, None, :]        # (Hs, Ws, 1, 2)
        half = anchor_shapes(config, stride)[None, None, :, :] / 2  # (1, 1, K, 2)
        boxes = np.concatenate([centres - half, centres + half], axis=-1)  # (Hs, Ws, K, 4)
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level, axis=0).astype(np.float32)


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Box deltas of `boxes` relative to `anchors` (both (..., 4) y1x1y2x2, broadcastable).

    Returns (..., 4) float32 ``(dy, dx, dh, dw)`` divided by `BOX_VARIANCES`.
    Boxes must have positive height and width.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    by, bx, bh, bw = _centre_size(boxes)
    ay, ax, ah, aw = _centre_size(anchors)
    deltas = np.stack(
        [(by - ay) / ah, (bx - ax) / aw, np.log(bh / ah), np.log(bw / aw)], axis=-1
    )
    return (deltas / BOX_VARIANCES).astype(np.float32)


def decode_boxes(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Inverse of `encode_boxes`: (..., 4) deltas + (..., 4) anchors -> (..., 4) y1x1y2x2 float32."""
    deltas = np.asarray(deltas, dtype=np.float32) * BOX_VARIANCES
    ay, ax, ah, aw = _centre_size(np.asarray(anchors, dtype=np.float32))
    cy = ay + deltas[..., 0] * ah
    cx = ax + deltas[..., 1] * aw
    h = ah * np.exp(np.minimum(deltas[..., 2], MAX_LOG_SIZE_DELTA))
    w = aw * np.exp(np.minimum(deltas[..., 3], MAX_LOG_SIZE_DELTA))
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1).astype(np.float32)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU: (N, 4) x (M, 4) y1x1y2x2 -> (N, M) float32 in [0, 1]."""
    a = np.asarray(boxes_a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float32).reshape(-1, 4)
    # Plain ufuncs, not np.prod/np.clip: NMS calls this once per kept box, and on a
    # large image those wrappers were most of its time. Same arithmetic, same floats.
    overlap = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:])
                         - np.maximum(a[:, None, :2], b[None, :, :2]), 0)
    inter = overlap[..., 0] * overlap[..., 1]
    size_a = np.maximum(a[:, 2:] - a[:, :2], 0)
    size_b = np.maximum(b[:, 2:] - b[:, :2], 0)
    union = (size_a[:, 0] * size_a[:, 1])[:, None] + (size_b[:, 0] * size_b[:, 1])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


__all__ = [
    "BOX_VARIANCES",
    "AnchorConfig",
    "anchor_shapes",
    "box_iou",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
]
