"""Intensity normalisation: the card's ``normalization`` section and the ONE function that
applies it (`normalize`), for training, calibration, evaluation and every runtime.

A scheme is chosen at training (``train --normalization``) and recorded in the card:

* ``global`` (8- and 16-bit unsigned images; today's runs): the mean and standard
  deviation of all training pixels. The graph applies it itself (its first layer,
  ``preprocess``, computes x * scale + offset with scale = 1 / std and offset =
  -mean / std), so `normalize` passes the raw pixels through as float32 and apps
  feed raw pixel values.
* ``zscore`` (signed or float images that are not CT, e.g. MRI): per image and
  channel, (x - mean(x)) / std(x) over that image's pixels (std < 1e-8: the image
  is constant and becomes 0), as nnU-Net's ZScoreNormalization does per case. For a
  2D model on a volume the "image" is one slice. Not in the graph: per-image
  statistics depend on the whole image, so a graph that sees a tile or a padded
  input could not compute them. With ``nonzero_mask`` (decided at training: set
  when under `NONZERO_FRACTION` of the training pixels are nonzero, as in
  skull-stripped MRI whose background is exactly 0) the statistics are taken over
  the image's nonzero pixels only (any channel nonzero) and zero pixels stay 0, as
  nnU-Net's ``use_mask_for_norm`` does (nnU-Net decides it by how much cropping to
  the nonzero region shrinks the images). Without it, a slice holding a little
  brain in a sea of zeros z-scores that brain to 30 standard deviations or more,
  and an INT8 input range sized for those slices leaves a dozen levels for the
  others (the MNI152 run's INT8 missed its gate so).
* ``ct`` (Hounsfield units): clip to [clip_low, clip_high], the 0.5 and 99.5
  percentiles of the FOREGROUND intensities (mask > 0, void excluded) of the
  training split, then (x - mean) / std with the mean and standard deviation of
  those foreground intensities (before clipping), as nnU-Net's CTNormalization
  (Isensee et al., Nature Methods 18, 2021, and its ``CTNormalization`` class).
  Not in the graph either (one code path with ``zscore``): apps normalise first.

Out of the graph (``in_graph`` false), the graph's input is the normalised image and
the `Predictor` applies `normalize` before padding and tiling for every runtime
(Keras, ONNX Runtime, OpenVINO, LiteRT, TensorRT); the calibration patches and the
INT8 calibration range are cut from, and measured on, images normalised by the same
function. An app that feeds an exported file itself (the C++ example, a Triton
client) computes, per image, in float32:

    zscore: y = (x - mean(x)) / (std(x) if std(x) >= 1e-8 else 1)   per channel
            with nonzero_mask: mean and std over the pixels m where any channel is
            nonzero, and y = 0 outside m
    ct:     y = (min(max(x, clip_low), clip_high) - mean) / std
    global: y = x (the graph normalises)

with mean(x) and std(x) the population mean and standard deviation (numpy's
defaults) of the image's pixels, computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from retinaunet_deploy.errors import ConfigError, InputError

SCHEMES = ("global", "zscore", "ct")
CHOICES = ("auto", *SCHEMES)          # train --normalization
CT_PERCENTILES = (0.5, 99.5)
EPSILON = 1e-8                        # a smaller std is taken as a constant image
NONZERO_FRACTION = 0.75               # zscore: fewer nonzero training pixels -> nonzero_mask
FOREGROUND_SAMPLE = 1_000_000         # foreground values the CT statistics are taken on


@dataclass(frozen=True)
class Normalization:
    """The card's ``normalization`` section (see the module docstring).

    Attributes:
        scheme: "global", "zscore" or "ct".
        in_graph: whether the graph normalises (the ``global`` scheme); otherwise the
            graph takes `normalize`'s output.
        mean, std: ``global``: of all training pixels (raw units); ``ct``: of the
            training foreground intensities (raw units, e.g. HU); ``zscore``: 0 and 1
            (per-image statistics are computed on each image).
        scale, offset: the graph's ``preprocess`` layer (x * scale + offset) when
            `in_graph`; 1 and 0 otherwise (the graph has no such layer).
        clip_low, clip_high: ``ct`` only: the clipping range (raw units); None otherwise.
        nonzero_mask: ``zscore`` only: statistics over the nonzero pixels, zeros kept.
    """

    mean: float = 0.0
    std: float = 1.0
    scale: float = 1.0
    offset: float = 0.0
    in_graph: bool = True
    scheme: str = "global"
    clip_low: float | None = None
    clip_high: float | None = None
    nonzero_mask: bool = False

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown normalisation scheme {self.scheme!r} (known: "
                             f"{list(SCHEMES)})")
        if self.in_graph != (self.scheme == "global"):
            raise ValueError(f"scheme {self.scheme!r} is {'not ' if self.in_graph else ''}"
                             f"applied in the graph, in_graph must be "
                             f"{self.scheme == 'global'}")
        if (self.scheme == "ct") != (self.clip_low is not None and self.clip_high is not None):
            raise ValueError("clip_low and clip_high are given for the 'ct' scheme only, "
                             "and both")
        if self.nonzero_mask and self.scheme != "zscore":
            raise ValueError("nonzero_mask is for the 'zscore' scheme only")
        if self.scheme == "ct" and not (self.clip_low <= self.clip_high and self.std > 0):
            raise ValueError(f"ct needs clip_low <= clip_high and std > 0, got "
                             f"{self.clip_low}, {self.clip_high}, {self.std}")

    def to_dict(self) -> dict:
        """The card's ``normalization`` JSON, in the order training writes it (``scheme``
        first; the clip range for ``ct`` only)."""
        clip = {"clip_low": self.clip_low, "clip_high": self.clip_high} if (
            self.scheme == "ct") else {}
        masked = {"nonzero_mask": True} if self.nonzero_mask else {}
        return {"scheme": self.scheme, "in_graph": self.in_graph, "mean": self.mean,
                "std": self.std, "scale": self.scale, "offset": self.offset, **clip, **masked}

    @classmethod
    def from_dict(cls, norm: dict | None) -> Normalization:
        """Type a ``normalization`` section; a card without ``scheme`` (made before
        issue 21) is ``global``. Raises TypeError/ValueError for a malformed one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(norm or {}) - known)
        if unknown:
            raise TypeError(f"unknown entries {unknown}")
        typed = {}
        for key, value in (norm or {}).items():
            if key in ("in_graph", "nonzero_mask"):
                typed[key] = bool(value)
            elif key == "scheme":
                if not isinstance(value, str):
                    raise TypeError(f"scheme must be a name, got {value!r}")
                typed[key] = value
            else:
                typed[key] = None if value is None and key.startswith("clip") else float(value)
        if typed.get("scheme", "global") != "global" and "in_graph" not in typed:
            typed["in_graph"] = False
        return cls(**typed)


def normalize(images: np.ndarray, normalization: Normalization) -> np.ndarray:
    """THE normalisation: raw images -> what the graph takes, for every runtime.

    Args:
        images: (N, H, W, C) raw pixel values, any real dtype (uint8/uint16/int16/
            float...); each of the N is one whole image (a slice of a volume), never a
            tile or a padded image (per-image statistics are of the image).
        normalization: the card's section.
    Returns:
        (N, H, W, C) float32: the raw values for ``global`` (the graph normalises);
        ``zscore``: per image and channel (x - mean) / std (std < 1e-8 -> 1; with
        ``nonzero_mask`` the statistics of the nonzero pixels, zeros kept at 0);
        ``ct``: (clip(x, clip_low, clip_high) - mean) / std. Statistics in float64.
    Raises:
        ValueError: `images` is not 4-D.
    """
    if images.ndim != 4:
        raise ValueError(f"normalize takes (N, H, W, C) images, got shape {images.shape}")
    if normalization.in_graph:
        return np.asarray(images, dtype=np.float32)
    values = np.asarray(images, dtype=np.float64)
    if normalization.scheme == "ct":
        values = np.clip(values, normalization.clip_low, normalization.clip_high)
        out = (values - normalization.mean) / normalization.std
    elif normalization.nonzero_mask:
        out = np.zeros(values.shape, np.float32)
        for index, image in enumerate(values):
            inside = np.any(image != 0, axis=-1)
            if inside.any():
                pixels = image[inside]                      # (M, C)
                std = pixels.std(axis=0)
                out[index][inside] = ((pixels - pixels.mean(axis=0))
                                      / np.where(std < EPSILON, 1.0, std))
        return out
    else:
        mean = values.mean(axis=(1, 2), keepdims=True)
        std = values.std(axis=(1, 2), keepdims=True)
        out = (values - mean) / np.where(std < EPSILON, 1.0, std)
    return out.astype(np.float32)


def normalize_image(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """`normalize` for one image (H, W) or (H, W, C): returns (H, W, C) float32."""
    image = np.asarray(image)
    return normalize((image[:, :, None] if image.ndim == 2 else image)[None], normalization)[0]


def check_unbounded_dtype(dtype, normalization: Normalization, pixel_dtype) -> None:
    """Whether a model normalised outside the graph (``zscore``, ``ct``) takes images of
    `dtype`: floats and signed integers always; unsigned integers for ``zscore``
    (scale-free) or when the card's own `pixel_dtype` is unsigned.

    Raises `InputError` (one line with the remedy) otherwise: a ``ct`` model refuses
    other unsigned images (stored values, not Hounsfield units), any model refuses
    bool, complex or wider-than-64-bit dtypes.
    """
    dtype, pixel_dtype = np.dtype(dtype), np.dtype(pixel_dtype)
    if dtype.kind in "fi" and dtype.itemsize <= 8:
        return
    if dtype.kind == "u" and (normalization.scheme != "ct" or pixel_dtype.kind == "u"):
        return
    if dtype.kind == "u":
        raise InputError(f"the model takes CT intensities in Hounsfield units (signed, "
                         f"trained on {pixel_dtype}), got unsigned {dtype}; apply the rescale "
                         f"slope and intercept (a DICOM series read by this toolkit has them "
                         f"applied) and pass int16 or float32 HU")
    raise InputError(f"unsupported image dtype {dtype}; use signed integer or float pixel "
                     f"values (the model was trained on {pixel_dtype}, normalised per its "
                     f"card: {normalization.scheme})")


def choose_scheme(requested: str, dtype) -> str:
    """The scheme a run uses: `requested` ("auto" or one of `SCHEMES`) for training
    pixels of `dtype`.

    "auto": ``global`` for uint8 and uint16 (today's behaviour), ``zscore`` for any
    other dtype (signed or float). CT is never guessed from the values: ask for
    ``ct`` (its statistics need a foreground mask, which every training set has).
    Raises `ConfigError` for an unknown name, or ``global`` asked for signed or float
    pixels (their range has no fixed maximum to check inputs against).
    """
    dtype = np.dtype(dtype)
    if requested not in CHOICES:
        raise ConfigError(f"--normalization {requested!r} is not one of {list(CHOICES)}")
    unsigned = dtype in (np.dtype(np.uint8), np.dtype(np.uint16))
    if requested == "auto":
        return "global" if unsigned else "zscore"
    if requested == "global" and not unsigned:
        raise ConfigError(f"--normalization global takes 8- or 16-bit unsigned images, the "
                          f"training images are {dtype}; use --normalization zscore, or ct "
                          f"for CT in Hounsfield units")
    return requested


def pixel_max_for(dtype, images) -> int:
    """The card's ``pixel_max``: the dtype's largest value for uint8/uint16 (raw inputs must
    lie in [0, pixel_max]); for signed and float pixels the training images' largest
    value rounded up, at least 1 (display only: no range is enforced on them)."""
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return int(np.iinfo(dtype).max)
    high = max((float(np.max(image)) for image in images), default=1.0)
    return max(1, int(np.ceil(high)))


def fit_normalization(scheme: str, images, masks=None, void: int | None = None,
                      seed: int = 0) -> Normalization:
    """The `Normalization` of `scheme` fitted on the training split.

    Args:
        images: the training images, each (H, W, C) raw pixels.
        masks: their (H, W) class masks (``ct``: foreground = mask > 0, not `void`).
        void: the void label (`label_rules`) excluded from the foreground, or None.
        seed: for the subsample when the foreground holds more than
            `FOREGROUND_SAMPLE` values (an even, seeded choice).
    Raises:
        ConfigError: ``ct`` with no foreground pixel in the training split.
    """
    if scheme == "global":   # exactly today's computation
        pixels = np.concatenate([np.asarray(i).reshape(-1).astype(np.float64) for i in images])
        mean, std = float(pixels.mean()), float(pixels.std()) or 1.0
        return Normalization(mean=mean, std=std, scale=1.0 / std, offset=-mean / std)
    if scheme == "zscore":
        nonzero = sum(int(np.count_nonzero(np.any(np.asarray(i) != 0, axis=-1)))
                      for i in images)
        total = sum(int(np.prod(np.shape(i)[:2])) for i in images)
        return Normalization(in_graph=False, scheme="zscore",
                             nonzero_mask=bool(total) and nonzero < NONZERO_FRACTION * total)
    if scheme != "ct":
        raise ConfigError(f"unknown normalisation scheme {scheme!r}")
    parts = []
    for image, mask in zip(images, masks):
        foreground = (mask > 0) if void is None else ((mask > 0) & (mask != void))
        parts.append(np.asarray(image)[foreground].reshape(-1).astype(np.float64))
    values = np.concatenate(parts) if parts else np.zeros(0)
    if not values.size:
        raise ConfigError("--normalization ct takes its statistics from the training "
                          "split's foreground, and it has no foreground pixel; label "
                          "objects in the training masks")
    if values.size > FOREGROUND_SAMPLE:
        values = np.random.default_rng(seed).choice(values, FOREGROUND_SAMPLE, replace=False)
    low, high = (float(v) for v in np.percentile(values, CT_PERCENTILES))
    mean, std = float(values.mean()), float(values.std())
    std = std if std >= EPSILON else 1.0
    return Normalization(mean=mean, std=std, scale=1.0, offset=0.0, in_graph=False,
                         scheme="ct", clip_low=low, clip_high=high)
