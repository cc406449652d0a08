"""The YOLOv2 loss: ~0 at perfect logits, growing with an offset; the no-object mask; warm-up; one fit step."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.loss import YoloLoss, loss_terms
from navml.detect.targets import TO, TW, TX, encode_targets, logit, target_logits
from navml.errors import ConfigError

ANCHORS = np.array([[4.0, 11.0], [11.0, 4.0], [8.0, 8.0]])
BOXES = np.array([[16.0, 8.0, 27.0, 12.0], [2.0, 20.0, 6.0, 31.0]])  # wide one in cell (1, 2), tall one in cell (3, 0)
CLASSES = np.array([1, 0])


def _case():
    t = encode_targets(BOXES, CLASSES, 32, 32, ANCHORS, 2, 8)  # (4, 4, 3, 7)
    return t[None], target_logits(t)[None].astype("float32")


def _total(y_true, y_pred, **kw) -> float:
    return float(np.asarray(YoloLoss(ANCHORS, 8, **kw)(y_true, y_pred)))


def test_loss_is_about_zero_for_perfect_logits_and_grows_with_an_offset():
    y_true, y_pred = _case()
    assert _total(y_true, y_pred.reshape(1, 4, 4, 21)) < 1e-5  # the head's flat layout works too
    terms = loss_terms(y_true, y_pred, ANCHORS, 8)
    assert all(float(np.asarray(terms[k])[0]) < 1e-5 for k in ("coord", "obj", "noobj", "cls"))
    losses = []
    for delta in (0.0, 0.5, 1.0, 2.0):
        p = y_pred.copy()
        p[0, 1, 2, 1, TX] += delta  # move the wide box's centre right
        losses.append(_total(y_true, p))
    assert losses[0] < 1e-5 and (np.diff(losses) > 0).all()
    # by hand: t_w off by 0.3 gives a coordinate term of 0.3² = 0.09
    p = y_pred.copy()
    p[0, 1, 2, 1, TW] += 0.3
    coord = float(np.asarray(loss_terms(y_true, p, ANCHORS, 8)["coord"])[0])
    assert coord == pytest.approx(0.09, rel=1e-4)


def test_no_object_mask_excludes_a_prediction_overlapping_a_truth():
    y_true, y_pred = _case()
    # anchor 2 (8 x 8) of the wide box's cell predicts that box almost exactly, with objectness logit 3
    p = y_pred.copy()
    p[0, 1, 2, 2, TX], p[0, 1, 2, 2, TX + 1] = logit(5.5 / 8), logit(0.25)
    p[0, 1, 2, 2, TW], p[0, 1, 2, 2, TW + 1] = np.log(11 / 8), np.log(4 / 8)
    p[0, 1, 2, 2, TO] = 3.0
    masked = float(np.asarray(loss_terms(y_true, p, ANCHORS, 8, ignore_iou=0.6)["noobj"])[0])
    unmasked = float(np.asarray(loss_terms(y_true, p, ANCHORS, 8, ignore_iou=1.0)["noobj"])[0])
    s = 1 / (1 + np.exp(-3.0))
    assert masked < 1e-6
    assert unmasked == pytest.approx(s**2, rel=1e-4)
    # the same confident prediction away from any truth is punished
    far = y_pred.copy()
    far[0, 3, 3, 2, TO] = 3.0
    assert float(np.asarray(loss_terms(y_true, far, ANCHORS, 8)["noobj"])[0]) == pytest.approx(s**2, rel=1e-4)


def test_warm_up_toward_anchors_only_during_the_first_steps():
    import keras

    y_true, y_pred = _case()
    step = keras.Variable(0, dtype="int64", trainable=False)
    loss = YoloLoss(ANCHORS, 8, warmup_steps=10, prior=0.01, step=step)
    early = float(np.asarray(loss(y_true, y_pred)))
    prior = float(np.asarray(loss_terms(y_true, y_pred, ANCHORS, 8)["prior"])[0])
    assert prior > 1.0 and early == pytest.approx(0.01 * prior, rel=1e-4)
    step.assign(10)
    assert float(np.asarray(loss(y_true, y_pred))) < 1e-5
    with pytest.raises(ConfigError):
        YoloLoss(ANCHORS, 8, ignore_iou=0.0)


def test_one_training_step_runs_and_lowers_the_loss():
    import keras

    from navml.models.yolo import build_yolo

    keras.utils.set_random_seed(0)
    model = build_yolo(n_classes=2, n_anchors=3, stride=8, base_filters=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=YoloLoss(ANCHORS, 8, warmup_steps=2), run_eagerly=True)
    model.loss.step = model.optimizer.iterations
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = np.stack([encode_targets(BOXES, CLASSES, 32, 32, ANCHORS, 2, 8)] * 2)
    first = float(model.train_on_batch(x, y))
    for _ in range(3):
        last = float(model.train_on_batch(x, y))
    assert np.isfinite(first) and last < first


def test_loss_in_a_graph_with_unknown_window_size():
    import tensorflow as tf

    y_true, y_pred = _case()
    loss = YoloLoss(ANCHORS, 8, max_truths=100)  # more truth slots than the 48 cells x anchors of this window
    spec = tf.TensorSpec((None, None, None, 3, 7), tf.float32)
    graph = tf.function(lambda t, p: loss(t, p), input_signature=[spec, spec])
    p = y_pred.copy()
    p[0, 1, 2, 1, TX] += 1.0
    assert float(graph(y_true, p)) == pytest.approx(_total(y_true, p), rel=1e-5)
    assert float(graph(y_true, p)) > 0.01


def test_loss_is_least_at_its_target_with_the_wide_offset():
    """offset_scale 2 (YOLOv5): the coordinate term vanishes at the target's logits, neighbours included."""
    t = encode_targets(BOXES, CLASSES, 32, 32, ANCHORS, 2, 8, neighbours=True)[None]
    exact = target_logits(t, offset_scale=2.0).astype("float32")
    terms = loss_terms(t, exact, ANCHORS, 8, offset_scale=2.0)
    assert float(np.asarray(terms["coord"])[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(np.asarray(terms["obj"])[0]) == pytest.approx(0.0, abs=1e-4)
    off = loss_terms(t, exact, ANCHORS, 8, offset_scale=1.0)  # read at the YOLOv2 offset, the same logits miss
    assert float(np.asarray(off["coord"])[0]) > 0.01
    with pytest.raises(ConfigError, match="offset_scale"):
        YoloLoss(ANCHORS, 8, offset_scale=0.5)
