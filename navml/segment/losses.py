"""Segmentation losses on one-hot labels and softmax probabilities, and class weights.

All functions take ``y_true`` one-hot and ``y_pred`` softmax probabilities of
shape ``(batch, rows, cols, K)`` with ``K = n_classes + 1`` (channel 0 is
background) and return a scalar. A pixel whose ``y_true`` row is all zero is
*ignored* (class unknown, mask value 255): it adds nothing to any loss or to
:class:`MaskedIoU`. Pixel losses (cross-entropy, focal) are a mean over the
labelled pixels of the batch; overlap losses (Dice, soft IoU) are computed
over the whole batch (so tiles without a positive pixel are fine) and
averaged over the foreground classes 1..K-1.

A label row may sum to more than 1 (a mined hard negative, :data:`navml.segment.dataset.MINED`):
the row's sum is the pixel's weight, so it counts that many times in the pixel losses (the mean is
still taken over the number of labelled pixels) and its predicted foreground that many times in the
overlap losses. With 0/1 rows everything is the plain loss, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from navml.config import LOSS_TERMS
from navml.errors import ConfigError, InputError

#: Loss names accepted in ``train.loss`` (join several with ``+``) -> canonical name; defined with the params model.
LOSS_NAMES = LOSS_TERMS
#: Accepted values of ``train.class_weighting``.
WEIGHTINGS = ("none", "inverse", "sqrt")
EPSILON = 1e-7


def _weights(class_weights, k: int):
    if class_weights is None:
        return ops.ones((k,), dtype="float32")
    return ops.convert_to_tensor(np.asarray(class_weights, dtype="float32"))


def _labelled_mean(per_pixel, y_true):
    """Sum of ``per_pixel`` (already weighted by its label row) over the number of labelled pixels."""
    labelled = ops.cast(ops.sum(y_true, axis=-1) > 0, "float32")
    return ops.sum(per_pixel * labelled) / ops.maximum(ops.sum(labelled), 1.0)


def weighted_crossentropy(y_true, y_pred, class_weights: Sequence[float] | None = None):
    """Mean over labelled pixels of ``-sum_c w_c * y_c * log(p_c)`` (binary cross-entropy when K = 2)."""
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    w = _weights(class_weights, y_pred.shape[-1])
    return _labelled_mean(-ops.sum(w * y_true * ops.log(p), axis=-1), y_true)


def focal_loss(y_true, y_pred, gamma: float = 2.0, class_weights: Sequence[float] | None = None):
    """Mean over labelled pixels of ``-sum_c w_c * y_c * (1 - p_c) ** gamma * log(p_c)`` (Lin et al. 2017)."""
    y_true = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    w = _weights(class_weights, y_pred.shape[-1])
    return _labelled_mean(-ops.sum(w * y_true * ops.power(1.0 - p, gamma) * ops.log(p), axis=-1), y_true)


def _overlaps(y_true, y_pred):
    y_true = ops.cast(y_true, "float32")
    valid = ops.sum(y_true, axis=-1, keepdims=True)
    y_pred = (ops.cast(y_pred, "float32") * valid)[..., 1:]
    y_true = y_true[..., 1:]
    axes = tuple(range(len(y_true.shape) - 1))
    inter = ops.sum(y_true * y_pred, axis=axes)
    return inter, ops.sum(y_true, axis=axes), ops.sum(y_pred, axis=axes)


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """``1 - mean_c (2 * sum(y p) + s) / (sum(y) + sum(p) + s)`` over foreground classes, sums over the batch."""
    inter, t, p = _overlaps(y_true, y_pred)
    return 1.0 - ops.mean((2.0 * inter + smooth) / (t + p + smooth))


def soft_iou_loss(y_true, y_pred, smooth: float = 1.0):
    """``1 - mean_c (sum(y p) + s) / (sum(y) + sum(p) - sum(y p) + s)`` over foreground classes (soft Jaccard)."""
    inter, t, p = _overlaps(y_true, y_pred)
    return 1.0 - ops.mean((inter + smooth) / (t + p - inter + smooth))


def parse_loss(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical loss terms from ``"crossentropy+dice"`` or ``["bce", "dice"]``."""
    items = spec.split("+") if isinstance(spec, str) else list(spec)
    terms = []
    for item in items:
        key = str(item).strip().lower()
        if key not in LOSS_NAMES:
            raise ConfigError(
                f"params: 'train.loss' term '{item}' is unknown; use {', '.join(sorted(set(LOSS_NAMES.values())))} joined with '+'"
            )
        terms.append(LOSS_NAMES[key])
    if not terms:
        raise ConfigError("params: 'train.loss' is empty; use e.g. crossentropy+dice")
    return tuple(terms)


@keras.saving.register_keras_serializable(package="navml")
class SegmentationLoss(keras.losses.Loss):
    """The sum of the loss terms named in ``terms`` (see :data:`LOSS_NAMES`)."""

    def __init__(
        self,
        terms: Sequence[str] = ("crossentropy",),
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
        smooth: float = 1.0,
        name: str = "segmentation_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.terms = parse_loss(terms)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.gamma = float(gamma)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        total = 0.0
        for term in self.terms:
            if term == "crossentropy":
                total += weighted_crossentropy(y_true, y_pred, self.class_weights)
            elif term == "focal":
                total += focal_loss(y_true, y_pred, self.gamma, self.class_weights)
            elif term == "dice":
                total += soft_dice_loss(y_true, y_pred, self.smooth)
            else:
                total += soft_iou_loss(y_true, y_pred, self.smooth)
        return total

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "terms": list(self.terms),
            "class_weights": self.class_weights,
            "gamma": self.gamma,
            "smooth": self.smooth,
        }


@keras.saving.register_keras_serializable(package="navml")
class MaskedIoU(keras.metrics.IoU):
    """Mean IoU of the argmax prediction over ``target_class_ids``, from one-hot
    labels; pixels whose label row is all zero (ignored) are not counted."""

    def __init__(self, num_classes: int, target_class_ids: Sequence[int], name: str | None = None, dtype=None, **kwargs):
        for key in ("sparse_y_true", "sparse_y_pred", "ignore_class", "axis"):
            kwargs.pop(key, None)
        super().__init__(num_classes, list(target_class_ids), name=name, dtype=dtype, sparse_y_true=True, sparse_y_pred=True, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        valid = ops.cast(ops.sum(ops.cast(y_true, "float32"), axis=-1) > 0, "float32")  # a weighted row counts once
        if sample_weight is not None:
            valid = valid * ops.cast(sample_weight, "float32")
        # the confusion matrix counts integers: labelled pixels weigh 1, ignored ones 0
        valid = ops.cast(ops.round(valid), self.dtype)
        return super().update_state(ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1), valid)


def class_weights_from_counts(counts: Sequence[int], mode: str = "sqrt", names: Sequence[str] | None = None) -> list[float]:
    """Per-class loss weights from pixel counts (background first).

    ``inverse``: ``1 / f_c``; ``sqrt``: ``1 / sqrt(f_c)``; ``none``: 1, with
    ``f_c`` the pixel frequency of class ``c``; scaled so that
    ``sum_c f_c * w_c = 1`` (the weighted loss keeps the scale of the plain one).
    A class with no pixel raises :class:`InputError`.
    """
    if mode not in WEIGHTINGS:
        raise ConfigError(f"params: 'train.class_weighting' is '{mode}'; use one of {', '.join(WEIGHTINGS)}")
    counts = np.asarray(counts, dtype="float64")
    names = list(names) if names is not None else [f"class {i}" for i in range(len(counts))]
    if mode == "none":
        return [1.0] * len(counts)
    for name, c in zip(names, counts):
        if c <= 0:
            raise InputError(f"training labels have no pixel of '{name}'; check the class tag filter and re-run rasterize")
    f = counts / counts.sum()
    w = 1.0 / f if mode == "inverse" else 1.0 / np.sqrt(f)
    w = w / float((f * w).sum())
    return [float(x) for x in w]
