"""The gates: a variant, run as apps run it, against the stored float reference.

`calibrate` (which writes or refuses a file) and `bench` (which reports) judge
with the same functions and the same reference (`runtime.reference`):

* `make_eval_set`: whole held-out images of one split, their ground truth and
  the Keras float predictions on them;
* `judge`: the `Agreement` of a variant's predictions with that reference,
  against `Targets`, with 95% bootstrap intervals over images;
* `evaluate_variant`: run an ONNX file through the `Predictor` and judge it.

The reported figures are always on the test split; anything tuned (the INT8
fallback) sees the validation split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retinaunet_deploy.judge.agreement import Agreement, Targets, compare


@dataclass
class EvalSet:
    """Whole held-out images with the float reference's predictions on them."""

    samples: list
    truths: list
    reference: list          # runtime.Prediction per image, with probabilities
    split: str = "test"

    def head(self, count: int) -> EvalSet:
        return EvalSet(self.samples[:count], self.truths[:count], self.reference[:count],
                       self.split)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]


def make_eval_set(run_dir: Path, card: dict, count: int, threads: int | None = None,
                  split: str = "test", progress=None) -> EvalSet:
    """`count` whole images of `split` (fewer if a folder split is smaller), their ground
    truth, and the stored float reference on them."""
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.judge.ground_truth import sample_truths
    from retinaunet_deploy.judge.reference import float_reference

    samples = held_out_set(card, count, split)
    reference = float_reference(run_dir, card, samples, split, threads=threads,
                                progress=progress)
    return EvalSet(samples, sample_truths(samples), reference, split)


def judge(eval_set: EvalSet, predictions: list, card: dict, targets: Targets | None = None,
          intervals: bool = True) -> Agreement:
    """A variant's predictions on `eval_set` against its float reference.

    Detection classes come from the card (`det_class_names`), never from the
    mask classes. `intervals` adds 95% bootstrap intervals over the images.
    """
    num_det = len(card.get("det_class_names") or []) or None
    return compare(eval_set.reference, predictions, card["class_names"], eval_set.truths,
                   targets, num_det_classes=num_det, intervals=intervals)


def run_predictor(backend, card: dict, eval_set: EvalSet, batch_size: int = 8) -> list:
    """A backend's predictions (with probabilities) on the eval set's whole images."""
    from retinaunet_deploy.runtime.predictor import Predictor

    predictor = Predictor(backend, card, batch_size=batch_size)
    return predictor.predict([s.image for s in eval_set.samples], probabilities=True)


def evaluate_variant(path: Path, card: dict, eval_set: EvalSet, targets: Targets,
                     fused: bool, threads: int | None = None, batch_size: int = 8,
                     intervals: bool = False, runtime: str = "onnxruntime") -> Agreement:
    """Run an ONNX variant on the whole held-out images, as apps run it, and judge it.

    Args:
        fused: run with ONNX Runtime's graph optimisations (as the CPU will run it);
            False runs every op as written (exact fake-quant for Q/DQ). OpenVINO
            always fuses.
        intervals: bootstrap intervals (for reported figures; the fallback's many
            trials skip them).
        runtime: "onnxruntime" or "openvino" (its int8 kernels for a Q/DQ file).
    """
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend
    from retinaunet_deploy.runtime.openvino import OpenVINOBackend

    if runtime == "openvino":
        backend = OpenVINOBackend(path, threads=threads)
    else:
        backend = OnnxRuntimeBackend(path, threads=threads, optimize=fused)
    return judge(eval_set, run_predictor(backend, card, eval_set, batch_size), card, targets,
                 intervals=intervals)


def variant_figures(agreement: Agreement, eval_set: EvalSet, evaluated: str,
                    warning: str | None, **extra) -> dict:
    """What calibration.json and the manifest record about one judged variant."""
    return {"agreement": agreement.to_dict(), "evaluated": evaluated,
            "images": len(eval_set.samples), "split": eval_set.split,
            "few_images_warning": warning, **extra}
