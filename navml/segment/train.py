"""Training of the segmentation U-Net on the store's train split.

Seeded and deterministic (same data + same arguments -> same weights), early
stopping on the validation IoU checked every ``eval_every`` steps, the best check checkpointed to a temporary
``.keras`` file and only saved as the model folder (``model.keras``,
``meta.json``, ``thresholds.json``) once everything succeeded, so a failed run
leaves no partial model and an earlier model intact.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from navml.config import TrainParams
from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Tile, tile_key
from navml.geo.store import Store
from navml.io import write_json
from navml.models.io import THRESHOLDS_FILE
from navml.segment.dataset import (
    Augment,
    CityReader,
    MinedReader,
    TileReader,
    check_store,
    combine_indexes,
    label_counts,
    make_dataset,
    select_training_tiles,
    split_tiles,
    tile_order,
    training_counts,
)

#: Defaults of the keyword arguments below: the params model's, written once there.
_TRAIN = TrainParams()


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, ask for deterministic kernels and run one op at a time.

    Op determinism alone is not enough on CPU: with several ops running at once
    (inter-op parallelism) the weights differ in the 5th digit after a few
    steps and training drifts apart. One op at a time, each on all cores
    (intra-op threads), gives bit-identical weights on the same machine
    (docs/benchmarks.md measures what each setting costs). The thread setting
    only takes effect before TensorFlow runs its first op.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialized in this process: keep its setting
        pass


def _check_args(classes: Sequence[str], steps: int, eval_every: int, warmup_steps: int, batch_size: int, learning_rate: float, patience: int) -> None:
    if not classes:
        raise ConfigError("classes: no segmentation class in the registry; add one with task: segmentation")
    if steps < 1:
        raise ConfigError(f"params: 'train.steps' is {steps}; use 1 or more optimizer steps")
    if not 1 <= eval_every <= steps:
        raise ConfigError(f"params: 'train.eval_every' is {eval_every}; use 1..train.steps ({steps})")
    if warmup_steps < 0:
        raise ConfigError(f"params: 'train.warmup_steps' is {warmup_steps}; use 0 or more steps")
    if batch_size < 1:
        raise ConfigError(f"params: 'train.batch_size' is {batch_size}; use 1 or more")
    if not learning_rate > 0:
        raise ConfigError(f"params: 'train.learning_rate' is {learning_rate}; use a positive number such as 0.002")
    if patience < 0:
        raise ConfigError(f"params: 'train.patience' is {patience}; use 0 or more validation checks")


def learning_rate_schedule(learning_rate: float, steps: int, warmup_steps: int = 0, floor: float = 0.05):
    """Linear warm-up from ``learning_rate / 10`` over ``warmup_steps`` (at most half of ``steps``),
    then cosine decay to ``floor * learning_rate`` at ``steps`` (a Keras ``LearningRateSchedule``)."""
    import keras

    warmup_steps = min(warmup_steps, steps // 2)

    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=floor)
    return keras.optimizers.schedules.CosineDecay(
        learning_rate / 10.0, decay_steps=steps - warmup_steps, alpha=floor, warmup_target=learning_rate, warmup_steps=warmup_steps
    )


def training_dataset(
    reader: TileReader, tiles, *, batch_size: int, augment: Augment | None, seed: int, crop: int | None, mined_weight: float | None = None
):
    """The endless, shuffled, augmented stream of training batches the train stage feeds ``model.fit``."""
    return make_dataset(
        reader, tiles, batch_size=batch_size, shuffle=True, augment=augment, seed=seed, crop=crop, repeat=True, mined_weight=mined_weight
    )


def _require_pixels(counts, classes: Sequence[str], split: str, store: Store) -> None:
    for i, name in enumerate(classes, start=1):
        if counts[i] == 0:
            raise InputError(
                f"{store.root / 'masks'}: split '{split}' has no pixel of class '{name}'; "
                f"check classes.{name} (tags) matches the map, or use a larger AOI / another cover.seed"
            )


def training_sources(
    stores: Store | Sequence[Store], indexes: pd.DataFrame | Sequence[pd.DataFrame], gsd_m: float | None = None
) -> tuple[list[Store], pd.DataFrame, list[float], float]:
    """``(stores, one tile index, factors, training gsd)`` of one store or several (cities) trained on together.

    Each store's ground resolution is that of its tiles (at their median latitude); the training one is
    ``gsd_m`` or, when None, the coarsest of the stores (measured better than the finest: docs/cities.md). ``factors[i]``
    is the model pixels per pixel of store ``i`` (1.0 within :data:`~navml.models.inference.GSD_TOLERANCE`).
    One store at its own resolution keeps its plain tiles; otherwise the index gets a ``source`` column
    (:func:`combine_indexes`).
    """
    from navml.geo.grid import tiles_ground_resolution
    from navml.geo.tile_index import tiles_from_index
    from navml.models.scale import scale_factor

    stores = [stores] if isinstance(stores, Store) else list(stores)
    indexes = [indexes] if isinstance(indexes, pd.DataFrame) else list(indexes)
    if not stores or len(stores) != len(indexes):
        raise ConfigError(f"training needs one tile index per store; got {len(stores)} store(s) and {len(indexes)} index(es)")
    grids = {s.grid for s in stores}
    if len(grids) != 1:
        raise ConfigError(f"training stores lie on different grids {sorted(grids)}; use one grid (zoom, tile size) for every city")
    gsds = []
    for store, df in zip(stores, indexes):
        tiles = tiles_from_index(df)
        if not tiles:
            raise InputError(f"{store.root}: its tile index has no tile; re-run cover for this city")
        gsds.append(tiles_ground_resolution(tiles, store.grid.tile_size))
    ref = float(gsd_m) if gsd_m else max(gsds)
    factors = [scale_factor(ref, g) for g in gsds]
    index = indexes[0] if factors == [1.0] else combine_indexes(indexes)
    return stores, index, factors, ref


def fit_stream(
    model, reader: TileReader, train_ds, callbacks: Sequence, *, live_dir: str | os.PathLike | None, progress: bool, **fit
):
    """``model.fit`` on ``train_ds`` (a stream of ``reader``'s tiles) with ``callbacks``, plus dvclive's writing to ``live_dir``;
    ``fit``: the rest of fit's arguments. A read error of the stream is raised as it is, a TensorFlow one as a one-line
    :class:`ModelError`. Returns ``(history, live)`` (``live``: the dvclive run, or None)."""
    import tensorflow as tf

    callbacks, live = list(callbacks), None
    if live_dir is not None:
        from dvclive import Live
        from dvclive.keras import DVCLiveCallback

        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        callbacks.append(DVCLiveCallback(live=live))
    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
    try:
        history = model.fit(train_ds, callbacks=callbacks, verbose=verbose, shuffle=False, **fit)
    except tf.errors.OpError as exc:
        if reader.error is not None:
            raise reader.error from None
        raise ModelError(f"training failed: {str(exc).splitlines()[0]}") from exc
    if reader.error is not None:
        raise reader.error
    return history, live


def train_segmentation(
    store: Store | Sequence[Store],
    index: pd.DataFrame | Sequence[pd.DataFrame],
    classes: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    bands: int = _TRAIN.bands,
    depth: int = _TRAIN.depth,
    base_filters: int = _TRAIN.base_filters,
    downsample: int = _TRAIN.downsample,
    encoder: str = _TRAIN.encoder,
    dropout: float = _TRAIN.dropout,
    loss: str | Sequence[str] = _TRAIN.loss,
    focal_gamma: float = _TRAIN.focal_gamma,
    class_weighting: str = _TRAIN.class_weighting,
    steps: int = _TRAIN.steps,
    eval_every: int = _TRAIN.eval_every,
    warmup_steps: int = _TRAIN.warmup_steps,
    crop: int | None = _TRAIN.crop,
    batch_size: int = _TRAIN.batch_size,
    learning_rate: float = _TRAIN.learning_rate,
    patience: int = _TRAIN.patience,
    negative_share: float | None = _TRAIN.negative_share,
    augment: Augment | None = Augment(),
    threshold_metric: str = _TRAIN.threshold_metric,
    seed: int = _TRAIN.seed,
    gsd_m: float | None = _TRAIN.gsd_m,
    live_dir: str | os.PathLike | None = None,
    progress: bool = True,
    where: str = "tile index",
    init_model: str | os.PathLike | None = None,
    hard: Mapping[Tile, np.ndarray] | None = None,
    hard_repeats: int = 1,
    mined_weight: float = 1.0,
) -> dict:
    """Train a U-Net for the segmentation ``classes`` (registry order) and save it in ``out_dir``.

    ``index`` is the tile index (columns z, x, y, split, pos_<class>);
    ``store`` holds layers ``imagery`` and ``masks`` (mask 255 = ignore). ``loss`` names terms of
    :mod:`navml.segment.losses` joined by ``+``; class weights come from the training
    masks (``class_weighting``: none, inverse, sqrt). ``negative_share`` (0..1
    or None = keep all) is the share of each pass's tiles without a positive,
    drawn afresh per pass over the train split from its negative tiles.
    The budget is ``steps`` optimizer steps of ``batch_size`` samples, each a random
    ``crop`` px window of a tile (None: the whole tile); every ``eval_every``
    steps the val IoU is checked (``steps`` is rounded up to a multiple of it),
    the best check is kept, and ``patience`` checks without a better one stop
    early. The learning rate warms up over ``warmup_steps`` (at most half of ``steps``), then follows a
    cosine decay from ``learning_rate`` to 5 % of it at ``steps``.
    ``live_dir`` receives dvclive per-check metrics (``plots/metrics/*.tsv``,
    ``metrics.json``). After training, the per-class probability threshold that
    maximizes ``threshold_metric`` on the val split goes to
    ``out_dir/thresholds.json``. Returns a summary dict (also in ``meta.extra``).

    ``store`` and ``index`` may be lists (one store and tile index per city): training then runs over the
    union of their splits, every tile resampled to one ground resolution, ``gsd_m`` (None: the coarsest
    city's; :func:`training_sources`). The model records it (``meta.extra["gsd_m"]``), and prediction
    resamples other stores to it.

    Hard-negative retraining (:mod:`navml.mining`): ``init_model`` (a model folder)
    starts from its weights instead of a fresh U-Net (fine-tuning; its architecture
    wins over ``depth``/``base_filters``/...); ``hard`` maps train tiles to boolean
    ``(rows, cols)`` masks of mined background pixels: each such tile is drawn
    ``hard_repeats`` times per pass and its mined pixels weigh ``mined_weight`` in the loss. Over several
    stores the keys of ``hard`` are :class:`~navml.segment.dataset.SourceTile` s (store position and tile).
    """
    from navml.models.unet import build_unet, model_stride, receptive_field, receptive_halo
    from navml.segment.losses import MaskedIoU, SegmentationLoss, class_weights_from_counts, parse_loss

    started = time.monotonic()
    classes = list(classes)
    _check_args(classes, steps, eval_every, warmup_steps, batch_size, learning_rate, patience)
    terms = parse_loss(loss)
    out_dir = Path(out_dir)
    n = len(classes)
    stores, index, factors, gsd_ref = training_sources(store, index, gsd_m)
    store = stores[0]
    size = store.grid.tile_size
    stride = model_stride(depth, downsample)
    if size % stride:
        raise ConfigError(
            f"params: 'train.depth' {depth} with train.downsample {downsample} needs tiles of a multiple of {stride} px; grid.tile_size is {size}"
        )
    if crop is not None and (not 0 < crop <= size or crop % stride):
        raise ConfigError(
            f"params: 'train.crop' is {crop}; use a multiple of {stride} px (train.downsample * 2**train.depth) up to grid.tile_size {size}, or null"
        )
    if crop == size:
        crop = None

    train_tiles = select_training_tiles(index, classes, negative_share, "train", where)
    if hard:
        in_train = set(train_tiles.all)
        outside = sorted(tile_key(t) for t in hard if t not in in_train)
        if outside:
            raise InputError(f"hard negatives on tile {outside[0]}, which is not a train tile of {where}; only train tiles are mined")
        train_tiles = train_tiles.with_hard(sorted(hard, key=tile_order), hard_repeats)
    val_tiles = split_tiles(index, "val", where)
    for split, tiles in (("train", train_tiles.all), ("val", val_tiles)):
        if not tiles:
            raise InputError(f"{where}: split '{split}' has no tile; enlarge the AOI or raise cover.split.{split}")
    if factors == [1.0]:
        check_store(store, train_tiles.all + val_tiles, bands)
        reader = MinedReader(store, n, bands, hard) if hard else TileReader(store, n, bands)
    else:
        readers = []
        for i, st in enumerate(stores):
            check_store(st, [t.tile for t in train_tiles.all + val_tiles if t.source == i], bands)
            own = {t.tile: m for t, m in (hard or {}).items() if t.source == i}
            mb = 1024.0 / len(stores)
            readers.append(MinedReader(st, n, bands, own, cache_mb=mb) if own else TileReader(st, n, bands, cache_mb=mb))
        reader = CityReader(readers, factors)
    train_counts = training_counts(reader, train_tiles, progress)
    _require_pixels(train_counts, classes, "train", store)
    val_counts = label_counts(reader, val_tiles, progress, "val labels")
    _require_pixels(val_counts, classes, "val", store)
    weights = class_weights_from_counts(train_counts, class_weighting, ["background", *classes])

    import keras

    set_determinism(seed)
    if init_model is not None:
        from navml.models.io import load_model

        model, first = load_model(init_model)
        first.check_fits(zoom=store.grid.zoom, bands=bands, classes=classes, where=str(init_model))
        arch = first.extra
        depth, base_filters = int(arch.get("depth", depth)), int(arch.get("base_filters", base_filters))
        downsample, encoder = int(arch.get("downsample", downsample)), str(arch.get("encoder", encoder))
    else:
        model = build_unet(bands, n, depth, base_filters, encoder, dropout=dropout, downsample=downsample)
    checks = -(-steps // eval_every)
    total_steps = checks * eval_every
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate_schedule(learning_rate, total_steps, warmup_steps)),
        loss=SegmentationLoss(terms, class_weights=weights, gamma=focal_gamma),
        metrics=[MaskedIoU(n + 1, list(range(1, n + 1)), name="iou")],
        jit_compile=False,
    )
    train_ds = training_dataset(
        reader, train_tiles, batch_size=batch_size, augment=augment, seed=seed, crop=crop, mined_weight=mined_weight if hard else None
    )
    val_ds = make_dataset(reader, val_tiles, batch_size=batch_size, cache=True)
    # a fine-tune keeps the model it starts from unless a checkpoint beats it on val (step 0 below)
    start_iou = float(model.evaluate(val_ds, verbose=0, return_dict=True)["iou"]) if init_model is not None else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.train-", dir=out_dir.parent))
    try:
        ckpt = tmp / "best.keras"
        callbacks = [
            keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_iou", mode="max", save_best_only=True, initial_value_threshold=start_iou),
            keras.callbacks.EarlyStopping(monitor="val_iou", mode="max", patience=patience),
            keras.callbacks.TerminateOnNaN(),
        ]
        history, live = fit_stream(model, reader, train_ds, callbacks, live_dir=live_dir, progress=progress,
                                   validation_data=val_ds, epochs=checks, steps_per_epoch=eval_every)
        val_iou = history.history.get("val_iou", [])
        # a fine-tune scores its starting model first, as step 0; a checkpoint exists only if a step beat it
        kept_start = start_iou is not None and bool(val_iou) and bool(np.all(np.isfinite(val_iou)))
        if not ckpt.exists() and not kept_start:
            raise ModelError(f"training produced no checkpoint (loss became NaN?); lower train.learning_rate (now {learning_rate})")
        scores = [start_iou, *val_iou] if start_iou is not None else list(val_iou)
        first_step = 0 if start_iou is not None else eval_every  # the step scores[0] was taken at
        best_check = int(np.nanargmax(scores))  # the first best, as the checkpoint keeps it
        best = keras.saving.load_model(ckpt, compile=False) if ckpt.exists() else load_model(init_model)[0]
        steps_run = first_step + (len(scores) - 1) * eval_every

        from navml.segment.evaluate import val_thresholds

        chosen = val_thresholds(best, reader, val_tiles, batch_size=batch_size, metric=threshold_metric, progress=progress)
        thresholds = {name: {"threshold": thr, f"val_{threshold_metric}": score} for name, (thr, score) in zip(classes, chosen)}
        summary = {
            "best_step": first_step + best_check * eval_every,
            "steps_run": steps_run,
            "best_val_iou": float(scores[best_check]),
            "train_samples": steps_run * batch_size,
            "crop": crop or size,
            "train_tiles": train_tiles.per_epoch,
            "train_positive_tiles": len(train_tiles.positives),
            "train_negative_tiles": len(train_tiles.negatives),
            "val_tiles": len(val_tiles),
            "class_weights": weights,
            "gsd_m": round(gsd_ref, 6),
        }
        if len(stores) > 1:
            summary["cities"] = [{"store": str(st.root), "factor": round(f, 4)} for st, f in zip(stores, factors)]
        if hard:
            summary["hard_tiles"] = len(train_tiles.hard)
            summary["hard_repeats"] = int(hard_repeats)
            summary["mined_pixels"] = int(sum(int(np.count_nonzero(m)) for m in hard.values()))
            summary["mined_weight"] = float(mined_weight)
        if init_model is not None:
            summary["init_model"] = Path(init_model).as_posix()
            summary["start_val_iou"] = start_iou
        if live is not None:
            live.summary.update({"best_val_iou": summary["best_val_iou"], "best_step": summary["best_step"]})
            live.make_summary()
        from navml.models.io import ModelMeta, save_model

        meta = ModelMeta(
            task="segmentation",
            classes=classes,
            zoom=store.grid.zoom,
            tile_size=size,
            bands=bands,
            stride=stride,
            receptive_field=receptive_field(depth, downsample=downsample),
            extra={
                "architecture": "unet",
                "receptive_halo": receptive_halo(depth, downsample=downsample),
                "depth": depth,
                "base_filters": base_filters,
                "downsample": downsample,
                "encoder": encoder,
                "loss": list(terms),
                "seed": seed,
                "thresholds": {k: v["threshold"] for k, v in thresholds.items()},
                **summary,
            },
        )
        save_model(best, meta, out_dir)
        write_json(out_dir / THRESHOLDS_FILE, thresholds)
        # wall time stays out of meta.json: same params and data give the same metadata
        return {**summary, "thresholds": thresholds, "model_dir": str(out_dir), "seconds": round(time.monotonic() - started, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
