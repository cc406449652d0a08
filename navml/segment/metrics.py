"""Segmentation metrics from pixel confusion counts (pure numpy, streaming-friendly).

Conventions: labels are integers ``0..K-1`` with 0 background; a confusion
matrix ``cm[t, p]`` counts pixels of truth ``t`` predicted ``p``. Scores of a
class with an empty denominator are ``nan`` (written as ``null`` in JSON).
Threshold curves come from per-class histograms of the predicted probability
over ``bins`` equal bins; threshold ``k / bins`` predicts a pixel positive
when its probability is ``>= k / bins``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Threshold-selection criteria.
THRESHOLD_METRICS = ("iou", "f1")


def confusion_counts(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` int64 pixel counts, rows truth, columns prediction.

    Pixels whose truth is outside ``0..n-1`` (255 = ignore) are not counted.
    """
    truth = np.asarray(truth).ravel().astype("int64")
    pred = np.asarray(pred).ravel().astype("int64")
    keep = (truth >= 0) & (truth < n)
    return np.bincount(truth[keep] * n + pred[keep], minlength=n * n).reshape(n, n)


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """IoU, precision, recall and F1 of one class from its counts."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def class_scores(cm: np.ndarray) -> list[dict[str, float]]:
    """Per label ``0..K-1``: ``tp``, ``fp``, ``fn`` and :func:`scores` (one-vs-rest)."""
    cm = np.asarray(cm, dtype="int64")
    out = []
    for c in range(cm.shape[0]):
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum() - tp)
        fn = int(cm[c, :].sum() - tp)
        out.append({"tp": tp, "fp": fp, "fn": fn, **scores(tp, fp, fn)})
    return out


def labels_from_probs(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Label map from softmax ``(..., K)``: the most probable foreground class ``c``
    where its probability is ``>= thresholds[c - 1]``, else 0 (background).

    With one class this is ``probs[..., 1] >= threshold``.
    """
    probs = np.asarray(probs)
    fg = probs[..., 1:]
    best = fg.argmax(axis=-1)
    p = np.take_along_axis(fg, best[..., None], axis=-1)[..., 0]
    thr = np.asarray(thresholds, dtype=probs.dtype)[best]
    return np.where(p >= thr, best + 1, 0).astype("uint8")


def histograms(prob: np.ndarray, truth: np.ndarray, bins: int = 100, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and of negative pixels per probability bin (``bins`` equal bins on 0..1);
    only pixels where ``valid`` is true when it is given."""
    # the small offset keeps p = k / bins in bin k despite float rounding (0.58 * 100 = 57.999...)
    idx = np.clip(np.floor(np.asarray(prob, dtype="float64").ravel() * bins + 1e-6).astype("int64"), 0, bins - 1)
    truth = np.asarray(truth, dtype=bool).ravel()
    if valid is not None:
        keep = np.asarray(valid, dtype=bool).ravel()
        idx, truth = idx[keep], truth[keep]
    pos = np.bincount(idx[truth], minlength=bins)
    neg = np.bincount(idx[~truth], minlength=bins)
    return pos, neg


def curve(pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """Counts and scores at thresholds ``k / bins`` for ``k = 0..bins`` from :func:`histograms`."""
    pos = np.asarray(pos, dtype="float64")
    neg = np.asarray(neg, dtype="float64")
    bins = len(pos)
    # pixels predicted positive at threshold k/bins: those in bins >= k
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0.0)
    fp = np.append(np.cumsum(neg[::-1])[::-1], 0.0)
    fn = pos.sum() - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {
        "threshold": np.arange(bins + 1) / bins,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "iou": iou,
        "f1": f1,
    }


def best_threshold(pos: np.ndarray, neg: np.ndarray, metric: str = "iou") -> tuple[float, float]:
    """``(threshold, score)`` maximizing ``metric`` (iou or f1) over thresholds ``k / bins``, ``0 < k < bins``.

    Ties go to the threshold closest to 0.5. Without any positive pixel returns ``(0.5, nan)``.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"metric must be one of {THRESHOLD_METRICS}")
    c = curve(pos, neg)
    values = c[metric][1:-1]
    thr = c["threshold"][1:-1]
    if not np.isfinite(values).any() or np.nanmax(values) <= 0:
        return 0.5, float("nan") if not np.asarray(pos).sum() else 0.0
    best = np.nanmax(values)
    candidates = np.flatnonzero(values >= best - 1e-12)
    k = candidates[np.argmin(np.abs(thr[candidates] - 0.5))]
    return float(thr[k]), float(values[k])
