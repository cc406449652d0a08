"""Segmentation samples from the shard store: tile selection, reading, augmentation, tf.data.

Tiles come from a Python generator wrapped in ``tf.data.Dataset.from_generator``.
:class:`TileReader` opens each shard file once and keeps its arrays (an LRU
bounded by ``cache_mb``, 17 MB per 2048-px RGB shard with its mask), so a stage
reads every shard once however many tile samples it draws. Training samples can
be random crops of the tiles (``crop`` px: the model is fully convolutional).
Everything random comes from ``numpy.random.default_rng([seed, pass])`` inside
the generator, so the stream is the same on every run with the same seed.

Samples: image float32 ``(rows, cols, bands)`` with raw 0..255 values, label
one-hot float32 ``(rows, cols, n_classes + 1)`` (mask value 0 background,
``i + 1`` the ``i``-th segmentation class; :data:`~navml.data.rasterize.IGNORE`
(255, class unknown: outside complete mapping) becomes an all-zero row).

Hard negatives (:mod:`navml.mining`): the training stream may carry mask value
:data:`MINED` (background a first model took for a class); ``make_dataset(...,
mined_weight=w)`` turns it into a background row of weight ``w``, so such a pixel
counts ``w`` times in every loss term (see :mod:`navml.segment.losses`). Tiles
holding mined pixels are oversampled (``TrainingTiles.hard``).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np
import pandas as pd

from navml.config import check_keys
from navml.data.rasterize import IGNORE
from navml.errors import ConfigError, InputError, NavmlError
from navml.geo.grid import Tile, group_by_shard, shard_of, shard_window, tile_key, tile_window
from navml.geo.store import Store

IMAGERY = "imagery"
MASKS = "masks"
#: Mask value of a mined hard-negative pixel in the training stream only (background, weighted in the loss); never in a store.
MINED = 254


@dataclass(frozen=True)
class Augment:
    """Random augmentation of a training sample (``train.augment`` in params).

    ``flip``: horizontal / vertical flips; ``rotate``: multiples of 90 degrees;
    ``brightness``: max shift as a share of 255; ``contrast``: max relative
    change of the spread around the tile mean; ``hue``: max hue rotation as a
    share of the colour circle (first three bands, read as RGB); ``scale``: ``(low, high)`` range of a
    random zoom of the sample (log-uniform; cut or padded back to its size), None for none.
    """

    flip: bool = True
    rotate: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    hue: float = 0.02
    scale: tuple[float, float] | None = None

    @classmethod
    def from_params(cls, value: bool | Mapping | None) -> Augment | None:
        """``Augment`` from ``true`` / ``false`` / a mapping of the fields above; None when off."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        section = check_keys(value, [f.name for f in fields(cls)], "train.augment")
        aug = cls(**section)
        for name in ("brightness", "contrast", "hue"):
            v = getattr(aug, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"params: 'train.augment.{name}' is {v}; use 0..1")
        return aug


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, aug: Augment) -> tuple[np.ndarray, np.ndarray]:
    """Augment ``image`` (rows, cols, bands) and ``mask`` (rows, cols) together; image comes back float32 0..255."""
    if aug.scale:
        lo, hi = aug.scale
        factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        rows = mask.shape[0]
        image, mask = fit_pair(*rescale_pair(image, mask, factor), rows, rng)
    if aug.flip:
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
    if aug.rotate:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
    image = np.ascontiguousarray(image)
    mask = np.ascontiguousarray(mask)
    if aug.hue and image.shape[-1] >= 3:
        import cv2

        shift = int(round(rng.uniform(-aug.hue, aug.hue) * 180))
        if shift:
            rgb = np.ascontiguousarray(image[..., :3], dtype="uint8")
            hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype("int16") + shift) % 180
            image = image.copy()
            image[..., :3] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out = image.astype("float32")
    contrast = 1.0 + rng.uniform(-aug.contrast, aug.contrast) if aug.contrast else 1.0
    brightness = rng.uniform(-aug.brightness, aug.brightness) * 255.0 if aug.brightness else 0.0
    if contrast != 1.0 or brightness:
        # (x - mean) * contrast + mean + brightness, as one multiply-add in place
        offset = out.mean(axis=(0, 1), keepdims=True) * np.float32(1.0 - contrast) + np.float32(brightness)
        out *= np.float32(contrast)
        out += offset.astype("float32")
        np.clip(out, 0.0, 255.0, out=out)
    return out, mask


class SourceTile(NamedTuple):
    """A tile of one of several stores trained on together (cities): ``source`` indexes the stores."""

    x: int
    y: int
    z: int
    source: int

    @property
    def tile(self) -> Tile:
        """The plain z/x/y tile in its own store."""
        return Tile(self.x, self.y, self.z)


def tile_order(t: Tile | SourceTile) -> tuple[int, int, int, int]:
    """Sort key: by store, then north to south, west to east."""
    return (getattr(t, "source", 0), t.z, t.y, t.x)


def combine_indexes(indexes: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One tile index over several stores: the rows of each with a ``source`` column (its position);
    :func:`split_tiles` and :func:`positive_tiles` then give :class:`SourceTile` s. ``pos_<class>``
    columns one index lacks are 0 there."""
    frames = [df.assign(source=i) for i, df in enumerate(indexes)]
    out = pd.concat(frames, ignore_index=True)
    pos = [c for c in out.columns if c.startswith("pos_")]
    out[pos] = out[pos].fillna(0)
    return out


def _tiles_of(rows: pd.DataFrame) -> list:
    if "source" in rows.columns:
        return [SourceTile(int(x), int(y), int(z), int(s)) for z, x, y, s in zip(rows["z"], rows["x"], rows["y"], rows["source"])]
    return [Tile(int(x), int(y), int(z)) for z, x, y in zip(rows["z"], rows["x"], rows["y"])]


def _need_columns(index: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise InputError(f"{where}: tile index lacks column(s) {', '.join(missing)}; re-run the cover stage")


def split_tiles(index: pd.DataFrame, split: str, where: str = "tile index") -> list[Tile]:
    """Tiles of ``split`` (train / val / test), sorted north to south, west to east."""
    _need_columns(index, ("z", "x", "y", "split"), where)
    return sorted(_tiles_of(index[index["split"] == split]), key=tile_order)


def positive_tiles(index: pd.DataFrame, classes: Sequence[str], where: str = "tile index") -> set[Tile]:
    """Tiles whose ``pos_<class>`` is set for any of ``classes``."""
    cols = [f"pos_{c}" for c in classes]
    _need_columns(index, ("z", "x", "y", *cols), where)
    hit = index[cols].fillna(0).astype(bool).any(axis=1)
    return set(_tiles_of(index[hit]))


@dataclass(frozen=True)
class TrainingTiles:
    """The training split as positive tiles (always used) and negative tiles of
    which ``negatives_per_epoch`` are drawn afresh for every epoch; plus *hard*
    tiles (holding mined hard negatives), each in every epoch ``hard_repeats`` times."""

    positives: list[Tile]
    negatives: list[Tile]
    negatives_per_epoch: int
    hard: list[Tile] = field(default_factory=list)
    hard_repeats: int = 1

    @property
    def per_epoch(self) -> int:
        """Tiles seen per epoch."""
        return len(self.positives) + self.negatives_per_epoch + len(self.hard) * self.hard_repeats

    @property
    def all(self) -> list[Tile]:
        """Every tile that can be drawn, sorted."""
        return sorted(self.positives + self.negatives + self.hard, key=tile_order)

    def epoch(self, rng: np.random.Generator) -> list[Tile]:
        """This epoch's tiles: all positives, a random draw of negatives and every hard tile ``hard_repeats`` times (unshuffled)."""
        hard = [t for t in self.hard for _ in range(self.hard_repeats)]
        if self.negatives_per_epoch >= len(self.negatives):
            return self.positives + self.negatives + hard
        pick = np.sort(rng.choice(len(self.negatives), size=self.negatives_per_epoch, replace=False))
        return self.positives + [self.negatives[i] for i in pick] + hard

    def with_hard(self, hard: Sequence[Tile], repeats: int) -> TrainingTiles:
        """These tiles with ``hard`` taken out of the positives and negatives and drawn ``repeats`` times per epoch.

        The share of negatives per epoch stays what it was among the remaining tiles.
        """
        if repeats < 1:
            raise ConfigError(f"params: 'retrain.oversample' is {repeats}; use 1 or more")
        hard_set = set(hard)
        pos = [t for t in self.positives if t not in hard_set]
        neg = [t for t in self.negatives if t not in hard_set]
        per = min(self.negatives_per_epoch, len(neg))
        ordered = sorted(hard_set, key=tile_order)
        return TrainingTiles(pos, neg, per, ordered, int(repeats))


def select_training_tiles(
    index: pd.DataFrame,
    classes: Sequence[str],
    negative_share: float | None,
    split: str = "train",
    where: str = "tile index",
) -> TrainingTiles:
    """Tiles of ``split``: every positive tile (a ``pos_<class>`` set for one of
    ``classes``) plus, per epoch, enough negative tiles to make
    ``negative_share`` (0..1) of the epoch, or all of them if there are fewer;
    ``None`` uses every tile every epoch.
    """
    tiles = split_tiles(index, split, where)
    if negative_share is None:
        return TrainingTiles(tiles, [], 0)
    if not 0.0 <= negative_share < 1.0:
        raise ConfigError(f"params: 'train.negative_share' is {negative_share}; use 0..1 (below 1) or null to keep all tiles")
    pos = positive_tiles(index, classes, where)
    positives = [t for t in tiles if t in pos]
    negatives = [t for t in tiles if t not in pos]
    want = int(round(len(positives) * negative_share / (1.0 - negative_share)))
    return TrainingTiles(positives, negatives, min(want, len(negatives)))


#: Pseudo-layer of :class:`TileReader`: where layer ``imagery`` holds data (its valid-data mask).
VALID = "imagery:valid"


class TileReader:
    """Reads and checks imagery and mask tiles of a store, opening each shard file once.

    Whole shards are read on first use and kept in an LRU cache of at most
    ``cache_mb`` megabytes (0 reads every tile from its file); a tile is a slice
    of its cached shard. An error met while tf.data runs the generator is kept
    in ``error`` (and the stream ends) so the caller re-raises the one-line
    :class:`NavmlError` instead of TensorFlow's wrapped one.
    """

    def __init__(self, store: Store, n_classes: int, bands: int, cache_mb: float = 1024.0):
        self.store = store
        self.n_classes = n_classes
        self.bands = bands
        self.cache_bytes = int(cache_mb * 2**20)
        self.error: NavmlError | None = None
        self.shard_reads = 0
        self._shards: OrderedDict[tuple[str, Tile], np.ndarray] = OrderedDict()
        self._cached = 0

    def _shard(self, layer: str, shard: Tile) -> np.ndarray:
        key = (layer, shard)
        arr = self._shards.get(key)
        if arr is not None:
            self._shards.move_to_end(key)
            return arr
        if layer == VALID:
            arr = self.store.read_valid(IMAGERY, shard_window(shard, self.store.grid))[None]
        else:
            arr = self.store.read_shard(layer, shard)
        self.shard_reads += 1
        self._shards[key] = arr
        self._cached += arr.nbytes
        while self._cached > self.cache_bytes and self._shards:
            self._cached -= self._shards.popitem(last=False)[1].nbytes
        return arr

    def _read(self, layer: str, tile: Tile) -> np.ndarray:
        grid = self.store.grid
        shard = shard_of(tile, grid)
        try:
            if not self.cache_bytes:
                return self.store.read_valid_tile(IMAGERY, tile)[None] if layer == VALID else self.store.read_tile(layer, tile)
            arr = self._shard(layer, shard)
            tw, sw = tile_window(tile, grid.tile_size), shard_window(shard, grid)
            r, c = tw.row - sw.row, tw.col - sw.col
            return arr[:, r : r + tw.height, c : c + tw.width]
        except NavmlError:
            raise
        except Exception as exc:  # rasterio/GDAL raise several types on a damaged file
            path = self.store.path(layer, shard)
            raise InputError(
                f"{path}: cannot read tile {tile_key(tile)} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                f"delete the shard and re-run the stage that writes '{layer}'"
            ) from exc

    def image(self, tile: Tile) -> np.ndarray:
        """Imagery ``(rows, cols, bands)`` uint8."""
        arr = self._read(IMAGERY, tile)
        if arr.shape[0] != self.bands:
            path = self.store.path(IMAGERY, shard_of(tile, self.store.grid))
            raise InputError(
                f"{path}: tile {tile_key(tile)} has {arr.shape[0]} bands, the model takes {self.bands}; "
                f"set train.bands: {arr.shape[0]} and retrain, or re-run the imagery stage"
            )
        return np.moveaxis(arr, 0, -1)

    def mask(self, tile: Tile) -> np.ndarray:
        """Mask ``(rows, cols)`` uint8 with values ``0..n_classes`` or :data:`IGNORE`; IGNORE also where there is no imagery."""
        arr = self._read(MASKS, tile)
        path = self.store.path(MASKS, shard_of(tile, self.store.grid))
        if arr.shape[0] != 1:
            raise InputError(f"{path}: masks must have 1 band, found {arr.shape[0]}; re-run rasterize")
        bad = arr[(arr > self.n_classes) & (arr != IGNORE)]
        if bad.size:
            raise InputError(
                f"{path}: mask value {int(bad.max())} at tile {tile_key(tile)} but the registry has {self.n_classes} segmentation "
                f"class(es); re-run rasterize after changing classes"
            )
        valid = self._read(VALID, tile)[0]
        if not valid.all():  # no imagery there: neither trained nor scored (the model would learn "black is a lot")
            return np.where(valid, arr[0], IGNORE).astype(arr.dtype)
        return arr[0]

    def pair(self, tile: Tile, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Imagery and mask of ``tile`` (``rng``: unused here, see :class:`CityReader`)."""
        return self.image(tile), self.mask(tile)


def rescale_pair(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (rows, cols, bands) and ``mask`` (rows, cols) resized by ``factor``: the image by area
    averaging when it shrinks (bilinear when it grows), the mask by nearest neighbour (:data:`IGNORE` stays)."""
    import cv2

    if factor == 1.0:
        return image, mask
    rows, cols = mask.shape
    size = (max(1, int(round(cols * factor))), max(1, int(round(rows * factor))))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(image), size, interpolation=interp)
    if out.ndim == 2:
        out = out[..., None]
    return out, cv2.resize(np.ascontiguousarray(mask), size, interpolation=cv2.INTER_NEAREST)


def fit_pair(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``mask`` cut or padded to ``size`` x ``size`` px: a random window (``rng``) or the centre
    where larger; padded with 0 imagery and :data:`IGNORE` labels (neither trained nor scored) where smaller."""
    rows, cols = mask.shape
    if rows > size or cols > size:
        r = int(rng.integers(rows - size + 1)) if rng is not None and rows > size else max(0, (rows - size) // 2)
        c = int(rng.integers(cols - size + 1)) if rng is not None and cols > size else max(0, (cols - size) // 2)
        image, mask = image[r : r + size, c : c + size], mask[r : r + size, c : c + size]
        rows, cols = mask.shape
    if rows < size or cols < size:
        r = int(rng.integers(size - rows + 1)) if rng is not None else (size - rows) // 2
        c = int(rng.integers(size - cols + 1)) if rng is not None else (size - cols) // 2
        img = np.zeros((size, size, image.shape[-1]), dtype=image.dtype)
        msk = np.full((size, size), IGNORE, dtype=mask.dtype)
        img[r : r + rows, c : c + cols] = image
        msk[r : r + rows, c : c + cols] = mask
        image, mask = img, msk
    return image, mask


class CityReader:
    """:class:`TileReader` over several stores (cities) at once, each tile resampled to one ground resolution.

    Tiles are :class:`SourceTile` s; ``factors[i]`` is the model pixels per pixel of store ``i``
    (its ground resolution over the training one). A resampled tile is cut or padded back to the tile
    size (:func:`fit_pair`): at random with ``rng`` (training), at the centre without (validation).
    """

    def __init__(self, readers: Sequence[TileReader], factors: Sequence[float]):
        if not readers or len(readers) != len(factors):
            raise ValueError("CityReader needs one factor per reader")
        self.readers = list(readers)
        self.factors = [float(f) for f in factors]
        self.store = self.readers[0].store  # the grid every store shares
        self.n_classes = self.readers[0].n_classes
        self.bands = self.readers[0].bands
        self.error: NavmlError | None = None

    @property
    def shard_reads(self) -> int:
        return sum(r.shard_reads for r in self.readers)

    def _one(self, tile: SourceTile) -> tuple[TileReader, Tile, float]:
        return self.readers[tile.source], tile.tile, self.factors[tile.source]

    def image(self, tile: SourceTile) -> np.ndarray:
        """The tile's imagery at the training resolution (not cut back to the tile size)."""
        reader, t, f = self._one(tile)
        img = reader.image(t)
        return img if f == 1.0 else rescale_pair(img, img[..., 0], f)[0]

    def mask(self, tile: SourceTile) -> np.ndarray:
        """The tile's mask at the training resolution (not cut back to the tile size)."""
        reader, t, f = self._one(tile)
        m = reader.mask(t)
        return m if f == 1.0 else rescale_pair(m[..., None], m, f)[1]

    def pair(self, tile: SourceTile, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        reader, t, f = self._one(tile)
        image, mask = rescale_pair(*reader.pair(t), f)
        return fit_pair(image, mask, self.store.grid.tile_size, rng)


class MinedReader(TileReader):
    """A :class:`TileReader` whose masks carry :data:`MINED` where ``hard[tile]`` (bool, rows x cols) marks
    mined background; labelled, unknown and no-imagery pixels keep their value."""

    def __init__(self, store: Store, n_classes: int, bands: int, hard: Mapping[Tile, np.ndarray], cache_mb: float = 1024.0):
        super().__init__(store, n_classes, bands, cache_mb)
        self.hard = dict(hard)

    def mask(self, tile: Tile) -> np.ndarray:
        arr = super().mask(tile)
        mined = self.hard.get(tile)
        if mined is None:
            return arr
        return np.where(mined & (arr == 0), np.uint8(MINED), arr).astype(arr.dtype)


def check_store(store: Store, tiles: Sequence[Tile], bands: int, layers: Sequence[str] = (IMAGERY, MASKS)) -> None:
    """Every shard of ``tiles`` exists in ``layers`` and the imagery has ``bands`` bands, else :class:`InputError`."""
    for layer in layers:
        folder = store.root / layer
        for shard in group_by_shard(tiles, store.grid):
            if not store.has(layer, shard):
                stage = "rasterize" if layer == MASKS else layer
                raise InputError(f"{store.path(layer, shard)}: missing shard of layer '{layer}'; run `dvc repro {stage}` (store {folder})")
    if IMAGERY in layers:
        try:
            found = store.count(IMAGERY)
        except Exception as exc:  # a damaged first shard
            raise InputError(f"{store.root / IMAGERY}: cannot read imagery ({str(exc).splitlines()[0]}); re-run the imagery stage") from exc
        if found != bands:
            raise InputError(
                f"{store.root / IMAGERY}: imagery has {found} bands, the model takes {bands}; "
                f"set train.bands: {found} and retrain, or re-run the imagery stage"
            )


def label_counts(reader: TileReader, tiles: Sequence[Tile], progress: bool = False, desc: str = "labels") -> np.ndarray:
    """Pixel count per label ``0..n_classes`` over ``tiles`` (reads masks only; ignored pixels not counted)."""
    from tqdm import tqdm

    k = reader.n_classes + 1
    counts = np.zeros(k, dtype="int64")
    for tile in tqdm(tiles, desc=desc, unit="tile", disable=None if progress else True, leave=False):
        counts += np.bincount(reader.mask(tile).ravel(), minlength=256)[:k]
    return counts


def training_counts(reader: TileReader, tiles: TrainingTiles, progress: bool = False) -> np.ndarray:
    """Expected pixel count per label in one epoch of ``tiles`` (float): positives
    plus the negatives scaled by the share of them drawn per epoch."""
    counts = label_counts(reader, tiles.positives, progress, "train labels").astype("float64")
    if tiles.negatives and tiles.negatives_per_epoch:
        neg = label_counts(reader, tiles.negatives, progress, "train negatives")
        counts += neg * (tiles.negatives_per_epoch / len(tiles.negatives))
    if tiles.hard:
        counts += label_counts(reader, tiles.hard, progress, "train hard tiles") * tiles.hard_repeats
    return counts


def random_crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random ``size`` x ``size`` window (pixels) of ``image`` (rows, cols, bands) and ``mask`` (rows, cols)."""
    rows, cols = mask.shape
    if size >= rows and size >= cols:
        return image, mask
    r = int(rng.integers(rows - size + 1))
    c = int(rng.integers(cols - size + 1))
    return image[r : r + size, c : c + size], mask[r : r + size, c : c + size]


def sample_stream(
    reader: TileReader,
    tiles: Sequence[Tile] | TrainingTiles,
    *,
    shuffle: bool,
    augment: Augment | None,
    seed: int,
    crop: int | None = None,
):
    """A generator function yielding ``(image float32 HWC, mask uint8 HW)``; each call is one pass
    over the tiles, with its negatives drawn (:class:`TrainingTiles`), shuffled, cropped to
    ``crop`` px and augmented with ``default_rng([seed, pass])``."""
    passes = itertools.count()
    fixed = None if isinstance(tiles, TrainingTiles) else list(tiles)

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if reader.error is not None:  # an empty pass ends a repeated stream after a read error
            return
        rng = np.random.default_rng([seed, next(passes)])
        tiles_now = fixed if fixed is not None else tiles.epoch(rng)
        order = rng.permutation(len(tiles_now)) if shuffle else range(len(tiles_now))
        for i in order:
            try:
                image, mask = reader.pair(tiles_now[i], rng)
            except NavmlError as exc:
                # end the stream quietly (raising here makes TensorFlow print a traceback);
                # the caller sees the short epoch and re-raises ``reader.error``
                reader.error = exc
                return
            if crop:
                image, mask = random_crop(image, mask, crop, rng)
            if augment is not None:
                image, mask = augment_pair(image, mask, rng, augment)
            yield image.astype("float32", copy=False), np.ascontiguousarray(mask)

    return gen


def make_dataset(
    reader: TileReader,
    tiles: Sequence[Tile] | TrainingTiles,
    *,
    batch_size: int,
    shuffle: bool = False,
    augment: Augment | None = None,
    seed: int = 0,
    cache: bool = False,
    drop_remainder: bool = False,
    crop: int | None = None,
    repeat: bool = False,
    mined_weight: float | None = None,
):
    """``tf.data.Dataset`` of ``(image, one-hot label)`` batches over ``tiles`` (see module doc).

    ``crop`` (px, at most the tile size) trains on random windows of that size;
    ``repeat`` makes the stream endless (one pass after another, each with its
    own negatives, order and augmentation; batches run across passes, so all are full).
    Pixels of :data:`IGNORE` get an all-zero label row, which the losses and
    :class:`navml.segment.losses.MaskedIoU` leave out. With ``mined_weight``, pixels of
    :data:`MINED` get a background row of that weight (the row's sum is the pixel's loss weight).
    """
    import tensorflow as tf

    tile = reader.store.grid.tile_size
    if crop is not None and not 0 < crop <= tile:
        raise ConfigError(f"params: 'train.crop' is {crop}; use 1..{tile} px (grid.tile_size) or null for whole tiles")
    size = crop or tile
    k = reader.n_classes + 1
    gen = sample_stream(reader, tiles, shuffle=shuffle, augment=augment, seed=seed, crop=crop)
    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec((size, size, reader.bands), tf.float32),
            tf.TensorSpec((size, size), tf.uint8),
        ),
    )
    if mined_weight is None:
        ds = ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), k, dtype=tf.float32)))
    else:
        w = float(mined_weight)

        def weighted(x, y):
            mined = tf.equal(y, MINED)
            onehot = tf.one_hot(tf.where(mined, tf.zeros_like(y, tf.int32), tf.cast(y, tf.int32)), k, dtype=tf.float32)
            return x, onehot * tf.where(mined, w, 1.0)[..., None]

        ds = ds.map(weighted)
    if repeat:
        ds = ds.repeat()
    else:
        n = tiles.per_epoch if isinstance(tiles, TrainingTiles) else len(tiles)
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder or repeat)
    return ds.prefetch(2)


def image_batches(reader: TileReader, tiles: Sequence[Tile], batch_size: int) -> Iterator[tuple[list[Tile], np.ndarray, np.ndarray]]:
    """``(tiles, images float32 (b, rows, cols, bands), masks uint8 (b, rows, cols))`` in order, for inference."""
    for start in range(0, len(tiles), batch_size):
        chunk = list(tiles[start : start + batch_size])
        pairs = [reader.pair(t) for t in chunk]
        yield chunk, np.stack([p[0] for p in pairs]).astype("float32"), np.stack([p[1] for p in pairs])
