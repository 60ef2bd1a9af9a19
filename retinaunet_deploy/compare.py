"""Agreement of a candidate's outputs with the float reference (Polygraphy's habit).

Running and comparing are separate: runners produce output dicts, and
`compare(reference, candidate, ...)` is a pure function of them returning an
`Agreement` with every figure and a pass/fail against `Targets`.

Figures (reference = the Keras float model on the same images):

* pixel_agreement: fraction of pixels whose argmax class matches;
* dice_vs_reference: Dice between the two argmax masks, per foreground class,
  and its mean (the ring is thin, so a mean over classes exposes it);
* mean/max |prob diff|: over all mask probabilities;
* detections: boxes scoring >= `match_score` in the reference are matched to
  same-class candidate boxes (greedy, by IoU); mean IoU of matched pairs and the
  fraction matched; with ground truth, AP@0.1/0.5 of both and their difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from retinaunet_deploy.metrics import average_precision, dice_per_class, nan_mean
from retinaunet_deploy.model.anchors import box_iou
from retinaunet_deploy.postprocess import Detections


@dataclass(frozen=True)
class Targets:
    """Pass/fail thresholds of a variant against the float reference.

    The detection targets apply when detections were compared. A mask can agree
    99.9% while detections degrade: on the trained small model, entropy-calibrated
    INT8 kept the masks but lost half of the confident boxes (scores slid under 0.5).
    """

    pixel_agreement: float = 0.995
    mean_dice_vs_reference: float = 0.98
    matched_fraction: float = 0.95     # of the reference's boxes scoring >= 0.5
    max_ap_drop: float = 0.02          # AP@0.1 against ground truth, reference minus candidate
    match_iou: float = 0.5             # a candidate box matches at IoU >= this, same class


@dataclass
class Agreement:
    """The result of one comparison; `passed` is against `targets`."""

    images: int
    pixel_agreement: float
    dice_vs_reference: dict[str, float]
    mean_dice_vs_reference: float
    mean_abs_prob_diff: float
    max_abs_prob_diff: float
    detections: dict = field(default_factory=dict)
    targets: Targets = field(default_factory=Targets)

    @property
    def failures(self) -> list[str]:
        """Which targets this comparison misses (empty when it passes)."""
        t, missed = self.targets, []
        if self.pixel_agreement < t.pixel_agreement:
            missed.append(f"pixel agreement {self.pixel_agreement:.4%} < {t.pixel_agreement:.2%}")
        if self.mean_dice_vs_reference < t.mean_dice_vs_reference:
            missed.append(f"Dice vs float {self.mean_dice_vs_reference:.4f} < "
                          f"{t.mean_dice_vs_reference}")
        matched = self.detections.get("matched_fraction")
        if matched is not None and matched < t.matched_fraction:
            missed.append(f"confident boxes matched (IoU >= {t.match_iou}) {matched:.1%} < "
                          f"{t.matched_fraction:.0%}")
        drop = -self.detections.get("map@0.1_diff", 0.0)
        if drop > t.max_ap_drop:
            missed.append(f"AP@0.1 drop {drop:.3f} > {t.max_ap_drop}")
        return missed

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        result = asdict(self)
        result["passed"] = self.passed
        result["failures"] = self.failures
        return result

    def summary(self) -> str:
        text = (f"pixel agreement {self.pixel_agreement:.4%}, Dice vs float "
                f"{self.mean_dice_vs_reference:.4f}, mean |prob diff| "
                f"{self.mean_abs_prob_diff:.2e}")
        if "matched_fraction" in self.detections:
            text += f", confident boxes matched {self.detections['matched_fraction']:.1%}"
        if "map@0.1_diff" in self.detections:
            text += f", AP@0.1 diff {self.detections['map@0.1_diff']:+.3f}"
        return text


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


def compare(reference, candidate, class_names, truths=None, targets: Targets | None = None,
            match_score: float = 0.5, num_det_classes: int | None = None) -> Agreement:
    """Compare a candidate's per-image predictions with the reference's.

    Args:
        reference, candidate: per image, objects with ``probabilities`` (H, W, K) and
            ``detections`` (`Detections` or None), e.g. `runtime.Prediction` made with
            ``probabilities=True``; image i of both has the same size.
        class_names: K mask class names, background first.
        truths: per-image (boxes, classes) ground truth, optional (for AP).
        num_det_classes: detection classes (the model card's); default K - 1.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate")
    num_classes = len(class_names)
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        if ref.probabilities.shape != cand.probabilities.shape:
            raise ValueError(f"image {i}: mask shapes differ: reference "
                             f"{ref.probabilities.shape}, candidate {cand.probabilities.shape}")
    ref_probs = np.concatenate([r.probabilities.reshape(-1, num_classes) for r in reference])
    cand_probs = np.concatenate([c.probabilities.reshape(-1, num_classes) for c in candidate])
    ref_mask, cand_mask = ref_probs.argmax(-1), cand_probs.argmax(-1)
    dice = dice_per_class(cand_mask, ref_mask, num_classes)[1:]
    diff = np.abs(cand_probs - ref_probs)
    detections = {}
    reference_detections = [r.detections for r in reference]
    candidate_detections = [c.detections for c in candidate]
    if reference and reference_detections[0] is not None and candidate_detections[0] is not None:
        ious, confident = [], 0
        for ref, cand in zip(reference_detections, candidate_detections):
            matched, count = match_detections(ref, cand, match_score,
                                              (targets or Targets()).match_iou)
            ious += matched
            confident += count
        detections = {
            "reference_boxes": confident,
            "match_iou": (targets or Targets()).match_iou,
            "matched_fraction": len(ious) / confident if confident else 1.0,
            "mean_matched_iou": float(np.mean(ious)) if ious else float("nan"),
        }
        if truths is not None:
            num_det = num_det_classes or max(1, num_classes - 1)
            for threshold in (0.1, 0.5):
                ref_ap = nan_mean(average_precision(reference_detections, truths, num_det,
                                                    threshold))
                cand_ap = nan_mean(average_precision(candidate_detections, truths, num_det,
                                                     threshold))
                detections[f"map@{threshold}"] = cand_ap
                detections[f"map@{threshold}_diff"] = cand_ap - ref_ap
    return Agreement(
        images=len(reference),
        pixel_agreement=float(np.mean(ref_mask == cand_mask)),
        dice_vs_reference=dict(zip(class_names[1:], np.round(dice, 5).tolist())),
        mean_dice_vs_reference=float(dice.mean()),
        mean_abs_prob_diff=float(diff.mean()),
        max_abs_prob_diff=float(diff.max()),
        detections=detections,
        targets=targets or Targets(),
    )
