"""Losses and class weights against values computed by hand."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from navml.errors import ConfigError, InputError
from navml.segment.losses import (
    MaskedIoU,
    SegmentationLoss,
    class_weights_from_counts,
    focal_loss,
    parse_loss,
    soft_dice_loss,
    soft_iou_loss,
    weighted_crossentropy,
)

# one image of 1 x 2 pixels, K = 2: pixel 1 is background (p_bg = 0.8), pixel 2 is a lot (p_lot = 0.6)
Y = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], dtype="float32")
P = np.array([[[[0.8, 0.2], [0.4, 0.6]]]], dtype="float32")


def f(x) -> float:
    return float(keras.ops.convert_to_numpy(x))


def test_crossentropy_by_hand():
    assert f(weighted_crossentropy(Y, P)) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-5)
    assert f(weighted_crossentropy(Y, P, [1.0, 3.0])) == pytest.approx(-(math.log(0.8) + 3 * math.log(0.6)) / 2, rel=1e-5)


def test_crossentropy_equals_binary_crossentropy_for_one_class():
    p = P[..., 1].ravel()
    y = Y[..., 1].ravel()
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert f(weighted_crossentropy(Y, P)) == pytest.approx(bce, rel=1e-5)


def test_focal_by_hand():
    want = -(0.2**2 * math.log(0.8) + 0.4**2 * math.log(0.6)) / 2
    assert f(focal_loss(Y, P, gamma=2.0)) == pytest.approx(want, rel=1e-5)
    # gamma 0 is cross-entropy
    assert f(focal_loss(Y, P, gamma=0.0)) == pytest.approx(f(weighted_crossentropy(Y, P)), rel=1e-6)


def test_dice_and_soft_iou_by_hand():
    # foreground: sum(y p) = 0.6, sum(y) = 1, sum(p) = 0.2 + 0.6 = 0.8
    assert f(soft_dice_loss(Y, P, smooth=0.0)) == pytest.approx(1 - 1.2 / 1.8, rel=1e-5)
    assert f(soft_iou_loss(Y, P, smooth=0.0)) == pytest.approx(1 - 0.6 / 1.2, rel=1e-5)
    assert f(soft_dice_loss(Y, P, smooth=1.0)) == pytest.approx(1 - 2.2 / 2.8, rel=1e-5)


def test_overlap_losses_sum_over_the_batch_and_average_classes():
    # two images of one pixel, K = 3; class 1 only in image 1, class 2 only in image 2
    y = np.array([[[[0, 1, 0]]], [[[0, 0, 1]]]], dtype="float32")
    p = np.array([[[[0.2, 0.5, 0.3]]], [[[0.1, 0.1, 0.8]]]], dtype="float32")
    dice1 = 2 * 0.5 / (1 + 0.6)
    dice2 = 2 * 0.8 / (1 + 1.1)
    assert f(soft_dice_loss(y, p, smooth=0.0)) == pytest.approx(1 - (dice1 + dice2) / 2, rel=1e-5)


def test_perfect_prediction_has_near_zero_loss():
    loss = SegmentationLoss("crossentropy+dice+iou+focal", smooth=0.0)
    assert f(loss(Y, Y)) == pytest.approx(0.0, abs=1e-5)


def test_combined_loss_is_the_sum_and_serializes():
    loss = SegmentationLoss(["bce", "dice"], class_weights=[0.5, 2.0], smooth=0.0)
    want = -(0.5 * math.log(0.8) + 2.0 * math.log(0.6)) / 2 + (1 - 1.2 / 1.8)
    assert f(loss(Y, P)) == pytest.approx(want, rel=1e-5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, SegmentationLoss)
    assert again.terms == ("crossentropy", "dice") and again.class_weights == [0.5, 2.0]
    assert f(again(Y, P)) == pytest.approx(want, rel=1e-5)


def test_loss_names():
    assert parse_loss("BCE + soft_iou") == ("crossentropy", "iou")
    with pytest.raises(ConfigError, match="train.loss"):
        parse_loss("hinge")


def test_class_weights_by_hand():
    # frequencies 0.9 / 0.1
    assert class_weights_from_counts([900, 100], "inverse") == pytest.approx([1 / 0.9 / 2, 10 / 2])
    assert class_weights_from_counts([900, 100], "sqrt") == pytest.approx([5 / 6, 2.5])
    assert class_weights_from_counts([900, 100], "none") == [1.0, 1.0]
    w = class_weights_from_counts([700, 200, 100], "inverse")
    assert np.dot([0.7, 0.2, 0.1], w) == pytest.approx(1.0)
    with pytest.raises(InputError, match="'parking'"):
        class_weights_from_counts([100, 0], "sqrt", ["background", "parking"])
    with pytest.raises(ConfigError, match="class_weighting"):
        class_weights_from_counts([1, 1], "log")


def test_ignored_pixels_add_nothing():
    # a third pixel with an all-zero label row (mask 255) and a confident wrong prediction
    y = np.concatenate([Y, np.zeros((1, 1, 1, 2), "float32")], axis=2)
    p = np.concatenate([P, np.array([[[[0.01, 0.99]]]], "float32")], axis=2)
    for fn in (weighted_crossentropy, focal_loss):
        assert f(fn(y, p)) == pytest.approx(f(fn(Y, P)), rel=1e-6)
    for fn in (soft_dice_loss, soft_iou_loss):
        assert f(fn(y, p, smooth=0.0)) == pytest.approx(f(fn(Y, P, smooth=0.0)), rel=1e-6)


def test_masked_iou_by_hand():
    # truth: bg, lot, lot, ignored; prediction (argmax): lot, lot, bg, lot
    y = np.array([[[1, 0], [0, 1], [0, 1], [0, 0]]], dtype="float32")
    p = np.array([[[0.4, 0.6], [0.1, 0.9], [0.7, 0.3], [0.2, 0.8]]], dtype="float32")
    m = MaskedIoU(2, [1])
    m.update_state(y, p)
    assert f(m.result()) == pytest.approx(1 / 3)  # tp 1, fp 1, fn 1; the ignored pixel is not counted
    both = MaskedIoU(2, [0, 1])
    both.update_state(y, p)
    assert f(both.result()) == pytest.approx((0 / 2 + 1 / 3) / 2)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert isinstance(again, MaskedIoU)
