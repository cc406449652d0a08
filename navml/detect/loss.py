"""The YOLOv2 loss as a Keras 3 loss, on targets from :func:`navml.detect.targets.encode_targets`.

``y_true`` (b, gh, gw, A, 5 + C) targets; ``y_pred`` the head's raw output
(b, gh, gw, A * (5 + C)) or split (b, gh, gw, A, 5 + C). With ``m`` = 1 at
the cells and anchors holding a truth box, per image (summed over cells and
anchors)::

    coord   * sum m [(g(t_x) - x)² + (g(t_y) - y)² + (t_w - w)² + (t_h - h)²]
    obj     * sum m (sig(t_o) - IoU(predicted box, its truth box))²      (IoU not differentiated)
    noobj   * sum (1 - m) [best IoU with any truth <= ignore_iou] w sig(t_o)²    (w = 1, or the mined weight)
    cls     * sum m cross-entropy(softmax(c), one-hot class)
    prior   * sum (1 - m) [(g(t_x) - 1/2)² + (g(t_y) - 1/2)² + t_w² + t_h²]   while step < warmup_steps

with the centre offset ``g(t) = s sig(t) - (s - 1) / 2`` of the offset scale
``s`` (:mod:`navml.detect.targets`; 1 in YOLOv2).

The "best IoU with any truth" compares each predicted box with the truth
boxes of its image (at most ``max_truths`` per image, those of the target
tensor); a prediction that already overlaps a truth that well is neither
rewarded nor punished for its objectness (YOLOv2's 0.6). The warm-up pulls
the unassigned predictions toward their anchors (centre of the cell, anchor
shape) for the first ``warmup_steps`` optimizer steps (``step``: a variable
such as ``optimizer.iterations``). Boxes are compared in pixels; the loss has
no unit. Returns one value per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from navml.detect.targets import N_BOX, TH, TO, TW, TX, TY
from navml.errors import ConfigError

TERMS = ("coord", "obj", "noobj", "cls", "prior")


def _grid(gh, gw, dtype):
    jj = ops.cast(ops.arange(gw), dtype)
    ii = ops.cast(ops.arange(gh), dtype)
    return ops.reshape(jj, (1, 1, -1, 1)), ops.reshape(ii, (1, -1, 1, 1))


def _corners(cx, cy, w, h):
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _iou(a, b):
    """IoU of boxes given as corner tuples, broadcasting."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = ops.maximum(ops.minimum(ax1, bx1) - ops.maximum(ax0, bx0), 0.0)
    ih = ops.maximum(ops.minimum(ay1, by1) - ops.maximum(ay0, by0), 0.0)
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / ops.maximum(union, 1e-9)


def loss_terms(
    y_true,
    y_pred,
    anchors: np.ndarray,
    stride: int = 8,
    *,
    ignore_iou: float = 0.6,
    max_truths: int = 64,
    offset_scale: float = 1.0,
    noobj_weighted: bool = False,
) -> dict:
    """The loss terms before weighting, each of shape (b,): ``coord``, ``obj``, ``noobj``, ``cls``, ``prior``.

    ``noobj_weighted``: ``y_true`` has one more channel after the classes, the weight of each cell's and
    anchor's no-object term (hard-negative retraining: :func:`navml.detect.dataset.noobj_weights`)."""
    anchors = np.asarray(anchors, "float32").reshape(-1, 2)
    n_a = len(anchors)
    y_true = ops.convert_to_tensor(y_true, "float32")
    noobj_w = None
    if noobj_weighted:
        noobj_w, y_true = y_true[..., -1], y_true[..., :-1]
    y_pred = ops.convert_to_tensor(y_pred, "float32")
    y_pred = ops.reshape(y_pred, ops.shape(y_true))
    shape = ops.shape(y_true)
    b, gh, gw = shape[0], shape[1], shape[2]
    gx, gy = _grid(gh, gw, "float32")
    aw = ops.reshape(ops.convert_to_tensor(anchors[:, 0]), (1, 1, 1, n_a))
    ah = ops.reshape(ops.convert_to_tensor(anchors[:, 1]), (1, 1, 1, n_a))

    m = y_true[..., TO]
    shift = (offset_scale - 1.0) / 2.0
    sx, sy = offset_scale * ops.sigmoid(y_pred[..., TX]) - shift, offset_scale * ops.sigmoid(y_pred[..., TY]) - shift
    tw, th = y_pred[..., TW], y_pred[..., TH]
    so = ops.sigmoid(y_pred[..., TO])
    pred = _corners((gx + sx) * stride, (gy + sy) * stride, aw * ops.exp(ops.minimum(tw, 10.0)), ah * ops.exp(ops.minimum(th, 10.0)))
    truth = _corners(
        (gx + y_true[..., TX]) * stride, (gy + y_true[..., TY]) * stride, aw * ops.exp(y_true[..., TW]), ah * ops.exp(y_true[..., TH])
    )

    def per_image(x):
        return ops.sum(ops.reshape(x, (b, -1)), axis=1)

    coord = per_image(m * ((sx - y_true[..., TX]) ** 2 + (sy - y_true[..., TY]) ** 2 + (tw - y_true[..., TW]) ** 2 + (th - y_true[..., TH]) ** 2))
    own_iou = ops.stop_gradient(_iou(pred, truth))
    obj = per_image(m * (so - own_iou) ** 2)

    # best IoU of every prediction with any truth of its image: the top `max_truths` truth cells
    # (padded with max_truths empty entries, so that k is static and never exceeds the cells)
    n_cells = gh * gw * n_a
    k = int(max_truths)
    pad = ops.zeros((b, k), "float32")
    flat_m = ops.concatenate([ops.reshape(m, (b, n_cells)), pad], axis=1)
    _, idx = ops.top_k(flat_m, k)
    t_m = ops.take_along_axis(flat_m, idx, axis=1)
    t_boxes = [ops.take_along_axis(ops.concatenate([ops.reshape(c, (b, n_cells)), pad], axis=1), idx, axis=1) for c in truth]
    p_boxes = [ops.reshape(c, (b, n_cells, 1)) for c in pred]
    all_iou = _iou(p_boxes, [ops.reshape(c, (b, 1, k)) for c in t_boxes]) * ops.reshape(t_m, (b, 1, k))
    best = ops.reshape(ops.stop_gradient(ops.max(all_iou, axis=2)), ops.shape(m))
    free = (1.0 - m) * ops.cast(best <= ignore_iou, "float32")
    noobj = per_image(free * so**2 if noobj_w is None else free * noobj_w * so**2)

    logp = y_pred[..., N_BOX:] - ops.logsumexp(y_pred[..., N_BOX:], axis=-1, keepdims=True)
    cls = per_image(-m * ops.sum(y_true[..., N_BOX:] * logp, axis=-1))

    prior = per_image((1.0 - m) * ((sx - 0.5) ** 2 + (sy - 0.5) ** 2 + tw**2 + th**2))
    return {"coord": coord, "obj": obj, "noobj": noobj, "cls": cls, "prior": prior}


@keras.saving.register_keras_serializable(package="navml")
class YoloLoss(keras.losses.Loss):
    """YOLOv2 loss (see the module docstring); weights and thresholds as arguments.

    ``anchors`` (A, 2) ``(w, h)`` pixels, ``stride`` pixels. ``step`` is read
    each call (e.g. ``model.optimizer.iterations``); without it there is no
    warm-up. Defaults: YOLOv2's ``coord = 1``, ``obj = 5``, ``noobj = 1``,
    ``cls = 1``, ``prior = 0.01``.
    """

    def __init__(
        self,
        anchors: Sequence[Sequence[float]],
        stride: int = 8,
        *,
        coord: float = 1.0,
        obj: float = 5.0,
        noobj: float = 1.0,
        cls: float = 1.0,
        prior: float = 0.01,
        ignore_iou: float = 0.6,
        warmup_steps: int = 0,
        max_truths: int = 64,
        offset_scale: float = 1.0,
        noobj_weighted: bool = False,
        step=None,
        name: str = "yolo_loss",
        reduction: str = "sum_over_batch_size",
    ):
        super().__init__(name=name, reduction=reduction)
        for key, v in (("coord", coord), ("obj", obj), ("noobj", noobj), ("cls", cls), ("prior", prior)):
            if v < 0:
                raise ConfigError(f"params: loss weight '{key}' is {v}; use 0 or more")
        if not 0.0 < ignore_iou <= 1.0:
            raise ConfigError(f"params: loss 'ignore_iou' is {ignore_iou}; use a value in (0, 1], YOLOv2 uses 0.6")
        if not offset_scale >= 1.0:
            raise ConfigError(f"params: detect.offset_scale is {offset_scale}; use 1 (YOLOv2) or more")
        if warmup_steps < 0 or max_truths < 1:
            raise ConfigError("params: loss 'warmup_steps' must be 0 or more and 'max_truths' at least 1")
        self.anchors = np.asarray(anchors, "float32").reshape(-1, 2)
        self.stride = int(stride)
        self.weights = {"coord": coord, "obj": obj, "noobj": noobj, "cls": cls, "prior": prior}
        self.ignore_iou = float(ignore_iou)
        self.warmup_steps = int(warmup_steps)
        self.max_truths = int(max_truths)
        self.offset_scale = float(offset_scale)
        self.noobj_weighted = bool(noobj_weighted)
        self.step = step

    def call(self, y_true, y_pred):
        terms = loss_terms(
            y_true, y_pred, self.anchors, self.stride, ignore_iou=self.ignore_iou, max_truths=self.max_truths,
            offset_scale=self.offset_scale, noobj_weighted=self.noobj_weighted,
        )
        total = sum(self.weights[k] * terms[k] for k in TERMS if k != "prior")
        if self.warmup_steps and self.step is not None and self.weights["prior"]:
            on = ops.cast(ops.convert_to_tensor(self.step) < self.warmup_steps, "float32")
            total = total + on * self.weights["prior"] * terms["prior"]
        return total

    def get_config(self):
        return {
            "name": self.name,
            "reduction": self.reduction,
            "anchors": self.anchors.tolist(),
            "stride": self.stride,
            **self.weights,
            "ignore_iou": self.ignore_iou,
            "warmup_steps": self.warmup_steps,
            "max_truths": self.max_truths,
            "offset_scale": self.offset_scale,
            "noobj_weighted": self.noobj_weighted,
        }
