"""Detector samples from the shard store: truth boxes per tile, random crops, label-true augmentation, tf.data.

Imagery comes through the segmentation :class:`~navml.segment.dataset.TileReader`
(each shard file read once, kept in an LRU cache); truth boxes come from the
store's ``boxes.csv`` (written by ``rasterize``: tile pixel boxes
``xmin, ymin, xmax, ymax`` with ``class_id``, the position of the name in
:func:`navml.config.detection_names`).

A training sample is a ``crop`` x ``crop`` window of a tile. It keeps the boxes
whose centre lies in the window (half-open ``[c0, c0 + crop)``), clipped to it,
so every kept box is one the target encoding can place (its centre cell is in
the window). With probability ``box_crops`` a crop of a tile that has boxes is
placed so that it holds one of them (a random box, at a random position in the
crop); the others are uniform over the tile. Then a random flip and quarter
turn (:func:`navml.detect.augment.random_transform`, which swaps left and right
in the class ids on a flip) and the YOLOv2 target tensor
(:func:`navml.detect.targets.encode_targets`). Everything random comes from
``numpy.random.default_rng([seed, pass])``, so the stream is the same on every
run with the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from navml.config import DetectParams
from navml.detect.augment import random_transform
from navml.detect.targets import encode_targets
from navml.errors import ConfigError, InputError, NavmlError
from navml.geo.grid import Tile
from navml.segment.dataset import TileReader

#: Defaults of the keyword arguments below: the params model's, written once there.
_DETECT = DetectParams()

BOXES_FILE = "boxes.csv"
BOX_COLUMNS = ("z", "x", "y", "class_id", "xmin", "ymin", "xmax", "ymax")

#: Truth of one tile: boxes (N, 4) ``(x0, y0, x1, y1)`` tile pixels and class ids (N,).
TileBoxes = tuple[np.ndarray, np.ndarray]
EMPTY: TileBoxes = (np.zeros((0, 4)), np.zeros(0, int))


def read_boxes(path: str | os.PathLike, n_classes: int) -> dict[Tile, TileBoxes]:
    """Truth boxes per tile from ``boxes.csv``; tiles without a box are absent (use :data:`EMPTY`).

    ``n_classes``: the number of detection names; a ``class_id`` outside
    ``0 .. n_classes - 1`` means the registry changed since ``rasterize``.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no detection boxes; run `dvc repro rasterize`") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable boxes ({str(exc).splitlines()[0]}); re-run `dvc repro rasterize`") from exc
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: lacks column(s) {', '.join(missing)}; re-run `dvc repro rasterize`")
    if len(df):
        ids = df["class_id"].to_numpy()
        if ids.min() < 0 or ids.max() >= n_classes:
            raise InputError(
                f"{path}: class_id {int(ids.max() if ids.max() >= n_classes else ids.min())} but the registry has {n_classes} "
                f"detection name(s); re-run `dvc repro rasterize` after changing classes"
            )
        b = df[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float)
        if not (np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()):
            raise InputError(f"{path}: a box has xmax <= xmin or ymax <= ymin; re-run `dvc repro rasterize`")
    out: dict[Tile, TileBoxes] = {}
    for (z, x, y), g in df.groupby(["z", "x", "y"], sort=True):
        out[Tile(int(x), int(y), int(z))] = (g[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), g["class_id"].to_numpy(int))
    return out


def city_boxes(truths: Sequence[Mapping[Tile, TileBoxes]], factors: Sequence[float]) -> dict:
    """The truth of several stores (cities) in one mapping keyed by :class:`~navml.segment.dataset.SourceTile`,
    each store's boxes scaled by its factor (model pixels per store pixel, as its tiles are resampled)."""
    from navml.segment.dataset import SourceTile

    out = {}
    for i, (truth, f) in enumerate(zip(truths, factors)):
        for t, (b, ids) in truth.items():
            out[SourceTile(t.x, t.y, t.z, i)] = (np.asarray(b, float) * f, ids)
    return out


def fit_boxes(image: np.ndarray, truth: TileBoxes, size: int) -> tuple[np.ndarray, TileBoxes]:
    """``image`` cut or padded (with 0) to ``size`` x ``size`` around its centre, with its boxes moved along
    (those whose centre leaves the image dropped, the others clipped): a resampled tile back at the tile size."""
    rows, cols = image.shape[:2]
    r, c = (rows - size) // 2, (cols - size) // 2  # negative: padding
    out = np.zeros((size, size, image.shape[2]), dtype=image.dtype)
    src = image[max(r, 0) : max(r, 0) + size, max(c, 0) : max(c, 0) + size]
    out[max(-r, 0) : max(-r, 0) + src.shape[0], max(-c, 0) : max(-c, 0) + src.shape[1]] = src
    return out, crop_boxes(truth[0], truth[1], r, c, size)


def count_boxes(truth: Mapping[Tile, TileBoxes], tiles: Sequence[Tile], n_classes: int) -> np.ndarray:
    """Truth boxes per class (n_classes,) over ``tiles``."""
    counts = np.zeros(n_classes, int)
    for t in tiles:
        ids = truth.get(t, EMPTY)[1]
        counts += np.bincount(ids, minlength=n_classes)[:n_classes]
    return counts


def crop_boxes(boxes: np.ndarray, class_ids: np.ndarray, row: int, col: int, size: int) -> TileBoxes:
    """Boxes of the window ``[col, col + size) x [row, row + size)`` in its own pixels.

    A box is kept when its centre lies in the window (half-open), then
    clipped to ``[0, size]``; the others are dropped with their class ids.
    """
    b = np.asarray(boxes, float).reshape(-1, 4)
    ids = np.asarray(class_ids, int).reshape(-1)
    cx, cy = (b[:, 0] + b[:, 2]) / 2 - col, (b[:, 1] + b[:, 3]) / 2 - row
    keep = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    out = b[keep] - np.array([col, row, col, row], float)
    return np.clip(out, 0.0, float(size)), ids[keep]


def crop_origin(rows: int, cols: int, size: int, boxes: np.ndarray, rng: np.random.Generator, box_crops: float) -> tuple[int, int]:
    """Top-left ``(row, col)`` of a ``size`` window in a ``rows x cols`` image: with probability
    ``box_crops`` (and boxes present) one holding the centre of a random box, else uniform."""
    if boxes.shape[0] and rng.random() < box_crops:
        b = boxes[int(rng.integers(len(boxes)))]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        # windows holding the centre: col in (cx - size, cx], within the image
        c_lo, c_hi = max(0, int(np.floor(cx)) - size + 1), min(cols - size, int(np.floor(cx)))
        r_lo, r_hi = max(0, int(np.floor(cy)) - size + 1), min(rows - size, int(np.floor(cy)))
        if c_lo <= c_hi and r_lo <= r_hi:
            return int(rng.integers(r_lo, r_hi + 1)), int(rng.integers(c_lo, c_hi + 1))
    return int(rng.integers(rows - size + 1)), int(rng.integers(cols - size + 1))


def clip_mined(boxes: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """Mined boxes (N, 4) in the pixels of the window ``[col, col + size) x [row, row + size)``: every box
    overlapping it, clipped to it (unlike truth boxes, a mined box need not have its centre inside)."""
    b = np.asarray(boxes, float).reshape(-1, 4) - np.array([col, row, col, row], float)
    b = np.clip(b, 0.0, float(size))
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]


def noobj_weights(mined: np.ndarray, rows: int, cols: int, stride: int, n_anchors: int, weight: float) -> np.ndarray:
    """Weight of the no-object loss per cell and anchor (rows / stride, cols / stride, A, 1) float32: ``weight`` in
    every cell a mined box (N, 4, window pixels) overlaps with positive area, 1 elsewhere."""
    gh, gw = rows // stride, cols // stride
    w = np.ones((gh, gw), np.float32)
    for x0, y0, x1, y1 in np.asarray(mined, float).reshape(-1, 4):
        j0, j1 = max(int(np.floor(x0 / stride)), 0), min(int(np.ceil(x1 / stride)), gw)
        i0, i1 = max(int(np.floor(y0 / stride)), 0), min(int(np.ceil(y1 / stride)), gh)
        w[i0:i1, j0:j1] = max(float(weight), 1.0)
    return np.repeat(w[:, :, None, None], n_anchors, axis=2)


def sample(
    image: np.ndarray,
    truth: TileBoxes,
    rng: np.random.Generator,
    *,
    crop: int | None,
    mirror: np.ndarray,
    flip: bool,
    rotate: bool,
    box_crops: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample of a tile: image (crop, crop, bands) float32, boxes (N, 4) crop pixels, class ids (N,)."""
    return sample_mined(image, truth, None, rng, crop=crop, mirror=mirror, flip=flip, rotate=rotate, box_crops=box_crops)[:3]


def sample_mined(
    image: np.ndarray,
    truth: TileBoxes,
    mined: np.ndarray | None,
    rng: np.random.Generator,
    *,
    crop: int | None,
    mirror: np.ndarray,
    flip: bool,
    rotate: bool,
    box_crops: float,
    focus: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample` that also carries the tile's mined boxes ``mined`` (M, 4 tile pixels; None: none) through the
    crop and the transform; ``focus`` places the crop on a random mined box instead of a truth box. Returns
    ``(image, boxes, class ids, mined boxes in crop pixels)``. Without mined boxes the random draws are :func:`sample`'s."""
    boxes, ids = truth
    mined = np.zeros((0, 4)) if mined is None else np.asarray(mined, float).reshape(-1, 4)
    rows, cols = image.shape[:2]
    if crop is not None and (rows < crop or cols < crop):  # a tile resampled smaller than a crop
        big = max(crop, rows, cols)
        r0, c0 = (rows - big) // 2, (cols - big) // 2
        image, (boxes, ids) = fit_boxes(image, (boxes, ids), big)
        mined = clip_mined(mined, r0, c0, big)
        rows, cols = image.shape[:2]
    if crop is not None and (crop < rows or crop < cols):
        if focus and len(mined):
            r, c = crop_origin(rows, cols, crop, mined, rng, 1.0)
        else:
            r, c = crop_origin(rows, cols, crop, boxes, rng, box_crops)
        image = image[r : r + crop, c : c + crop]
        boxes, ids = crop_boxes(boxes, ids, r, c, crop)
        mined = clip_mined(mined, r, c, crop)
    n = len(ids)
    both = np.concatenate([np.asarray(boxes, float).reshape(-1, 4), mined])
    both_ids = np.concatenate([np.asarray(ids, int).reshape(-1), np.zeros(len(mined), int)])
    image, both, both_ids = random_transform(image, both, both_ids, mirror, rng, flip=flip, rotate=rotate)
    return image.astype("float32"), both[:n], both_ids[:n], both[n:]


def sample_stream(
    reader: TileReader,
    tiles: Sequence[Tile],
    truth: Mapping[Tile, TileBoxes],
    *,
    anchors: np.ndarray,
    n_classes: int,
    mirror: np.ndarray,
    stride: int = _DETECT.stride,
    crop: int | None = _DETECT.crop,
    flip: bool = True,
    rotate: bool = True,
    box_crops: float = _DETECT.box_crops,
    neighbours: bool = _DETECT.neighbours,
    seed: int = _DETECT.seed,
    hard: Mapping[Tile, np.ndarray] | None = None,
    hard_repeats: int = 1,
    mined_weight: float | None = None,
):
    """A generator function yielding ``(image float32 (s, s, bands), target (s/stride, s/stride, A, 5 + C))``;
    each call is one shuffled pass over ``tiles``, seeded by ``[seed, pass]``.

    Hard-negative training (:mod:`navml.mining.detect`): ``hard`` maps tiles of ``tiles`` to their mined
    boxes (M, 4) tile pixels; each such tile is drawn ``hard_repeats`` times per pass (the extra draws crop
    on a mined box). With ``mined_weight`` the target has one more channel, the no-object weight of each
    cell and anchor (:func:`noobj_weights`: ``mined_weight`` in the cells of mined boxes, 1 elsewhere), which
    :class:`navml.detect.loss.YoloLoss` reads with ``noobj_weighted``."""
    tiles = list(tiles)
    hard = dict(hard or {})
    entries = [(t, False) for t in tiles]
    if hard:
        known = set(tiles)
        outside = [t for t in hard if t not in known]
        if outside:
            raise InputError(f"hard negatives on tile {outside[0]}, which is not a train tile; only train tiles are mined")
        entries += [(t, True) for t in tiles if t in hard for _ in range(max(int(hard_repeats), 1) - 1)]
    passes = [0]

    def gen():
        if reader.error is not None:  # an empty pass ends a repeated stream after a read error
            return
        rng = np.random.default_rng([seed, passes[0]])
        passes[0] += 1
        for i in rng.permutation(len(entries)):
            tile, focus = entries[i]
            try:
                image = reader.image(tile)
            except NavmlError as exc:
                # end the stream quietly (raising here makes TensorFlow print a traceback);
                # the caller sees the short stream and re-raises ``reader.error``
                reader.error = exc
                return
            tile_truth = truth.get(tile, EMPTY)
            mined = hard.get(tile)
            if crop is None and image.shape[0] != reader.store.grid.tile_size:  # whole tiles, resampled: back to the tile size
                size = reader.store.grid.tile_size
                r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
                image, tile_truth = fit_boxes(image, tile_truth, size)
                mined = None if mined is None else clip_mined(mined, r0, c0, size)
            if mined is None and mined_weight is None:
                img, boxes, ids = sample(
                    image, tile_truth, rng, crop=crop, mirror=mirror, flip=flip, rotate=rotate, box_crops=box_crops
                )
                mined_px = np.zeros((0, 4))
            else:
                img, boxes, ids, mined_px = sample_mined(
                    image, tile_truth, mined, rng, crop=crop, mirror=mirror, flip=flip, rotate=rotate, box_crops=box_crops, focus=focus
                )
            rows, cols = img.shape[:2]
            target = encode_targets(boxes, ids, rows, cols, anchors, n_classes, stride, neighbours=neighbours)
            if mined_weight is not None:
                target = np.concatenate([target, noobj_weights(mined_px, rows, cols, stride, len(anchors), mined_weight)], axis=-1)
            yield img, target

    gen.entries = entries
    return gen


def training_dataset(
    reader: TileReader,
    tiles: Sequence[Tile],
    truth: Mapping[Tile, TileBoxes],
    *,
    anchors: np.ndarray,
    n_classes: int,
    mirror: np.ndarray,
    batch_size: int = _DETECT.batch_size,
    stride: int = _DETECT.stride,
    crop: int | None = _DETECT.crop,
    flip: bool = True,
    rotate: bool = True,
    box_crops: float = _DETECT.box_crops,
    neighbours: bool = _DETECT.neighbours,
    seed: int = _DETECT.seed,
    hard: Mapping[Tile, np.ndarray] | None = None,
    hard_repeats: int = 1,
    mined_weight: float | None = None,
):
    """The endless, shuffled, augmented ``tf.data.Dataset`` of ``(images, targets)`` batches for ``model.fit``
    (``hard``, ``hard_repeats``, ``mined_weight``: :func:`sample_stream`)."""
    import tensorflow as tf

    size = crop or reader.store.grid.tile_size
    if size % stride:
        raise ConfigError(f"params: 'detect.crop' is {size} px; use a multiple of detect.stride {stride}")
    gen = sample_stream(
        reader, tiles, truth, anchors=anchors, n_classes=n_classes, mirror=mirror, stride=stride, crop=crop,
        flip=flip, rotate=rotate, box_crops=box_crops, neighbours=neighbours, seed=seed,
        hard=hard, hard_repeats=hard_repeats, mined_weight=mined_weight,
    )
    cells = size // stride
    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec((size, size, reader.bands), tf.float32),
            tf.TensorSpec((cells, cells, len(anchors), 5 + n_classes + (mined_weight is not None)), tf.float32),
        ),
    )
    return ds.repeat().batch(batch_size, drop_remainder=True).prefetch(2)


def tile_images(reader: TileReader, tiles: Sequence[Tile]) -> np.ndarray:
    """Whole tiles (n, rows, cols, bands) float32 0..255, in order (for val and test); resampled tiles of a
    :class:`~navml.segment.dataset.CityReader` are cut or padded back to the tile size (:func:`fit_boxes`)."""
    size = reader.store.grid.tile_size
    if not tiles:
        return np.zeros((0, size, size, reader.bands), "float32")
    images = [reader.image(t) for t in tiles]
    images = [im if im.shape[0] == size else fit_boxes(im, EMPTY, size)[0] for im in images]
    return np.stack(images).astype("float32")


def tile_truths(reader: TileReader, tiles: Sequence[Tile], truth: Mapping[Tile, TileBoxes]) -> list[TileBoxes]:
    """The truth of each of ``tiles`` as :func:`tile_images` shows them (moved with a resampled tile's cut or padding)."""
    size = reader.store.grid.tile_size
    out = []
    for t in tiles:
        boxes = truth.get(t, EMPTY)
        f = reader.factors[t.source] if hasattr(reader, "factors") else 1.0
        if f != 1.0:
            n = int(round(size * f))
            boxes = fit_boxes(np.zeros((n, n, 1), "uint8"), boxes, size)[1]
        out.append(boxes)
    return out
