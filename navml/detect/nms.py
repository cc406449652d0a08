"""Box IoU, class-aware non-maximum suppression, and keep-by-centre for windows with a halo.

Seamless detection over a city: each prediction window is read with a halo of
context around its *core*; the cores tile the plane without overlap. A box
decoded in a window (shifted to global pixels) is kept iff its centre lies in
that window's core, half-open ``[x0, x1) x [y0, y1)``, so a centre exactly on
a core border belongs to exactly one window. Then class-aware NMS removes what
is left of duplicates. ``margin_px > 0`` widens every core by that much before
the centre test: two windows that disagree by a fraction of a pixel about a
centre near the border then both keep it (rather than both dropping it), and
NMS keeps the better one. All coordinates in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from navml.detect.targets import Detections
from navml.errors import ConfigError


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of boxes ``a`` (N, 4) and ``b`` (M, 4), ``(x0, y0, x1, y1)`` pixels; 0 where both are empty."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Indices of the boxes kept by greedy class-aware NMS, highest score first.

    A box is suppressed by a higher-scoring kept box of the same class whose
    IoU with it exceeds ``iou_threshold``; boxes of different classes never
    suppress each other. Ties in score keep the earlier box.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"params: NMS IoU threshold is {iou_threshold}; use a value in (0, 1], such as 0.5")
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    scores = np.asarray(scores, float).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for c in np.unique(class_ids):
        idx = order[class_ids[order] == c]
        iou = box_iou(boxes[idx], boxes[idx])
        alive = np.ones(len(idx), bool)
        for n in range(len(idx)):
            if not alive[n]:
                continue
            keep.append(int(idx[n]))
            alive[n + 1 :] &= iou[n, n + 1 :] <= iou_threshold
    keep_arr = np.array(keep, dtype=int)
    return keep_arr[np.argsort(-scores[keep_arr], kind="stable")] if len(keep_arr) else keep_arr


def centre_in_core(boxes: np.ndarray, core: tuple[float, float, float, float], margin_px: float = 0.0) -> np.ndarray:
    """Mask (N,): box centre in the core ``(x0, y0, x1, y1)`` pixels, half-open ``[x0, x1) x [y0, y1)``, widened by ``margin_px``."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x0, y0, x1, y1 = (float(v) for v in core)
    m = float(margin_px)
    return (cx >= x0 - m) & (cx < x1 + m) & (cy >= y0 - m) & (cy < y1 + m)


def merge_windows(
    windows: Sequence[tuple[Detections, tuple[float, float, float, float]]],
    iou_threshold: float = 0.5,
    margin_px: float = 0.0,
) -> Detections:
    """One set of detections from windows with a halo: keep by centre in each core, then class-aware NMS.

    ``windows``: ``(detections in global pixels, core rectangle in global pixels)`` per window.
    """
    parts = [d.take(centre_in_core(d.boxes, core, margin_px)) for d, core in windows]
    if not parts:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    boxes = np.concatenate([p.boxes.reshape(-1, 4) for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    class_ids = np.concatenate([np.asarray(p.class_ids, int) for p in parts])
    merged = Detections(boxes, scores, class_ids)
    return merged.take(nms(boxes, scores, class_ids, iou_threshold))
