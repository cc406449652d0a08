"""The ``imagery`` stage: tiles from an imagery source into the shard store.

Two sources land on the same Web Mercator grid (layer ``imagery``, RGB uint8,
one GeoTIFF per shard, see :class:`navml.geo.store.Store`):

* ``geotiff``: a GeoTIFF / COG in any CRS, reprojected per shard
  (:mod:`navml.data.imagery.geotiff`);
* ``xyz``: an XYZ / TMS URL template, fetched concurrently with retries and a
  resumable tile cache (:mod:`navml.data.imagery.xyz`).

Only the tiles in the tile list are filled; every other pixel of a shard is 0.
Same source, same tiles -> byte-identical shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from navml.errors import ConfigError, InputError
from navml.geo.grid import Tile, tile_key

SOURCES = ("geotiff", "xyz")

__all__ = ["SOURCES", "build_imagery"]


def _check_tiles(tiles: Iterable[Tile], zoom: int) -> list[Tile]:
    out = sorted({Tile(int(t.x), int(t.y), int(t.z)) for t in tiles}, key=lambda t: (t.y, t.x))
    for t in out:
        if t.z != zoom:
            raise InputError(f"tile {tile_key(t)} is at zoom {t.z} but the store grid is zoom {zoom}; re-run cover with the same grid")
    return out


def build_imagery(
    store,
    tiles: Iterable[Tile],
    *,
    source: str,
    geotiff: str | os.PathLike | None = None,
    url: str | None = None,
    token_env: str | None = None,
    workers: int = 8,
    retries: int = 5,
    timeout_s: float = 20,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    bands: int = 3,
    resampling: str = "bilinear",
    backoff_s: float = 0.5,
) -> dict:
    """Fill layer ``imagery`` of ``store`` (a :class:`navml.geo.store.Store`) for ``tiles``.

    ``source`` is ``"geotiff"`` (needs ``geotiff``: a path or GDAL URL; ``bands``
    first bands are used, warped with ``resampling``) or ``"xyz"`` (needs ``url``,
    a template with ``{z}``, ``{x}``, ``{y}`` / ``{-y}`` / ``{tms_y}`` and optionally
    ``{token}``, read from the environment variable named ``token_env``).
    ``workers`` threads; ``retries`` retries after the first attempt of a tile,
    ``timeout_s`` seconds per request, back-off starting at ``backoff_s`` seconds;
    tiles are cached under ``cache_dir`` (default ``.navml-cache/xyz``).
    Returns a dict of counts (``shards``, ``tiles`` and per-source ones).
    Raises :class:`ConfigError`, :class:`InputError` or :class:`FetchError`;
    every check on the inputs runs before the first shard is written.
    """
    if source not in SOURCES:
        raise ConfigError(f"imagery.source: '{source}' is not one of {', '.join(SOURCES)}")
    if int(workers) < 1:
        raise ConfigError(f"imagery.workers: {workers}; need at least 1")
    if int(retries) < 0:
        raise ConfigError(f"imagery.retries: {retries}; need 0 or more")
    if not float(timeout_s) > 0:
        raise ConfigError(f"imagery.timeout_s: {timeout_s}; need a positive number of seconds")
    if int(bands) < 1:
        raise ConfigError(f"imagery.bands: {bands}; need at least 1")
    tiles = _check_tiles(tiles, store.grid.zoom)
    if source == "geotiff":
        from navml.data.imagery.geotiff import build_from_geotiff

        if not geotiff:
            raise ConfigError("imagery.geotiff: empty; give the path of the GeoTIFF/COG (source: geotiff)")
        return build_from_geotiff(
            store, tiles, geotiff, bands=int(bands), resampling=resampling, workers=int(workers), progress=progress
        )
    from navml.data.imagery.xyz import TileUrl, build_from_xyz

    if int(bands) != 3:
        raise ConfigError(f"imagery.bands: {bands}; XYZ tiles are RGB, leave bands at 3")
    tile_url = TileUrl(url or "", os.environ.get(token_env) if token_env else None, token_env)
    return build_from_xyz(
        store,
        tiles,
        tile_url,
        workers=int(workers),
        retries=int(retries),
        timeout_s=float(timeout_s),
        backoff_s=float(backoff_s),
        cache_dir=cache_dir,
        progress=progress,
    )
