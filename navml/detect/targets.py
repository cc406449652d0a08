"""YOLOv2 box encoding (truth boxes -> target tensor) and decoding (raw head output -> boxes).

The head predicts, per grid cell ``(i, j)`` of stride ``S`` pixels and per
anchor ``a`` of shape ``(p_w, p_h)`` pixels, ``5 + C`` numbers
``t_x, t_y, t_w, t_h, t_o, c_1 .. c_C`` (logits). The box they stand for, in
pixels of the input window::

    x = (j + g(t_x)) S              y = (i + g(t_y)) S
    w = p_w exp(t_w)                h = p_h exp(t_h)
    score_k = sigmoid(t_o) softmax(c)_k

with the offset ``g(t) = s sigmoid(t) - (s - 1) / 2`` of the offset scale
``s`` (YOLOv2: ``s = 1``, an offset in 0..1 of the cell; YOLOv4/v5's wider
``s = 2``: -0.5..1.5, so that a centre near a cell border is not at the
sigmoid's flat end, and a neighbouring cell can hold the box too).

The target tensor (rows / S, cols / S, A, 5 + C) holds at the cell of a truth
box's centre and at the anchor of best shape IoU: ``g(t_x)`` and
``g(t_y)`` as wanted (the centre's offset in the cell, 0..1), ``t_w``
and ``t_h`` as wanted (``log(w / p_w)``, ``log(h / p_h)``), 1 in the
objectness channel and the one-hot class; zeros elsewhere. When two boxes
want the same cell and anchor, the later takes the free anchor of next-best
shape IoU in that cell; a box is dropped only when all ``A`` anchors of its
cell are taken (:func:`assign_boxes` reports it with ``-1``).

With ``neighbours`` (YOLOv5's assignment; it needs ``s >= 2``), a box is also a
positive in the two neighbouring cells nearest its centre, one across the
nearer vertical cell border and one across the nearer horizontal one (offsets
-0.5..0 or 1..1.5 there), on the same anchor, where that cell and anchor are
still free after every box took its own cell: three positives per box
instead of one, each seeing the marking from a slightly different place.

The head's raw output may come as ``(..., rows / S, cols / S, A * (5 + C))``
(channel ``a * (5 + C) + k``) or already split to ``(..., A, 5 + C)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navml.detect.anchors import box_shapes, shape_iou
from navml.errors import ConfigError, InputError

#: Channels of a target / raw output vector before the class scores.
TX, TY, TW, TH, TO = 0, 1, 2, 3, 4
N_BOX = 5
#: Offsets are clipped to [EPS, 1 - EPS] before a logit is taken.
EPS = 1e-7


def check_offset(offset_scale: float, neighbours: bool = False) -> None:
    """A :class:`ConfigError` unless ``offset_scale >= 1`` (and ``>= 2`` with ``neighbours``)."""
    if not offset_scale >= 1.0:
        raise ConfigError(f"params: detect.offset_scale is {offset_scale}; use 1 (YOLOv2) or more (2: YOLOv5)")
    if neighbours and offset_scale < 2.0:
        raise ConfigError(f"params: detect.neighbours needs detect.offset_scale 2 or more (now {offset_scale}): a neighbour cell's offset lies in -0.5..1.5")


def offset(t: np.ndarray, offset_scale: float = 1.0) -> np.ndarray:
    """Centre offset in cells ``s sigmoid(t) - (s - 1) / 2`` of raw ``t``."""
    return offset_scale * sigmoid(t) - (offset_scale - 1.0) / 2.0


@dataclass(frozen=True)
class Detections:
    """Decoded boxes (N, 4) ``(x0, y0, x1, y1)`` in pixels, their scores (N,) and class ids (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Detections:
        """The detections at ``index`` (an index array or boolean mask)."""
        return Detections(self.boxes[index], self.scores[index], self.class_ids[index])


def grid_shape(rows: int, cols: int, stride: int) -> tuple[int, int]:
    """Cells ``(rows / stride, cols / stride)`` of a window of ``rows x cols`` pixels."""
    if stride < 1 or rows % stride or cols % stride:
        raise ConfigError(f"detect: a {rows} x {cols} px window is not a multiple of the output stride {stride} px; use a multiple")
    return rows // stride, cols // stride


def _boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    if len(boxes) and not (np.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()):
        raise InputError("detect: every box needs x1 > x0 and y1 > y0 (pixels); check boxes.csv")
    return boxes


def assign_boxes(boxes: np.ndarray, anchors: np.ndarray, rows: int, cols: int, stride: int = 8) -> np.ndarray:
    """Cell row, cell column and anchor (N, 3) of each truth box; ``-1`` for a box that found no free anchor.

    A box whose centre lies on the window's right or bottom edge belongs to
    the last cell; a centre outside the window is an :class:`InputError`.
    """
    boxes = _boxes(boxes)
    anchors = np.asarray(anchors, float).reshape(-1, 2)
    gh, gw = grid_shape(rows, cols, stride)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    if len(boxes) and ((cx < 0) | (cx > cols) | (cy < 0) | (cy > rows)).any():
        raise InputError(f"detect: a box centre lies outside the {rows} x {cols} px window")
    ci = np.minimum((cy // stride).astype(int), gh - 1)
    cj = np.minimum((cx // stride).astype(int), gw - 1)
    prefs = np.argsort(-shape_iou(box_shapes(boxes), anchors), axis=1, kind="stable")
    out = np.full((len(boxes), 3), -1, dtype=int)
    taken: set[tuple[int, int, int]] = set()
    for n in range(len(boxes)):
        for a in prefs[n]:
            key = (int(ci[n]), int(cj[n]), int(a))
            if key not in taken:
                taken.add(key)
                out[n] = key
                break
    return out


def neighbour_cells(boxes: np.ndarray, rows: int, cols: int, stride: int = 8) -> list[list[tuple[int, int]]]:
    """Per box, the neighbouring cells ``(i, j)`` that also hold it with ``neighbours``: across the nearer
    vertical and the nearer horizontal cell border of its centre (inside the window; a centre exactly in a
    cell's middle takes the next cell)."""
    boxes = _boxes(boxes)
    gh, gw = grid_shape(rows, cols, stride)
    out = []
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        i, j = min(int(cy), gh - 1), min(int(cx), gw - 1)
        cells = []
        nj = j - 1 if cx - j < 0.5 else j + 1
        ni = i - 1 if cy - i < 0.5 else i + 1
        if 0 <= nj < gw:
            cells.append((i, nj))
        if 0 <= ni < gh:
            cells.append((ni, j))
        out.append(cells)
    return out


def encode_targets(
    boxes: np.ndarray,
    class_ids: np.ndarray,
    rows: int,
    cols: int,
    anchors: np.ndarray,
    n_classes: int,
    stride: int = 8,
    *,
    neighbours: bool = False,
) -> np.ndarray:
    """Target tensor (rows / stride, cols / stride, A, 5 + n_classes) float32 for truth boxes in pixels.

    ``boxes`` (N, 4) ``(x0, y0, x1, y1)`` pixels of the window, ``class_ids``
    (N,) in ``0 .. n_classes - 1``, ``anchors`` (A, 2) ``(w, h)`` pixels.
    ``neighbours``: also the two nearest neighbouring cells of each centre
    (:func:`neighbour_cells`), on the box's anchor where still free; the
    offsets there lie in -0.5..1.5 (a model with ``offset_scale`` 2).
    """
    boxes = _boxes(boxes)
    class_ids = np.asarray(class_ids, int).reshape(-1)
    anchors = np.asarray(anchors, float).reshape(-1, 2)
    if len(class_ids) != len(boxes):
        raise InputError(f"detect: {len(boxes)} boxes but {len(class_ids)} class ids")
    if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= n_classes):
        raise InputError(f"detect: class ids must lie in 0..{n_classes - 1}, got {class_ids.min()}..{class_ids.max()}")
    gh, gw = grid_shape(rows, cols, stride)
    target = np.zeros((gh, gw, len(anchors), N_BOX + n_classes), np.float32)
    where = assign_boxes(boxes, anchors, rows, cols, stride)
    wh = box_shapes(boxes)
    cells = [[(i, j)] for i, j, _ in where]
    if neighbours:
        taken = {(int(i), int(j), int(a)) for i, j, a in where if a >= 0}
        for n, extra in enumerate(neighbour_cells(boxes, rows, cols, stride)):
            a = int(where[n, 2])
            for i, j in extra:
                if a >= 0 and (i, j, a) not in taken:
                    taken.add((i, j, a))
                    cells[n].append((i, j))
    for n, (_, _, a) in enumerate(where):
        if a < 0:
            continue
        cx, cy = (boxes[n, 0] + boxes[n, 2]) / 2, (boxes[n, 1] + boxes[n, 3]) / 2
        for k, (i, j) in enumerate(cells[n]):
            lo, hi = (0.0, 1.0) if k == 0 else (-0.5, 1.5)
            target[i, j, a, TX] = np.clip(cx / stride - j, lo, hi)
            target[i, j, a, TY] = np.clip(cy / stride - i, lo, hi)
            target[i, j, a, TW] = np.log(wh[n, 0] / anchors[a, 0])
            target[i, j, a, TH] = np.log(wh[n, 1] / anchors[a, 1])
            target[i, j, a, TO] = 1.0
            target[i, j, a, N_BOX + class_ids[n]] = 1.0
    return target


def split_head(raw: np.ndarray, n_anchors: int) -> np.ndarray:
    """One window's raw head output (gh, gw, A * (5 + C)) as (gh, gw, A, 5 + C); a split (gh, gw, A, 5 + C) passes."""
    raw = np.asarray(raw)
    if raw.ndim == 4 and raw.shape[2] == n_anchors:
        return raw
    if raw.ndim != 3 or raw.shape[-1] % n_anchors:
        raise InputError(f"detect: head output of shape {raw.shape} is not one window's (rows, cols, {n_anchors} x (5 + classes))")
    return raw.reshape(*raw.shape[:-1], n_anchors, raw.shape[-1] // n_anchors)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, stable for large ``|x|``."""
    x = np.asarray(x, float)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of ``(N, C)`` logits."""
    z = np.asarray(logits, float)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs


def best_class(objectness: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, class_ids)``: each row's most probable class and its score, objectness (N,) x that probability."""
    class_ids = probs.argmax(axis=1)
    return objectness * probs[np.arange(len(probs)), class_ids], class_ids


def logit(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Inverse of :func:`sigmoid`, with ``p`` clipped to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(p, float), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def target_logits(target: np.ndarray, confidence: float = 30.0, offset_scale: float = 1.0) -> np.ndarray:
    """Raw head output (same shape as ``target``) that decodes to exactly the target's boxes (at ``offset_scale``).

    Offsets become logits, ``t_w``/``t_h`` pass through, objectness and class
    channels become ``+confidence`` where set and ``-confidence`` (objectness)
    or 0 (classes) elsewhere. For tests and for checking a loss at its minimum.
    """
    t = np.asarray(target, float)
    raw = np.zeros_like(t)
    shift = (offset_scale - 1.0) / 2.0
    raw[..., TX] = logit((t[..., TX] + shift) / offset_scale)
    raw[..., TY] = logit((t[..., TY] + shift) / offset_scale)
    raw[..., TW] = t[..., TW]
    raw[..., TH] = t[..., TH]
    raw[..., TO] = np.where(t[..., TO] > 0.5, confidence, -confidence)
    raw[..., N_BOX:] = t[..., N_BOX:] * confidence
    return raw


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, stride: int = 8, offset_scale: float = 1.0) -> np.ndarray:
    """Box of every cell and anchor: (gh, gw, A, 4) ``(x0, y0, x1, y1)`` pixels from split raw output (gh, gw, A, 5 + C)."""
    raw = np.asarray(raw, float)
    anchors = np.asarray(anchors, float).reshape(-1, 2)
    gh, gw = raw.shape[:2]
    jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
    cx = (jj[..., None] + offset(raw[..., TX], offset_scale)) * stride
    cy = (ii[..., None] + offset(raw[..., TY], offset_scale)) * stride
    w = anchors[:, 0] * np.exp(np.minimum(raw[..., TW], 20.0))
    h = anchors[:, 1] * np.exp(np.minimum(raw[..., TH], 20.0))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def decode_cells(
    raw: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    anchor_ids: np.ndarray,
    anchors: np.ndarray,
    stride: int = 8,
    offset_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N, 4), scores (N,) and class ids (N,) of the listed cells and anchors, unsorted and unthresholded:
    bit for bit what :func:`decode` gives those cells (the same operations, element by element).

    ``raw`` (N, 5 + C): the head values of cell ``(rows[n], cols[n])`` and anchor ``anchor_ids[n]``; boxes
    in pixels of the grid ``raw`` was taken from (cell ``(0, 0)`` at the origin). Decoding only the cells
    whose objectness can reach a threshold (a score is at most its ``sigmoid(t_o)``) saves decoding all the others.
    """
    anchors = np.asarray(anchors, float).reshape(-1, 2)
    raw = np.asarray(raw).astype(float).reshape(len(rows), -1)
    cx = (np.asarray(cols) + offset(raw[:, TX], offset_scale)) * stride
    cy = (np.asarray(rows) + offset(raw[:, TY], offset_scale)) * stride
    w = anchors[anchor_ids, 0] * np.exp(np.minimum(raw[:, TW], 20.0))
    h = anchors[anchor_ids, 1] * np.exp(np.minimum(raw[:, TH], 20.0))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    scores, class_ids = best_class(sigmoid(raw[:, TO]), softmax(raw[:, N_BOX:]))
    return boxes, scores, class_ids


def decode(
    raw: np.ndarray,
    anchors: np.ndarray,
    stride: int = 8,
    score_threshold: float = 0.0,
    origin: tuple[float, float] = (0.0, 0.0),
    offset_scale: float = 1.0,
) -> Detections:
    """Detections of one window from its raw head output (gh, gw, A * (5 + C)) or (gh, gw, A, 5 + C).

    Each cell and anchor gives one box with its best class and the score
    ``sigmoid(t_o) * softmax(c)_best``; boxes scoring below
    ``score_threshold`` are dropped. ``origin`` ``(x, y)`` pixels is added to
    the boxes (a window's offset in global pixels); ``offset_scale`` is the
    model's (``meta.json`` ``extra.offset_scale``, 1 when absent). Sorted by
    score, highest first.
    """
    anchors = np.asarray(anchors, float).reshape(-1, 2)
    raw = split_head(raw, len(anchors)).astype(float)
    boxes = decode_boxes(raw, anchors, stride, offset_scale).reshape(-1, 4)
    scores, class_ids = best_class(sigmoid(raw[..., TO].reshape(-1)), softmax(raw[..., N_BOX:].reshape(-1, raw.shape[-1] - N_BOX)))
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    boxes = boxes[keep] + np.array([origin[0], origin[1], origin[0], origin[1]], float)
    return Detections(boxes, scores[keep], class_ids[keep])
