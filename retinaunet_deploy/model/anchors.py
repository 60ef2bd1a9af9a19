"""Anchor generation (plain numpy), shared by training, evaluation and runtimes.

Box arithmetic (IoU, encode/decode, clip, NMS) is `model.boxes`. Conventions:

* Anchors are float32 ``(y1, x1, y2, x2)`` boxes in input-image pixels, as every
  box in the toolkit (`model.boxes`).
* Anchors of one level are centred on its grid cells: ``((i + 0.5) * stride,
  (j + 0.5) * stride)`` for row ``i`` and column ``j``.
* **Anchor order** (the order of the ``A`` axis of ``cls_logits`` and
  ``box_deltas``): levels by ascending stride; within a level, rows ``i``
  (top to bottom), then columns ``j`` (left to right), then anchor shape
  ``k = ratio_index * len(scales) + scale_index``.
* An anchor of stride ``s``, scale ``c`` and ratio ``r`` (height / width) has
  area ``(size_factor * s * c) ** 2``, height ``size * sqrt(r)`` and width
  ``size / sqrt(r)``.
* Box deltas against an anchor are `model.boxes.encode_boxes`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from retinaunet_deploy.errors import ConfigError


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


__all__ = [
    "AnchorConfig",
    "anchor_shapes",
    "generate_anchors",
]
