"""The shard store: one GeoTIFF per shard and layer, tiles addressed by z/x/y.

A layer (``imagery``, ``masks``, ``probs`` ...) is a folder of Cloud-Optimized-
style GeoTIFFs, ``<root>/<layer>/<z>-<x>-<y>.tif``, one per shard, each on the
exact EPSG:3857 pixel grid of the tile zoom; a tile is a window of its shard.
DVC then tracks a few files per shard instead of one file per tile.
Pixels of a shard outside the area of interest stay 0.

*Valid-data mask*: a shard may carry a GDAL internal mask (a 1-bit band of the
GeoTIFF, read with :meth:`Store.read_valid`, shown by QGIS as transparency):
255 where the layer holds data, 0 where it holds none (outside the orthophoto's
footprint, nodata or transparent source pixels, outside the AOI tiles). The
pixel values there are 0. A shard without a mask is valid everywhere; a shard
that does not exist is valid nowhere. ``imagery`` shards carry one, and predict
copies it into ``probs``.

A stage replaces a layer as a whole: it writes into a hidden staging layer and
:meth:`Store.staged_layer` swaps the folders at the end, so an interrupted or
failed run leaves the previous layer exactly as it was.

*On S3*: a root ``s3://bucket/prefix`` keeps the same layout as objects, for
workers that share no disk (docs/cluster.md). Shards are read by GDAL
(``/vsis3/``, credentials from the usual AWS chain) and listed and written with
s3fs; a shard is built in a local temporary file and uploaded in one PUT, so
each object appears whole. A custom endpoint (MinIO, Ceph, moto) is the
standard ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), which navml hands
to GDAL as well (:func:`gdal_s3_options`). S3 cannot rename a folder: a staged
layer is copied over the old one object by object at the end (the old
layer stays intact when the run fails before that), then the objects the new
layer lacks are deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window as RioWindow

from navml.errors import InputError
from navml.geo.grid import (
    EPSG,
    Grid,
    Tile,
    Window,
    intersection,
    parse_tile,
    shard_window,
    shards_of_window,
    tile_key,
    tile_window,
    window_transform,
)
from navml.io import follow_umask

#: URL schemes of remote stores.
REMOTE = ("s3://",)


def is_remote(root: str | os.PathLike) -> bool:
    """Whether a store root is an object-store URL (``s3://bucket/prefix``) rather than a folder."""
    return str(root).startswith(REMOTE)


def gdal_s3_options(environ: dict[str, str] | None = None) -> dict[str, str]:
    """GDAL config options for ``/vsis3/`` from the AWS environment: the endpoint of ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` (``http://host:port``) as ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and path-style addressing.

    Nothing is set that the environment sets itself (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
    ``AWS_VIRTUAL_HOSTING``); without a custom endpoint only the listing on open is turned off.
    """
    from urllib.parse import urlsplit

    env = os.environ if environ is None else environ
    opts = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if url and "AWS_S3_ENDPOINT" not in env:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        opts["AWS_S3_ENDPOINT"] = parts.netloc
        opts.setdefault("AWS_HTTPS", "NO" if parts.scheme == "http" else "YES")
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return {k: v for k, v in opts.items() if k not in env}


class Store:
    """A folder (or S3 prefix) of shard GeoTIFFs on one :class:`~navml.geo.grid.Grid`."""

    def __init__(self, root: str | os.PathLike, grid: Grid):
        if is_remote(root):
            from upath import UPath

            # listings are not cached: other processes write the same prefix
            self.root = UPath(str(root).rstrip("/"), use_listings_cache=False)
        else:
            self.root = Path(root)
        self.grid = grid

    def __reduce__(self):
        # picklable for Dask workers: a path and a grid, no open file system
        return (type(self), (str(self.root), self.grid))

    @property
    def remote(self) -> bool:
        """Whether the store lives on S3."""
        return is_remote(self.root)

    def path(self, layer: str, shard: Tile) -> Path:
        """File of ``layer`` for ``shard`` (a ``UPath`` on S3)."""
        return self.root / layer / f"{tile_key(shard)}.tif"

    def _env(self):
        """The GDAL settings reads of this store need (S3 endpoint, no stale cache of rewritten objects)."""
        if not self.remote:
            return contextlib.nullcontext()
        vsi = "/vsis3/" + str(self.root).split("://", 1)[1]
        return rasterio.Env(CPL_VSIL_CURL_NON_CACHED=vsi, **gdal_s3_options())

    @contextmanager
    def open(self, path: Path):
        """``rasterio.open`` of one shard file of this store, read-only."""
        with self._env(), rasterio.open(str(path) if self.remote else path) as src:
            yield src

    def shards(self, layer: str) -> list[Tile]:
        """Shards present in ``layer``, sorted north to south, west to east."""
        folder = self.root / layer
        if self.remote:
            names = [p.rsplit("/", 1)[-1] for p in folder.fs.glob(f"{folder.path}/*.tif")]
            shards = [parse_tile(n[: -len(".tif")]) for n in names]
        else:
            if not folder.is_dir():
                return []
            shards = [parse_tile(p.stem) for p in folder.glob("*.tif")]
        return sorted(shards, key=lambda s: (s.y, s.x))

    def tags(self, layer: str, shard: Tile) -> dict[str, str]:
        """The GeoTIFF tags of one shard of ``layer``."""
        with self.open(self.path(layer, shard)) as src:
            return src.tags()

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

    def write_shard(
        self, layer: str, shard: Tile, array: np.ndarray, tags: dict | None = None, valid: np.ndarray | None = None
    ) -> Path:
        """Write ``array`` (bands, rows, cols) as the whole shard, atomically, mode 0o666 minus the umask.

        ``valid`` (rows, cols; bool or 0/255) is stored as the shard's internal
        valid-data mask; ``None`` writes no mask (valid everywhere).
        """
        if array.ndim == 2:
            array = array[None]
        n = self.grid.shard_size
        if array.shape[1:] != (n, n):
            raise ValueError(f"shard array is {array.shape[1:]}, expected {(n, n)}")
        if valid is not None and valid.shape != (n, n):
            raise ValueError(f"shard mask is {valid.shape}, expected {(n, n)}")
        target = self.path(layer, shard)
        if not self.remote:
            target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tif.part", dir=None if self.remote else target.parent)
        os.close(fd)
        try:
            profile = self.profile(shard, array.shape[0], str(array.dtype))
            mem = f"/vsimem/navml-{uuid.uuid4().hex}.tif"
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                # Built in memory, then copied in one pass (GDAL CreateCopy, blocks in order):
                # the file's layout, not only its pixels, then never depends on when GDAL's
                # process-wide block cache flushes, so the same shard is the same bytes.
                try:
                    with rasterio.open(mem, "w", **{**profile, "compress": None, "predictor": 1}) as dst:
                        dst.write(array)
                        if valid is not None:
                            dst.write_mask(np.where(np.asarray(valid) > 0, 255, 0).astype("uint8"))
                        if tags:
                            dst.update_tags(**{k: str(v) for k, v in tags.items()})
                    options = {k: profile[k] for k in ("tiled", "blockxsize", "blockysize", "compress", "predictor")}
                    rasterio.shutil.copy(mem, tmp, driver="GTiff", **options)
                finally:
                    if rasterio.shutil.exists(mem):
                        rasterio.shutil.delete(mem)
            if self.remote:
                target.fs.put_file(tmp, target.path)  # one PUT: the object appears whole
            else:
                follow_umask(tmp)
                os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def read_shard(self, layer: str, shard: Tile) -> np.ndarray:
        """The whole shard as (bands, rows, cols)."""
        path = self.path(layer, shard)
        try:
            with self.open(path) as src:
                return src.read()
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{path}: cannot read shard ({exc}); re-run the stage that writes '{layer}'") from exc

    def count(self, layer: str) -> int:
        """Band count of a layer (0 when it has no shard)."""
        shards = self.shards(layer)
        if not shards:
            return 0
        with self.open(self.path(layer, shards[0])) as src:
            return src.count

    def read_window(self, layer: str, window: Window, bands: int | None = None, fill: int = 0) -> np.ndarray:
        """Any global pixel window of ``layer``, read across shard borders.

        Parts of the window in shards that do not exist are ``fill``.
        Returns (bands, height, width).
        """
        with self.reader(layer) as r:
            return r.read_window(window, bands, fill)

    def read_valid(self, layer: str, window: Window) -> np.ndarray:
        """Valid-data mask (bool, height x width) of any global pixel window of ``layer``.

        True where the layer holds data: inside an existing shard and not masked
        by its internal mask (a shard without one is valid everywhere).
        """
        with self.reader(layer) as r:
            return r.read_valid(window)

    def reader(self, layer: str, max_open: int = 16) -> WindowReader:
        """A :class:`WindowReader` of ``layer``: many windows read with each shard file opened once (use ``with``)."""
        return WindowReader(self, layer, max_open)

    def read_valid_tile(self, layer: str, tile: Tile, halo: int = 0) -> np.ndarray:
        """Valid-data mask (bool, size x size) of one tile of ``layer``, optionally with ``halo`` pixels around it."""
        w = tile_window(tile, self.grid.tile_size)
        if halo:
            w = Window(w.col - halo, w.row - halo, w.width + 2 * halo, w.height + 2 * halo)
        return self.read_valid(layer, w)

    @contextmanager
    def staged_layer(self, layer: str) -> Iterator[str]:
        """Build a new ``layer`` as a whole: yields the name of a hidden staging layer to write to.

        On normal exit the staging folder replaces ``<root>/<layer>`` (the old
        folder is renamed aside first and removed only after the new one is in
        place); on any error, Ctrl-C included, the staging folder is removed
        and the old layer is left exactly as it was. A run killed between the
        two renames is repaired at the next start (the old folder comes back).
        """
        if self.remote:
            with self._staged_remote(layer) as staging:
                yield staging
            return
        target = self.root / layer
        staging = f".{layer}.partial"
        old = self.root / f".{layer}.old"
        if not target.exists() and old.exists():
            os.replace(old, target)
        shutil.rmtree(self.root / staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        new_root = not self.root.exists()
        (self.root / staging).mkdir(parents=True)
        done = False
        try:
            yield staging
            if target.exists():
                os.replace(target, old)
            os.replace(self.root / staging, target)
            shutil.rmtree(old, ignore_errors=True)
            done = True
        finally:
            shutil.rmtree(self.root / staging, ignore_errors=True)
            if new_root and not done and not any(self.root.iterdir()):
                self.root.rmdir()  # a failed first run leaves no empty store behind

    @contextmanager
    def _staged_remote(self, layer: str) -> Iterator[str]:
        """:meth:`staged_layer` on S3: objects copied over the old layer at the end, then the ones it lacks deleted."""
        fs = self.root.fs
        base = self.root.path
        staging = f".{layer}.partial"

        self.remove_layer(staging)
        try:
            yield staging
            new = {p.rsplit("/", 1)[-1] for p in fs.glob(f"{base}/{staging}/*")}
            for name in sorted(new):
                fs.copy(f"{base}/{staging}/{name}", f"{base}/{layer}/{name}")
            stale = [p for p in fs.glob(f"{base}/{layer}/*") if p.rsplit("/", 1)[-1] not in new]
            if stale:
                fs.rm(stale)
        finally:
            self.remove_layer(staging)

    def remove_layer(self, layer: str) -> None:
        """Delete ``layer`` (a folder or S3 prefix, nested layers included) if it exists."""
        if self.remote:
            fs, prefix = self.root.fs, f"{self.root.path}/{layer}"
            if fs.exists(prefix):
                fs.rm(prefix, recursive=True)
        else:
            shutil.rmtree(self.root / layer, ignore_errors=True)

    def read_tile(self, layer: str, tile: Tile, halo: int = 0) -> np.ndarray:
        """One tile of ``layer`` (bands, size, size), optionally with ``halo`` pixels around it."""
        w = tile_window(tile, self.grid.tile_size)
        if halo:
            w = Window(w.col - halo, w.row - halo, w.width + 2 * halo, w.height + 2 * halo)
        return self.read_window(layer, w)


class WindowReader:
    """Windows of one layer of a :class:`Store` (:meth:`Store.read_window`, :meth:`Store.read_valid`), read with
    each shard file opened once and kept open (the ``max_open`` last used ones) until :meth:`close` (or the end
    of a ``with`` block).

    Windows that share shards (a halo across the neighbour's core, the data and the valid mask of one
    window) then share the open datasets, and the blocks GDAL decoded for one window stay in its block
    cache for the next one instead of being decoded again; closing the least recently used dataset
    frees its blocks, so the memory held is at most ``max_open`` decoded shards. The pixels are those of
    the store's own reads. One reader belongs to one thread (a GDAL dataset is not thread-safe) and to one
    pass over a layer: files rewritten while it is open are not seen.
    """

    def __init__(self, store: Store, layer: str, max_open: int = 16):
        self.store = store
        self.layer = layer
        self.max_open = max(1, int(max_open))
        self._open: OrderedDict[Tile, object] = OrderedDict()  # shard -> open dataset, least recently used first
        self._missing: set[Tile] = set()  # shards that do not exist
        self._bands: int | None = None

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every shard file still open."""
        datasets, self._open = self._open, OrderedDict()
        for src in datasets.values():
            src.close()

    def _dataset(self, shard: Tile):
        """The open dataset of ``shard`` (None when it does not exist)."""
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        if shard in self._missing:
            return None
        path = self.store.path(self.layer, shard)
        if not path.exists():
            self._missing.add(shard)
            return None
        try:
            with self.store._env():
                src = rasterio.open(str(path) if self.store.remote else path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{path}: corrupt shard ({exc}); delete it and re-run the stage that writes '{self.layer}'") from exc
        self._open[shard] = src
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return src

    def _parts(self, window: Window, read) -> Iterator[tuple[Window, np.ndarray]]:
        """``(part window, read(src, rasterio window))`` for each existing shard of the layer that ``window`` overlaps."""
        g = self.store.grid
        for shard in shards_of_window(window, g):
            src = self._dataset(shard)
            if src is None:
                continue
            sw = shard_window(shard, g)
            part_win = intersection(window, sw)
            try:
                with self.store._env():
                    part = read(src, RioWindow(part_win.col - sw.col, part_win.row - sw.row, part_win.width, part_win.height))
            except rasterio.errors.RasterioIOError as exc:
                path = self.store.path(self.layer, shard)
                raise InputError(f"{path}: corrupt shard ({exc}); delete it and re-run the stage that writes '{self.layer}'") from exc
            yield part_win, part

    def read_window(self, window: Window, bands: int | None = None, fill: int = 0) -> np.ndarray:
        """:meth:`Store.read_window` of this reader's layer."""
        out = None
        for part_win, part in self._parts(window, lambda src, w: src.read(window=w)):
            if out is None:
                out = np.full((part.shape[0], window.height, window.width), fill, dtype=part.dtype)
            r, c = part_win.row - window.row, part_win.col - window.col
            out[:, r : r + part_win.height, c : c + part_win.width] = part
        if out is None:
            if bands is None and self._bands is None:
                self._bands = self.store.count(self.layer) or 1
            out = np.full((bands or self._bands, window.height, window.width), fill, dtype="uint8")
        return out

    def read_valid(self, window: Window) -> np.ndarray:
        """:meth:`Store.read_valid` of this reader's layer."""
        out = np.zeros((window.height, window.width), dtype=bool)
        for part_win, part in self._parts(window, lambda src, w: src.dataset_mask(window=w)):
            r, c = part_win.row - window.row, part_win.col - window.col
            out[r : r + part_win.height, c : c + part_win.width] = part > 0
        return out
