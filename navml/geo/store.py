"""The shard store: one GeoTIFF per shard and layer, tiles addressed by z/x/y.

A layer (``imagery``, ``masks``, ``probs`` ...) is a folder of Cloud-Optimized-
style GeoTIFFs, ``<root>/<layer>/<z>-<x>-<y>.tif``, one per shard, each on the
exact EPSG:3857 pixel grid of the tile zoom; a tile is a window of its shard.
DVC then tracks a few files per shard instead of one file per tile.
Pixels of a shard outside the area of interest stay 0.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window as RioWindow

from navml.errors import InputError
from navml.geo.grid import (
    EPSG, Grid, Tile, Window, intersection, parse_tile, shard_window, shards_of_window, tile_key, tile_window, window_transform,
)


class Store:
    """A folder of shard GeoTIFFs on one :class:`~navml.geo.grid.Grid`."""

    def __init__(self, root: str | os.PathLike, grid: Grid):
        self.root = Path(root)
        self.grid = grid

    def path(self, layer: str, shard: Tile) -> Path:
        """File of ``layer`` for ``shard``."""
        return self.root / layer / f"{tile_key(shard)}.tif"

    def shards(self, layer: str) -> list[Tile]:
        """Shards present in ``layer``, sorted north to south, west to east."""
        folder = self.root / layer
        if not folder.is_dir():
            return []
        shards = [parse_tile(p.stem) for p in folder.glob("*.tif")]
        return sorted(shards, key=lambda s: (s.y, s.x))

    def has(self, layer: str, shard: Tile) -> bool:
        return self.path(layer, shard).exists()

    def profile(self, shard: Tile, count: int, dtype: str = "uint8") -> dict:
        """GeoTIFF profile of a shard: tiled, deflate-compressed, EPSG:3857."""
        n = self.grid.shard_size
        block = min(256, n)
        return {
            "driver": "GTiff",
            "width": n,
            "height": n,
            "count": count,
            "dtype": dtype,
            "crs": f"EPSG:{EPSG}",
            "transform": window_transform(shard_window(shard, self.grid), self.grid.zoom, self.grid.tile_size),
            "tiled": True,
            "blockxsize": block,
            "blockysize": block,
            "compress": "deflate",
            "predictor": 2 if dtype.startswith("uint") else 1,
            "nodata": None,
        }

    def write_shard(self, layer: str, shard: Tile, array: np.ndarray, tags: dict | None = None) -> Path:
        """Write ``array`` (bands, rows, cols) as the whole shard, atomically."""
        if array.ndim == 2:
            array = array[None]
        n = self.grid.shard_size
        if array.shape[1:] != (n, n):
            raise ValueError(f"shard array is {array.shape[1:]}, expected {(n, n)}")
        target = self.path(layer, shard)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tif.part", dir=target.parent)
        os.close(fd)
        try:
            with rasterio.open(tmp, "w", **self.profile(shard, array.shape[0], str(array.dtype))) as dst:
                dst.write(array)
                if tags:
                    dst.update_tags(**{k: str(v) for k, v in tags.items()})
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def read_shard(self, layer: str, shard: Tile) -> np.ndarray:
        """The whole shard as (bands, rows, cols)."""
        path = self.path(layer, shard)
        try:
            with rasterio.open(path) as src:
                return src.read()
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{path}: cannot read shard ({exc}); re-run the stage that writes '{layer}'") from exc

    def count(self, layer: str) -> int:
        """Band count of a layer (0 when it has no shard)."""
        shards = self.shards(layer)
        if not shards:
            return 0
        with rasterio.open(self.path(layer, shards[0])) as src:
            return src.count

    def read_window(self, layer: str, window: Window, bands: int | None = None, fill: int = 0) -> np.ndarray:
        """Any global pixel window of ``layer``, read across shard borders.

        Parts of the window in shards that do not exist are ``fill``.
        Returns (bands, height, width).
        """
        g = self.grid
        bands = bands or self.count(layer) or 1
        out = None
        for shard in shards_of_window(window, g):
            path = self.path(layer, shard)
            if not path.exists():
                continue
            sw = shard_window(shard, g)
            part_win = intersection(window, sw)
            try:
                with rasterio.open(path) as src:
                    part = src.read(window=RioWindow(part_win.col - sw.col, part_win.row - sw.row, part_win.width, part_win.height))
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(f"{path}: corrupt shard ({exc}); delete it and re-run the stage that writes '{layer}'") from exc
            if out is None:
                out = np.full((part.shape[0], window.height, window.width), fill, dtype=part.dtype)
            r, c = part_win.row - window.row, part_win.col - window.col
            out[:, r : r + part_win.height, c : c + part_win.width] = part
        if out is None:
            out = np.full((bands, window.height, window.width), fill, dtype="uint8")
        return out

    def read_tile(self, layer: str, tile: Tile, halo: int = 0) -> np.ndarray:
        """One tile of ``layer`` (bands, size, size), optionally with ``halo`` pixels around it."""
        w = tile_window(tile, self.grid.tile_size)
        if halo:
            w = Window(w.col - halo, w.row - halo, w.width + 2 * halo, w.height + 2 * halo)
        return self.read_window(layer, w)
