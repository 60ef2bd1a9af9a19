"""Agreement of a candidate's outputs with the float reference (Polygraphy's habit).

Running and comparing are separate: runners produce output dicts, and
`compare(reference, candidate, ...)` is a pure function of them returning an
`Agreement` with every figure and a pass/fail against `Targets`.

Figures (reference = the Keras float model on the same images):

* pixel_agreement: fraction of pixels whose argmax class matches;
* dice_vs_reference: Dice between the two argmax masks, per foreground class,
  and its mean (the ring is thin, so a mean over classes exposes it); a class
  absent from both masks has no Dice (null, "n/a") and is left out of the mean,
  never counted as 1.0 (null when no class is present at all);
* mean/max |prob diff|: over all mask probabilities;
* detections: boxes scoring >= `match_score` in the reference are matched to
  same-class candidate boxes (greedy, by IoU); mean IoU of matched pairs and the
  fraction matched; with ground truth, AP@0.1/0.5 of both and their difference.

With ``intervals=True`` every gated figure also gets a 95% percentile-bootstrap
interval over images (`bootstrap_intervals`); `Agreement.interval_failures`
names each target the unfavourable end of its interval misses.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from retinaunet_deploy.judge.metrics import ap_from_hits, confusion_counts, detection_hits, nan_mean
from retinaunet_deploy.judge.targets import GATES, Targets
from retinaunet_deploy.model.boxes import box_iou
from retinaunet_deploy.postprocess import Detections
from retinaunet_deploy.strict_json import null_figure, undefined_as_null


@dataclass
class Agreement:
    """The result of one comparison; `passed` is against `targets` (`judge.targets`).

    A mask can agree 99.9% while detections degrade: on the trained small model,
    entropy-calibrated INT8 kept the masks but lost half of the confident boxes
    (scores slid under 0.5), so the detection gates apply whenever detections
    were compared.
    """

    images: int
    pixel_agreement: float
    dice_vs_reference: dict[str, float]     # NaN: the class is in neither mask
    mean_dice_vs_reference: float           # over classes present; NaN when none is
    mean_abs_prob_diff: float
    max_abs_prob_diff: float
    detections: dict = field(default_factory=dict)
    targets: Targets = field(default_factory=Targets)
    intervals: dict = field(default_factory=dict)   # figure -> [low, high], 95% bootstrap

    @property
    def failures(self) -> list[str]:
        """Which targets this comparison misses (empty when it passes), one line each,
        in gate order (`judge.targets.GATES`)."""
        missed = []
        for name, gate in GATES.items():
            value, target = gate.figure(self), self.targets.get(name)
            if gate.misses(value, target):
                missed.append(gate.failure(value, target, self.targets.match_iou))
        return missed

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def interval_failures(self) -> list[str]:
        """Targets that the unfavourable end of a 95% interval misses: the point figure
        may pass, but these images cannot tell it apart from a miss."""
        missed = []
        for name, gate in GATES.items():
            end, target = gate.interval(self.intervals), self.targets.get(name)
            if gate.misses(end, target):
                missed.append(gate.interval_failure(end, target))
        return missed

    def to_dict(self) -> dict:
        """Strict-JSON-ready: every field (targets as `Targets.to_dict()`), ``passed``,
        ``failures`` and ``interval_failures``. A figure that is undefined here (no image,
        pixel or foreground class to measure it on) is None with ``<key>_reason``; a
        class in neither mask is None in ``dice_vs_reference``, named under
        ``dice_vs_reference_reason``."""
        result = asdict(replace(self, targets=None))
        absent = [name for name, dice in self.dice_vs_reference.items() if np.isnan(dice)]
        if absent:
            result["dice_vs_reference"] = {name: None if name in absent else dice
                                           for name, dice in self.dice_vs_reference.items()}
            result["dice_vs_reference_reason"] = (
                f"{', '.join(absent)}: in neither mask on these images; left out of the mean")
        if np.isnan(self.mean_dice_vs_reference):
            result["mean_dice_vs_reference"] = None
            result["mean_dice_vs_reference_reason"] = ("no foreground class in either mask on "
                                                       "these images")
        result["targets"] = self.targets.to_dict()
        result["passed"] = self.passed
        result["failures"] = self.failures
        result["interval_failures"] = self.interval_failures
        return undefined_as_null(result, "undefined: nothing to measure it on in these images")

    def summary(self) -> str:
        """One line: each measured gate's figure (mask gates, the mean |prob diff|, then
        detection gates) and the pixel agreement's 95% interval."""
        parts = [f"{gate.label} n/a" if _undefined(gate.figure(self))
                 else gate.summary_part(self) for gate in GATES.values() if gate.kind == "mask"]
        parts.append(f"mean |prob diff| {self.mean_abs_prob_diff:.2e}")
        parts += [gate.summary_part(self) for gate in GATES.values() if gate.kind != "mask"]
        text = ", ".join(part for part in parts if part)
        if "pixel_agreement" in self.intervals:
            low, high = self.intervals["pixel_agreement"]
            text += f" (pixels 95% CI {low:.4%}-{high:.4%}, {self.images} images)"
        return text


def _undefined(value) -> bool:
    return isinstance(value, float) and np.isnan(value)


def class_dice(overlap: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice per foreground class and its mean over the classes present, from summed
    counts: `overlap` (..., K-1) |ref ∩ cand|, `sizes` (..., K-1) |ref| + |cand|.

    A class with size 0 is in neither mask: its Dice is NaN (undefined, not 1.0) and
    it is left out of the mean; the mean is NaN when no class is present.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), np.nan)
    present = np.sum(sizes > 0, axis=-1)
    total = np.where(sizes > 0, dice, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present > 0, total / np.maximum(present, 1), np.nan)
    return dice, mean


def match_detections(reference: Detections, candidate: Detections, min_score: float,
                     min_iou: float = 0.5):
    """Greedy same-class IoU matching of confident reference boxes to candidate boxes.

    A pair matches at IoU >= `min_iou` (any overlap would call a box drifted to
    IoU 0.1 "the same box"). Returns (ious of matched pairs, number of confident
    reference boxes).
    """
    ref = reference.scores >= min_score
    cand = candidate.scores >= min_score
    ref_boxes, ref_classes = reference.boxes[ref], reference.classes[ref]
    cand_boxes, cand_classes = candidate.boxes[cand], candidate.classes[cand]
    ious = []
    if len(ref_boxes) and len(cand_boxes):
        overlap = box_iou(ref_boxes, cand_boxes)
        overlap[ref_classes[:, None] != cand_classes[None, :]] = 0
        taken = np.zeros(len(cand_boxes), bool)
        for i in np.argsort(-reference.scores[ref], kind="stable"):
            row = np.where(taken, 0, overlap[i])
            j = int(np.argmax(row))
            if row[j] > 0 and row[j] >= min_iou:
                taken[j] = True
                ious.append(float(row[j]))
    return ious, len(ref_boxes)


@dataclass
class PerImage:
    """Per-image counts behind every figure, so that any multiset of the images (a
    bootstrap resample) can be scored without running anything again."""

    agree: np.ndarray          # (N,) pixels whose argmax matches
    pixels: np.ndarray         # (N,)
    overlap: np.ndarray        # (N, K-1) |ref ∩ cand| per foreground class
    sizes: np.ndarray          # (N, K-1) |ref| + |cand|
    matched: np.ndarray | None = None     # (N,) confident reference boxes matched
    confident: np.ndarray | None = None   # (N,) confident reference boxes
    ap_hits: tuple | None = None          # (reference, candidate) `metrics.detection_hits`

    def figures(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every gated figure for B multisets of the images; `weights` (B, N) counts."""
        weights = np.atleast_2d(weights).astype(np.float64)
        _, mean_dice = class_dice(weights @ self.overlap, weights @ self.sizes)
        with np.errstate(invalid="ignore", divide="ignore"):  # no image: NaN, then null
            agreement = (weights @ self.agree) / (weights @ self.pixels)
        result = {"pixel_agreement": agreement, "mean_dice_vs_reference": mean_dice}
        if self.matched is not None:
            confident = weights @ self.confident
            result["matched_fraction"] = np.where(
                confident > 0, (weights @ self.matched) / np.maximum(confident, 1), 1.0)
        if self.ap_hits is not None:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample
                ref, cand = (np.nanmean(ap_from_hits(h, weights), axis=1) for h in self.ap_hits)
            result["map@0.1_diff"] = cand - ref
        return result


def bootstrap_intervals(per_image: PerImage, resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, list[float]]:
    """Percentile-bootstrap intervals of every gated figure, resampling whole images.

    Images, not pixels, are the independent units: pixels of one image move
    together, so an interval over pixels would be far too narrow.
    """
    count = len(per_image.pixels)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, count, size=(resamples, count))
    weights = np.zeros((resamples, count))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in per_image.figures(weights).items():
        values = values[~np.isnan(values)]
        if len(values):
            low, high = np.percentile(values, [tail, 100 - tail])
            intervals[name] = [float(low), float(high)]
    return intervals


def compare(reference, candidate, class_names, truths=None, targets: Targets | None = None,
            match_score: float = 0.5, num_det_classes: int | None = None,
            intervals: bool = False) -> Agreement:
    """Compare a candidate's per-image predictions with the reference's.

    Args:
        reference, candidate: per image, objects with ``probabilities`` (H, W, K) and
            ``detections`` (`Detections` or None), e.g. `runtime.Prediction` made with
            ``probabilities=True``; image i of both has the same size.
        class_names: K mask class names, background first.
        truths: per-image (boxes, classes) ground truth, optional (for AP).
        num_det_classes: detection classes (the model card's); default K - 1.
        intervals: add 95% bootstrap intervals over images of the gated figures.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate")
    targets = targets or Targets()
    num_classes = len(class_names)
    count = len(reference)
    agree, pixels = np.zeros(count), np.zeros(count)
    overlap, sizes = np.zeros((count, num_classes - 1)), np.zeros((count, num_classes - 1))
    diff_sum, diff_max = 0.0, 0.0
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        if ref.probabilities.shape != cand.probabilities.shape:
            raise ValueError(f"image {i}: mask shapes differ: reference "
                             f"{ref.probabilities.shape}, candidate {cand.probabilities.shape}")
        ref_mask, cand_mask = ref.probabilities.argmax(-1), cand.probabilities.argmax(-1)
        agree[i], pixels[i] = np.sum(ref_mask == cand_mask), ref_mask.size
        counts = confusion_counts(cand_mask, ref_mask, num_classes)
        overlap[i] = np.diag(counts)[1:]
        sizes[i] = (counts.sum(0) + counts.sum(1))[1:]
        diff = np.abs(cand.probabilities - ref.probabilities)
        diff_sum, diff_max = diff_sum + float(diff.sum()), max(diff_max, float(diff.max()))
    per_image = PerImage(agree, pixels, overlap, sizes)
    detections = {}
    reference_detections = [r.detections for r in reference]
    candidate_detections = [c.detections for c in candidate]
    if reference and reference_detections[0] is not None and candidate_detections[0] is not None:
        ious, per_image.matched, per_image.confident = [], np.zeros(count), np.zeros(count)
        for i, (ref, cand) in enumerate(zip(reference_detections, candidate_detections)):
            matched, per_image.confident[i] = match_detections(ref, cand, match_score,
                                                               targets.match_iou)
            per_image.matched[i] = len(matched)
            ious += matched
        detections = {"reference_boxes": int(per_image.confident.sum()),
                      "match_iou": targets.match_iou}
        null_figure(detections, "mean_matched_iou", np.mean(ious) if ious else None,
                    "no confident reference box was matched")
        if truths is not None:
            num_det = num_det_classes or max(1, num_classes - 1)
            for threshold in (0.1, 0.5):
                hits = tuple(detection_hits(d, truths, num_det, threshold)
                             for d in (reference_detections, candidate_detections))
                ref_ap, cand_ap = (nan_mean(ap_from_hits(h, np.ones(count))[0]) for h in hits)
                no_truth = "no ground-truth object in these images"
                null_figure(detections, f"map@{threshold}", cand_ap, no_truth)
                null_figure(detections, f"map@{threshold}_diff", cand_ap - ref_ap, no_truth)
                if threshold == 0.1:
                    per_image.ap_hits = hits
    point = {name: float(values[0]) for name, values in per_image.figures(np.ones(count)).items()}
    if "matched_fraction" in point:
        detections["matched_fraction"] = point["matched_fraction"]
    dice, mean_dice = class_dice(overlap.sum(0), sizes.sum(0))
    return Agreement(
        images=count,
        pixel_agreement=point["pixel_agreement"],
        dice_vs_reference=dict(zip(class_names[1:], np.round(dice, 5).tolist())),
        mean_dice_vs_reference=float(mean_dice),
        mean_abs_prob_diff=diff_sum / max(1.0, pixels.sum() * num_classes),
        max_abs_prob_diff=diff_max,
        detections=detections,
        targets=targets,
        intervals=bootstrap_intervals(per_image) if intervals and count else {},
    )
