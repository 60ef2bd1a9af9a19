"""The out-of-calibration guard: is an image like the data an INT8 file was calibrated on?

An INT8 file's activation ranges were calibrated on the run's calibration patches,
and its agreement with the float model was measured on test images like them. On
data unlike them it may agree far less: the demo's recommended OpenVINO INT8 file
agreed 99.75% with the float model on test-like images but 96.2% (below its own
99.5% gate) on the same images 90 grey levels brighter. So `calibrate` records
the calibration images' intensity statistics (`intensity_record`), in
calibration.json (``calibration_data.intensity``) and inside each INT8 ONNX file
(``metadata_props`` key ``calibration_range``, beside the card, so a copied file
keeps it), and `predict` checks every image against them (`CalibrationRange.check`).

The statistics, per image (all pixels and channels, of the values the graph takes:
raw pixel values for a model that normalises in its graph; for a ``zscore`` or
``ct`` model (signed or float pixels) the values `normalization.normalize` gives, so
the record carries the card's ``normalization`` and `CalibrationRange.check`
normalises an image through that same function before measuring it):

* ``mean``: the mean pixel value (overall brightness);
* ``p1`` and ``p99``: the 1st and 99th percentiles (the dark and bright ends,
  robust to a few hot or dead pixels).

The record holds each statistic's min, max, mean and standard deviation over the
calibration images, and the range a checked image must stay within (``allowed``):
``[min - margin, max + margin]``.

The margin rule. A finite calibration set of N images never shows the extremes of
its source: an image from the same source lands beyond the observed min or max
by chance. Taking a statistic as roughly normal across images with standard
deviation s, the largest of N values sits near e(N) s above the mean, with e(N)
Blom's expected maximum of N standard normals, Phi^-1((N - 0.375) / (N + 0.25)).
The margin is ``max(0, z - e(N)) * s`` with z = Phi^-1(0.999) = 3.09, so that an
image from the calibration source falls outside a side of the range about once
in a thousand, whatever N (128 images: 0.51 s; 16 images: 1.32 s), and at least
0.5% of pixel_max (1.3 grey levels of 8-bit data), so that a set of near-identical
images does not flag rounding. On the demo run (128 patches of 128 px) this flags
none of its 64 test images and all 64 of the same images 90 grey levels brighter;
with no margin, test images darker than every calibration patch would be flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from retinaunet_deploy.errors import ArtifactError
from retinaunet_deploy.names import CALIBRATION, ONNX
from retinaunet_deploy.normalization import Normalization, normalize_image

RECORD_VERSION = 1
METADATA_KEY = "calibration_range"  # the ONNX metadata_props key, beside "model_card"
STATISTICS = {"mean": "mean pixel value", "p1": "1st percentile of the pixel values",
              "p99": "99th percentile of the pixel values"}
FALSE_ALARM = 0.001     # per side and statistic, for an image from the calibration source
MIN_MARGIN = 0.005      # of pixel_max
MAX_PIXELS = 1 << 20    # larger images are checked on an even subsample of their pixels
QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger",
                 "MatMulInteger", "QLinearMatMul"}


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """{statistic: value} of one image (H, W) or (H, W, C) of raw pixel values (any
    dtype), over all its pixels and channels; images over 2**20 values are measured on
    an even subsample (every k-th value).

    Percentiles are numpy's default (linear interpolation between order statistics);
    for 8- and 16-bit unsigned images they are read from a histogram instead of a sort,
    giving the same values (predict checks every image with this)."""
    values = np.asarray(image).reshape(-1)
    if values.size > MAX_PIXELS:
        values = values[::-(-values.size // MAX_PIXELS)]
    if values.dtype in (np.uint8, np.uint16) and values.size:
        return _histogram_statistics(values)
    values = values.astype(np.float64)
    p1, p99 = np.percentile(values, [1, 99])
    return {"mean": float(values.mean()), "p1": float(p1), "p99": float(p99)}


def _histogram_statistics(values: np.ndarray) -> dict[str, float]:
    """`image_statistics` of unsigned integer values through a histogram: the k-th
    smallest value is the first whose cumulative count exceeds k."""
    counts = np.bincount(values)
    cumulative = np.cumsum(counts)
    levels = np.arange(counts.size, dtype=np.float64)
    figures = {"mean": float((levels * counts).sum() / values.size)}
    for name, q in (("p1", 1), ("p99", 99)):
        position = q / 100 * (values.size - 1)       # numpy's "linear" method
        below = int(np.floor(position))
        low, high = np.searchsorted(cumulative, [below + 1, min(below + 2, values.size)])
        figures[name] = float(low + (position - below) * (high - low))
    return {"mean": figures["mean"], "p1": figures["p1"], "p99": figures["p99"]}


def margin_factor(images: int) -> float:
    """How many standard deviations of a statistic the range is widened by on each side,
    for a calibration set of `images` (the margin rule of the module docstring)."""
    normal = NormalDist()
    expected_max = normal.inv_cdf((images - 0.375) / (images + 0.25))
    return max(0.0, normal.inv_cdf(1 - FALSE_ALARM) - expected_max)


def intensity_record(images: np.ndarray, pixel_max: float, split: str = "train",
                     normalization: Normalization | None = None) -> dict:
    """The record of (N, H, W, C) calibration images, the values the graph takes (what
    calibration.json and the ONNX metadata hold; `CalibrationRange.from_record` reads
    it back). With a `normalization` applied outside the graph (``zscore``, ``ct``)
    the images are already normalised, the record keeps that section, and the margin's
    floor is 0.5% of one standard deviation (the normalised unit) instead of pixel_max."""
    outside = normalization is not None and not normalization.in_graph
    per_image = [image_statistics(image) for image in images]
    count = len(per_image)
    factor = margin_factor(count)
    statistics, allowed = {}, {}
    for name in STATISTICS:
        values = np.array([figures[name] for figures in per_image])
        spread = float(values.std())
        margin = max(factor * spread, MIN_MARGIN * (1.0 if outside else pixel_max))
        statistics[name] = {"min": float(values.min()), "max": float(values.max()),
                            "mean": float(values.mean()), "std": spread,
                            "margin": margin}
        allowed[name] = [float(values.min()) - margin, float(values.max()) + margin]
    return {"version": RECORD_VERSION, "images": count, "split": split,
            "image_size": list(images.shape[1:3]), "pixel_max": pixel_max,
            "statistics": statistics, "allowed": allowed,
            "margin_rule": (f"[min - margin, max + margin], margin = max({factor:.3f} "
                            f"std, {MIN_MARGIN:.1%} of pixel_max): an image from the "
                            f"calibration source falls outside a side about once in "
                            f"{round(1 / FALSE_ALARM)} (retinaunet_deploy.runtime."
                            f"calibration_range)"),
            **({"normalization": normalization.to_dict()} if outside else {})}


@dataclass(frozen=True)
class CalibrationRange:
    """The intensity range an INT8 file was calibrated on.

    Attributes:
        allowed: statistic -> (low, high) raw pixel values an image must stay within.
        images: how many calibration images the range was measured on.
        source: where it was read ("<file> metadata" or "<calibration.json>").
        record: the whole record as written (strict JSON).
        normalization: the card's scheme applied to an image before it is measured
            (``zscore``, ``ct``), or None: raw pixel values are measured.
    """

    allowed: dict[str, tuple[float, float]]
    images: int
    source: str = ""
    record: dict | None = None
    normalization: Normalization | None = None

    @classmethod
    def from_record(cls, record, source: str) -> CalibrationRange:
        """Type a record (`from_images`); `ArtifactError` naming `source` when it is not one."""
        try:
            if record["version"] != RECORD_VERSION:
                raise ValueError(f"version {record['version']!r}, this toolkit reads "
                                 f"{RECORD_VERSION}")
            allowed = {name: (float(record["allowed"][name][0]),
                              float(record["allowed"][name][1])) for name in STATISTICS}
            images = int(record["images"])
            normalization = (Normalization.from_dict(record["normalization"])
                             if record.get("normalization") else None)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ArtifactError(f"{source}: the calibration range record is corrupt ({error}); "
                                f"re-run 'retinaunet-deploy calibrate' on the run") from error
        return cls(allowed, images, source, record, normalization)

    @classmethod
    def for_artifact(cls, path) -> CalibrationRange | None:
        """The range an artifact was calibrated on; None for a file that is not INT8.

        An INT8 ONNX file carries it in its metadata; any other INT8 file (and an INT8
        ONNX file made before the record existed) falls back to the calibration.json
        beside it. An INT8 file with neither gives None.

        Raises `ArtifactError` for an unreadable ONNX file or a corrupt record.
        """
        from retinaunet_deploy.runtime.registry import file_precision

        path = Path(path)
        int8 = file_precision(path.name) == "int8"
        if path.suffix == ".onnx" and path.is_file():
            from retinaunet_deploy.artifacts import check_onnx_external_data

            proto = check_onnx_external_data(path)
            metadata = {p.key: p.value for p in proto.metadata_props}
            if METADATA_KEY in metadata:
                return cls.from_record(_parsed(metadata[METADATA_KEY], path),
                                       f"{path} metadata")
            int8 = int8 or any(node.op_type in QUANTISED_OPS for node in proto.graph.node)
        if not int8:
            return None
        beside = path.parent / CALIBRATION
        if not beside.is_file():
            return None
        report = _parsed(beside.read_text(), beside)
        record = (report.get("calibration_data") or {}).get("intensity")
        return None if record is None else cls.from_record(record, str(beside))

    def outside(self, image: np.ndarray) -> list[tuple[str, float, tuple[float, float]]]:
        """(statistic, value, allowed range) of every statistic of `image` outside its
        allowed range (empty: the image is like the calibration data); the image is
        normalised first when the record says so (`normalization`)."""
        if self.normalization is not None:
            image = normalize_image(image, self.normalization)
        figures = image_statistics(image)
        return [(name, figures[name], self.allowed[name]) for name in STATISTICS
                if not self.allowed[name][0] <= figures[name] <= self.allowed[name][1]]

    def check(self, image: np.ndarray) -> str | None:
        """One line when `image` ((H, W) or (H, W, C) raw pixel values) lies outside the
        calibrated range, naming the first statistic outside it, its value and the range;
        None when it is inside."""
        found = self.outside(image)
        if not found:
            return None
        name, value, (low, high) = found[0]
        more = f" (and {len(found) - 1} more statistic(s))" if len(found) > 1 else ""
        unit = ".1f" if self.normalization is None else ".3f"   # raw, or normalised values
        return (f"{STATISTICS[name]} {value:{unit}} is outside {low:{unit}}..{high:{unit}}, the "
                f"range of the {self.images} INT8 calibration images (with margin){more}; INT8 "
                f"agreement was not measured on data like this image; compare with "
                f"{ONNX}")


def _parsed(text: str, source) -> dict:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{source}: not valid JSON ({error}); re-run 'retinaunet-deploy "
                            f"calibrate' on the run") from error
    if not isinstance(value, dict):
        raise ArtifactError(f"{source}: not a JSON object; re-run 'retinaunet-deploy "
                            f"calibrate' on the run")
    return value
