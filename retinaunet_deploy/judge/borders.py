"""False positives along the image border, against ground truth.

The Predictor pads every image at the bottom and right to a multiple of the
network stride. A model that never saw such a border in training can draw
objects along it; this module measures that: the false-positive rate (pixels
predicted foreground where the truth is background, over the truth's background
pixels) in the `band` pixels along the right and bottom edges, in the same band
along the left and top edges (image edges the Predictor never pads), and in
the interior (pixels at least `band` from every edge).

`border_false_positives(predictions, samples)` is a pure function of per-image
predictions and the samples they were made from; `measure_borders(predictor,
samples)` runs the Predictor first. Rates are fractions in [0, 1], or None
(with a reason) where a region holds no background pixel.
"""

from __future__ import annotations

import numpy as np

BAND = 4   # pixels along each edge


def edge_regions(height: int, width: int, band: int = BAND) -> dict[str, np.ndarray]:
    """(height, width) bool masks of one image's regions.

    "right_bottom": the last `band` columns and rows; "left_top": the first `band`
    columns and rows, less the right/bottom band; "interior": pixels at least `band`
    from every edge.
    """
    right_bottom = np.zeros((height, width), bool)
    right_bottom[height - band:, :] = True
    right_bottom[:, width - band:] = True
    left_top = np.zeros((height, width), bool)
    left_top[:band, :] = True
    left_top[:, :band] = True
    left_top &= ~right_bottom
    return {"right_bottom": right_bottom, "left_top": left_top,
            "interior": ~(right_bottom | left_top)}


def _rate(false_positives: int, background: int) -> dict:
    if not background:
        return {"fp_rate": None, "fp_rate_reason": "no background pixel in this region",
                "background_pixels": 0, "false_positives": int(false_positives)}
    return {"fp_rate": round(false_positives / background, 6),
            "background_pixels": int(background), "false_positives": int(false_positives)}


def border_false_positives(predictions, samples, band: int = BAND,
                           worst_fraction: float = 0.1) -> dict:
    """False-positive rates by region, pooled over the images.

    Args:
        predictions: per image, an object with ``mask`` (H, W) class indices (0 is
            background), e.g. a `runtime.predictor.Prediction`.
        samples: the `data.sample.Sample`s predicted, same order and sizes
            (``mask`` (H, W) class indices).
        band: width of the edge bands, pixels.
        worst_fraction: count the images whose right/bottom band has more than this
            fraction of its background predicted foreground.
    Returns:
        JSON-ready dict: ``images``, ``band``, per region ("right_bottom",
        "left_top", "interior") ``fp_rate``/``background_pixels``/``false_positives``,
        ``ratio`` (right/bottom rate over interior rate; None with a reason when
        the interior rate is 0 or undefined) and ``images_over`` (count of images
        whose right/bottom band rate exceeds `worst_fraction`).
    Raises:
        ValueError: a prediction and its sample differ in size.
    """
    counts = {name: [0, 0] for name in ("right_bottom", "left_top", "interior")}
    images_over = 0
    for prediction, sample in zip(predictions, samples, strict=True):
        truth, predicted = np.asarray(sample.mask), np.asarray(prediction.mask)
        if truth.shape != predicted.shape:
            raise ValueError(f"{sample.name}: prediction {predicted.shape} and truth "
                             f"{truth.shape} differ in size")
        wrong = (predicted > 0) & (truth == 0)
        background = truth == 0
        for name, region in edge_regions(*truth.shape, band).items():
            counts[name][0] += int((wrong & region).sum())
            counts[name][1] += int((background & region).sum())
            if name == "right_bottom":
                own = int((background & region).sum())
                if own and (wrong & region).sum() / own > worst_fraction:
                    images_over += 1
    report = {"images": len(samples), "band": band}
    report.update({name: _rate(*pair) for name, pair in counts.items()})
    edge, inside = report["right_bottom"]["fp_rate"], report["interior"]["fp_rate"]
    if edge is None or not inside:
        report["ratio"] = None
        report["ratio_reason"] = "the interior has no false positive (or no background)"
    else:
        report["ratio"] = round(edge / inside, 3)
    report["images_over"] = {"threshold": worst_fraction, "count": images_over}
    return report


def measure_borders(predictor, samples, band: int = BAND) -> dict:
    """`border_false_positives` of `predictor`'s predictions on the whole images of
    `samples` (`runtime.predictor.Predictor`, any artifact)."""
    predictions = predictor.predict([s.image for s in samples])
    return border_false_positives(predictions, samples, band)
