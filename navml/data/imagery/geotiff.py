"""Reproject a GeoTIFF / COG in any CRS onto the shard windows of the store.

Each shard is warped on its own (:func:`rasterio.warp.reproject`) from a
windowed read of the source that covers only that shard (plus a few pixels of
margin for the resampling kernel), so memory is bounded by a shard, never by
the size of the source. A source much finer than the tile zoom is read
decimated (GDAL uses the COG's overviews when it has them).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navml.errors import ConfigError, InputError
from navml.geo.grid import (
    EPSG,
    ORIGIN,
    Grid,
    Tile,
    Window,
    group_by_shard,
    lonlat_to_mercator,
    mercator_to_lonlat,
    resolution,
    shard_window,
    window_transform,
)

LAYER = "imagery"
#: Source pixels of margin read around a shard for the resampling kernel.
PAD = 4
#: Resampling methods accepted by ``imagery.resampling``.
RESAMPLING = ("bilinear", "cubic", "lanczos", "average", "nearest")
#: GDAL block cache, MB. Each source block is read about once, so a big cache
#: only adds memory (GDAL's default is 5 % of RAM).
GDAL_CACHEMAX_MB = 64


@dataclass(frozen=True)
class SourceInfo:
    """What the checks learnt about a GeoTIFF before anything is written."""

    path: str
    crs: str
    bands: int
    #: Footprint in WGS84 degrees: west, south, east, north.
    lonlat_bounds: tuple[float, float, float, float]


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("/vsi")


def _crs_advice(name: str, corners: Sequence[tuple[float, float]]) -> str:
    """What to do about a GeoTIFF without a CRS, from the range of its corner coordinates."""
    file = Path(name).name
    if all(-180.0 <= x <= 180.0 and -90.0 <= y <= 90.0 for x, y in corners):
        return f"its coordinates look like degrees: gdal_edit.py -a_srs EPSG:4326 {file}"
    return (
        "its coordinates look projected (metres or feet): assign the CRS it was made in, named in the provider's "
        f"metadata or .prj file, e.g. gdal_edit.py -a_srs EPSG:32613 {file} for UTM zone 13N"
    )


def _corners(src) -> list[tuple[float, float]]:
    """The four corners of ``src`` in its own coordinates."""
    t = src.transform
    return [t @ (c, r) for c, r in ((0, 0), (src.width, 0), (0, src.height), (src.width, src.height))]


def _value_range(src, bands: int) -> tuple[float, float]:
    """0.5 and 99.5 percentiles of the first ``bands`` bands, from a decimated read (at most 512 x 512 px)."""
    scale = max(src.width, src.height) / 512.0
    shape = (bands, max(1, int(src.height / max(scale, 1.0))), max(1, int(src.width / max(scale, 1.0))))
    sample = src.read(list(range(1, bands + 1)), out_shape=shape, masked=True).compressed()
    if not sample.size:
        return 0.0, 255.0
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(hi)


def _fmt(b: Sequence[float]) -> str:
    return f"lon {b[0]:.6f}..{b[2]:.6f}, lat {b[1]:.6f}..{b[3]:.6f}"


def inspect_geotiff(path: str | os.PathLike, bands: int = 3) -> SourceInfo:
    """Open ``path`` and check it can feed the store; raises :class:`InputError`.

    Checks: the file exists and is a raster GDAL reads, has a CRS, has at
    least ``bands`` bands and 8-bit (uint8) pixels.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds

    name = str(path)
    if not _is_remote(name) and not Path(name).is_file():
        raise InputError(f"{name}: GeoTIFF not found; check imagery.geotiff in params.yaml")
    try:
        with rasterio.open(name) as src:
            if src.transform.is_identity:
                raise InputError(
                    f"{name}: GeoTIFF has no geotransform (its pixels are not placed on the ground); give it one with "
                    f"gdal_edit.py -a_ullr followed by its west north east south coordinates, or a world file ({Path(name).stem}.tfw) beside it"
                )
            if src.crs is None:
                raise InputError(f"{name}: GeoTIFF has no CRS; {_crs_advice(name, _corners(src))}")
            if src.count < bands:
                raise InputError(
                    f"{name}: has {src.count} band(s), imagery needs {bands}; "
                    f"give an RGB file or set imagery.bands: {src.count}"
                )
            dtypes = set(src.dtypes[:bands])
            if dtypes != {"uint8"}:
                lo, hi = _value_range(src, bands)
                raise InputError(
                    f"{name}: pixels are {'/'.join(sorted(dtypes))}, imagery must be 8-bit; convert with "
                    f"gdal_translate -ot Byte -scale {lo:g} {hi:g} 0 255 {Path(name).name} {Path(name).stem}_8bit.tif "
                    f"(the 0.5..99.5 percentiles of its first {bands} band(s))"
                )
            xs, ys = zip(*_corners(src))
            try:
                west, south, east, north = transform_bounds(
                    src.crs, "EPSG:4326", min(xs), min(ys), max(xs), max(ys), densify_pts=51
                )
            except Exception as exc:  # noqa: BLE001 - PROJ errors come in several types
                raise InputError(f"{name}: cannot transform its bounds from {src.crs} to WGS84 ({exc})") from exc
            crs = src.crs.to_string()
            count = src.count
    except RasterioIOError as exc:
        raise InputError(f"{name}: cannot read as GeoTIFF ({exc}); check the file") from exc
    return SourceInfo(name, crs, count, (west, max(south, -85.0511), east, min(north, 85.0511)))


def check_overlap(info: SourceInfo, tiles: Sequence[Tile], grid: Grid) -> int:
    """Number of ``tiles`` that touch the footprint; 0 raises :class:`InputError`."""
    if not tiles:
        return 0
    w, s, e, n = info.lonlat_bounds
    (x0, x1), (y0, y1) = (lonlat_to_mercator([w, e], [s, n]))
    tile_m = resolution(grid.zoom, grid.tile_size) * grid.tile_size
    tx = np.array([t.x for t in tiles], dtype="float64")
    ty = np.array([t.y for t in tiles], dtype="float64")
    left, right = tx * tile_m - ORIGIN, (tx + 1) * tile_m - ORIGIN
    top, bottom = ORIGIN - ty * tile_m, ORIGIN - (ty + 1) * tile_m
    hit = (left < x1) & (right > x0) & (bottom < y1) & (top > y0)
    if not hit.any():
        lw, ln = mercator_to_lonlat(left.min(), top.max())
        le, ls = mercator_to_lonlat(right.max(), bottom.min())
        raise InputError(
            f"{info.path}: imagery footprint ({_fmt(info.lonlat_bounds)}) does not overlap the tile list "
            f"({_fmt((float(lw), float(ls), float(le), float(ln)))}); check the AOI or the GeoTIFF's CRS ({info.crs})"
        )
    return int(hit.sum())


def _tiles_bbox(tiles: Sequence[Tile], grid: Grid) -> Window:
    """Global pixel window of the bounding box of ``tiles``."""
    size = grid.tile_size
    x0, x1 = min(t.x for t in tiles), max(t.x for t in tiles)
    y0, y1 = min(t.y for t in tiles), max(t.y for t in tiles)
    return Window(x0 * size, y0 * size, (x1 - x0 + 1) * size, (y1 - y0 + 1) * size)


def _source_window(src, win: Window, grid: Grid):
    """Source pixel window (with margin) covering the global window ``win``, and the
    decimation factor (source pixels per read pixel); ``None`` when outside the source."""
    from rasterio.warp import transform as warp_transform

    res = resolution(grid.zoom, grid.tile_size)
    k = 21
    u = np.linspace(0.0, 1.0, k)
    # The boundary of the window, densified: a continuous projection maps the
    # inside of a region into the inside of the image of its boundary.
    cols = np.concatenate([u * win.width, np.full(k, win.width), u * win.width, np.zeros(k)]) + win.col
    rows = np.concatenate([np.zeros(k), u * win.height, np.full(k, win.height), u * win.height]) + win.row
    mx, my = cols * res - ORIGIN, ORIGIN - rows * res
    try:
        sx, sy = warp_transform(f"EPSG:{EPSG}", src.crs, mx.tolist(), my.tolist())
    except Exception:  # noqa: BLE001 - far outside the source CRS's domain
        return None, 1
    sx, sy = np.asarray(sx), np.asarray(sy)
    ok = np.isfinite(sx) & np.isfinite(sy)
    if not ok.any():
        return None, 1
    inv = ~src.transform
    pc, pr = inv @ (sx[ok], sy[ok])
    cmin, cmax, rmin, rmax = float(pc.min()), float(pc.max()), float(pr.min()), float(pr.max())
    # Source pixels per destination pixel; read at most 2x finer than the output.
    factor = min((cmax - cmin) / win.width, (rmax - rmin) / win.height)
    dec = max(1, int(factor // 2))
    pad = PAD * dec
    c0, c1 = max(0, math.floor(cmin) - pad), min(src.width, math.ceil(cmax) + pad)
    r0, r1 = max(0, math.floor(rmin) - pad), min(src.height, math.ceil(rmax) + pad)
    if c1 <= c0 or r1 <= r0:
        return None, 1
    from rasterio.windows import Window as RioWindow

    return RioWindow(c0, r0, c1 - c0, r1 - r0), dec


def warp_shard(src, shard: Tile, tiles: Sequence[Tile], grid: Grid, bands: int, resampling: str) -> np.ndarray:
    """The shard (bands, n, n) uint8 warped from the open dataset ``src``; only
    ``tiles`` (all inside ``shard``) are filled, every other pixel is 0."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    n = grid.shard_size
    out = np.zeros((bands, n, n), dtype="uint8")
    box = _tiles_bbox(tiles, grid)
    rwin, dec = _source_window(src, box, grid)
    if rwin is None:
        return out
    h, w = int(rwin.height), int(rwin.width)
    oh, ow = max(1, math.ceil(h / dec)), max(1, math.ceil(w / dec))
    data = src.read(
        indexes=list(range(1, bands + 1)),
        window=rwin,
        out_shape=(bands, oh, ow),
        resampling=Resampling.average if dec > 1 else Resampling.nearest,
    )
    src_transform = src.window_transform(rwin) @ Affine.scale(w / ow, h / oh)
    dst = np.zeros((bands, box.height, box.width), dtype="uint8")
    reproject(
        source=data,
        destination=dst,
        src_transform=src_transform,
        src_crs=src.crs,
        src_nodata=src.nodata,
        dst_transform=window_transform(box, grid.zoom, grid.tile_size),
        dst_crs=f"EPSG:{EPSG}",
        dst_nodata=0 if src.nodata is not None else None,
        resampling=Resampling[resampling],
        num_threads=1,
    )
    # Keep only the listed tiles.
    size = grid.tile_size
    keep = np.zeros((box.height // size, box.width // size), dtype=bool)
    for t in tiles:
        keep[t.y - box.row // size, t.x - box.col // size] = True
    dst *= np.kron(keep, np.ones((size, size), dtype=bool)).astype("uint8")[None]
    sw = shard_window(shard, grid)
    out[:, box.row - sw.row : box.row - sw.row + box.height, box.col - sw.col : box.col - sw.col + box.width] = dst
    return out


def build_from_geotiff(
    store,
    tiles: Sequence[Tile],
    path: str | os.PathLike,
    *,
    bands: int = 3,
    resampling: str = "bilinear",
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Warp ``path`` into layer ``imagery`` of ``store`` for every shard of ``tiles``.

    All checks (file, CRS, bands, dtype, overlap) run before the first shard
    is written. Shards are warped in parallel (at most ``workers`` at once,
    each holding about one shard of memory) and written atomically.
    Returns counts: ``shards``, ``tiles``, ``tiles_in_footprint``, ``tiles_empty``
    (listed tiles that came out all 0).
    """
    import rasterio
    from tqdm import tqdm

    if resampling not in RESAMPLING:
        raise ConfigError(f"imagery.resampling: '{resampling}' is not one of {', '.join(RESAMPLING)}")
    grid: Grid = store.grid
    info = inspect_geotiff(path, bands)
    inside = check_overlap(info, tiles, grid)
    groups = group_by_shard(tiles, grid)
    workers = max(1, min(workers, os.cpu_count() or 1, len(groups) or 1))
    tags = {"navml_source": "geotiff", "navml_file": Path(info.path).name, "navml_resampling": resampling}

    def one(shard: Tile) -> tuple[Tile, int]:
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB), rasterio.open(info.path) as src:
                arr = warp_shard(src, shard, groups[shard], grid, bands, resampling)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{info.path}: read failed while warping shard {shard.z}/{shard.x}/{shard.y} ({exc})") from exc
        size = grid.tile_size
        sw = shard_window(shard, grid)
        empty = 0
        for t in groups[shard]:
            r, c = t.y * size - sw.row, t.x * size - sw.col
            empty += not arr[:, r : r + size, c : c + size].any()
        store.write_shard(LAYER, shard, arr, tags=tags)
        return shard, empty

    empty = 0
    # rasterio warns NotGeoreferencedWarning for the in-memory arrays it wraps
    # inside reproject(); the georeferencing is passed explicitly, so hide it.
    with warnings.catch_warnings(), tqdm(total=len(tiles), unit="tile", desc="imagery (geotiff)", disable=None if progress else True) as bar:
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, s) for s in groups]
            try:
                for fut in futures:
                    shard, e = fut.result()
                    empty += e
                    bar.update(len(groups[shard]))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return {"source": "geotiff", "shards": len(groups), "tiles": len(tiles), "tiles_in_footprint": inside, "tiles_empty": empty}
