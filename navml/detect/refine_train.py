"""Training of the detector's second stage (:mod:`navml.detect.refine`): label-true patches and the loss.

Patches are drawn from the train tiles: centred on truths moved by up to ``jitter_px``, and on the detector's own
proposals there (a proposal within ``match_px`` of a truth's centre is that truth, the others are negatives). Kept
apart from :mod:`navml.detect.refine`, so prediction does not load the training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from navml.config import RefineParams
from navml.detect.augment import hflip_boxes, rot90_boxes
from navml.detect.refine import Refiner, centres, cut_patches, match_centres, pad_images, patch_origins
from navml.detect.targets import Detections
from navml.errors import ConfigError, ModelError

_R = RefineParams()


def refine_loss(n_classes: int, box_weight: float = _R.box_weight):
    """The second stage's loss: targets ``(N, 6)`` = positive 0/1, class id, truth box relative to the patch centre (px)."""
    import keras
    from keras import ops

    from navml.models.refiner import BOX_SCALE

    def loss(y_true, y_pred):
        pos = y_true[:, 0]
        n_pos = ops.maximum(ops.sum(pos), 1.0)
        obj = ops.mean(keras.losses.binary_crossentropy(pos[:, None], y_pred[:, :1], from_logits=True))
        ce = keras.losses.sparse_categorical_crossentropy(ops.cast(y_true[:, 1], "int32"), y_pred[:, 1 : 1 + n_classes], from_logits=True)
        l1 = ops.mean(ops.abs(y_pred[:, 1 + n_classes :] * BOX_SCALE - y_true[:, 2:6]), axis=-1)
        return obj + ops.sum(pos * ce) / n_pos + box_weight * ops.sum(pos * l1) / n_pos

    return loss


@dataclass(frozen=True)
class PatchPool:
    """What the training patches are drawn from: padded train images, the truths, and the detector's proposals.

    ``truths``: ``(image, x0, y0, x1, y1, class)`` rows; ``proposals``: ``(image, cx, cy, truth row or -1)`` rows.
    """

    padded: np.ndarray
    truths: np.ndarray
    proposals: np.ndarray


def patch_pool(images: np.ndarray, truths: Sequence[tuple], proposals: Sequence[Detections], patch: int, match_px: float) -> PatchPool:
    """The :class:`PatchPool` of train ``images`` (n, rows, cols, bands), their truths ``[(boxes, class_ids), ...]`` and
    the detector's proposals on them."""
    rows, props = [], []
    start = 0
    for i, ((tb, tc), d) in enumerate(zip(truths, proposals)):
        tb = np.asarray(tb, float).reshape(-1, 4)
        rows += [(i, *b, c) for b, c in zip(tb, np.asarray(tc).reshape(-1))]
        cx, cy = centres(d.boxes)
        j = match_centres(tb, cx, cy, match_px)
        props += [(i, x, y, start + k if k >= 0 else -1) for x, y, k in zip(cx, cy, j)]
        start += len(tb)
    return PatchPool(pad_images(np.asarray(images, np.uint8 if np.asarray(images).max() <= 255 else np.float32), patch),
                     np.asarray(rows, float).reshape(-1, 6), np.asarray(props, float).reshape(-1, 4))


def sample_patches(pool: PatchPool, rng: np.random.Generator, n: int, *, patch: int, n_classes: int, mirror: np.ndarray | None,
                   jitter_px: float = _R.jitter_px, proposal_share: float = _R.proposal_share, balance: bool = _R.balance,
                   rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A training batch: patches ``(n, patch, patch, bands)`` float32 and targets ``(n, 6)`` (see :func:`refine_loss`).

    A share ``proposal_share`` of the patches sit on proposals (moved by up to 1 px), the rest on truths moved by up
    to ``jitter_px``; ``balance`` draws the truths class by class, so rare kinds are seen as often as common ones.
    ``mirror``: the class mirror table for flips (None: no flips); ``rotate``: random quarter turns.
    """
    t, p = pool.truths, pool.proposals
    n_prop = int(rng.binomial(n, proposal_share)) if len(p) else 0
    n_truth = n - n_prop
    if not len(t):
        n_prop, n_truth = n, 0
    if balance and n_truth:
        kinds = np.unique(t[:, 5])
        pick_kind = kinds[rng.integers(len(kinds), size=n_truth)]
        tr = np.array([rng.choice(np.flatnonzero(t[:, 5] == k)) for k in pick_kind], np.int64)
    else:
        tr = rng.integers(len(t), size=n_truth) if n_truth else np.zeros(0, np.int64)
    pr = rng.integers(len(p), size=n_prop) if n_prop else np.zeros(0, np.int64)
    img = np.concatenate([t[tr, 0], p[pr, 0]]).astype(np.int64)
    tcx, tcy = centres(t[tr, 1:5])
    cx = np.concatenate([tcx + rng.uniform(-jitter_px, jitter_px, n_truth), p[pr, 1] + rng.uniform(-1.0, 1.0, n_prop)])
    cy = np.concatenate([tcy + rng.uniform(-jitter_px, jitter_px, n_truth), p[pr, 2] + rng.uniform(-1.0, 1.0, n_prop)])
    row = np.concatenate([tr, p[pr, 3].astype(np.int64)])
    ox, oy = patch_origins(cx, cy, patch)
    x = cut_patches(pool.padded, img, ox, oy, patch)
    y = np.zeros((n, 6), np.float32)
    pos = row >= 0
    y[:, 0] = pos
    if len(t):
        y[pos, 1] = t[row[pos], 5]
        y[pos, 2:6] = t[row[pos], 1:5] - np.stack([ox, oy, ox, oy], axis=1)[pos]  # box in patch pixels
    boxes = y[:, 2:6].copy()
    if mirror is not None:
        flip = rng.random(n) < 0.5
        x[flip] = x[flip, :, ::-1]
        boxes[flip] = hflip_boxes(boxes[flip], patch)
        y[flip & pos, 1] = np.asarray(mirror)[y[flip & pos, 1].astype(np.int64)]
    if rotate:
        turns = rng.integers(4, size=n)
        for k in (1, 2, 3):
            sel = turns == k
            x[sel] = np.rot90(x[sel], k, axes=(1, 2))
            boxes[sel] = rot90_boxes(boxes[sel], patch, patch, k)
    h = patch / 2.0
    y[:, 2:6] = np.where(pos[:, None], boxes - h, 0.0)  # relative to the patch centre
    return np.ascontiguousarray(x), y


def train_refiner(
    images: np.ndarray,
    truths: Sequence[tuple],
    proposals: Sequence[Detections],
    n_classes: int,
    *,
    mirror: np.ndarray | None = None,
    rotate: bool = True,
    patch: int = _R.patch,
    filters: int = _R.filters,
    steps: int = _R.steps,
    batch_size: int = _R.batch_size,
    learning_rate: float = _R.learning_rate,
    jitter_px: float = _R.jitter_px,
    match_px: float = _R.match_px,
    proposal_share: float = _R.proposal_share,
    balance: bool = _R.balance,
    box_weight: float = _R.box_weight,
    floor: float = _R.floor,
    turns: int = _R.turns,
    flip: bool = _R.flip,
    seed: int = 0,
    progress: bool = True,
) -> Refiner:
    """Train the second stage on train ``images`` (n, rows, cols, bands) 0..255, their truths ``[(boxes, class_ids), ...]``
    and the detector's ``proposals`` on them (Detections per image, after NMS). Deterministic for a seed (the caller
    has called :func:`navml.segment.train.set_determinism`). ``flip`` mirrors half the patches, mapping their class
    through ``mirror`` (the class id of each class's mirror image, :func:`navml.detect.augment.mirror_table`)."""
    import keras
    from tqdm import tqdm

    from navml.models.refiner import build_refiner
    from navml.segment.train import learning_rate_schedule

    if flip and mirror is None:
        raise ConfigError("detect.refine.flip needs the class mirror table (navml.detect.augment.mirror_table)")
    if steps < 1:
        raise ConfigError(f"params: detect.refine.steps is {steps}; use 1 or more (or 0 in params for no second stage)")
    if not sum(len(np.asarray(b).reshape(-1, 4)) for b, _ in truths):
        raise ConfigError("detect.refine: the train split has no truth box to learn from")
    pool = patch_pool(images, truths, proposals, patch, match_px)
    rng = np.random.default_rng(seed)
    model = build_refiner(images.shape[-1], n_classes, patch, filters)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(learning_rate, steps, min(100, steps // 10))),
                  loss=refine_loss(n_classes, box_weight), jit_compile=False)
    bar = tqdm(range(steps), desc="refine", unit="step", disable=None if progress else True, leave=False)
    for _ in bar:
        x, y = sample_patches(pool, rng, batch_size, patch=patch, n_classes=n_classes, mirror=mirror if flip else None, jitter_px=jitter_px,
                              proposal_share=proposal_share, balance=balance, rotate=rotate)
        loss = model.train_on_batch(x, y)
    bar.close()
    if not np.isfinite(float(loss)):
        raise ModelError(f"the second stage's training gave loss {loss}; lower detect.refine.learning_rate (now {learning_rate})")
    return Refiner(model, patch, float(floor), n_classes, int(turns))
