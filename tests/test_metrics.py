"""Confusion-count metrics against counts made by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navml.segment.metrics import (
    best_threshold,
    class_scores,
    confusion_counts,
    curve,
    histograms,
    labels_from_probs,
    scores,
)


def test_confusion_and_scores_by_hand():
    truth = np.array([[0, 0, 1, 1], [1, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 1, 0]])
    cm = confusion_counts(truth, pred, 3)
    # truth 0 (3 px): 2 -> 0, 1 -> 1;  truth 1 (3 px): 2 -> 1, 1 -> 0;  truth 2 (2 px): 1 -> 2, 1 -> 1
    np.testing.assert_array_equal(cm, [[2, 1, 0], [1, 2, 0], [0, 1, 1]])
    s = class_scores(cm)
    # class 1: tp 2, fp 2 (one bg, one class 2), fn 1
    assert (s[1]["tp"], s[1]["fp"], s[1]["fn"]) == (2, 2, 1)
    assert s[1]["iou"] == pytest.approx(2 / 5)
    assert s[1]["precision"] == pytest.approx(2 / 4)
    assert s[1]["recall"] == pytest.approx(2 / 3)
    assert s[1]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # class 2: tp 1, fp 0, fn 1
    assert s[2]["iou"] == pytest.approx(1 / 2)
    assert s[2]["precision"] == pytest.approx(1.0)
    assert s[2]["recall"] == pytest.approx(1 / 2)


def test_empty_class_scores_are_nan():
    s = scores(0, 0, 0)
    assert all(math.isnan(v) for v in s.values())
    assert scores(0, 3, 0)["precision"] == 0.0


def test_labels_from_probs_thresholds_each_class():
    probs = np.array(
        [
            [0.5, 0.4, 0.1],  # class 1 best, 0.4 >= 0.3 -> 1
            [0.7, 0.2, 0.1],  # class 1 best, 0.2 < 0.3 -> 0
            [0.3, 0.3, 0.4],  # class 2 best, 0.4 < 0.5 -> 0
            [0.1, 0.3, 0.6],  # class 2 best, 0.6 >= 0.5 -> 2
        ]
    )
    np.testing.assert_array_equal(labels_from_probs(probs, [0.3, 0.5]), [1, 0, 0, 2])
    # one class: plain probability threshold
    p = np.array([[0.55, 0.45], [0.45, 0.55]])
    np.testing.assert_array_equal(labels_from_probs(p, [0.5]), [0, 1])


def test_threshold_curve_equals_direct_counts():
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=5000)
    truth = rng.uniform(size=5000) < prob  # a calibrated scorer
    pos, neg = histograms(prob, truth, bins=20)
    c = curve(pos, neg)
    for k in (0, 3, 10, 17, 20):
        t = k / 20
        pred = prob >= t
        assert c["tp"][k] == (pred & truth).sum()
        assert c["fp"][k] == (pred & ~truth).sum()
        assert c["fn"][k] == (~pred & truth).sum()
    assert c["recall"][0] == 1.0


def test_best_threshold_finds_the_separating_value():
    # positives score 0.62..0.9, negatives 0.1..0.58: any threshold in (0.58, 0.62] separates them
    prob = np.concatenate([np.linspace(0.62, 0.9, 50), np.linspace(0.1, 0.58, 200)])
    truth = np.arange(250) < 50
    pos, neg = histograms(prob, truth, bins=100)
    thr, iou = best_threshold(pos, neg, "iou")
    assert 0.58 < thr <= 0.62
    assert iou == pytest.approx(1.0)
    thr_f1, f1 = best_threshold(pos, neg, "f1")
    assert f1 == pytest.approx(1.0)


def test_ignored_truth_is_not_counted():
    truth = np.array([0, 1, 255, 255, 1])
    pred = np.array([0, 1, 1, 0, 0])
    np.testing.assert_array_equal(confusion_counts(truth, pred, 2), [[1, 0], [1, 1]])
    prob = np.array([0.1, 0.9, 0.9, 0.1, 0.3])
    pos, neg = histograms(prob, truth == 1, bins=10, valid=truth != 255)
    assert pos.sum() == 2 and neg.sum() == 1 and pos[9] == 1 and pos[3] == 1 and neg[1] == 1
