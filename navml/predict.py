"""Seamless batch prediction of a segmentation model over every tile of an AOI.

The fully convolutional model runs on big windows (by default a quarter of a
shard, 1024 x 1024 px) plus a *halo* of at least half its receptive field read
from the neighbouring tiles and shards; only the window's core is kept
(centre-crop). Every pixel is predicted exactly once, with at least the halo as
context on every side where the AOI continues, and windows start on the
model's stride grid, so the result equals running the model over the whole
mosaic at once: there are no seams at tile or shard borders. At the outer edge
of the AOI the window simply stops (the model's own zero padding), which saves
the halo where there is nothing to be seamless with.

Probabilities are written per shard as the ``probs`` layer of a
:class:`~navml.store.Store`: uint8, one band per class (``round(p * 255)``,
so 1.0 is 255), 0 outside the AOI tiles.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from navml.errors import ConfigError, InputError, ModelError
from navml.grid import Grid, Tile, Window, group_by_shard, shard_window
from navml.store import Store

#: Layer of the prediction store that holds the probabilities.
PROBS = "probs"
#: Default core size of a prediction window, pixels (memory grows with its square).
DEFAULT_WINDOW = 1024


@dataclass(frozen=True)
class Job:
    """One model call: ``core`` is kept, ``input`` (core + halo) is read and fed."""

    shard: Tile
    core: Window
    input: Window
    tiles: int  # AOI tiles inside the core


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


def from_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 0..255 back to float32 probabilities 0..1."""
    return np.asarray(values, dtype="float32") / 255.0


def prediction_halo(receptive_field: int, stride: int, halo: int | None = None) -> int:
    """Halo in pixels: at least half the receptive field, a multiple of ``stride``.

    ``halo`` (pixels) asks for more; asking for less than half the receptive
    field is a :class:`ConfigError` because the borders would show seams.
    """
    stride = max(1, int(stride))
    need = math.ceil(receptive_field / 2)
    if halo is None or halo <= 0:
        halo = need
    elif halo < need:
        raise ConfigError(
            f"predict.halo_px is {halo} but the model's receptive field needs at least {need} px; raise it or set 0 (auto)"
        )
    return int(math.ceil(halo / stride) * stride)


def plan_windows(tiles: Sequence[Tile], grid: Grid, window: int, halo: int, stride: int = 1) -> list[Job]:
    """Split the AOI into prediction windows, shard by shard.

    Each shard's AOI tiles are covered by tile-aligned cores of at most
    ``window`` px (rounded down to whole tiles); each core grows by ``halo`` px
    on every side where AOI tiles lie within the halo, and its size is rounded
    up to a multiple of ``stride``.
    """
    size = grid.tile_size
    per = max(1, min(grid.tiles_per_shard, window // size))
    present = {(t.x, t.y) for t in tiles}
    halo_tiles = math.ceil(halo / size)
    jobs = []
    for shard, members in group_by_shard(tiles, grid).items():
        xs = [t.x for t in members]
        ys = [t.y for t in members]
        x0, x1, y0, y1 = min(xs), max(xs) + 1, min(ys), max(ys) + 1
        for ty in range(y0, y1, per):
            for tx in range(x0, x1, per):
                cx1, cy1 = min(tx + per, x1), min(ty + per, y1)
                n_in = sum((x, y) in present for y in range(ty, cy1) for x in range(tx, cx1))
                if not n_in:
                    continue

                def any_in(ax0: int, ax1: int, ay0: int, ay1: int) -> bool:
                    return any((x, y) in present for y in range(ay0, ay1) for x in range(ax0, ax1))

                rows = (ty - halo_tiles, cy1 + halo_tiles)
                cols = (tx - halo_tiles, cx1 + halo_tiles)
                left = halo if halo and any_in(tx - halo_tiles, tx, *rows) else 0
                right = halo if halo and any_in(cx1, cx1 + halo_tiles, *rows) else 0
                top = halo if halo and any_in(*cols, ty - halo_tiles, ty) else 0
                bottom = halo if halo and any_in(*cols, cy1, cy1 + halo_tiles) else 0
                core = Window(tx * size, ty * size, (cx1 - tx) * size, (cy1 - ty) * size)
                w = core.width + left + right
                h = core.height + top + bottom
                w += -w % stride
                h += -h % stride
                jobs.append(Job(shard, core, Window(core.col - left, core.row - top, w, h), n_in))
    return jobs


def check_model(meta, grid: Grid, bands: int, classes: Sequence[str], where: str) -> None:
    """Refuse a model trained for another task, zoom, tile size, band count or class list."""
    if meta.task != "segmentation":
        raise ModelError(f"{where}: is a {meta.task} model; predict needs a segmentation model (data/models/seg)")
    if meta.tile_size != grid.tile_size:
        raise ModelError(
            f"{where}: model was trained on {meta.tile_size}-px tiles, the store has {grid.tile_size}-px tiles; retrain or set grid.tile_size: {meta.tile_size}"
        )
    meta.check_fits(zoom=grid.zoom, bands=bands, classes=list(classes), where=where)


def _flexible(model, bands: int):
    """The model with free input rows/cols (a fixed-size input layer is rebuilt)."""
    shape = tuple(model.inputs[0].shape)
    if shape[1] is None and shape[2] is None:
        return model
    import keras

    config = model.get_config()
    for layer in config.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            layer["config"]["batch_shape"] = [None, None, None, bands]
    try:
        flex = keras.Model.from_config(config)
        flex.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - any rebuild failure means the same to the user
        raise ModelError(f"model input is fixed at {shape[1:3]} px and cannot be widened ({exc}); build it with Input(shape=(None, None, bands))") from exc
    return flex


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
    model saved by :func:`navml.models.io.save_model`; ``classes`` the
    segmentation class names in registry order (the model must have the same).
    ``window`` is the core size of a model call in pixels; ``halo`` the context
    around it in pixels (None: half the receptive field). The layer is replaced
    as a whole when every shard is done; on error the old one stays.
    """
    from navml.models.io import load_model

    t_start = time.perf_counter()
    grid = store.grid
    if out.grid != grid:
        raise ConfigError(f"{out.root}: prediction store grid {tuple(out.grid)} differs from the imagery store's {tuple(grid)}")
    tiles = list(dict.fromkeys(tiles))
    if not tiles:
        raise InputError("predict: the tile list is empty; check the tile index (data/cover/tiles.csv)")
    bad = [t for t in tiles if t.z != grid.zoom]
    if bad:
        raise ConfigError(f"predict: tile {bad[0].z}/{bad[0].x}/{bad[0].y} is not at the store zoom {grid.zoom}; re-run cover with grid.zoom: {grid.zoom}")
    bands = store.count(layer)
    if not bands:
        raise InputError(f"{store.root / layer}: no {layer} shards; run the imagery stage first (dvc repro imagery)")
    groups = group_by_shard(tiles, grid)
    missing = [s for s in groups if not store.has(layer, s)]
    if missing:
        raise InputError(f"{store.path(layer, missing[0])}: imagery shard of {len(missing)} AOI shard(s) missing; re-run the imagery stage")
    if window < grid.tile_size:
        raise ConfigError(f"predict.window_px is {window}; it must be at least the tile size {grid.tile_size}")

    model, meta = load_model(model_dir)
    check_model(meta, grid, bands, classes, str(model_dir))
    model = _flexible(model, bands)
    halo = prediction_halo(meta.receptive_field, meta.stride, halo)
    jobs = plan_windows(tiles, grid, window, halo, meta.stride)

    work = Store(out.root, grid)
    tmp_layer = f".{PROBS}.partial"
    shutil.rmtree(work.root / tmp_layer, ignore_errors=True)
    n = grid.shard_size
    size = grid.tile_size
    n_cls = len(classes)
    tags = {"classes": ",".join(classes), "scale": "1/255", "model": Path(model_dir).name, "halo_px": halo}

    def read(job: Job) -> np.ndarray:
        x = store.read_window(layer, job.input, bands=bands)
        return np.moveaxis(x, 0, -1)[None].astype("float32")

    try:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, tqdm(
            total=len(tiles), desc="predict", unit="tile", disable=None if progress else True
        ) as bar:
            pending_write = None
            next_x = reader.submit(read, jobs[0])
            shard_arr = None
            current = None
            for i, job in enumerate(jobs):
                x = next_x.result()
                if i + 1 < len(jobs):
                    next_x = reader.submit(read, jobs[i + 1])
                y = model.predict_on_batch(x)
                y = np.asarray(y)
                if y.ndim != 4 or y.shape[-1] != n_cls + 1:
                    raise ModelError(f"{model_dir}: model output has shape {y.shape}; expected (batch, rows, cols, {n_cls + 1})")
                r0 = job.core.row - job.input.row
                c0 = job.core.col - job.input.col
                core = y[0, r0 : r0 + job.core.height, c0 : c0 + job.core.width, 1:]
                if job.shard != current:
                    if shard_arr is not None:
                        if pending_write is not None:
                            pending_write.result()
                        pending_write = writer.submit(work.write_shard, tmp_layer, current, shard_arr, tags)
                    current = job.shard
                    shard_arr = np.zeros((n_cls, n, n), dtype="uint8")
                sw = shard_window(job.shard, grid)
                rr, cc = job.core.row - sw.row, job.core.col - sw.col
                shard_arr[:, rr : rr + job.core.height, cc : cc + job.core.width] = np.moveaxis(to_uint8(core), -1, 0)
                bar.update(job.tiles)
                if i + 1 == len(jobs) or jobs[i + 1].shard != job.shard:
                    _keep_tiles(shard_arr, job.shard, groups[job.shard], grid)
            if pending_write is not None:
                pending_write.result()
            work.write_shard(tmp_layer, current, shard_arr, tags)
        _swap_layer(work.root, tmp_layer, PROBS)
    finally:
        shutil.rmtree(work.root / tmp_layer, ignore_errors=True)
    return PredictReport(
        tiles=len(tiles),
        shards=len(groups),
        windows=len(jobs),
        halo=halo,
        aoi_pixels=len(tiles) * size * size,
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


def _swap_layer(root: Path, tmp_layer: str, layer: str) -> None:
    """Replace ``root/layer`` by ``root/tmp_layer`` (old folder removed only after the swap)."""
    target = root / layer
    old = root / f".{layer}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(root / tmp_layer, target)
    shutil.rmtree(old, ignore_errors=True)
