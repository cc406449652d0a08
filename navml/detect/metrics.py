"""Detection metrics: AP per class, mAP@0.5 and @0.5:0.95, precision/recall at a score threshold, class confusion.

Inputs are per image: truths ``(boxes (M, 4), class_ids (M,))`` and
predictions ``(boxes (N, 4), scores (N,), class_ids (N,))``, boxes
``(x0, y0, x1, y1)`` in pixels (any unit works, IoU has none).

Matching (as COCO does it): per image and class, predictions in order of
decreasing score each take the unmatched truth of the same class with the
highest IoU, if that IoU is at least the threshold; else the prediction is a
false positive. AP is the area under the precision-recall curve after making
precision monotone (all-point interpolation, PASCAL VOC 2010+); with
``interpolation="coco"`` it is the mean of that envelope at the 101 recall
points 0, 0.01 … 1 (what pycocotools reports). A class without truth boxes
has no AP (NaN) and is left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from navml.detect.nms import box_iou
from navml.errors import ConfigError

Truth = tuple[np.ndarray, np.ndarray]
Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]

#: IoU thresholds of mAP@0.5:0.95.
COCO_IOUS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
INTERPOLATIONS = ("all", "coco")


def _truth(t: Truth) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(t[0], float).reshape(-1, 4), np.asarray(t[1], int).reshape(-1)


def _pred(p: Prediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(p[0], float).reshape(-1, 4), np.asarray(p[1], float).reshape(-1), np.asarray(p[2], int).reshape(-1)


def _check(truths: Sequence[Truth], preds: Sequence[Prediction]) -> None:
    if len(truths) != len(preds):
        raise ConfigError(f"metrics: {len(truths)} images of truth but {len(preds)} of predictions")


def match_image(truth: Truth, pred: Prediction, class_id: int, iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores (n,) and true-positive flags (n,) of one image's predictions of ``class_id``, and its truth count."""
    tb, tc = _truth(truth)
    pb, ps, pc = _pred(pred)
    tb = tb[tc == class_id]
    sel = np.flatnonzero(pc == class_id)
    sel = sel[np.argsort(-ps[sel], kind="stable")]
    iou = box_iou(pb[sel], tb)
    taken = np.zeros(len(tb), bool)
    tp = np.zeros(len(sel), bool)
    for n in range(len(sel)):
        if not len(tb):
            break
        cand = np.where(taken, -1.0, iou[n])
        best = int(cand.argmax())
        if cand[best] >= iou_threshold:
            taken[best] = True
            tp[n] = True
    return ps[sel], tp, len(tb)


def pr_curve(truths: Sequence[Truth], preds: Sequence[Prediction], class_id: int, iou_threshold: float = 0.5):
    """Precision (n,), recall (n,) and scores (n,) of one class over all images, by decreasing score; and the truth count."""
    _check(truths, preds)
    scores, flags, n_true = [], [], 0
    for t, p in zip(truths, preds):
        s, tp, n = match_image(t, p, class_id, iou_threshold)
        scores.append(s)
        flags.append(tp)
        n_true += n
    s = np.concatenate(scores) if scores else np.zeros(0)
    f = np.concatenate(flags) if flags else np.zeros(0, bool)
    order = np.argsort(-s, kind="mergesort")
    s, f = s[order], f[order]
    tp = np.cumsum(f)
    fp = np.cumsum(~f)
    precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
    recall = tp / n_true if n_true else np.full(len(tp), np.nan)
    return precision, recall, s, n_true


def average_precision(precision: np.ndarray, recall: np.ndarray, interpolation: str = "all") -> float:
    """AP from a precision-recall curve in order of decreasing score (all-point or COCO 101-point)."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"metrics: interpolation '{interpolation}'; use one of {', '.join(INTERPOLATIONS)}")
    p = np.asarray(precision, float)
    r = np.asarray(recall, float)
    if len(r) and np.isnan(r).any():
        return float("nan")
    if not len(p):
        return 0.0
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    if interpolation == "coco":
        idx = np.searchsorted(r, np.linspace(0.0, 1.0, 101), side="left")  # first point reaching each recall
        padded = np.append(envelope, 0.0)  # recall never reached: precision 0
        return float(np.mean(padded[np.minimum(idx, len(envelope))]))
    r_prev = np.concatenate([[0.0], r[:-1]])
    return float(np.sum((r - r_prev) * envelope))


def average_precisions(
    truths: Sequence[Truth],
    preds: Sequence[Prediction],
    n_classes: int,
    iou_thresholds: Sequence[float] = (0.5,),
    interpolation: str = "all",
) -> np.ndarray:
    """AP (n_classes, len(iou_thresholds)); NaN for a class without truth boxes."""
    out = np.full((n_classes, len(iou_thresholds)), np.nan)
    for c in range(n_classes):
        for k, thr in enumerate(iou_thresholds):
            p, r, _, n_true = pr_curve(truths, preds, c, thr)
            if n_true:
                out[c, k] = average_precision(p, r, interpolation)
    return out


@dataclass(frozen=True)
class MeanAP:
    """mAP@0.5, mAP@0.5:0.95 and AP per class at both (NaN for classes without truths)."""

    map50: float
    map50_95: float
    ap50: np.ndarray
    ap50_95: np.ndarray


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.mean(x[~np.isnan(x)])) if (~np.isnan(x)).any() else float("nan")


def mean_ap(truths: Sequence[Truth], preds: Sequence[Prediction], n_classes: int, interpolation: str = "all") -> MeanAP:
    """mAP@0.5 and mAP@0.5:0.95 (mean over classes with truths of the mean AP over IoU 0.50, 0.55 … 0.95)."""
    ap = average_precisions(truths, preds, n_classes, COCO_IOUS, interpolation)
    ap50 = ap[:, 0]
    with np.errstate(invalid="ignore"):
        ap5095 = np.array([_nanmean(row) if not np.isnan(row).all() else np.nan for row in ap])
    return MeanAP(map50=_nanmean(ap50), map50_95=_nanmean(ap5095), ap50=ap50, ap50_95=ap5095)


@dataclass(frozen=True)
class Counts:
    """Per class (C,) true positives, false positives and false negatives at one score threshold and IoU."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        """tp / (tp + fp) per class; NaN without predictions."""
        d = self.tp + self.fp
        return np.divide(self.tp, d, out=np.full(len(d), np.nan), where=d > 0)

    @property
    def recall(self) -> np.ndarray:
        """tp / (tp + fn) per class; NaN without truths."""
        d = self.tp + self.fn
        return np.divide(self.tp, d, out=np.full(len(d), np.nan), where=d > 0)


def counts_at(
    truths: Sequence[Truth], preds: Sequence[Prediction], n_classes: int, score_threshold: float, iou_threshold: float = 0.5
) -> Counts:
    """TP, FP, FN per class counting only predictions with score >= ``score_threshold``."""
    _check(truths, preds)
    tp, fp, fn = (np.zeros(n_classes, int) for _ in range(3))
    for t, p in zip(truths, preds):
        pb, ps, pc = _pred(p)
        keep = ps >= score_threshold
        for c in range(n_classes):
            _, flags, n = match_image(t, (pb[keep], ps[keep], pc[keep]), c, iou_threshold)
            tp[c] += int(flags.sum())
            fp[c] += int((~flags).sum())
            fn[c] += n - int(flags.sum())
    return Counts(tp, fp, fn)


def confusion_matrix(
    truths: Sequence[Truth], preds: Sequence[Prediction], n_classes: int, score_threshold: float, iou_threshold: float = 0.5
) -> np.ndarray:
    """Class confusion (C + 1, C + 1): rows truth class, columns predicted class, index C = none.

    Predictions with score >= ``score_threshold`` first match truths of their
    own class (the diagonal, as in :func:`counts_at`); a prediction left over
    that overlaps a left-over truth of another class with IoU >= ``iou_threshold``
    is a confusion ``[truth class, predicted class]`` (by decreasing score, best
    IoU, each truth once); the remaining predictions count in row C (false
    alarms), the remaining truths in column C (missed). Row sums over columns
    are the truth counts (rows < C).
    """
    _check(truths, preds)
    m = np.zeros((n_classes + 1, n_classes + 1), int)
    for t, p in zip(truths, preds):
        tb, tc = _truth(t)
        pb, ps, pc = _pred(p)
        keep = np.flatnonzero(ps >= score_threshold)
        keep = keep[np.argsort(-ps[keep], kind="stable")]
        iou = box_iou(pb[keep], tb)
        t_used = np.zeros(len(tb), bool)
        p_used = np.zeros(len(keep), bool)
        for same in (True, False):
            for n in range(len(keep)):
                if p_used[n] or not len(tb):
                    continue
                ok = ~t_used & ((tc == pc[keep[n]]) if same else (tc != pc[keep[n]]))
                cand = np.where(ok, iou[n], -1.0)
                best = int(cand.argmax())
                if cand[best] >= iou_threshold:
                    t_used[best] = p_used[n] = True
                    m[tc[best], pc[keep[n]]] += 1
        for n in np.flatnonzero(~p_used):
            m[n_classes, pc[keep[n]]] += 1
        for j in np.flatnonzero(~t_used):
            m[tc[j], n_classes] += 1
    return m
