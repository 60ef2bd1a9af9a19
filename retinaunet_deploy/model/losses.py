"""Training losses (Keras 3 ops, backend-agnostic).

Targets come from `retinaunet_deploy.data.targets`: class masks for the mask
head, and for the detection heads the anchor state packed as the last channel
(1 positive, 0 negative, -1 ignored), as keras-retinanet does, so each loss
sees everything it needs in `y_true`.

These losses are used for training only; saved models are written uncompiled,
so loading a `.keras` file never needs this module.
"""

from __future__ import annotations

import keras
from keras import ops


class MaskLoss(keras.losses.Loss):
    """Softmax cross-entropy + `dice_weight` x soft Dice over the foreground classes.

    y_true: (N, H, W) int class indices. y_pred: (N, H, W, K) softmax probabilities.
    Soft Dice is computed over the whole batch per class and averaged over classes
    1..K-1, so a rare class (the thin ring) weighs as much as a common one.
    `ignore`: a y_true value marking void pixels (``--ignore-index``, held as
    `label_rules.VOID_LABEL`), left out of both terms; the cross-entropy is then the
    mean over the other pixels. None: every pixel counts.
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, ignore: int | None = None,
                 name="mask_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.ignore = ignore

    def call(self, y_true, y_pred):
        y_pred = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        labels = ops.cast(y_true, "int32")
        if self.ignore is None:
            one_hot = ops.one_hot(labels, self.num_classes)
            cross_entropy = -ops.mean(ops.sum(one_hot * ops.log(y_pred), axis=-1))
        else:
            valid = ops.cast(ops.not_equal(labels, self.ignore), y_pred.dtype)
            one_hot = ops.one_hot(ops.where(ops.equal(labels, self.ignore), 0, labels),
                                  self.num_classes) * valid[..., None]
            y_pred = y_pred * valid[..., None]
            cross_entropy = -ops.sum(one_hot * ops.log(ops.maximum(y_pred, 1e-7))) / (
                ops.maximum(ops.sum(valid), 1.0))
        axes = (0, 1, 2)
        intersection = ops.sum(one_hot * y_pred, axis=axes)
        denominator = ops.sum(one_hot, axis=axes) + ops.sum(y_pred, axis=axes)
        dice = (2 * intersection + 1.0) / (denominator + 1.0)
        return cross_entropy + self.dice_weight * (1.0 - ops.mean(dice[1:]))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "dice_weight": self.dice_weight, "ignore": self.ignore}


class FocalLoss(keras.losses.Loss):
    """RetinaNet focal loss over non-ignored anchors, normalised by the positive count.

    y_true: (N, A, C + 1) one-hot classes + anchor state. y_pred: (N, A, C) logits.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name="focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = alpha
        self.gamma = gamma

    def call(self, y_true, y_pred):
        labels, state = y_true[..., :-1], y_true[..., -1:]
        probs = ops.sigmoid(y_pred)
        cross_entropy = ops.binary_crossentropy(labels, y_pred, from_logits=True)
        p_t = labels * probs + (1 - labels) * (1 - probs)
        alpha_t = labels * self.alpha + (1 - labels) * (1 - self.alpha)
        loss = alpha_t * ops.power(1 - p_t, self.gamma) * cross_entropy
        loss = loss * ops.cast(state >= 0, loss.dtype)
        num_positive = ops.sum(ops.cast(state > 0, loss.dtype))
        return ops.sum(loss) / ops.maximum(num_positive, 1.0)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


class SmoothL1Loss(keras.losses.Loss):
    """Smooth-L1 (Huber with `beta`) on positive anchors, normalised by their count.

    y_true: (N, A, 5) encoded deltas + anchor state. y_pred: (N, A, 4) deltas.
    """

    def __init__(self, beta: float = 1 / 9, name="box_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = beta

    def call(self, y_true, y_pred):
        targets, state = y_true[..., :4], y_true[..., 4:]
        positive = ops.cast(state > 0, y_pred.dtype)
        diff = ops.abs(targets - y_pred)
        loss = ops.where(diff < self.beta, 0.5 * diff**2 / self.beta, diff - 0.5 * self.beta)
        return ops.sum(loss * positive) / ops.maximum(ops.sum(positive), 1.0)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}
