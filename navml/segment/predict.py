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
model is compiled once for any window shape.

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

import math
import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Grid, Tile, Window, group_by_shard, intersection, shard_window, shards_of_window
from navml.geo.store import Store

#: Layer of the prediction store that holds the probabilities.
PROBS = "probs"
#: Default core size of a prediction window, pixels (memory grows with its square).
DEFAULT_WINDOW = 2048
#: Width of the strips windows are planned in, in shards (bounds the shards held in memory).
STRIP_SHARDS = 8


@dataclass(frozen=True)
class Job:
    """One model call: ``core`` is kept, ``input`` (core + halo) is read and fed."""

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


def _split(a: int, b: int, most: int) -> list[int]:
    """Edges cutting ``[a, b)`` into as few nearly equal parts of at most ``most`` as possible."""
    n = max(1, math.ceil((b - a) / most))
    return [a + round(i * (b - a) / n) for i in range(n + 1)]


def plan_windows(tiles: Sequence[Tile], grid: Grid, window: int, halo: int, stride: int = 1) -> list[Job]:
    """Cover the AOI tiles with prediction windows.

    Strips :data:`STRIP_SHARDS` shards wide; in each, the tiles' extent is cut
    into nearly equal cores of at most ``window`` px (whole tiles), each shrunk
    to the AOI tiles it holds and grown by ``halo`` px on every side where AOI
    tiles lie within the halo; sizes are rounded up to a multiple of ``stride``.
    Jobs come strip by strip, row by row.
    """
    size = grid.tile_size
    per = max(1, window // size)
    present = {(t.x, t.y) for t in tiles}
    halo_tiles = math.ceil(halo / size)
    strip = grid.tiles_per_shard * STRIP_SHARDS

    def any_in(x0: int, x1: int, y0: int, y1: int) -> bool:
        return any((x, y) in present for y in range(y0, y1) for x in range(x0, x1))

    strips: dict[int, list[tuple[int, int]]] = {}
    for x, y in present:
        strips.setdefault(x // strip, []).append((x, y))
    jobs = []
    for key in sorted(strips):
        xs = [x for x, _ in strips[key]]
        ys = [y for _, y in strips[key]]
        cols = _split(min(xs), max(xs) + 1, per)
        rows = _split(min(ys), max(ys) + 1, per)
        for ry0, ry1 in zip(rows[:-1], rows[1:]):
            for cx0, cx1 in zip(cols[:-1], cols[1:]):
                inside = [(x, y) for y in range(ry0, ry1) for x in range(cx0, cx1) if (x, y) in present]
                if not inside:
                    continue
                tx0, tx1 = min(x for x, _ in inside), max(x for x, _ in inside) + 1
                ty0, ty1 = min(y for _, y in inside), max(y for _, y in inside) + 1
                hy = (ty0 - halo_tiles, ty1 + halo_tiles)
                hx = (tx0 - halo_tiles, tx1 + halo_tiles)
                left = halo if halo and any_in(tx0 - halo_tiles, tx0, *hy) else 0
                right = halo if halo and any_in(tx1, tx1 + halo_tiles, *hy) else 0
                top = halo if halo and any_in(*hx, ty0 - halo_tiles, ty0) else 0
                bottom = halo if halo and any_in(*hx, ty1, ty1 + halo_tiles) else 0
                core = Window(tx0 * size, ty0 * size, (tx1 - tx0) * size, (ty1 - ty0) * size)
                w = core.width + left + right
                h = core.height + top + bottom
                w += -w % stride
                h += -h % stride
                jobs.append(Job(core, Window(core.col - left, core.row - top, w, h), len(inside)))
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


def fold_batchnorm(model):
    """An inference copy of ``model`` with every ``Conv2D -> BatchNormalization`` pair folded into the convolution.

    A batch normalization in inference is a per-channel affine map, so it folds
    exactly into the preceding convolution's kernel and bias (the BN becomes an
    identity); this saves one full pass over every large feature map. Only a
    Conv2D without activation whose single consumer is the BN is folded; any
    other layer is copied as is. Outputs equal the original's up to float rounding.
    """
    import keras
    from keras import layers

    def producer(tensor):
        return tensor._keras_history[0]

    consumers: dict[int, int] = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for t in node.input_tensors:
                consumers[id(producer(t))] = consumers.get(id(producer(t)), 0) + 1
    folds = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        src = producer(layer._inbound_nodes[0].input_tensors[0])
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        if (
            isinstance(src, layers.Conv2D)
            and type(src) is layers.Conv2D
            and consumers.get(id(src)) == 1
            and len(src._inbound_nodes) == 1
            and src.get_config().get("activation") == "linear"
            and axis in (-1, 3)
            and src.get_config().get("data_format", "channels_last") == "channels_last"
        ):
            folds[src.name] = layer
    if not folds:
        return model
    bn_names = {bn.name for bn in folds.values()}

    class Folded(keras.layers.Layer):
        """Stands where a folded batch normalization was: passes its input through."""

        def call(self, x, training=None, mask=None):
            return x

    def clone(layer):
        if layer.name in folds:
            cfg = layer.get_config()
            cfg["use_bias"] = True
            return layers.Conv2D.from_config(cfg)
        if layer.name in bn_names:
            return Folded(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone)
    except Exception:  # noqa: BLE001 - a model keras cannot clone (subclassed) runs unfolded
        return model
    for old in model.layers:
        if old.name in bn_names or not old.weights:
            continue
        target = new.get_layer(old.name)
        if old.name not in folds:
            target.set_weights(old.get_weights())
            continue
        bn = folds[old.name]
        w = old.get_weights()
        kernel = np.asarray(w[0], dtype="float64")
        bias = np.asarray(w[1], dtype="float64") if len(w) > 1 else np.zeros(kernel.shape[-1])
        channels = kernel.shape[-1]
        gamma = np.asarray(bn.gamma.numpy() if bn.scale else np.ones(channels), dtype="float64")
        beta = np.asarray(bn.beta.numpy() if bn.center else np.zeros(channels), dtype="float64")
        mean = np.asarray(bn.moving_mean.numpy(), dtype="float64")
        var = np.asarray(bn.moving_variance.numpy(), dtype="float64")
        k = gamma / np.sqrt(var + bn.epsilon)
        target.set_weights([(kernel * k).astype("float32"), ((bias - mean) * k + beta).astype("float32")])
    return new


def _runner(model, bands: int):
    """A function ``float32 (1, rows, cols, bands) -> numpy softmax`` compiled once for any window size.

    With the TensorFlow backend a ``tf.function`` with free rows/cols is traced
    once (``predict_on_batch`` would retrace for every new window shape).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda x: np.asarray(model.predict_on_batch(x))
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None, None, bands], tf.float32)])
    return lambda x: fn(tf.constant(x)).numpy()


def _check_inputs(store: Store, tiles: Sequence[Tile], out: Store, window: int, layer: str) -> tuple[list[Tile], int, dict[Tile, list[Tile]]]:
    """The distinct tiles, the imagery band count and the tiles per shard; raises on anything unusable."""
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
    return tiles, bands, groups


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
    run = _runner(fold_batchnorm(_flexible(model, bands)), bands)

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
