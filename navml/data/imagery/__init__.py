"""The ``imagery`` stage: tiles from an imagery source into the shard store.

Two sources land on the same Web Mercator grid (layer ``imagery``, uint8,
one GeoTIFF per shard, see :class:`navml.geo.store.Store`):

* ``geotiff``: a GeoTIFF / COG in any CRS, reprojected per shard, any bands
  of it, 16-bit or float sources stretched to 8 bit
  (:mod:`navml.data.imagery.geotiff`);
* ``xyz``: an XYZ / TMS URL template, fetched concurrently with retries and a
  resumable tile cache (:mod:`navml.data.imagery.xyz`).

A shard is one task of :func:`navml.geo.parallel.map_shards`: in this process
by default, or on Dask (``--scheduler`` / ``--workers``).

Only the tiles in the tile list are filled; every other pixel of a shard is 0.
Each shard carries a valid-data mask (no imagery: outside the source's
footprint, its nodata / transparent pixels, outside the listed tiles); the
pixels there are 0. The layer is replaced as a whole at the end of a run: a
failed or interrupted run leaves the previous layer untouched.
Same source, same tiles -> byte-identical shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from navml.config import ImageryParams
from navml.errors import ConfigError, InputError
from navml.geo.grid import Tile, tile_key

#: Defaults of the keyword arguments below: the params model's, written once there.
_IMAGERY = ImageryParams()


SOURCES = ("geotiff", "xyz")
#: Values of ``imagery.stretch``.
STRETCHES = ("none", "percentile")

__all__ = ["SOURCES", "build_imagery"]


def _check_tiles(tiles: Iterable[Tile], zoom: int) -> list[Tile]:
    out = sorted({Tile(int(t.x), int(t.y), int(t.z)) for t in tiles}, key=lambda t: (t.y, t.x))
    for t in out:
        if t.z != zoom:
            raise InputError(f"tile {tile_key(t)} is at zoom {t.z} but the store grid is zoom {zoom}; re-run cover with the same grid")
    return out


def _check_band_indexes(band_indexes) -> tuple[int, ...] | None:
    """``imagery.band_indexes`` as a tuple of distinct 1-based ints (``None`` when not given)."""
    if band_indexes is None or (isinstance(band_indexes, (list, tuple)) and not band_indexes):
        return None
    if not isinstance(band_indexes, (list, tuple)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in band_indexes):
        raise ConfigError(f"imagery.band_indexes: {band_indexes!r}; give a list of 1-based band numbers, e.g. [1, 2, 3]")
    if min(band_indexes) < 1:
        raise ConfigError(f"imagery.band_indexes: {list(band_indexes)}; bands are numbered from 1 (as in GDAL and QGIS)")
    if len(set(band_indexes)) != len(band_indexes):
        raise ConfigError(f"imagery.band_indexes: {list(band_indexes)} names a band twice")
    return tuple(band_indexes)


def _check_percentiles(percentiles) -> tuple[float, float]:
    """``imagery.percentiles`` as (low, high) with 0 <= low < high <= 100."""
    try:
        lo, hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise ConfigError(f"imagery.percentiles: {percentiles!r}; give two numbers [low, high], e.g. [2, 98]") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"imagery.percentiles: [{lo:g}, {hi:g}]; need 0 <= low < high <= 100")
    return lo, hi


def build_imagery(
    store,
    tiles: Iterable[Tile],
    *,
    source: str,
    geotiff: str | os.PathLike | None = None,
    url: str | None = None,
    token_env: str | None = None,
    workers: int = _IMAGERY.workers,
    retries: int = _IMAGERY.retries,
    timeout_s: float = _IMAGERY.timeout_s,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    bands: int | None = None,
    band_indexes: Sequence[int] | None = None,
    stretch: str = _IMAGERY.stretch,
    percentiles: Sequence[float] = _IMAGERY.percentiles,
    resampling: str = _IMAGERY.resampling,
    backoff_s: float = 0.5,
    scheduler=None,
) -> dict:
    """Fill layer ``imagery`` of ``store`` (a :class:`navml.geo.store.Store`) for ``tiles``.

    ``source`` is ``"geotiff"`` (needs ``geotiff``: a path or GDAL URL; the
    source bands ``band_indexes`` (1-based) are used, default the first
    ``bands`` (default 3, or as many as ``band_indexes`` names), warped with
    ``resampling``; ``stretch`` ``"percentile"`` maps each band's
    ``percentiles`` (low, high; of the whole source) onto 0..255 for 16-bit or
    float sources) or ``"xyz"`` (needs ``url``,
    a template with ``{z}``, ``{x}``, ``{y}`` / ``{-y}`` / ``{tms_y}`` and optionally
    ``{token}``, read from the environment variable named ``token_env``).
    ``workers`` threads; ``retries`` retries after the first attempt of a tile,
    ``timeout_s`` seconds per request, back-off starting at ``backoff_s`` seconds;
    tiles are cached under ``cache_dir`` (default ``.navml-cache/xyz``).
    Each shard is a task of :func:`navml.geo.parallel.map_shards` where
    ``scheduler`` says (``None``: in this process; a name, a Dask address or a
    :class:`~navml.geo.parallel.Plan`, as ``resolve_scheduler(--scheduler, --workers)``
    gives it); the layer is the same bytes wherever it runs.
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
    picks = _check_band_indexes(band_indexes)
    if bands is None:
        bands = len(picks) if picks else 3
    if int(bands) < 1:
        raise ConfigError(f"imagery.bands: {bands}; need at least 1")
    if picks and len(picks) != int(bands):
        raise ConfigError(
            f"imagery.bands: {bands} but imagery.band_indexes {list(picks)} picks {len(picks)} band(s); "
            "drop imagery.bands or make the two agree"
        )
    if stretch not in STRETCHES:
        raise ConfigError(f"imagery.stretch: '{stretch}' is not one of {', '.join(STRETCHES)}")
    pct = _check_percentiles(percentiles)
    tiles = _check_tiles(tiles, store.grid.zoom)
    if source == "geotiff":
        from navml.data.imagery.geotiff import build_from_geotiff

        if not geotiff:
            raise ConfigError("imagery.geotiff: empty; give the path of the GeoTIFF/COG (source: geotiff)")
        return build_from_geotiff(
            store, tiles, geotiff, bands=int(bands), band_indexes=picks, stretch=stretch, percentiles=pct,
            resampling=resampling, workers=int(workers), progress=progress, scheduler=scheduler,
        )
    from navml.data.imagery.xyz import TileUrl, build_from_xyz

    if int(bands) != 3 or (picks and picks != (1, 2, 3)):
        raise ConfigError(f"imagery.bands: {bands}; XYZ tiles are RGB, leave bands at 3 and band_indexes empty")
    if stretch != "none":
        raise ConfigError(f"imagery.stretch: '{stretch}'; XYZ tiles are 8-bit already, leave stretch at none")
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
        scheduler=scheduler,
    )
