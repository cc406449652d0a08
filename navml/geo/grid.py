"""The Web Mercator (EPSG:3857) z/x/y tile grid and its pixel coordinates.

Conventions used everywhere in navml:

* *Global pixel coordinates* at zoom ``z``: column ``px`` grows east and row
  ``py`` grows south, from the north-west corner of the world; tile ``(x, y)``
  covers ``px`` in ``[x * size, (x + 1) * size)``. Pixel centres sit at ``+0.5``.
* A *shard* is the parent tile of a tile at the coarser ``shard_zoom``; it is
  the unit of storage and of parallel work.
* Mercator metres are *not* ground metres: one Mercator metre is
  ``cos(lat)`` metres on the ground. :func:`ground_resolution` does that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import mercantile
import numpy as np
from affine import Affine

from navml.errors import ConfigError

#: Half the Web Mercator world width, in Mercator metres (EPSG:3857).
ORIGIN = 20037508.342789244
#: The EPSG code of the tile grid.
EPSG = 3857

Tile = mercantile.Tile


class Window(NamedTuple):
    """A rectangle in global pixel coordinates: column, row, width, height (pixels)."""

    col: int
    row: int
    width: int
    height: int


class Grid(NamedTuple):
    """The tile grid a store lives on: tile zoom, tile size (px) and shard zoom."""

    zoom: int = 18
    tile_size: int = 256
    shard_zoom: int = 15

    @property
    def tiles_per_shard(self) -> int:
        """Tiles along one side of a shard."""
        return 2 ** (self.zoom - self.shard_zoom)

    @property
    def shard_size(self) -> int:
        """Pixels along one side of a shard."""
        return self.tiles_per_shard * self.tile_size

    @property
    def resolution(self) -> float:
        """Mercator metres per pixel at the tile zoom."""
        return resolution(self.zoom, self.tile_size)


def make_grid(zoom: int, tile_size: int, shard_zoom: int) -> Grid:
    """Validated :class:`Grid`; raises :class:`ConfigError` on impossible values."""
    if not 0 <= shard_zoom <= zoom <= 24:
        raise ConfigError(
            f"grid: need 0 <= shard_zoom ({shard_zoom}) <= zoom ({zoom}) <= 24"
        )
    if tile_size < 16 or tile_size & (tile_size - 1):
        raise ConfigError(f"grid.tile_size: {tile_size} is not a power of two >= 16")
    return Grid(zoom, tile_size, shard_zoom)


def resolution(zoom: int, tile_size: int = 256) -> float:
    """Mercator metres per pixel at ``zoom``."""
    return 2 * ORIGIN / (tile_size * 2**zoom)


def ground_resolution(lat: float, zoom: int, tile_size: int = 256) -> float:
    """Ground metres per pixel at latitude ``lat`` (degrees) and ``zoom``."""
    return resolution(zoom, tile_size) * math.cos(math.radians(lat))


#: WGS84 semi-major axis (metres) and first eccentricity squared.
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3


def pixel_area_m2(lat: float, zoom: int, tile_size: int = 256) -> float:
    """Ground area (m², on the WGS84 ellipsoid) of one pixel at latitude ``lat`` (degrees).

    Web Mercator projects geodetic coordinates as if on a sphere, so a pixel's
    ground size differs from ``ground_resolution ** 2`` by up to 0.7 %: east-west
    it spans ``N cos(lat)``, north-south ``M cos(lat)`` per ``a`` Mercator metres
    (N, M: the ellipsoid's prime-vertical and meridional radii).
    """
    s = math.sin(math.radians(lat)) ** 2
    w = 1 - WGS84_E2 * s
    n_over_a = 1 / math.sqrt(w)
    m_over_a = (1 - WGS84_E2) / w**1.5
    return ground_resolution(lat, zoom, tile_size) ** 2 * n_over_a * m_over_a


def tiles_ground_resolution(tiles: Iterable[Tile], tile_size: int = 256) -> float:
    """Ground metres per pixel of a set of tiles (one zoom): at the median latitude of their centres.

    One number for an AOI: within a city the pixel size changes by a few parts
    in ten thousand (``tan(lat)`` per radian of latitude; 3e-4 over 1 km at 60° N).
    """
    tiles = list(tiles)
    if not tiles:
        raise ConfigError("no tiles to take a ground resolution from")
    zooms = {t.z for t in tiles}
    if len(zooms) != 1:
        raise ConfigError(f"tiles of several zooms {sorted(zooms)}; a ground resolution needs one")
    z = zooms.pop()
    rows = sorted(t.y for t in tiles)
    mid = rows[len(rows) // 2] + 0.5 if len(rows) % 2 else (rows[len(rows) // 2 - 1] + rows[len(rows) // 2]) / 2 + 0.5
    _, lat = pixel_to_lonlat(0.0, mid * tile_size, z, tile_size)
    return ground_resolution(float(lat), z, tile_size)


def metres_to_pixels(metres: float, lat: float, zoom: int, tile_size: int = 256) -> float:
    """A ground distance (metres) at latitude ``lat`` as pixels at ``zoom``."""
    return metres / ground_resolution(lat, zoom, tile_size)


def lonlat_to_mercator(lon, lat):
    """WGS84 degrees to EPSG:3857 metres (arrays or scalars)."""
    lon = np.asarray(lon, dtype="float64")
    lat = np.clip(np.asarray(lat, dtype="float64"), -85.0511287798, 85.0511287798)
    x = np.radians(lon) * 6378137.0
    y = np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)) * 6378137.0
    return x, y


def mercator_to_lonlat(x, y):
    """EPSG:3857 metres to WGS84 degrees (arrays or scalars)."""
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    lon = np.degrees(x / 6378137.0)
    lat = np.degrees(2 * np.arctan(np.exp(y / 6378137.0)) - np.pi / 2)
    return lon, lat


def lonlat_to_pixel(lon, lat, zoom: int, tile_size: int = 256):
    """WGS84 degrees to global pixel coordinates (float ``px``, ``py``) at ``zoom``."""
    x, y = lonlat_to_mercator(lon, lat)
    res = resolution(zoom, tile_size)
    return (x + ORIGIN) / res, (ORIGIN - y) / res


def pixel_to_lonlat(px, py, zoom: int, tile_size: int = 256):
    """Global pixel coordinates at ``zoom`` to WGS84 degrees (``lon``, ``lat``)."""
    res = resolution(zoom, tile_size)
    x = np.asarray(px, dtype="float64") * res - ORIGIN
    y = ORIGIN - np.asarray(py, dtype="float64") * res
    return mercator_to_lonlat(x, y)


def window_transform(window: Window, zoom: int, tile_size: int = 256) -> Affine:
    """Affine from a window's pixel (col, row) to EPSG:3857 metres."""
    res = resolution(zoom, tile_size)
    return Affine(res, 0.0, window.col * res - ORIGIN, 0.0, -res, ORIGIN - window.row * res)


def tile_window(tile: Tile, tile_size: int = 256) -> Window:
    """The global pixel window a tile covers at its own zoom."""
    return Window(tile.x * tile_size, tile.y * tile_size, tile_size, tile_size)


def shard_of(tile: Tile, grid: Grid) -> Tile:
    """The shard (parent tile at ``grid.shard_zoom``) holding ``tile``."""
    if tile.z == grid.shard_zoom:
        return tile
    return mercantile.parent(tile, zoom=grid.shard_zoom)


def shard_window(shard: Tile, grid: Grid) -> Window:
    """The global pixel window (at the tile zoom) a shard covers."""
    n = grid.shard_size
    return Window(shard.x * n, shard.y * n, n, n)


def shards_of_window(window: Window, grid: Grid) -> list[Tile]:
    """The shards a global pixel window overlaps, row by row."""
    n = grid.shard_size
    return [
        Tile(sx, sy, grid.shard_zoom)
        for sy in range(window.row // n, (window.row + window.height - 1) // n + 1)
        for sx in range(window.col // n, (window.col + window.width - 1) // n + 1)
    ]


def intersection(a: Window, b: Window) -> Window | None:
    """The pixels two windows share, or None when they do not overlap."""
    col, row = max(a.col, b.col), max(a.row, b.row)
    width = min(a.col + a.width, b.col + b.width) - col
    height = min(a.row + a.height, b.row + b.height) - row
    return Window(col, row, width, height) if width > 0 and height > 0 else None


def tiles_of_shard(shard: Tile, grid: Grid) -> Iterator[Tile]:
    """Every tile at ``grid.zoom`` inside ``shard``, row by row."""
    k = grid.tiles_per_shard
    for y in range(shard.y * k, (shard.y + 1) * k):
        for x in range(shard.x * k, (shard.x + 1) * k):
            yield Tile(x, y, grid.zoom)


def tile_polygon(tile: Tile):
    """A tile's (or shard's) footprint as a shapely polygon in WGS84 degrees."""
    from shapely.geometry import box

    b = mercantile.bounds(tile)
    return box(b.west, b.south, b.east, b.north)


def tile_key(tile: Tile) -> str:
    """``"z-x-y"``, the name of a tile or shard in file names."""
    return f"{tile.z}-{tile.x}-{tile.y}"


def parse_tile(text: str) -> Tile:
    """Parse ``"z/x/y"`` or ``"z-x-y"`` into a :class:`Tile`."""
    parts = text.replace("/", "-").split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"'{text}' is not a tile; write it as z/x/y, e.g. 18/53958/98114")
    z, x, y = (int(p) for p in parts)
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        raise ConfigError(f"tile {text}: x and y must lie in 0..{2**z - 1} at zoom {z}")
    return Tile(x, y, z)


def group_by_shard(tiles: Iterable[Tile], grid: Grid) -> dict[Tile, list[Tile]]:
    """Tiles grouped under their shard, shards and tiles in sorted order."""
    groups: dict[Tile, list[Tile]] = {}
    for t in tiles:
        groups.setdefault(shard_of(t, grid), []).append(t)
    return {s: sorted(groups[s], key=lambda t: (t.y, t.x)) for s in sorted(groups, key=lambda s: (s.y, s.x))}
