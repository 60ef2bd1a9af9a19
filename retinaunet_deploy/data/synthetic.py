"""The embedded synthetic dataset, in the spirit of Retina U-Net's toy experiments.

Each image is a noisy background with 1-3 bright, non-overlapping disks. Two
foreground classes are told apart only by shape:

* class 1, ``disk``: a solid disk;
* class 2, ``ring``: a disk with a concentric hole. The hole is background in the
  mask and shows background intensity in the image.

Image ``i`` of split ``s`` is drawn from its own generator seeded with
``(seed, s, i)``, so any image can be made alone, a larger dataset starts with
the smaller one, splits never share an image, and the same seed gives the same
bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from retinaunet_deploy.errors import ConfigError

CLASS_NAMES = ("background", "disk", "ring")
SPLITS = {"train": 0, "val": 1, "test": 2, "calibration": 3}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic images (recorded in the model card).

    Radii are fractions of the image size so the task looks the same at any size.
    """

    size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    min_radius: float = 0.07      # x size: 9 px at 128
    max_radius: float = 0.16      # x size: 20 px at 128
    hole_fraction: tuple[float, float] = (0.45, 0.6)   # hole radius / disk radius
    contrast: tuple[float, float] = (50.0, 100.0)      # object minus background, grey levels
    noise_sigma: tuple[float, float] = (6.0, 14.0)
    ring_probability: float = 0.5

    def __post_init__(self):
        if self.size < 32:
            raise ConfigError(f"synthetic image size must be >= 32, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 1 <= min_objects <= max_objects, got "
                              f"{self.min_objects}, {self.max_objects}")

    def to_dict(self) -> dict:
        return asdict(self)


def _disk_area(yy, xx, cy, cx, radius):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def synthetic_sample(config: SyntheticConfig, seed: int, split: str, index: int):
    """One synthetic image and its mask.

    Returns:
        image: (size, size) uint8 grey levels.
        mask: (size, size) uint8 class indices in {0, 1, 2} (`CLASS_NAMES`).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    size = config.size
    # Pixel centres, so a disk of radius r covers about pi r^2 pixels.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    background = rng.uniform(50, 100)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0, 30) * ((np.cos(angle) * yy + np.sin(angle) * xx) / size - 0.5)
    image = np.full((size, size), background, np.float32) + gradient
    mask = np.zeros((size, size), np.uint8)

    placed: list[tuple[float, float, float]] = []
    wanted = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(50 * wanted):  # rejection sampling for non-overlapping disks
        if len(placed) == wanted:
            break
        radius = rng.uniform(config.min_radius, config.max_radius) * size
        cy, cx = rng.uniform(radius + 2, size - radius - 2, size=2)
        if any((cy - py) ** 2 + (cx - px) ** 2 < (radius + pr + 3) ** 2 for py, px, pr in placed):
            continue
        placed.append((cy, cx, radius))
        area = _disk_area(yy, xx, cy, cx, radius)
        cls = 1
        if rng.random() < config.ring_probability:
            cls = 2
            area &= ~_disk_area(yy, xx, cy, cx, radius * rng.uniform(*config.hole_fraction))
        image[area] += rng.uniform(*config.contrast)
        mask[area] = cls

    image += rng.normal(0, rng.uniform(*config.noise_sigma), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def synthetic_dataset(config: SyntheticConfig, count: int, seed: int = 0, split: str = "train"):
    """`count` images of one split.

    Returns:
        images: (count, size, size, 1) uint8 NHWC.
        masks: (count, size, size) uint8 class indices.
    """
    if count < 1:
        raise ConfigError(f"synthetic image count must be >= 1, got {count}")
    images = np.empty((count, config.size, config.size, 1), np.uint8)
    masks = np.empty((count, config.size, config.size), np.uint8)
    for i in range(count):
        images[i, ..., 0], masks[i] = synthetic_sample(config, seed, split, i)
    return images, masks
