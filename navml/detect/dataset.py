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
turn (as :func:`navml.detect.augment.transform`, which swaps left and right
in the class ids on a flip) and the YOLOv2 target tensor
(:func:`navml.detect.targets.encode_targets`). Training batches are sampled
whole (:func:`sample_batch`: the origins, boxes and transforms of all crops of
a batch at once with numpy, one array per batch into tf.data), and each
training tile is read (and resampled, for a city at another ground
resolution) once, not once per crop. Everything random comes from
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
    r, c = crop_origins(np.array([[rows, cols]]), size, [boxes], rng, box_crops)
    return int(r[0]), int(c[0])


def crop_origins(
    shapes: np.ndarray, size: int, boxes: Sequence[np.ndarray], rng: np.random.Generator, box_crops: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left rows and columns (B,) of ``size`` windows in B images of ``shapes`` (B, 2) ``(rows, cols)``, all
    drawn at once: with probability ``box_crops`` (where the image has boxes) a window holding the centre of a
    random one of its ``boxes``, at a random place; else uniform over the image."""
    shapes = np.asarray(shapes, int).reshape(-1, 2)
    n = len(shapes)
    counts = np.array([len(b) for b in boxes], int)
    u_box, u_pick, u_row, u_col = rng.random((4, n))
    lo_r, hi_r = np.zeros(n, int), shapes[:, 0] - size
    lo_c, hi_c = np.zeros(n, int), shapes[:, 1] - size
    if counts.sum():
        flat = np.concatenate([np.asarray(b, float).reshape(-1, 4) for b in boxes])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pick = starts + np.minimum((u_pick * counts).astype(int), np.maximum(counts - 1, 0))
        b = flat[np.minimum(pick, len(flat) - 1)]
        cx, cy = np.floor((b[:, 0] + b[:, 2]) / 2).astype(int), np.floor((b[:, 1] + b[:, 3]) / 2).astype(int)
        # windows holding the centre: col in (cx - size, cx], within the image
        c_lo, c_hi = np.maximum(0, cx - size + 1), np.minimum(hi_c, cx)
        r_lo, r_hi = np.maximum(0, cy - size + 1), np.minimum(hi_r, cy)
        use = (counts > 0) & (u_box < box_crops) & (c_lo <= c_hi) & (r_lo <= r_hi)
        lo_r, hi_r = np.where(use, r_lo, lo_r), np.where(use, r_hi, hi_r)
        lo_c, hi_c = np.where(use, c_lo, lo_c), np.where(use, c_hi, hi_c)
    rows = lo_r + np.minimum((u_row * (hi_r - lo_r + 1)).astype(int), hi_r - lo_r)
    cols = lo_c + np.minimum((u_col * (hi_c - lo_c + 1)).astype(int), hi_c - lo_c)
    return rows, cols


def sample_batch(
    images: Sequence[np.ndarray],
    truths: Sequence[TileBoxes],
    rng: np.random.Generator,
    *,
    crop: int | None,
    mirror: np.ndarray,
    flip: bool,
    rotate: bool,
    box_crops: float,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """A batch of training samples, one per image, drawn at once: images (B, s, s, bands) float32 (``s`` the
    crop, or the largest side with ``crop`` None), boxes (N_b, 4) crop pixels and class ids (N_b,) per sample.

    Crop origins come from :func:`crop_origins`, boxes from the rule of :func:`crop_boxes` (centre inside,
    clipped), and each sample gets its own flips (probability 1/2 each, a flip maps class ids through
    ``mirror``) and quarter turns as :func:`navml.detect.augment.transform` does them, applied per group
    of samples sharing a transform.
    """
    from navml.detect.augment import hflip_boxes, rot90_boxes, vflip_boxes

    images, truths = list(images), list(truths)
    n = len(images)
    size = crop or max(max(im.shape[:2]) for im in images)
    for i, im in enumerate(images):  # a tile resampled smaller than a crop (or not square, whole): padded
        if im.shape[0] < size or im.shape[1] < size or (crop is None and im.shape[0] != im.shape[1]):
            images[i], truths[i] = fit_boxes(im, truths[i], max(size, *im.shape[:2]))
    shapes = np.array([im.shape[:2] for im in images], int)
    rows, cols = crop_origins(shapes, size, [t[0] for t in truths], rng, box_crops)
    out = np.empty((n, size, size, images[0].shape[2]), np.float32)
    for i, im in enumerate(images):
        out[i] = im[rows[i] : rows[i] + size, cols[i] : cols[i] + size]
    counts = np.array([len(t[1]) for t in truths], int)
    sid = np.repeat(np.arange(n), counts)
    boxes = np.concatenate([np.asarray(t[0], float).reshape(-1, 4) for t in truths]) if n else np.zeros((0, 4))
    ids = np.concatenate([np.asarray(t[1], int).reshape(-1) for t in truths]) if n else np.zeros(0, int)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 - cols[sid], (boxes[:, 1] + boxes[:, 3]) / 2 - rows[sid]
    keep = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    sid, ids = sid[keep], ids[keep]
    boxes = np.clip(boxes[keep] - np.column_stack([cols, rows, cols, rows])[sid], 0.0, float(size))
    h = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    v = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    k = rng.integers(4, size=n) if rotate else np.zeros(n, int)
    mirror = np.asarray(mirror, int)
    for hh, vv, kk in {(bool(a), bool(b), int(c)) for a, b, c in zip(h, v, k)}:
        m = (h == hh) & (v == vv) & (k == kk)
        sub = out[m]
        if hh:
            sub = sub[:, :, ::-1]
        if vv:
            sub = sub[:, ::-1]
        out[m] = np.rot90(sub, kk, axes=(1, 2))
    for flag, move in ((h, hflip_boxes), (v, vflip_boxes)):
        m = flag[sid]
        boxes[m], ids[m] = move(boxes[m], size), mirror[ids[m]]
    for kk in (1, 2, 3):
        m = k[sid] == kk
        boxes[m] = rot90_boxes(boxes[m], size, size, kk)
    split = np.cumsum(np.bincount(sid, minlength=n))[:-1]
    return out, np.split(boxes, split), np.split(ids, split)


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
    """One training sample of a tile (:func:`sample_batch` of one): image (crop, crop, bands) float32, boxes (N, 4) crop pixels, class ids (N,)."""
    img, boxes, ids = sample_batch([image], [truth], rng, crop=crop, mirror=mirror, flip=flip, rotate=rotate, box_crops=box_crops)
    return img[0], boxes[0], ids[0]


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


class _TileCache:
    """The training tiles as the stream samples them (resampled, whole tiles back at the tile size), kept up to
    ``cache_mb`` (least recently used out): a resampled city tile is resampled once, not once per crop."""

    def __init__(self, reader: TileReader, truth: Mapping[Tile, TileBoxes], whole: bool, cache_mb: float = 512.0):
        from collections import OrderedDict

        self.reader, self.truth, self.whole = reader, truth, whole
        self.items: OrderedDict = OrderedDict()
        self.bytes, self.cap = 0, int(cache_mb * 2**20)

    def get(self, tile: Tile) -> tuple[np.ndarray, TileBoxes]:
        if tile in self.items:
            self.items.move_to_end(tile)
            return self.items[tile]
        image, tile_truth = self.reader.image(tile), self.truth.get(tile, EMPTY)
        size = self.reader.store.grid.tile_size
        if self.whole and image.shape[0] != size:  # whole tiles, resampled: back to the tile size
            image, tile_truth = fit_boxes(image, tile_truth, size)
        self.items[tile] = (image, tile_truth)
        self.bytes += image.nbytes
        while self.bytes > self.cap and len(self.items) > 1:
            self.bytes -= self.items.popitem(last=False)[1][0].nbytes
        return image, tile_truth


def batch_stream(
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
    """A generator function yielding endless batches ``(images float32 (B, s, s, bands), targets (B, s/stride,
    s/stride, A, 5 + C))``. Passes over the entries are shuffled permutations (pass ``p`` seeded by ``[seed, p]``),
    read one after the other in batches of ``batch_size``; each batch is sampled at once (:func:`sample_batch`),
    so the stream is the same on every run with the same seed.

    Hard-negative training (:mod:`navml.mining.detect`): ``hard`` maps tiles of ``tiles`` to their mined boxes
    (M, 4) tile pixels; each such tile is drawn ``hard_repeats`` times per pass (the extra draws crop on a mined
    box). With ``mined_weight`` the target has one more channel, the no-object weight of each cell and anchor
    (:func:`noobj_weights`: ``mined_weight`` in the cells of mined boxes, 1 elsewhere), which
    :class:`navml.detect.loss.YoloLoss` reads with ``noobj_weighted``. Those batches are sampled one tile at a
    time (:func:`sample_mined`): fine-tuning runs few steps."""
    tiles = list(tiles)
    hard = dict(hard or {})
    entries = [(t, False) for t in tiles]
    if hard:
        known = set(tiles)
        outside = [t for t in hard if t not in known]
        if outside:
            raise InputError(f"hard negatives on tile {outside[0]}, which is not a train tile; only train tiles are mined")
        entries += [(t, True) for t in tiles if t in hard for _ in range(max(int(hard_repeats), 1) - 1)]
    mined_mode = bool(hard) or mined_weight is not None

    def mined_sample(tile: Tile, focus: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, tile_truth = reader.image(tile), truth.get(tile, EMPTY)
        mined = hard.get(tile)
        if crop is None and image.shape[0] != reader.store.grid.tile_size:  # whole tiles, resampled: back to the tile size
            size = reader.store.grid.tile_size
            r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
            image, tile_truth = fit_boxes(image, tile_truth, size)
            mined = None if mined is None else clip_mined(mined, r0, c0, size)
        img, boxes, ids, mined_px = sample_mined(
            image, tile_truth, mined, rng, crop=crop, mirror=mirror, flip=flip, rotate=rotate, box_crops=box_crops, focus=focus
        )
        rows, cols = img.shape[:2]
        target = encode_targets(boxes, ids, rows, cols, anchors, n_classes, stride, neighbours=neighbours)
        if mined_weight is not None:
            target = np.concatenate([target, noobj_weights(mined_px, rows, cols, stride, len(anchors), mined_weight)], axis=-1)
        return img, target

    def gen():
        if reader.error is not None or not tiles:  # an empty stream after a read error (or of no tile)
            return
        cache = _TileCache(reader, truth, crop is None)
        queue: list[int] = []
        p = 0
        while True:
            while len(queue) < batch_size:
                rng = np.random.default_rng([seed, p])
                queue += rng.permutation(len(entries)).tolist()
                p += 1
            picked, queue = queue[:batch_size], queue[batch_size:]
            try:
                if mined_mode:
                    pairs = [mined_sample(*entries[i], rng) for i in picked]
                    yield np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])
                    continue
                got = [cache.get(entries[i][0]) for i in picked]
            except NavmlError as exc:
                # end the stream quietly (raising here makes TensorFlow print a traceback);
                # the caller sees the short stream and re-raises ``reader.error``
                reader.error = exc
                return
            imgs, boxes, ids = sample_batch(
                [g[0] for g in got], [g[1] for g in got], rng, crop=crop, mirror=mirror, flip=flip, rotate=rotate, box_crops=box_crops
            )
            rows, cols = imgs.shape[1:3]
            targets = np.stack([
                encode_targets(b, c, rows, cols, anchors, n_classes, stride, neighbours=neighbours) for b, c in zip(boxes, ids)
            ])
            yield imgs, targets

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
    (:func:`batch_stream`: whole batches sampled at once with numpy; ``hard``, ``hard_repeats``, ``mined_weight``: its
    hard-negative training)."""
    import tensorflow as tf

    size = crop or reader.store.grid.tile_size
    if size % stride:
        raise ConfigError(f"params: 'detect.crop' is {size} px; use a multiple of detect.stride {stride}")
    gen = batch_stream(
        reader, tiles, truth, anchors=anchors, n_classes=n_classes, mirror=mirror, batch_size=batch_size, stride=stride,
        crop=crop, flip=flip, rotate=rotate, box_crops=box_crops, neighbours=neighbours, seed=seed,
        hard=hard, hard_repeats=hard_repeats, mined_weight=mined_weight,
    )
    cells = size // stride
    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec((batch_size, size, size, reader.bands), tf.float32),
            tf.TensorSpec((batch_size, cells, cells, len(anchors), 5 + n_classes + (mined_weight is not None)), tf.float32),
        ),
    )
    return ds.prefetch(2)


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
