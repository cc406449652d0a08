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
from contextlib import contextmanager, nullcontext
from collections.abc import Sequence
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
#: only adds memory (GDAL's default is 5 % of RAM). Passed in bytes: rasterio hands
#: a small number to GDAL as bytes (64 meant a 64-byte cache).
GDAL_CACHEMAX_MB = 16


#: Ways to bring the source's values to 8 bit (``imagery.stretch``).
STRETCHES = ("none", "percentile")
#: Default ``imagery.percentiles``: the part of each band's histogram mapped onto 0..255.
DEFAULT_PERCENTILES = (2.0, 98.0)
#: Longest side of the decimated read the percentiles are computed from, pixels.
SAMPLE_PX = 1024
#: A warped pixel is valid when at least this share of its resampling kernel had valid source pixels.
MIN_COVER = 0.5


@dataclass(frozen=True)
class SourceInfo:
    """What the checks learnt about a GeoTIFF before anything is written."""

    path: str
    crs: str
    bands: int
    #: Footprint in WGS84 degrees: west, south, east, north.
    lonlat_bounds: tuple[float, float, float, float]
    #: Source bands read into the store, 1-based, in store order.
    band_indexes: tuple[int, ...] = (1, 2, 3)
    #: Per store band, the source values mapped to 0 and 255 (``None``: values kept as they are).
    scale: tuple[tuple[float, float], ...] | None = None


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("/vsi")


@contextmanager
def open_source(path: str):
    """``rasterio.open`` of a source GeoTIFF, on S3 (``s3://``, ``/vsis3/``) with the AWS endpoint settings of
    :func:`navml.geo.store.gdal_s3_options`."""
    import rasterio

    from navml.geo.store import gdal_s3_options

    s3 = path.startswith(("s3://", "/vsis3/"))
    with rasterio.Env(**gdal_s3_options()) if s3 else nullcontext(), rasterio.open(path) as src:
        yield src


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


def band_percentiles(src, band_indexes: Sequence[int], percentiles: Sequence[float]) -> list[tuple[float, float]]:
    """Per band of ``band_indexes``, the ``percentiles`` (low, high) of its valid pixels, from one decimated
    read of the whole source (at most :data:`SAMPLE_PX` px a side; a COG's overviews serve it).

    Computed once per source, so every shard is stretched the same way. A band
    whose two values coincide gets ``high = low + 1``. Raises :class:`InputError`
    when the source has no valid pixel.
    """
    scale = max(1.0, max(src.width, src.height) / SAMPLE_PX)
    shape = (len(band_indexes), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
    sample = src.read(list(band_indexes), out_shape=shape, masked=True)
    out = []
    for i, b in enumerate(band_indexes):
        values = sample[i].compressed().astype("float64")
        values = values[np.isfinite(values)]
        if not values.size:
            raise InputError(f"{src.name}: band {b} has no valid pixel (all nodata); check the file or imagery.band_indexes")
        lo, hi = (float(v) for v in np.percentile(values, list(percentiles)))
        out.append((lo, hi if hi > lo else lo + 1.0))
    return out


def _fmt(b: Sequence[float]) -> str:
    return f"lon {b[0]:.6f}..{b[2]:.6f}, lat {b[1]:.6f}..{b[3]:.6f}"


def inspect_geotiff(
    path: str | os.PathLike,
    bands: int = 3,
    *,
    band_indexes: Sequence[int] | None = None,
    stretch: str = "none",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> SourceInfo:
    """Open ``path`` and check it can feed the store; raises :class:`InputError`.

    Checks: the file exists and is a raster GDAL reads, has a geotransform and
    a CRS; then, reported together in one message, that the bands to read
    exist (``band_indexes``, 1-based, default the first ``bands``) and that
    their pixels are 8-bit unless ``stretch`` is ``"percentile"``. With a
    stretch, the per-band ``percentiles`` are computed here, once.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds

    name = str(path)
    if not _is_remote(name) and not Path(name).is_file():
        raise InputError(f"{name}: GeoTIFF not found; check imagery.geotiff in params.yaml")
    wanted = tuple(int(b) for b in band_indexes) if band_indexes else tuple(range(1, bands + 1))
    try:
        with open_source(name) as src:
            if src.transform.is_identity:
                raise InputError(
                    f"{name}: GeoTIFF has no geotransform (its pixels are not placed on the ground); give it one with "
                    f"gdal_edit.py -a_ullr followed by its west north east south coordinates, or a world file ({Path(name).stem}.tfw) beside it"
                )
            if src.crs is None:
                raise InputError(f"{name}: GeoTIFF has no CRS; {_crs_advice(name, _corners(src))}")
            problems = []
            present = [b for b in wanted if b <= src.count]
            if len(present) < len(wanted):
                if band_indexes:
                    problems.append(
                        f"imagery.band_indexes {list(wanted)} asks for band(s) {[b for b in wanted if b > src.count]} "
                        f"but the file has {src.count} band(s) (numbered 1..{src.count})"
                    )
                else:
                    problems.append(
                        f"has {src.count} band(s), imagery needs {bands}; set imagery.bands: {src.count} and train.bands: {src.count}, "
                        f"or pick {bands} bands with imagery.band_indexes"
                    )
            dtypes = sorted({src.dtypes[b - 1] for b in present})
            scale = None
            if stretch == "percentile" and present:
                if len(present) == len(wanted):
                    scale = tuple(band_percentiles(src, wanted, percentiles))
            elif present and dtypes != ["uint8"]:
                lo, hi = DEFAULT_PERCENTILES
                ranges = band_percentiles(src, present, DEFAULT_PERCENTILES)
                shown = ", ".join(f"band {b}: {a:g}..{z:g}" for b, (a, z) in zip(present, ranges))
                problems.append(
                    f"pixels are {'/'.join(dtypes)}, imagery is 8-bit; set imagery.stretch: percentile to map each band's "
                    f"{lo:g}..{hi:g} percentiles onto 0..255 ({shown})"
                )
            if problems:
                raise InputError(f"{name}: " + "; ".join(problems))
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
    return SourceInfo(name, crs, count, (west, max(south, -85.0511), east, min(north, 85.0511)), wanted, scale)


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


def to_uint8(values: np.ndarray, scale: Sequence[tuple[float, float]] | None) -> np.ndarray:
    """Warped values (bands, rows, cols) as uint8: each band's ``scale`` (low, high) mapped linearly onto
    0..255 and clipped; without ``scale`` the values are rounded and clipped to 0..255."""
    v = np.asarray(values, dtype="float32")
    if scale is not None:
        lo = np.array([a for a, _ in scale], dtype="float32")[:, None, None]
        hi = np.array([b for _, b in scale], dtype="float32")[:, None, None]
        v = (v - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(v), 0, 255).astype("uint8")


def warp_shard(
    src, shard: Tile, tiles: Sequence[Tile], grid: Grid, band_indexes: Sequence[int], resampling: str,
    scale: Sequence[tuple[float, float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The shard warped from the open dataset ``src``: uint8 (bands, n, n) of ``band_indexes``
    (stretched by ``scale``, see :func:`to_uint8`) and its valid-data mask (bool, n, n).

    Valid means: inside a listed tile (all inside ``shard``) and covered by
    valid source pixels (the source's nodata, alpha band or mask, as GDAL's
    dataset mask gives it; at least :data:`MIN_COVER` of the resampling
    kernel). Every other pixel is 0 and invalid.
    """
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    n = grid.shard_size
    k = len(band_indexes)
    out = np.zeros((k, n, n), dtype="uint8")
    valid = np.zeros((n, n), dtype=bool)
    box = _tiles_bbox(tiles, grid)
    rwin, dec = _source_window(src, box, grid)
    if rwin is None:
        return out, valid
    h, w = int(rwin.height), int(rwin.width)
    oh, ow = max(1, math.ceil(h / dec)), max(1, math.ceil(w / dec))
    # Warped in the source's own type (uint8 stays uint8: memory as for a plain RGB warp).
    dtype = np.result_type(*(src.dtypes[b - 1] for b in band_indexes))
    if dtype == np.int8:  # the alpha band's 255 needs more room
        dtype = np.dtype("int16")
    data = np.empty((k + 1, oh, ow), dtype=dtype)
    data[:k] = src.read(
        indexes=list(band_indexes),
        window=rwin,
        out_shape=(k, oh, ow),
        resampling=Resampling.average if dec > 1 else Resampling.nearest,
        out_dtype=dtype,
    )
    # The source's valid pixels (nodata, alpha band or internal mask) travel as an alpha band:
    # the warper then never blends invalid pixels in, and writes the coverage of each output pixel.
    # Full alpha is GDAL's default for the type: 65535 for uint16, 32767 for int16, else 255.
    full = {np.dtype("uint16"): 65535, np.dtype("int16"): 32767}.get(np.dtype(dtype), 255)
    mask = src.dataset_mask(window=rwin, out_shape=(oh, ow))
    data[k] = np.where(mask > 0, full, 0)
    src_transform = src.window_transform(rwin) @ Affine.scale(w / ow, h / oh)
    dst = np.zeros((k + 1, box.height, box.width), dtype=dtype)
    reproject(
        source=data,
        destination=dst,
        src_transform=src_transform,
        src_crs=src.crs,
        src_alpha=k + 1,
        dst_transform=window_transform(box, grid.zoom, grid.tile_size),
        dst_crs=f"EPSG:{EPSG}",
        dst_alpha=k + 1,
        resampling=Resampling[resampling],
        num_threads=1,
        init_dest_nodata=False,
    )
    del data
    # Keep only the listed tiles.
    size = grid.tile_size
    keep = np.zeros((box.height // size, box.width // size), dtype=bool)
    for t in tiles:
        keep[t.y - box.row // size, t.x - box.col // size] = True
    ok = np.kron(keep, np.ones((size, size), dtype=bool)) & (dst[k] >= full * MIN_COVER)
    img = (dst[:k] if scale is None and dst.dtype == np.uint8 else to_uint8(dst[:k], scale)) * ok[None]
    sw = shard_window(shard, grid)
    r0, c0 = box.row - sw.row, box.col - sw.col
    out[:, r0 : r0 + box.height, c0 : c0 + box.width] = img
    valid[r0 : r0 + box.height, c0 : c0 + box.width] = ok
    return out, valid


@dataclass(frozen=True)
class WarpTask:
    """One shard of :func:`build_from_geotiff`, as a task of :func:`navml.geo.parallel.map_shards` (picklable:
    the source and the store are paths; the task opens the GeoTIFF itself, so no GDAL handle is shared)."""

    info: SourceInfo
    shard: Tile
    tiles: tuple[Tile, ...]
    store: object  # navml.geo.store.Store
    layer: str  # the staging layer written to
    resampling: str
    tags: tuple[tuple[str, str], ...]
    write: bool  # write the shard here (True) or send it back to the client


def warp_task(task: WarpTask) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
    """Warp one shard; write it (``task.write``) or return it. Returns the listed tiles without a valid pixel and
    ``None`` or the ``(pixels, valid mask)`` to write."""
    import rasterio

    # rasterio warns NotGeoreferencedWarning for the in-memory arrays it wraps inside reproject();
    # the georeferencing is passed explicitly
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    grid: Grid = task.store.grid
    info = task.info
    try:
        with open_source(info.path) as src:
            arr, valid = warp_shard(src, task.shard, task.tiles, grid, info.band_indexes, task.resampling, info.scale)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{info.path}: read failed while warping shard {task.shard.z}/{task.shard.x}/{task.shard.y} ({exc})") from exc
    size = grid.tile_size
    sw = shard_window(task.shard, grid)
    empty = 0
    for t in task.tiles:
        r, c = t.y * size - sw.row, t.x * size - sw.col
        empty += not valid[r : r + size, c : c + size].any()
    if not task.write:
        return empty, (arr, valid)
    task.store.write_shard(task.layer, task.shard, arr, tags=dict(task.tags), valid=valid)
    return empty, None


def build_from_geotiff(
    store,
    tiles: Sequence[Tile],
    path: str | os.PathLike,
    *,
    bands: int = 3,
    band_indexes: Sequence[int] | None = None,
    stretch: str = "none",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    resampling: str = "bilinear",
    workers: int = 2,
    progress: bool = True,
    scheduler=None,
) -> dict:
    """Warp ``path`` into layer ``imagery`` of ``store`` for every shard of ``tiles``.

    ``band_indexes`` (1-based; default the first ``bands``) are read, brought
    to 8 bit by ``stretch`` (``"none"``: the source must be uint8;
    ``"percentile"``: each band's ``percentiles`` of the whole source, computed
    once, map onto 0..255). Each shard carries the valid-data mask of the
    source (see :func:`warp_shard`).

    All checks (file, CRS, bands, dtype, overlap) run before the first shard
    is written. Each shard is a task (:func:`warp_task`, about one shard of
    memory) of :func:`navml.geo.parallel.map_shards` where ``scheduler`` says
    (a name, an address or a :class:`~navml.geo.parallel.Plan`); without one,
    ``workers`` shards at once on threads of this process. The shards go to a
    staging layer that replaces the old layer as a whole at the end (an error
    leaves the old one); a task writes its shard itself unless the workers may
    not share the store's disk (:func:`navml.geo.parallel.writes_on_workers`).
    On a cluster, ``path`` must be readable by the workers (a shared disk or
    ``/vsis3/``, ``s3://``, ``https://``). Returns counts: ``shards``,
    ``tiles``, ``tiles_in_footprint``, ``tiles_empty`` (listed tiles without a
    single valid pixel).
    """
    import rasterio

    from navml.geo.parallel import Plan, map_shards, resolve_scheduler, writes_on_workers

    if resampling not in RESAMPLING:
        raise ConfigError(f"imagery.resampling: '{resampling}' is not one of {', '.join(RESAMPLING)}")
    grid: Grid = store.grid
    info = inspect_geotiff(path, bands, band_indexes=band_indexes, stretch=stretch, percentiles=percentiles)
    inside = check_overlap(info, tiles, grid)
    groups = group_by_shard(tiles, grid)
    plan = resolve_scheduler(scheduler)
    if plan.serial:  # in this process: imagery.workers shards at once
        plan = Plan("threads", max(1, min(workers, os.cpu_count() or 1, len(groups) or 1)))
    write = writes_on_workers(plan, store.root)
    tags = {
        "navml_source": "geotiff",
        "navml_file": Path(info.path).name,
        "navml_resampling": resampling,
        "navml_band_indexes": ",".join(map(str, info.band_indexes)),
        "navml_stretch": stretch,
    }
    if info.scale is not None:
        tags["navml_percentiles"] = ",".join(f"{v:g}" for v in percentiles)
        tags["navml_scale"] = ";".join(f"{lo:g},{hi:g}" for lo, hi in info.scale)

    empty = 0
    # GDAL_CACHEMAX resizes GDAL's one, process-wide block cache: set it once, here, around
    # all the threads (set per thread, a resize under another thread's reads and writes
    # corrupts pixels of the shards). Dask workers keep their own setting.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB * 2**20), store.staged_layer(LAYER) as staging:
        tasks = [WarpTask(info, s, tuple(ts), store, staging, resampling, tuple(tags.items()), write) for s, ts in groups.items()]
        for task, (e, shard) in zip(tasks, map_shards(
            warp_task, tasks, scheduler=plan, desc="imagery (geotiff)", unit="tile", weights=[len(t.tiles) for t in tasks],
            in_flight=plan.workers if plan.mode == "threads" else None, progress=progress,
        )):
            empty += e
            if shard is not None:
                store.write_shard(staging, task.shard, shard[0], tags=tags, valid=shard[1])
    return {"source": "geotiff", "shards": len(groups), "tiles": len(tiles), "tiles_in_footprint": inside, "tiles_empty": empty}
