"""Live prediction of one tile for the viewer: segmentation probabilities and detections.

The model is fed the tile plus a *halo* read from the neighbouring tiles
(:meth:`navml.geo.store.Store.read_window`, across shard borders): half the
model's receptive field (:func:`navml.models.inference.prediction_halo`, a
multiple of its stride), clipped to the store's extent, so the tile's pixels
equal those of one run over the whole mosaic, as ``navml predict`` computes
them. The window starts on the stride grid and its size is rounded up to a
multiple of the stride (zeros beyond the store). Results are kept in a small
LRU cache; one lock serialises the model calls (Keras models are not
re-entrant across threads), the store reads happen outside it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from navml.errors import InputError, ModelError
from navml.geo.grid import Tile, Window, pixel_to_lonlat, tile_window
from navml.geo.store import Store
from navml.models.inference import flexible, fold_batchnorm, prediction_halo, runner

#: Tiles kept per predictor.
CACHE_TILES = 256


def store_extent(store: Store, layer: str = "imagery") -> Window | None:
    """The global pixel window spanning every shard of ``layer`` (None without shards)."""
    shards = store.shards(layer)
    if not shards:
        return None
    n = store.grid.shard_size
    x0, x1 = min(s.x for s in shards), max(s.x for s in shards) + 1
    y0, y1 = min(s.y for s in shards), max(s.y for s in shards) + 1
    return Window(x0 * n, y0 * n, (x1 - x0) * n, (y1 - y0) * n)


def input_window(tile: Tile, tile_size: int, halo: int, stride: int, extent: Window | None) -> Window:
    """The window fed to the model for ``tile``: the tile grown by ``halo`` px, clipped to ``extent``, sized to the stride.

    Clipping keeps the start on the stride grid when the extent's corner is
    (shards are multiples of the stride); the end is rounded up to a multiple of ``stride``.
    """
    w = tile_window(tile, tile_size)
    c0, r0 = w.col - halo, w.row - halo
    c1, r1 = w.col + w.width + halo, w.row + w.height + halo
    if extent is not None:
        c0, r0 = max(c0, extent.col), max(r0, extent.row)
        c1, r1 = min(c1, extent.col + extent.width), min(r1, extent.row + extent.height)
    width, height = c1 - c0, r1 - r0
    width += -width % stride
    height += -height % stride
    return Window(c0, r0, width, height)


@dataclass
class Predictor:
    """A loaded model for live use: its meta, the compiled runner, the halo (px)."""

    name: str
    task: str
    meta: Any
    run: Callable[[np.ndarray], np.ndarray]
    halo: int
    refiner: Any = None  # a detector's second stage (navml.detect.refine.Refiner), if it has one

    @classmethod
    def load(cls, folder: str | os.PathLike, name: str | None = None) -> Predictor:
        """Load a model folder (``model.keras`` + ``meta.json``) ready to run on any window."""
        from navml.detect.refine import load_refiner
        from navml.models.io import load_model

        model, meta = load_model(folder)
        return cls.of(model, meta, name or Path(folder).name, load_refiner(folder, meta) if meta.task == "detection" else None)

    @classmethod
    def of(cls, model, meta, name: str, refiner=None) -> Predictor:
        """A predictor of a model in memory (BN folded, free input size)."""
        halo = prediction_halo(meta.receptive_field, meta.stride)
        run = runner(fold_batchnorm(flexible(model, meta.bands)), meta.bands)
        return cls(name, meta.task, meta, run, halo, refiner)


class LiveTiles:
    """Per-tile live predictions of one predictor on one store, cached (LRU) and serialised around the model call."""

    def __init__(self, store: Store, predictor: Predictor, layer: str = "imagery", cache: int = CACHE_TILES):
        self.store = store
        self.predictor = predictor
        self.layer = layer
        self.extent = store_extent(store, layer)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._size = cache
        self._lock = threading.Lock()  # the model call
        self._cache_lock = threading.Lock()

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> tuple[Any, float, bool]:
        """``(value, milliseconds, hit)``; computes on a miss."""
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], 0.0, True
        t = time.perf_counter()
        value = compute()
        ms = (time.perf_counter() - t) * 1000
        with self._cache_lock:
            self._cache[key] = value
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return value, ms, False

    def _input(self, tile: Tile) -> tuple[np.ndarray, Window]:
        m = self.predictor.meta
        grid = self.store.grid
        if tile.z != grid.zoom:
            raise InputError(f"tile zoom {tile.z} is not the store zoom {grid.zoom}")
        if m.zoom != grid.zoom or m.tile_size != grid.tile_size:
            raise ModelError(f"model {self.predictor.name} is for zoom {m.zoom} / {m.tile_size}-px tiles, the store is {grid.zoom} / {grid.tile_size}")
        win = input_window(tile, grid.tile_size, self.predictor.halo, m.stride, self.extent)
        x = self.store.read_window(self.layer, win, bands=m.bands)
        if x.shape[0] != m.bands:
            raise ModelError(f"model {self.predictor.name} expects {m.bands} bands, the imagery has {x.shape[0]}")
        return np.moveaxis(x, 0, -1)[None].astype("float32"), win

    def probs(self, tile: Tile) -> tuple[np.ndarray, float, bool]:
        """Probabilities of the tile's classes (classes, size, size) uint8 0..255, milliseconds spent, cache hit."""
        return self._cached(("probs", tile), lambda: self._probs(tile))

    def _probs(self, tile: Tile) -> np.ndarray:
        from navml.segment.predict import to_uint8

        x, win = self._input(tile)
        with self._lock:
            y = self.predictor.run(x)
        size = self.store.grid.tile_size
        w = tile_window(tile, size)
        r0, c0 = w.row - win.row, w.col - win.col
        core = y[0, r0 : r0 + size, c0 : c0 + size, 1:]
        valid = self.store.read_valid_tile(self.layer, tile)
        return np.moveaxis(to_uint8(core), -1, 0) * valid[None]

    def detections(self, tile: Tile, score_threshold: float | None = None) -> tuple[list[dict], float, bool]:
        """GeoJSON features (WGS84 box polygons; class, score, tile) of the detections centred in ``tile``."""
        det = self.predictor.meta.extra
        thr = score_threshold if score_threshold is not None else float(det.get("score_threshold", 0.25))
        return self._cached(("det", tile, thr), lambda: self._detect(tile, thr))

    def _detect(self, tile: Tile, thr: float) -> list[dict]:
        from navml.detect.nms import centre_in_core, nms
        from navml.detect.predict import detector_of
        from navml.detect.targets import decode

        d = detector_of(self.predictor.meta, self.predictor.name)
        x, win = self._input(tile)
        with self._lock:
            y = self.predictor.run(x)
        refiner = self.predictor.refiner
        gate = thr if refiner is None else refiner.floor
        found = decode(y[0], d.anchors, d.stride, gate, origin=(win.col, win.row), offset_scale=d.offset_scale)
        w = tile_window(tile, self.store.grid.tile_size)
        found = found.take(centre_in_core(found.boxes, (w.col, w.row, w.col + w.width, w.row + w.height)))
        found = found.take(nms(found.boxes, found.scores, found.class_ids, 0.5))
        if refiner is not None:  # the second stage reads each proposal again (navml.detect.refine)
            found = refiner(x[0], found, origin=(float(win.col), float(win.row)))
            found = found.take(found.scores >= thr)
            found = found.take(nms(found.boxes, found.scores, found.class_ids, 0.5))
        z, size = tile.z, self.store.grid.tile_size
        out = []
        for (x0, y0, x1, y1), s, c in zip(found.boxes, found.scores, found.class_ids):
            lon, lat = pixel_to_lonlat(np.array([x0, x1, x1, x0, x0]), np.array([y0, y0, y1, y1, y0]), z, size)
            out.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[float(a), float(b)] for a, b in zip(lon, lat)]]},
                "properties": {"class": d.names[int(c)], "score": round(float(s), 4), "tile": f"{tile.z}-{tile.x}-{tile.y}"},
            })
        return out
