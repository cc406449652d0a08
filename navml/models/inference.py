"""Running a fully convolutional model seamlessly over every tile of an AOI: shared by segmentation and detection.

A model runs on big windows: cores of up to ``window`` px (whole tiles) plus
a *halo* of at least half its receptive field, read across tile and shard
borders (:meth:`navml.geo.store.Store.read_window`). Windows start on the
model's stride grid, so every output cell of a window's core equals the cell
of one run over the whole mosaic: no seams at tile or shard borders. At the
outer edge of the AOI the window stops (the model's own zero padding, as on a
training tile), which saves the halo where there is nothing to be seamless with.

Windows are laid out over the AOI, not per shard: the AOI is cut into
vertical strips :data:`STRIP_SHARDS` shards wide (aligned to shards), each
strip's tile extent into as few, nearly equal windows as fit ``window``.
Fewer windows means less halo (the synthetic city: 4 windows, 1.14 pixels
fed per AOI pixel, against 9 and 1.28 with one window per shard).

Before running, batch normalizations are folded into the preceding
convolutions (:func:`fold_batchnorm`, exact up to float rounding) and the
model is compiled once for any window shape (:func:`runner`).

What is kept of a window's core is the caller's: the segmentation centre-crops
probabilities (:mod:`navml.segment.predict`), the detector keeps boxes whose
centre lies in the core (:mod:`navml.detect.predict`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Grid, Tile, Window, group_by_shard
from navml.geo.store import Store
from navml.models.scale import (  # noqa: F401 - resampling to the model's ground resolution; re-exported
    GSD_TOLERANCE,
    Rescale,
    from_model_grid,
    resample,
    rescale_plan,
    scale_factor,
    to_model_grid,
)

#: Default core size of a prediction window, pixels (memory grows with its square).
DEFAULT_WINDOW = 2048
#: Width of the strips windows are planned in, in shards (bounds the shards held in memory).
STRIP_SHARDS = 8
#: Shard files a window reader (:meth:`navml.geo.store.Store.reader`) keeps open over the windows: two rows of a
#: strip and the shards either side, so that the next row of windows finds its top halo's blocks decoded.
READER_SHARDS = 2 * (STRIP_SHARDS + 2)


@dataclass(frozen=True)
class Job:
    """One model call: ``core`` is kept, ``input`` (core + halo) is read and fed."""

    core: Window
    input: Window
    tiles: int  # AOI tiles inside the core


def prediction_halo(receptive_field: int, stride: int, halo: int | None = None, key: str = "predict") -> int:
    """Halo in pixels: at least half the receptive field, a multiple of ``stride``.

    ``halo`` (pixels) asks for more; asking for less than half the receptive
    field is a :class:`ConfigError` (naming ``<key>.halo_px``) because the borders would show seams.
    """
    stride = max(1, int(stride))
    need = math.ceil(receptive_field / 2)
    if halo is None or halo <= 0:
        halo = need
    elif halo < need:
        raise ConfigError(
            f"{key}.halo_px is {halo} but the model's receptive field needs at least {need} px; raise it or set 0 (auto)"
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


def rescaled_jobs(tiles: Sequence[Tile], grid: Grid, window: int, halo: int, stride: int, factor: float) -> list[tuple[Job, Rescale | None]]:
    """The windows of :func:`plan_windows` with their :class:`Rescale` (None for ``factor`` 1): ``halo`` and
    ``stride`` are the model's (model pixels); cores shrink by ``factor`` where the model grid is finer, so that
    a model call stays within about ``window`` model pixels a side."""
    if factor == 1.0:
        return [(j, None) for j in plan_windows(tiles, grid, window, halo, stride)]
    size = grid.tile_size
    core = max(size, int(window / max(1.0, factor)) // size * size)
    jobs = plan_windows(tiles, grid, core, math.ceil(halo / factor), 1)
    return [(j, rescale_plan(j, factor, halo, stride)) for j in jobs]


def flexible(model, bands: int):
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


def runner(model, bands: int):
    """A function ``float32 (1, rows, cols, bands) -> numpy output`` compiled once for any window size.

    With the TensorFlow backend a ``tf.function`` with free rows/cols is traced
    once (``predict_on_batch`` would retrace for every new window shape).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return lambda x: np.asarray(model.predict_on_batch(x))
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None, None, bands], tf.float32)])
    return lambda x: fn(tf.constant(x)).numpy()


_LAST_RUNNER: list = []  # [weak reference to the model, bands, weights digest, runner]: the last one built
_RUNNER_LOCK = threading.Lock()


def model_runner(model, bands: int):
    """``runner(fold_batchnorm(flexible(model, bands)), bands)``, reused while the same model object with the same
    weights asks again (a warm process calling predict repeatedly folds and traces once).

    The key is the model object, ``bands`` and a digest of its weights, so a model trained further gets a new
    runner; only the last runner is kept (it may hold the model)."""
    import hashlib
    import weakref

    h = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        h.update(str((w.dtype.str, w.shape)).encode() + w.tobytes())
    digest = h.hexdigest()
    with _RUNNER_LOCK:
        if _LAST_RUNNER and _LAST_RUNNER[0]() is model and _LAST_RUNNER[1:3] == [bands, digest]:
            return _LAST_RUNNER[3]
        run = runner(fold_batchnorm(flexible(model, bands)), bands)
        _LAST_RUNNER[:] = [weakref.ref(model), bands, digest, run]
        return run


def model_input(chw: np.ndarray) -> np.ndarray:
    """A store window (bands, rows, cols) as the float32 model input (1, rows, cols, bands) in a 64-byte aligned
    buffer, which TensorFlow takes without another copy (an unaligned array is copied once more)."""
    b, h, w = chw.shape
    n = b * h * w
    buf = np.empty(n + 16, dtype="float32")
    start = (-buf.ctypes.data % 64) // 4
    out = buf[start : start + n].reshape(1, h, w, b)
    np.copyto(out[0], np.moveaxis(chw, 0, -1))
    return out


def check_inputs(
    store: Store, tiles: Sequence[Tile], window: int, layer: str = "imagery", key: str = "predict"
) -> tuple[list[Tile], int, dict[Tile, list[Tile]]]:
    """The distinct tiles, the imagery band count and the tiles per shard; raises on anything unusable.

    ``key`` is the params section named in the messages (``predict``, ``detect_predict``).
    """
    grid = store.grid
    tiles = list(dict.fromkeys(tiles))
    if not tiles:
        raise InputError(f"{key}: the tile list is empty; check the tile index (data/cover/tiles.csv)")
    bad = [t for t in tiles if t.z != grid.zoom]
    if bad:
        raise ConfigError(f"{key}: tile {bad[0].z}/{bad[0].x}/{bad[0].y} is not at the store zoom {grid.zoom}; re-run cover with grid.zoom: {grid.zoom}")
    bands = store.count(layer)
    if not bands:
        raise InputError(f"{store.root / layer}: no {layer} shards; run the imagery stage first (dvc repro imagery)")
    groups = group_by_shard(tiles, grid)
    missing = [s for s in groups if not store.has(layer, s)]
    if missing:
        raise InputError(f"{store.path(layer, missing[0])}: imagery shard of {len(missing)} AOI shard(s) missing; re-run the imagery stage")
    if window < grid.tile_size:
        raise ConfigError(f"{key}.window_px is {window}; it must be at least the tile size {grid.tile_size}")
    return tiles, bands, groups


@dataclass(frozen=True)
class ModelFiles:
    """A saved-model folder as bytes (``model.keras``, ``meta.json``, ...): sent once to each Dask worker, so
    workers that share no disk with the client run the same model; :meth:`runner` builds it once per worker."""

    name: str  # the folder's name (shard tags, messages)
    files: tuple[tuple[str, bytes], ...]
    digest: str  # SHA-256 of the files: the per-worker cache key

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ModelFiles:
        """The plain files of a model folder (not its subfolders)."""
        import hashlib
        from pathlib import Path

        folder = Path(folder)
        try:
            files = tuple((p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file())
        except OSError as exc:
            raise ModelError(f"{folder}: cannot read the model folder ({exc}); train a model first") from exc
        h = hashlib.sha256()
        for name, data in files:
            h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        return cls(folder.name, files, h.hexdigest())

    @contextlib.contextmanager
    def unpacked(self):
        """A temporary folder holding these files (removed on exit)."""
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="navml-model-") as tmp:
            for name, data in self.files:
                (Path(tmp) / name).write_bytes(data)
            yield Path(tmp)

    def load(self):
        """``(keras.Model, ModelMeta)`` of these files (written to a temporary folder, loaded, removed)."""
        from navml.models.io import load_model

        with self.unpacked() as tmp:
            return load_model(tmp)

    def runner(self, bands: int, threads: int | None = None):
        """The compiled inference function of this model (:func:`runner` over the folded, widened model), built
        once per process (:func:`navml.geo.parallel.worker_cached`); ``threads``: :func:`pin_tf_threads` first."""
        from navml.geo.parallel import worker_cached

        if threads:
            pin_tf_threads(threads)

        def build():
            model, _ = self.load()
            return runner(fold_batchnorm(flexible(model, bands)), bands)

        return worker_cached(("runner", self.digest, bands), build)


def tf_threads() -> int:
    """The threads TensorFlow gives one op in this process (``TF_NUM_INTRAOP_THREADS``, else one per usable CPU core).

    A model's output depends on it in the last float bit (the partition of the
    reductions), so a worker runs with the client's count (:func:`pin_tf_threads`)
    and writes the same bytes as the client would in-process.
    """
    env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    if "tensorflow" in sys.modules:
        n = sys.modules["tensorflow"].config.threading.get_intra_op_parallelism_threads()
        if n > 0:
            return int(n)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_PINNED: list[int] = []


def pin_tf_threads(threads: int) -> None:
    """Give TensorFlow ops ``threads`` threads in this (worker) process; raises :class:`ModelError` when TensorFlow
    already runs with another count (it cannot change once started)."""
    if _PINNED and _PINNED[0] == threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    except RuntimeError as exc:
        raise ModelError(
            f"this worker's TensorFlow already runs {_PINNED[0] if _PINNED else tf_threads()} threads per op and the client "
            f"{threads}; outputs would differ in the last bit: restart the workers or set TF_NUM_INTRAOP_THREADS alike"
        ) from exc
    _PINNED[:] = [int(threads)]
