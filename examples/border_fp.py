"""False positives along the padded border of a trained run's test images.

    PYTHONPATH=. python examples/border_fp.py export/default [--artifact model.onnx]

Runs the run's recorded test split (whole images, through the Predictor, as
every runtime and the judge do) and prints, as JSON, the false-positive rate in
the 4-pixel band along the right and bottom edges (where the Predictor pads),
along the left and top edges, and inside (`judge.borders`), plus Dice and AP
against ground truth (`judge.ground_truth`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retinaunet_deploy.card import load_card
from retinaunet_deploy.data.splits import load_split
from retinaunet_deploy.judge.borders import BAND, border_false_positives
from retinaunet_deploy.judge.ground_truth import evaluate_predictions
from retinaunet_deploy.runtime.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained (and exported) run folder")
    parser.add_argument("--artifact", default="model.onnx",
                        help="file in the run to predict with (model.keras, model.onnx, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=None, help="first N images (default all)")
    parser.add_argument("--band", type=int, default=BAND)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    card = load_card(args.run)
    samples = load_split(card, args.split, args.count)
    with Predictor.from_artifact(args.run / args.artifact, threads=args.threads) as predictor:
        predictions = predictor.predict([s.image for s in samples])
    report = {"artifact": str(args.run / args.artifact), "split": args.split,
              "borders": border_false_positives(predictions, samples, args.band),
              "ground_truth": evaluate_predictions(predictions, samples, card.class_names,
                                                   len(card.det_class_names or []) or None)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
