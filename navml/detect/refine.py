"""The detector's second stage: each YOLO proposal looked at again in a patch at full resolution.

At stride 8 the YOLO head finds the arrows (class-agnostic AP about 0.9 at IoU
0.1) but reads their kind and their 4-px-wide box coarsely: given the true
class, or the true box, its mAP@0.5 rises from 0.34 to 0.55 or 0.61 in held-out
Oslo (docs/detection.md, round 6). So, as the second stage of a two-stage
detector (R-CNN's region head), :func:`navml.models.refiner.build_refiner`
looks at a ``patch`` x ``patch`` window centred on each proposal and says again
whether it holds an arrow, which kind and where its box is.

* **Proposals**: the detector's boxes with a score of at least ``floor``, after
  class-aware NMS.
* **Training** (:func:`navml.detect.refine_train.train_refiner`, after the detector): patches centred on
  the train truths moved by up to ``jitter_px`` (positives), and on the
  detector's own proposals on the train tiles (a proposal whose centre lies
  within ``match_px`` of a truth's centre is that truth; the others are
  negatives: false detections, the mined hard negatives among them). Quarter
  turns (and flips with the class mirror table, when asked) keep the labels true.
  The loss is binary cross-entropy of the objectness, softmax cross-entropy of
  the class and the L1 distance of the box in pixels, the last two on positives only.
* **Refining** (:func:`refine`): each proposal's box, class and score are
  replaced by the second stage's: box from the patch centre, class of the
  highest probability, score = sigmoid(objectness) x that probability.

Boxes are ``(x0, y0, x1, y1)`` pixels of the image given, at the detector's
ground resolution. The model is saved beside the detector as ``refine.keras``;
its settings are in the detector's ``meta.json`` under ``extra.refine``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navml.detect.targets import Detections, best_class, sigmoid, softmax
from navml.errors import ModelError

REFINE_FILE = "refine.keras"
#: Patches per model call when refining.
CHUNK = 2048


@dataclass(frozen=True)
class Refiner:
    """A trained second stage: the Keras model, its patch side (px) and the proposal floor (detector score)."""

    model: object
    patch: int
    floor: float
    n_classes: int
    turns: int = 1  # test-time quarter turns averaged: 1 (none), 2 or 4

    def __call__(self, image: np.ndarray, det: Detections, origin: tuple[float, float] = (0.0, 0.0)) -> Detections:
        """:func:`refine` of one image."""
        return refine(self, image, det, origin)


def centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box centres ``(cx, cy)`` in pixels."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    return (b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0


def patch_origins(cx: np.ndarray, cy: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixel ``(ox, oy)`` of the patch centred on each centre: the centre rounded to a pixel corner."""
    h = patch // 2
    return np.round(cx).astype(np.int64) - h, np.round(cy).astype(np.int64) - h


def pad_images(images: np.ndarray, patch: int) -> np.ndarray:
    """Images ``(n, rows, cols, bands)`` mirrored by ``patch`` px on every side (so any patch reaching outside fits)."""
    return np.pad(images, ((0, 0), (patch, patch), (patch, patch), (0, 0)), mode="reflect")


def cut_patches(padded: np.ndarray, image_ids: np.ndarray, ox: np.ndarray, oy: np.ndarray, patch: int) -> np.ndarray:
    """Patches ``(N, patch, patch, bands)`` float32 at origins ``(ox, oy)`` (pixels of the unpadded image ``image_ids``)
    from :func:`pad_images` output; origins further outside than ``patch`` px are clamped."""
    n, rows, cols = padded.shape[:3]
    r0 = np.clip(np.asarray(oy, np.int64) + patch, 0, rows - patch)
    c0 = np.clip(np.asarray(ox, np.int64) + patch, 0, cols - patch)
    k = np.arange(patch)
    out = padded[np.asarray(image_ids, np.int64)[:, None, None], (r0[:, None] + k)[:, :, None], (c0[:, None] + k)[:, None, :]]
    return out.astype(np.float32, copy=False)


def match_centres(truth_boxes: np.ndarray, cx: np.ndarray, cy: np.ndarray, match_px: float) -> np.ndarray:
    """Index of the truth box whose centre is nearest each point within ``match_px`` pixels, else -1."""
    truth_boxes = np.asarray(truth_boxes, float).reshape(-1, 4)
    if not len(truth_boxes) or not len(cx):
        return np.full(len(cx), -1, np.int64)
    tx, ty = centres(truth_boxes)
    d = np.hypot(np.asarray(cx)[:, None] - tx[None], np.asarray(cy)[:, None] - ty[None])
    j = d.argmin(axis=1)
    return np.where(d[np.arange(len(j)), j] <= match_px, j, -1)


def turned_back(boxes: np.ndarray, k: int) -> np.ndarray:
    """Boxes ``(N, 4)`` relative to a patch centre, read in the patch after ``np.rot90(patch, k)``, in the unturned patch."""
    b = np.asarray(boxes, float)
    for _ in range(k % 4):  # one quarter turn back: (x, y) of the turned patch was (y, -x) of the patch before
        b = np.stack([-b[:, 3], b[:, 0], -b[:, 1], b[:, 2]], axis=1)
    return b


def read_outputs(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(objectness (N,), class probabilities (N, C), box (N, 4))`` of the second stage's raw output ``(N, 1 + C + 4)``;
    the box in units of :data:`~navml.models.refiner.BOX_SCALE` px from the patch centre."""
    y = np.asarray(y, np.float64)
    return sigmoid(y[:, 0]), softmax(y[:, 1 : 1 + n_classes]), y[:, 1 + n_classes : 5 + n_classes]


def average_turns(ys: Sequence[np.ndarray], n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_outputs` of the same patches turned by 0, 1, ... quarter turns, averaged: objectness and class
    probabilities as they are, boxes turned back first."""
    parts = [read_outputs(y, n_classes) for y in ys]
    return (np.mean([o for o, _, _ in parts], axis=0), np.mean([p for _, p, _ in parts], axis=0),
            np.mean([turned_back(b, k) for k, (_, _, b) in enumerate(parts)], axis=0))


def to_detections(objectness: np.ndarray, probs: np.ndarray, box: np.ndarray, ox: np.ndarray, oy: np.ndarray, patch: int) -> Detections:
    """Boxes (image pixels), scores and class ids of :func:`read_outputs` (or :func:`average_turns`) of the patches
    at origins ``(ox, oy)``."""
    from navml.models.refiner import BOX_SCALE

    h = patch // 2
    centre = np.stack([ox + h, oy + h, ox + h, oy + h], axis=1).astype(float)
    boxes = np.asarray(box, float) * BOX_SCALE + centre
    # a box the regression made thinner than 1 px (or inside out) keeps a 1-px extent around its centre
    c = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    half = np.maximum((boxes[:, 2:] - boxes[:, :2]) / 2.0, 0.5)
    scores, cls = best_class(objectness, probs)
    return Detections(np.concatenate([c - half, c + half], axis=1), scores, cls.astype(np.int64))


def decode_outputs(y: np.ndarray, n_classes: int, ox: np.ndarray, oy: np.ndarray, patch: int) -> Detections:
    """Boxes (image pixels), scores and class ids from the second stage's raw output ``(N, 1 + C + 4)``."""
    return to_detections(*read_outputs(y, n_classes), ox, oy, patch)


def refine_batch(refiner: Refiner, images: np.ndarray, dets: Sequence[Detections],
                 origins: Sequence[tuple[float, float]] | None = None) -> list[Detections]:
    """:func:`refine` of several images ``(n, rows, cols, bands)`` of one size at once (one model call per
    :data:`CHUNK` patches, not one per image)."""
    origins = [(0.0, 0.0)] * len(dets) if origins is None else list(origins)
    dets = [d.take(d.scores >= refiner.floor) for d in dets]
    counts = [len(d) for d in dets]
    if not sum(counts):
        return dets
    ids = np.repeat(np.arange(len(dets)), counts)
    shift = np.repeat(np.asarray(origins, float).reshape(-1, 2), counts, axis=0)  # (ox0, oy0) of each proposal
    cx, cy = centres(np.concatenate([d.boxes for d in dets]))
    ox, oy = patch_origins(cx - shift[:, 0], cy - shift[:, 1], refiner.patch)
    padded = pad_images(np.asarray(images), refiner.patch)
    parts = []
    for s in range(0, len(ox), CHUNK):
        x = cut_patches(padded, ids[s : s + CHUNK], ox[s : s + CHUNK], oy[s : s + CHUNK], refiner.patch)
        ys = [np.asarray(refiner.model.predict_on_batch(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))))) for k in range(refiner.turns)]
        parts.append(read_outputs(ys[0], refiner.n_classes) if refiner.turns == 1 else average_turns(ys, refiner.n_classes))
    out = to_detections(*(np.concatenate([p[i] for p in parts]) for i in range(3)), ox, oy, refiner.patch)
    boxes = out.boxes + np.concatenate([shift, shift], axis=1)
    bounds = np.cumsum([0, *counts])
    return [Detections(boxes[a:b], out.scores[a:b], out.class_ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def refine(refiner: Refiner, image: np.ndarray, det: Detections, origin: tuple[float, float] = (0.0, 0.0)) -> Detections:
    """The proposals ``det`` of one image ``(rows, cols, bands)`` replaced by the second stage's boxes, classes and scores.

    ``det`` boxes are in pixels of a frame whose pixel ``origin`` ``(col, row)`` is the image's top-left; the result
    is in the same frame, in the order of ``det``. Proposals below the refiner's floor are dropped first.
    """
    return refine_batch(refiner, np.asarray(image)[None], [det], [origin])[0]


def save_refiner(refiner: Refiner, folder: str | os.PathLike) -> dict:
    """Write ``refine.keras`` into a detector folder; returns the ``extra.refine`` entry of its ``meta.json``."""
    from navml.models.io import save_keras

    save_keras(refiner.model, Path(folder) / REFINE_FILE)
    return {"file": REFINE_FILE, "patch": refiner.patch, "floor": refiner.floor, "turns": refiner.turns}


def load_refiner(folder: str | os.PathLike, meta) -> Refiner | None:
    """The second stage of the detector in ``folder`` (its :class:`~navml.models.io.ModelMeta` ``meta``); None when it has none."""
    entry = meta.extra.get("refine")
    if not entry:
        return None
    from navml.models.io import load_keras

    try:
        patch, floor, turns = int(entry["patch"]), float(entry["floor"]), int(entry.get("turns", 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder}: meta.json extra.refine lacks patch or floor ({exc}); retrain the detector") from exc
    from navml.models.inference import fold_batchnorm

    model = fold_batchnorm(load_keras(Path(folder) / entry.get("file", REFINE_FILE)))  # a quarter less CPU per patch
    return Refiner(model, patch, floor, len(meta.classes), turns)
