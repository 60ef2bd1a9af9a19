"""Judging: does a variant agree with the float model?

* `targets`: the gate table (one `Gate` per judged figure), keyword-only `Targets`,
  `targets_for(precision)`;
* `metrics`: Dice, IoU and AP in numpy;
* `agreement`: `compare(reference, candidate)` -> `Agreement` (figures, pass/fail);
* `ground_truth`: scoring predictions against the samples' masks and boxes;
* `borders`: false positives along the padded right/bottom border vs the interior;
* `store`: stored predictions (the float reference's and every judged variant's);
* `reference`: the float reference, computed once per model and image list;
* `gates`: eval sets, `evaluate_variant` (files opened through the runtime
  registry, never a concrete backend), `rejudge` of stored predictions.
"""
