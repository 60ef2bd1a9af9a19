"""Judging: does a variant agree with the float model? Metrics, agreement, ground-truth
scoring, the stored reference and stored variant predictions, and the gates."""
