"""Anchor shapes by k-means over the training boxes with the distance ``1 - IoU`` (YOLOv2).

Boxes are compared by shape only: two boxes ``(w, h)`` are aligned at a common
centre and their IoU is ``min(w) min(h) / (w h + w' h' - min(w) min(h))``.
Cluster centres start by k-means++ (the first a random box, each next one a
box drawn with probability proportional to its squared distance to the
nearest centre) from a seeded generator, so the same boxes and seed give the
same anchors. A centre is the mean ``(w, h)`` of its boxes. All sizes in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navml.errors import ConfigError, InputError


@dataclass(frozen=True)
class Anchors:
    """k-means result: anchor shapes (k, 2) ``(w, h)`` in pixels sorted by area, and how well they fit."""

    wh: np.ndarray
    #: Mean over the boxes of the IoU with their best anchor (YOLOv2 reports 0.61 at k = 5 on VOC).
    mean_iou: float
    #: Boxes per anchor, in the order of ``wh``.
    counts: np.ndarray
    iterations: int


def shape_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, K) of box shapes ``a`` (N, 2) and ``b`` (K, 2), ``(w, h)`` in pixels, aligned at one centre."""
    a = np.asarray(a, float).reshape(-1, 2)
    b = np.asarray(b, float).reshape(-1, 2)
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    union = (a[:, 0] * a[:, 1])[:, None] + (b[:, 0] * b[:, 1])[None, :] - inter
    return inter / union


def box_shapes(boxes: np.ndarray) -> np.ndarray:
    """``(w, h)`` (N, 2) in pixels of boxes ``(x0, y0, x1, y1)`` (N, 4)."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return np.column_stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])


def _check(wh: np.ndarray, k: int, where: str) -> np.ndarray:
    wh = np.asarray(wh, float)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise InputError(f"anchors: box shapes must be an (N, 2) array of (w, h) pixels, got shape {wh.shape}")
    if len(wh) and not (np.isfinite(wh).all() and (wh > 0).all()):
        raise InputError("anchors: every box needs a finite, positive width and height (pixels); check boxes.csv")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"params: '{where}' is {k}; use a positive number of anchors such as 5")
    distinct = len(np.unique(wh, axis=0)) if len(wh) else 0
    if k > distinct:
        raise ConfigError(
            f"params: '{where}' is {k} but the training boxes have only {distinct} distinct shapes; "
            f"use at most {distinct} anchors or add labelled boxes"
        )
    return wh


def _init(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ centres, never two equal ones (a box already chosen has distance 0)."""
    centres = [wh[int(rng.integers(len(wh)))]]
    for _ in range(1, k):
        d = 1.0 - shape_iou(wh, np.array(centres)).max(axis=1)
        p = np.maximum(d, 0.0) ** 2
        centres.append(wh[int(rng.choice(len(wh), p=p / p.sum()))])
    return np.array(centres)


def kmeans_anchors(wh: np.ndarray, k: int = 5, *, seed: int = 0, max_iter: int = 300, where: str = "detect.anchors") -> Anchors:
    """Anchor shapes for box shapes ``wh`` (N, 2) ``(w, h)`` in pixels by k-means with distance ``1 - IoU``.

    Deterministic for a given ``seed``. Iterates until no box changes cluster
    (at most ``max_iter`` times); an emptied cluster restarts at the box that
    fits its anchor worst. ``where`` names the params key of ``k`` in errors.
    Raises :class:`ConfigError` when ``k`` exceeds the number of distinct shapes.
    """
    wh = _check(wh, k, where)
    rng = np.random.default_rng(seed)
    centres = _init(wh, k, rng)
    assign = np.full(len(wh), -1)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
        iou = shape_iou(wh, centres)
        new = iou.argmax(axis=1)
        for j in range(k):
            if not (new == j).any():
                worst = int(iou.max(axis=1).argmin())
                centres[j] = wh[worst]
                new[worst] = j
        if (new == assign).all():
            break
        assign = new
        centres = np.array([wh[assign == j].mean(axis=0) for j in range(k)])
    order = np.argsort(centres[:, 0] * centres[:, 1], kind="stable")
    centres = centres[order]
    best = shape_iou(wh, centres)
    counts = np.bincount(best.argmax(axis=1), minlength=k)
    return Anchors(wh=centres, mean_iou=float(best.max(axis=1).mean()), counts=counts, iterations=it)
