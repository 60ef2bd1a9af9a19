"""The embedded synthetic dataset, in the spirit of Retina U-Net's toy experiments.

Each image is a noisy background with a smooth intensity drift, carrying bright
objects of two foreground classes told apart only by shape:

* class 1, ``disk``: a solid disk;
* class 2, ``ring``: a disk with a concentric hole. The hole is background in the
  mask and shows background intensity in the image.

It is made hard enough that the float model does not score 1.000, so that a worse
variant shows: images vary in height and width (larger than the training patch),
about half of the objects touch or overlap an earlier one (the later one lies on
top; instance labels keep them apart), and contrast, blur and noise vary per image.

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

    Lengths are fractions of `size` (the training patch), so the task looks the
    same at any size. Image sides are drawn independently in `side_range` x size.
    """

    size: int = 128
    side_range: tuple[float, float] = (1.25, 2.5)
    objects_per_patch: tuple[float, float] = (1.0, 3.0)   # per size x size of image area
    radius: tuple[float, float] = (0.06, 0.14)             # x size: 8-18 px at 128
    touching_probability: float = 0.5
    hole_fraction: tuple[float, float] = (0.45, 0.6)       # hole radius / disk radius
    contrast: tuple[float, float] = (25.0, 90.0)           # object minus background
    blur_sigma: tuple[float, float] = (0.0, 1.5)           # px
    noise_sigma: tuple[float, float] = (6.0, 16.0)
    drift: tuple[float, float] = (0.0, 40.0)               # grey levels across the image
    ring_probability: float = 0.5

    def __post_init__(self):
        if self.size < 32:
            raise ConfigError(f"synthetic image size must be >= 32, got {self.size}")
        if not 0 < self.side_range[0] <= self.side_range[1]:
            raise ConfigError(f"need 0 < side_range[0] <= side_range[1], got {self.side_range}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> SyntheticConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _disk(yy, xx, cy, cx, radius):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def _place(rng, placed, radius, height, width, touching: bool):
    """A centre for a new object: touching/overlapping an earlier one, or free."""
    for _ in range(50):
        if touching and placed:
            py, px, pr = placed[int(rng.integers(len(placed)))]
            angle = rng.uniform(0, 2 * np.pi)
            distance = pr + radius - rng.uniform(0, 0.3) * min(pr, radius)
            cy, cx = py + distance * np.sin(angle), px + distance * np.cos(angle)
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        inside = radius + 1 <= cy <= height - radius - 1 and radius + 1 <= cx <= width - radius - 1
        if not inside:
            continue
        if touching or all((cy - py) ** 2 + (cx - px) ** 2 > (radius + pr + 3) ** 2
                           for py, px, pr in placed):
            return cy, cx
    return None


def synthetic_sample(config: SyntheticConfig, seed: int, split: str, index: int):
    """One synthetic image with its labels.

    Returns:
        `sample.Sample` with image (H, W, 1) uint8, mask (H, W) uint8 in {0, 1, 2}
        (`CLASS_NAMES`) and instances (H, W) int32 (0 = background).
    """
    from scipy import ndimage

    from retinaunet_deploy.data.sample import Sample

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    size = config.size
    height, width = (int(rng.uniform(*config.side_range) * size) for _ in range(2))
    # Pixel centres, so a disk of radius r covers about pi r^2 pixels.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5

    background = rng.uniform(50, 100)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * yy + np.sin(angle) * xx) / max(height, width) - 0.5
    by, bx, bs = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.3, 0.8) * size * 2
    bump = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * bs**2))
    image = background + rng.uniform(*config.drift) * (ramp + rng.uniform(-0.5, 0.5) * bump)
    image = image.astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.int32)

    placed: list[tuple[float, float, float]] = []
    area = height * width / size**2
    wanted = max(1, round(rng.uniform(*config.objects_per_patch) * area))
    for _ in range(wanted):
        radius = rng.uniform(*config.radius) * size
        centre = _place(rng, placed, radius, height, width,
                        touching=rng.random() < config.touching_probability)
        if centre is None:
            continue
        cy, cx = centre
        placed.append((cy, cx, radius))
        disk = _disk(yy, xx, cy, cx, radius)
        cls, hole = 1, np.zeros_like(disk)
        if rng.random() < config.ring_probability:
            cls = 2
            hole = _disk(yy, xx, cy, cx, radius * rng.uniform(*config.hole_fraction))
        # The later object lies on top: it owns its pixels, its hole shows background.
        mask[disk] = 0
        instances[disk] = 0
        mask[disk & ~hole] = cls
        instances[disk & ~hole] = len(placed)
        image[disk] = background + rng.uniform(*config.contrast)
        image[hole] = background

    # An earlier object cut in two by a later one is still one instance; drop the
    # crumbs an overlap can leave (under 4 px) from the labels.
    for label in np.unique(instances[instances > 0]):
        if np.count_nonzero(instances == label) < 4:
            mask[instances == label] = 0
            instances[instances == label] = 0
    image = ndimage.gaussian_filter(image, rng.uniform(*config.blur_sigma))
    image += rng.normal(0, rng.uniform(*config.noise_sigma), size=image.shape)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)[..., None]
    return Sample(f"synthetic-{split}-{index:05d}.png", pixels, mask, instances)


def synthetic_samples(config: SyntheticConfig, count: int, seed: int = 0, split: str = "train"):
    """`count` samples of one split (a list of `sample.Sample`)."""
    if count < 1:
        raise ConfigError(f"synthetic image count must be >= 1, got {count}")
    return [synthetic_sample(config, seed, split, i) for i in range(count)]
