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

Where the windows run is the caller's (``scheduler`` / ``workers``,
:func:`navml.geo.parallel.map_shards`): in this process by default, else each
window is a task that reads its input by path and runs the model, sent once to
each worker and built once per worker, with the client's TensorFlow thread
count (the last float bit depends on it). Where the workers share the store
(threads, a local cluster, a store on S3:
:func:`navml.geo.parallel.writes_on_workers`) the tasks write the shards
themselves (:func:`predict_and_write`): a shard only one window touches is
written whole by that window's task; a window writes its part of a shard it
shares as a *piece* (a hidden layer, 0 outside the part), and a second map
(:func:`merge_pieces`, one task per shared shard) puts the pieces together.
Only a tile count comes back, so the client does not become the bottleneck
(2 workers on 2 cores: x1.93 over 1, against x1.47 when the client wrote
every shard; docs/benchmarks.md). Otherwise (a scheduler address with a
folder store: the workers need not see this disk) the cores come back in plan
order (:func:`predict_window`) and are put into shards and written here. Both
ways the files are the same bytes as in process.
"""

from __future__ import annotations

import dataclasses
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
    ModelFiles,
    Rescale,
    check_inputs,
    flexible,
    fold_batchnorm,
    from_model_grid,
    plan_windows,
    prediction_halo,
    rescaled_jobs,
    runner,
    scale_factor,
    tf_threads,
    to_model_grid,
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
    input_pixels: int  # pixels fed to the model, halo included (model pixels when resampled)
    seconds: float
    factor: float = 1.0  # model pixels per store pixel (1: the store's pixels as they are)
    on_workers: bool = False  # the shards were written by the tasks (else here, from the cores sent back)
    merged: int = 0  # of those, shards touched by several windows: put together from the windows' pieces by a task

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
    scheduler: str | None = None,
    workers: int | None = None,
    resample: bool = True,
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

    ``scheduler`` / ``workers`` say where the windows run
    (:func:`navml.geo.parallel.resolve_scheduler`): in this process by
    default; else each window is a task that reads its input by path and runs
    the model (sent once to each worker, loaded once per worker), and the
    shards are assembled and written here in plan order, so the files are the
    same bytes as in-process.

    ``resample``: run the model at the ground resolution it was trained at (:func:`window_plan`).
    """
    from navml.geo.parallel import resolve_scheduler, writes_on_workers
    from navml.models.io import load_model, read_meta

    plan = resolve_scheduler(scheduler, workers)
    _check_inputs(store, tiles, out, window, layer)  # before the slow model load (and again, cheaply, below)
    if plan.serial:
        model, meta = load_model(model_dir)
        return predict_with_model(store, tiles, model, meta, out, classes, window=window, halo=halo, layer=layer, progress=progress,
                                  where=str(model_dir), resample=resample)
    meta = read_meta(model_dir)
    files = ModelFiles.read(model_dir)
    prepared = _prepare(store, tiles, meta, out, classes, window=window, halo=halo, layer=layer, where=str(model_dir), resample=resample)
    if writes_on_workers(plan, out.root):
        return _write_on_workers(prepared, out, files, plan, progress)
    return _assemble(prepared, out, _distributed(files, plan), progress)


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
    resample: bool = True,
) -> PredictReport:
    """:func:`predict_store` with a model already in memory (``keras.Model`` and its ``ModelMeta``), in this process;
    ``where`` names it in errors and in the shards' tags."""

    def windows(tasks: list[WindowTask]):
        run = runner(fold_batchnorm(flexible(model, tasks[0].bands)), tasks[0].bands)
        with ThreadPoolExecutor(1) as reader:  # reads the next window while the model runs
            next_x = reader.submit(read_input, tasks[0])
            for i, task in enumerate(tasks):
                x, valid = next_x.result()
                if i + 1 < len(tasks):
                    next_x = reader.submit(read_input, tasks[i + 1])
                yield predict_core(run, x, valid, task)

    prepared = _prepare(store, tiles, meta, out, classes, window=window, halo=halo, layer=layer, where=where, resample=resample)
    return _assemble(prepared, out, windows, progress)


@dataclass(frozen=True)
class WindowTask:
    """One prediction window, as a task of :func:`navml.geo.parallel.map_shards` (picklable: the store is a path)."""

    store: Store
    layer: str
    bands: int
    job: Job
    classes: int
    where: str
    threads: int | None = None  # TensorFlow threads per op on a worker (the client's: same bytes); None: as it is
    rescale: Rescale | None = None  # resampled to the model's ground resolution; None: the store's pixels as they are


def read_input(task: WindowTask) -> tuple[np.ndarray | None, np.ndarray]:
    """The model input of a window (None when its core has no imagery at all) and the core's valid-data mask."""
    job = task.job
    valid = task.store.read_valid(task.layer, job.core)
    if not valid.any():
        return None, valid
    x = task.store.read_window(task.layer, task.rescale.read if task.rescale else job.input, bands=task.bands)
    x = np.moveaxis(x, 0, -1)[None].astype("float32")
    return (to_model_grid(x, task.rescale) if task.rescale else x), valid


def predict_core(run, x: np.ndarray | None, valid: np.ndarray, task: WindowTask) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 probabilities (classes, rows, cols), valid mask)`` of a window's core: the model's output centre-cropped,
    0 where there is no imagery; all 0 without running the model when ``x`` is None."""
    job, n_cls = task.job, task.classes
    if x is None:  # no imagery in the whole core: nothing to predict
        return np.zeros((n_cls, job.core.height, job.core.width), dtype="uint8"), valid
    y = run(x)
    if y.ndim != 4 or y.shape[-1] != n_cls + 1:
        raise ModelError(f"{task.where}: model output has shape {y.shape}; expected (batch, rows, cols, {n_cls + 1})")
    if task.rescale is not None:  # back from the model's grid onto the core's store pixels
        y, r0, c0 = from_model_grid(y[:1, ..., 1:], task.rescale, job.core), 0, 0
        y = np.concatenate([np.zeros_like(y[..., :1]), y], axis=-1)
    else:
        r0 = job.core.row - job.input.row
        c0 = job.core.col - job.input.col
    core = np.moveaxis(to_uint8(y[0, r0 : r0 + job.core.height, c0 : c0 + job.core.width, 1:]), -1, 0)
    core *= valid[None]
    return core, valid


def predict_window(task: WindowTask, model: ModelFiles) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_core` of one window, its input read here: a task that runs on any worker (model built once per worker)."""
    x, valid = read_input(task)
    return predict_core(model.runner(task.bands, task.threads) if x is not None else None, x, valid, task)


def _distributed(files: ModelFiles, plan):
    """The window results of ``plan`` (threads or Dask): :func:`predict_window` over the tasks, in order."""
    from navml.geo.parallel import map_shards

    def windows(tasks: list[WindowTask]):
        return map_shards(predict_window, _pinned(tasks, plan), scheduler=plan, shared=files, desc="predict", unit="window", progress=False)

    return windows


def _pinned(tasks: list[WindowTask], plan) -> list[WindowTask]:
    """``tasks`` with the client's TensorFlow thread count when they run in other processes: workers compute as this
    process would, to the last bit."""
    if not plan.distributed:
        return tasks
    threads = tf_threads()
    return [dataclasses.replace(t, threads=threads) for t in tasks]


def window_plan(
    tiles: Sequence[Tile], grid: Grid, meta, *, window: int, halo: int | None, resample: bool = True
) -> tuple[list[tuple[Job, Rescale | None]], int, float]:
    """``([(job, rescale or None)], halo px, factor)``: the windows over ``tiles`` and the model pixels per store pixel.

    With ``resample`` and a model that records its ground resolution (``meta.extra["gsd_m"]``), a store
    whose ground resolution (at the tiles' latitude) differs from it by more than
    :data:`~navml.models.inference.GSD_TOLERANCE` is resampled to it window by window; ``halo`` (and the
    returned halo) is then in model pixels.
    """
    from navml.geo.grid import tiles_ground_resolution

    factor = scale_factor(meta.extra.get("gsd_m"), tiles_ground_resolution(tiles, grid.tile_size)) if resample else 1.0
    halo = prediction_halo(meta.receptive_field, meta.stride, halo)
    return rescaled_jobs(tiles, grid, window, halo, meta.stride, factor), halo, factor


@dataclass(frozen=True)
class Prepared:
    """The checked inputs and planned windows of one prediction, before any window runs."""

    tasks: list[WindowTask]
    groups: dict[Tile, list[Tile]]  # the AOI tiles of each shard
    tags: dict[str, object]  # the probs shards' GeoTIFF tags
    halo: int  # pixels (model pixels when resampled)
    factor: float
    input_pixels: int
    started: float  # time.perf_counter() at the start

    def report(self, grid: Grid, **extra) -> PredictReport:
        return PredictReport(tiles=sum(len(ts) for ts in self.groups.values()), shards=len(self.groups), windows=len(self.tasks),
                             halo=self.halo, aoi_pixels=sum(len(ts) for ts in self.groups.values()) * grid.tile_size**2,
                             input_pixels=self.input_pixels, seconds=time.perf_counter() - self.started, factor=self.factor, **extra)


def _prepare(store, tiles, meta, out: Store, classes, *, window, halo, layer, where, resample=True) -> Prepared:
    """Check the inputs and the model against each other and plan the windows."""
    started = time.perf_counter()
    tiles, bands, groups = _check_inputs(store, tiles, out, window, layer)
    grid = store.grid
    check_model(meta, grid, bands, classes, where)
    planned, halo, factor = window_plan(tiles, grid, meta, window=window, halo=halo, resample=resample)
    tasks = [WindowTask(store, layer, bands, job, len(classes), where, rescale=r) for job, r in planned]
    tags: dict[str, object] = {"classes": ",".join(classes), "scale": "1/255", "model": Path(where).name, "halo_px": halo}
    if factor != 1.0:
        tags["model_px_per_px"] = f"{factor:.4f}"
    pixels = sum((r.model if r else j.input).width * (r.model if r else j.input).height for j, r in planned)
    return Prepared(tasks, groups, tags, halo, factor, pixels, started)


def _place(core: np.ndarray, valid: np.ndarray, job: Job, shard: Tile, grid: Grid, buf: np.ndarray, ok: np.ndarray) -> None:
    """Copy the part of a window's core (and valid mask) that lies in ``shard`` into the shard's arrays."""
    sw = shard_window(shard, grid)
    part = intersection(job.core, sw)
    r, c = part.row - job.core.row, part.col - job.core.col
    rows = slice(part.row - sw.row, part.row - sw.row + part.height)
    cols = slice(part.col - sw.col, part.col - sw.col + part.width)
    buf[:, rows, cols] = core[:, r : r + part.height, c : c + part.width]
    ok[rows, cols] = valid[r : r + part.height, c : c + part.width]


def _empty_shard(classes: int, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    n = grid.shard_size
    return np.zeros((classes, n, n), dtype="uint8"), np.zeros((n, n), dtype=bool)


def _write_probs(out: Store, layer: str, shard: Tile, members: Sequence[Tile], buf: np.ndarray, ok: np.ndarray, tags) -> None:
    """Write a finished shard: 0 and not valid outside its AOI tiles."""
    _keep_tiles(buf, shard, members, out.grid)
    _keep_tiles(ok[None], shard, members, out.grid)
    out.write_shard(layer, shard, buf, dict(tags), ok)


def _assemble(prep: Prepared, out: Store, windows, progress: bool) -> PredictReport:
    """Get the cores from ``windows(tasks)`` (in task order) and write each shard here once all of its windows are in."""
    grid = out.grid
    work = Store(out.root, grid)
    groups, n_cls = prep.groups, prep.tasks[0].classes if prep.tasks else 0
    remaining = Counter(s for t in prep.tasks for s in shards_of_window(t.job.core, grid) if s in groups)
    buffers: dict[Tile, tuple[np.ndarray, np.ndarray]] = {}

    with work.staged_layer(PROBS) as tmp_layer, ThreadPoolExecutor(1) as writer, tqdm(
        total=sum(len(ts) for ts in groups.values()), desc="predict", unit="tile", disable=None if progress else True
    ) as bar:
        writes: deque[Future] = deque()
        for task, (core, valid) in zip(prep.tasks, windows(prep.tasks)):
            for shard in shards_of_window(task.job.core, grid):
                if shard not in groups:
                    continue
                buf, ok = buffers.setdefault(shard, _empty_shard(n_cls, grid))
                _place(core, valid, task.job, shard, grid, buf, ok)
                remaining[shard] -= 1
                if remaining[shard] == 0:
                    done, done_ok = buffers.pop(shard)
                    writes.append(writer.submit(_write_probs, work, tmp_layer, shard, groups[shard], done, done_ok, prep.tags))
                    while len(writes) > 3:  # at most 3 finished shards wait for the disk
                        writes.popleft().result()  # re-raises a failed write
            del core, valid
            bar.update(task.job.tiles)
        while writes:
            writes.popleft().result()
    return prep.report(grid)


@dataclass(frozen=True)
class WriteTask:
    """A window that writes its own output (:func:`predict_and_write`): the shards only it touches, whole, into
    ``layer``; its part of each shard it shares with other windows, as a piece, into ``pieces/<index>``."""

    window: WindowTask
    index: int
    out: Store
    layer: str  # the staged probs layer
    pieces: str  # the hidden layer of the pieces
    whole: tuple[tuple[Tile, tuple[Tile, ...]], ...]  # (shard, its AOI tiles)
    shared: tuple[Tile, ...]
    tags: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class MergeTask:
    """A shard touched by several windows (:func:`merge_pieces`): the pieces' layers to put together, in plan order."""

    out: Store
    layer: str
    shard: Tile
    members: tuple[Tile, ...]
    pieces: tuple[str, ...]
    classes: int
    tags: tuple[tuple[str, object], ...]


def predict_and_write(task: WriteTask, model: ModelFiles) -> int:
    """Predict one window and write its output (a task on any worker that shares the store); returns its tiles."""
    core, valid = predict_window(task.window, model)
    grid, job, n_cls = task.out.grid, task.window.job, task.window.classes
    for shard, members in task.whole:
        buf, ok = _empty_shard(n_cls, grid)
        _place(core, valid, job, shard, grid, buf, ok)
        _write_probs(task.out, task.layer, shard, members, buf, ok, task.tags)
    for shard in task.shared:
        buf, ok = _empty_shard(n_cls, grid)
        _place(core, valid, job, shard, grid, buf, ok)
        task.out.write_shard(f"{task.pieces}/{task.index}", shard, buf, None, ok)
    return job.tiles


def merge_pieces(task: MergeTask) -> None:
    """Put a shard together from its windows' pieces (each 0 and not valid outside its own part) and write it."""
    grid = task.out.grid
    buf, ok = _empty_shard(task.classes, grid)
    whole = shard_window(task.shard, grid)
    for layer in task.pieces:
        np.maximum(buf, task.out.read_shard(layer, task.shard), out=buf)  # the parts do not overlap: the max is the copy
        ok |= task.out.read_valid(layer, whole)
    _write_probs(task.out, task.layer, task.shard, task.members, buf, ok, task.tags)


def _write_on_workers(prep: Prepared, out: Store, files: ModelFiles, plan, progress: bool) -> PredictReport:
    """Run the windows where ``plan`` says with each task writing its own shards (no pixels travel back): the shards
    only one window touches straight away, the others from the windows' pieces by a second map over those shards."""
    from navml.geo.parallel import map_shards, session

    grid = out.grid
    work = Store(out.root, grid)
    groups, tags = prep.groups, tuple(prep.tags.items())
    touching: dict[Tile, list[int]] = {}
    for i, t in enumerate(prep.tasks):
        for s in shards_of_window(t.job.core, grid):
            if s in groups:
                touching.setdefault(s, []).append(i)
    pieces = f".{PROBS}.pieces"
    with work.staged_layer(PROBS) as tmp_layer, session(plan) as plan:
        work.remove_layer(pieces)  # a killed run's leftovers
        try:
            tasks = [
                WriteTask(t, i, work, tmp_layer, pieces,
                          tuple((s, tuple(groups[s])) for s in shards_of_window(t.job.core, grid) if touching.get(s) == [i]),
                          tuple(s for s in shards_of_window(t.job.core, grid) if len(touching.get(s, ())) > 1), tags)
                for i, t in enumerate(_pinned(prep.tasks, plan))
            ]
            for _ in map_shards(predict_and_write, tasks, scheduler=plan, shared=files, desc="predict", unit="tile",
                                weights=[t.window.job.tiles for t in tasks], progress=progress):
                pass
            merges = [MergeTask(work, tmp_layer, s, tuple(groups[s]), tuple(f"{pieces}/{i}" for i in ids), prep.tasks[0].classes, tags)
                      for s, ids in touching.items() if len(ids) > 1]
            if merges:
                for _ in map_shards(merge_pieces, merges, scheduler=plan, desc="predict (shared shards)", progress=progress):
                    pass
        finally:
            work.remove_layer(pieces)
        missing = [s for s in groups if not work.has(tmp_layer, s)]
        if missing:
            raise ConfigError(
                f"{out.root}: {len(missing)} of {len(groups)} prediction shards written by the workers are not there: "
                "the workers do not share this store's disk; use a store on S3 or a scheduler address"
            )
    return prep.report(grid, on_workers=True, merged=len(merges))


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
