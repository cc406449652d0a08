"""Seamless batch prediction of a segmentation model over every tile of an AOI.

The fully convolutional model runs on big windows (cores of up to
``window`` px, 2048 by default, plus a *halo* of at least half its receptive
field read across tile and shard borders); only the window's core is kept
(centre-crop). Every pixel is predicted exactly once, with at least the halo
as context on every side where the AOI continues, and windows start on the
model's stride grid, so the result equals running the model over the whole
mosaic at once: no seams at tile or shard borders. At the outer edge of the
AOI the window stops (the model's own zero padding, as on a training tile),
which saves the halo where there is nothing to be seamless with.

Windows are laid out over the AOI, not per shard: the AOI is cut into
vertical strips :data:`STRIP_SHARDS` shards wide (aligned to shards), each
strip's tile extent into as few, nearly equal windows as fit ``window``.
Fewer windows means less halo (the synthetic city: 4 windows, 1.14 pixels
fed per AOI pixel, against 9 and 1.28 with one window per shard). Shards
are written as soon as the last window touching them is done, so memory
holds at most two rows of shards of one strip plus one window.

Before running, batch normalizations are folded into the preceding
convolutions (:func:`fold_batchnorm`, exact up to float rounding) and the
model is compiled once for any window shape. The windowing, the folding and
the compiled runner are shared with the detector (:mod:`navml.models.inference`).

Probabilities are written per shard as the ``probs`` layer of a
:class:`~navml.geo.store.Store`: uint8, one band per class (``round(p * 255)``,
so 1.0 is 255), 0 outside the AOI tiles.

No imagery, no prediction: where the imagery's valid-data mask says there is
no imagery (outside an orthophoto's footprint, its nodata, transparent XYZ
pixels) the probabilities are 0, whatever the model outputs on the black
frame, and the ``probs`` shards carry the same valid-data mask, so
:mod:`navml.segment.vectorize` never draws a polygon there. A window without a
single valid pixel is not run at all.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from navml.errors import ConfigError, ModelError
from navml.geo.grid import Grid, Tile, intersection, shard_window, shards_of_window
from navml.geo.store import Store
from navml.models.inference import (  # noqa: F401 - the windowing is shared; re-exported for existing callers
    DEFAULT_WINDOW,
    STRIP_SHARDS,
    Job,
    check_inputs,
    flexible,
    fold_batchnorm,
    plan_windows,
    prediction_halo,
    runner,
)

#: Layer of the prediction store that holds the probabilities.
PROBS = "probs"


@dataclass(frozen=True)
class PredictReport:
    """What :func:`predict_store` did."""

    tiles: int
    shards: int
    windows: int
    halo: int  # pixels
    aoi_pixels: int  # pixels of the AOI tiles
    input_pixels: int  # pixels fed to the model, halo included
    seconds: float

    @property
    def overhead(self) -> float:
        """Pixels fed to the model per AOI pixel (1.0 = no halo cost)."""
        return self.input_pixels / max(1, self.aoi_pixels)


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 as uint8 0..255 (rounded; 1.0 -> 255, never wraps)."""
    return np.clip(np.rint(np.asarray(probs, dtype="float32") * 255.0), 0, 255).astype("uint8")


def check_model(meta, grid: Grid, bands: int, classes: Sequence[str], where: str) -> None:
    """Refuse a model trained for another task, zoom, tile size, band count or class list."""
    if meta.task != "segmentation":
        raise ModelError(f"{where}: is a {meta.task} model; predict needs a segmentation model (data/models/seg)")
    if meta.tile_size != grid.tile_size:
        raise ModelError(
            f"{where}: model was trained on {meta.tile_size}-px tiles, the store has {grid.tile_size}-px tiles; retrain or set grid.tile_size: {meta.tile_size}"
        )
    meta.check_fits(zoom=grid.zoom, bands=bands, classes=list(classes), where=where)


def _check_inputs(store: Store, tiles: Sequence[Tile], out: Store, window: int, layer: str) -> tuple[list[Tile], int, dict[Tile, list[Tile]]]:
    """The distinct tiles, the imagery band count and the tiles per shard; raises on anything unusable."""
    if out.grid != store.grid:
        raise ConfigError(f"{out.root}: prediction store grid {tuple(out.grid)} differs from the imagery store's {tuple(store.grid)}")
    return check_inputs(store, tiles, window, layer)


def predict_store(
    store: Store,
    tiles: Sequence[Tile],
    model_dir: str | os.PathLike,
    out: Store,
    classes: Sequence[str],
    *,
    window: int = DEFAULT_WINDOW,
    halo: int | None = None,
    layer: str = "imagery",
    progress: bool = True,
) -> PredictReport:
    """Predict class probabilities for every tile in ``tiles`` into ``out``'s ``probs`` layer.

    ``store`` holds the ``imagery`` layer (uint8, bands first); ``model_dir`` a
    model folder saved by :func:`navml.models.io.save_model`; ``classes`` the
    segmentation class names in registry order (the model must have the same).
    ``window`` is the largest core of one model call in pixels (memory grows
    with its square); ``halo`` the context around it in pixels (None: half the
    receptive field). The layer is replaced as a whole when every shard is
    done; on error the old one stays. The inputs are checked before the model
    is loaded.
    """
    from navml.models.io import load_model

    _check_inputs(store, tiles, out, window, layer)  # before the slow model load (and again, cheaply, below)
    model, meta = load_model(model_dir)
    return predict_with_model(store, tiles, model, meta, out, classes, window=window, halo=halo, layer=layer, progress=progress, where=str(model_dir))


def predict_with_model(
    store: Store,
    tiles: Sequence[Tile],
    model,
    meta,
    out: Store,
    classes: Sequence[str],
    *,
    window: int = DEFAULT_WINDOW,
    halo: int | None = None,
    layer: str = "imagery",
    progress: bool = True,
    where: str = "model",
) -> PredictReport:
    """:func:`predict_store` with a model already in memory (``keras.Model`` and its ``ModelMeta``);
    ``where`` names it in errors and in the shards' tags."""
    t_start = time.perf_counter()
    tiles, bands, groups = _check_inputs(store, tiles, out, window, layer)
    grid = store.grid
    check_model(meta, grid, bands, classes, where)
    halo = prediction_halo(meta.receptive_field, meta.stride, halo)
    jobs = plan_windows(tiles, grid, window, halo, meta.stride)
    run = runner(fold_batchnorm(flexible(model, bands)), bands)

    work = Store(out.root, grid)
    n = grid.shard_size
    n_cls = len(classes)
    tags = {"classes": ",".join(classes), "scale": "1/255", "model": Path(where).name, "halo_px": halo}
    remaining = Counter(s for j in jobs for s in shards_of_window(j.core, grid) if s in groups)
    buffers: dict[Tile, tuple[np.ndarray, np.ndarray]] = {}

    def read(job: Job) -> tuple[np.ndarray | None, np.ndarray]:
        """The model input of ``job`` (None when its core has no imagery at all) and the core's valid-data mask."""
        valid = store.read_valid(layer, job.core)
        if not valid.any():
            return None, valid
        x = store.read_window(layer, job.input, bands=bands)
        return np.moveaxis(x, 0, -1)[None].astype("float32"), valid

    with work.staged_layer(PROBS) as tmp_layer, ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, tqdm(
        total=len(tiles), desc="predict", unit="tile", disable=None if progress else True
    ) as bar:
        writes: deque[Future] = deque()
        next_x = reader.submit(read, jobs[0])
        for i, job in enumerate(jobs):
            x, valid = next_x.result()
            if i + 1 < len(jobs):
                next_x = reader.submit(read, jobs[i + 1])
            if x is None:  # no imagery in the whole core: nothing to predict
                core = np.zeros((n_cls, job.core.height, job.core.width), dtype="uint8")
            else:
                y = run(x)
                if y.ndim != 4 or y.shape[-1] != n_cls + 1:
                    raise ModelError(f"{where}: model output has shape {y.shape}; expected (batch, rows, cols, {n_cls + 1})")
                r0 = job.core.row - job.input.row
                c0 = job.core.col - job.input.col
                core = np.moveaxis(to_uint8(y[0, r0 : r0 + job.core.height, c0 : c0 + job.core.width, 1:]), -1, 0)
                core *= valid[None]
                del x, y
            for shard in shards_of_window(job.core, grid):
                if shard not in groups:
                    continue
                sw = shard_window(shard, grid)
                part = intersection(job.core, sw)
                buf, ok = buffers.setdefault(shard, (np.zeros((n_cls, n, n), dtype="uint8"), np.zeros((n, n), dtype=bool)))
                r, c = part.row - job.core.row, part.col - job.core.col
                rows = slice(part.row - sw.row, part.row - sw.row + part.height)
                cols = slice(part.col - sw.col, part.col - sw.col + part.width)
                buf[:, rows, cols] = core[:, r : r + part.height, c : c + part.width]
                ok[rows, cols] = valid[r : r + part.height, c : c + part.width]
                remaining[shard] -= 1
                if remaining[shard] == 0:
                    done, done_ok = buffers.pop(shard)
                    _keep_tiles(done, shard, groups[shard], grid)
                    _keep_tiles(done_ok[None], shard, groups[shard], grid)
                    writes.append(writer.submit(work.write_shard, tmp_layer, shard, done, tags, done_ok))
                    while len(writes) > 3:  # at most 3 finished shards wait for the disk
                        writes.popleft().result()  # re-raises a failed write
            bar.update(job.tiles)
        while writes:
            writes.popleft().result()
    return PredictReport(
        tiles=len(tiles),
        shards=len(groups),
        windows=len(jobs),
        halo=halo,
        aoi_pixels=len(tiles) * grid.tile_size**2,
        input_pixels=sum(j.input.width * j.input.height for j in jobs),
        seconds=time.perf_counter() - t_start,
    )


def _keep_tiles(arr: np.ndarray, shard: Tile, members: Sequence[Tile], grid: Grid) -> None:
    """Zero the pixels of ``arr`` (bands, n, n) outside the AOI tiles of ``shard``."""
    k, size = grid.tiles_per_shard, grid.tile_size
    keep = np.zeros((k, k), dtype=bool)
    for t in members:
        keep[t.y - shard.y * k, t.x - shard.x * k] = True
    if keep.all():
        return
    full = np.repeat(np.repeat(keep, size, axis=0), size, axis=1)
    arr[:, ~full] = 0
