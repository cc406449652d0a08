"""Training of the YOLOv2-style turn-lane detector on the store's train split.

Steps: anchors by k-means (distance 1 - IoU) over the train split's boxes;
:func:`navml.models.yolo.build_yolo`; :class:`navml.detect.loss.YoloLoss` with
its prior term on for the first ``prior_steps`` optimizer steps; Adam with the
segmentation's warm-up + cosine schedule
(:func:`navml.segment.train.learning_rate_schedule`). Every ``eval_every``
steps the whole val tiles are detected (decode, class-aware NMS) and scored
by mAP@0.5 (:mod:`navml.detect.metrics`); the weights of the best check are
kept and ``patience`` checks without a better one stop early. The score
threshold of best F1 on the val split goes into ``meta.json`` (or the fixed
``score_threshold`` given). Seeded and deterministic like the U-Net's training
(:func:`navml.segment.train.set_determinism`). The model folder is written
only once everything succeeded, so a failed run leaves an earlier model intact.

``meta.json`` of the model folder (what prediction needs), beside the fields of
:class:`navml.models.io.ModelMeta` (``task: detection``, ``classes``: the
detection names in class-id order, ``stride``, ``receptive_field``, ``bands``,
``zoom``, ``tile_size``), holds in ``extra``: ``architecture: yolov2``,
``anchors`` ``[[w, h], ...]`` in pixels (the head's anchor order),
``score_threshold``, ``nms_iou``, ``receptive_halo`` (px: half the receptive
field rounded up to the stride), ``names`` (``[class, name]`` per class id),
``base_filters``, ``stem_convs``, ``stem_filters``, ``anchor_mean_iou`` and the training summary. The model's
raw output is ``(b, rows / stride, cols / stride, A * (5 + C))`` logits, read
by :func:`navml.detect.targets.decode`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from navml.config import DetectParams, RefineParams
from navml.detect.dataset import (
    BOXES_FILE,
    TileBoxes,
    city_boxes,
    count_boxes,
    read_boxes,
    tile_images,
    tile_truths,
    training_dataset,
)
from navml.detect.targets import check_offset
from navml.errors import ConfigError, InputError, ModelError
from navml.geo.store import Store
from navml.io import replace_dir
from navml.segment.dataset import IMAGERY, CityReader, TileReader, check_store, split_tiles

#: Defaults of the keyword arguments below: the params model's, written once there.
_DETECT = DetectParams()
_LOSS = _DETECT.loss
_AUGMENT = _DETECT.augment


def receptive_halo(stride: int, stem_convs: int = 0) -> int:
    """Half the detector's receptive field, rounded up to a multiple of ``stride`` (px): the least prediction halo."""
    from navml.models.yolo import receptive_field

    return int(math.ceil(receptive_field(stride, stem_convs) / 2 / stride) * stride)


def _check_args(names: Sequence[str], steps: int, eval_every: int, batch_size: int, patience: int, crop: int | None, stride: int, size: int) -> None:
    if not names:
        raise ConfigError("classes: no detection class in the registry; add one with task: detection and its names")
    if not 1 <= eval_every <= steps:
        raise ConfigError(f"params: 'detect.eval_every' is {eval_every}; use 1..detect.steps ({steps})")
    if batch_size < 1 or patience < 0:
        raise ConfigError(f"params: 'detect.batch_size' {batch_size} must be 1 or more and 'detect.patience' {patience} 0 or more")
    if size % stride:
        raise ConfigError(f"params: 'detect.stride' {stride} px does not divide grid.tile_size {size}")
    if crop is not None and (not 0 < crop <= size or crop % stride):
        raise ConfigError(f"params: 'detect.crop' is {crop}; use a multiple of detect.stride {stride} up to grid.tile_size {size}, or null")


def _val_check(images, truths, anchors, stride, n_classes, nms_iou, batch_size, patience, offset_scale=1.0):
    """A Keras callback: val mAP@0.5 into ``logs['val_map50']`` after every epoch (check), best weights kept, early stop."""
    import keras

    from navml.detect.evaluate import predict_detections
    from navml.detect.metrics import average_precisions

    class ValCheck(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.scores: list[float] = []
            self.best = -1.0
            self.best_epoch = -1
            self.best_weights = None
            self.start: float | None = None  # a fine-tune's starting val mAP (start_from)
            self.wait = 0

        def score(self, model) -> float:
            dets = predict_detections(model, images, anchors, stride, batch_size=batch_size, nms_iou=nms_iou, offset_scale=offset_scale)
            ap = average_precisions(truths, [(d.boxes, d.scores, d.class_ids) for d in dets], n_classes, (0.5,))[:, 0]
            return float(np.nanmean(ap))

        def start_from(self, model) -> None:
            """A fine-tune's starting ``model`` is step 0: it stays unless a check beats it on val."""
            self.best, self.best_epoch, self.best_weights = self.score(model), -1, model.get_weights()
            self.start = self.best

        def on_epoch_end(self, epoch, logs=None):
            score = self.score(self.model)
            if logs is not None:
                logs["val_map50"] = score
            self.scores.append(score)
            if score > self.best:
                self.best, self.best_epoch, self.wait = score, epoch, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

    return ValCheck()


def _refine_mirror(names: Sequence[str], mirror: Mapping[str, str] | None, rp: RefineParams | None) -> np.ndarray | None:
    """The class mirror table of the second stage's flips (``detect.refine.flip``), None without flips."""
    if rp is None or not rp.steps or not rp.flip:
        return None
    from navml.detect.augment import mirror_table

    try:
        return mirror_table(names, mirror)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or set detect.refine.flip: false (the second stage flips its patches)") from exc


def _train_refiner(model, reader, train_tiles, truth, hard, rp: RefineParams | None, anchors, stride, n, nms_iou, batch_size,
                   offset_scale, mirror, rotate, seed, progress):
    """The second stage on the train tiles (:func:`navml.detect.refine_train.train_refiner`) and its summary; (None, {}) when off."""
    if rp is None or not rp.steps:
        return None, {}
    from navml.detect.evaluate import SCORE_FLOOR, predict_detections
    from navml.detect.refine_train import train_refiner
    from navml.detect.targets import Detections

    images = tile_images(reader, train_tiles)
    truths = tile_truths(reader, train_tiles, truth)
    # the detector's own train proposals, down to a low floor: its false detections are the negatives
    proposals = predict_detections(model, images, anchors, stride, batch_size=batch_size, nms_iou=nms_iou, score_floor=SCORE_FLOOR,
                                   offset_scale=offset_scale, clip=False)
    if hard:  # the mined false detections are negatives here too, whether or not the retrained detector still finds them
        proposals = [d if t not in hard else Detections(np.concatenate([d.boxes, np.asarray(hard[t], float).reshape(-1, 4)]),
                                                        np.concatenate([d.scores, np.ones(len(hard[t]))]),
                                                        np.concatenate([d.class_ids, np.zeros(len(hard[t]), d.class_ids.dtype)]))
                     for t, d in zip(train_tiles, proposals)]
    refiner = train_refiner(images, truths, proposals, n, mirror=mirror, rotate=rotate, seed=seed, progress=progress, **rp.model_dump())
    return refiner, {"steps": rp.steps, "train_proposals": int(sum(len(d) for d in proposals))}


def train_detection(
    store: Store | Sequence[Store],
    index: pd.DataFrame | Sequence[pd.DataFrame],
    names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    boxes: Mapping | None = None,
    mirror: Mapping[str, str] | None = None,
    classes_of: Sequence[str] | None = None,
    bands: int = _DETECT.bands,
    stride: int = _DETECT.stride,
    anchors: int = _DETECT.anchors,
    anchor_seed: int = _DETECT.anchor_seed,
    base_filters: int = _DETECT.base_filters,
    stem_convs: int = _DETECT.stem_convs,
    stem_filters: int = _DETECT.stem_filters,
    coord: float = _LOSS.coord,
    obj: float = _LOSS.obj,
    noobj: float = _LOSS.noobj,
    cls: float = _LOSS.cls,
    prior: float = _LOSS.prior,
    offset_scale: float = _DETECT.offset_scale,
    neighbours: bool = _DETECT.neighbours,
    ignore_iou: float = _DETECT.ignore_iou,
    max_truths: int = _DETECT.max_truths,
    prior_steps: int = _DETECT.prior_steps,
    steps: int = _DETECT.steps,
    eval_every: int = _DETECT.eval_every,
    warmup_steps: int = _DETECT.warmup_steps,
    crop: int | None = _DETECT.crop,
    box_crops: float = _DETECT.box_crops,
    batch_size: int = _DETECT.batch_size,
    learning_rate: float = _DETECT.learning_rate,
    patience: int = _DETECT.patience,
    flip: bool = _AUGMENT.flip,
    rotate: bool = _AUGMENT.rotate,
    nms_iou: float = _DETECT.nms_iou,
    score_threshold: float | None = _DETECT.score_threshold,
    seed: int = _DETECT.seed,
    gsd_m: float | None = None,
    refine: RefineParams | Mapping | None = _DETECT.refine,
    init_model: str | os.PathLike | None = None,
    hard: Mapping | None = None,
    hard_repeats: int = 1,
    mined_weight: float | None = None,
    live_dir: str | os.PathLike | None = None,
    progress: bool = True,
    where: str = "tile index",
) -> dict:
    """Train the detector for the detection ``names`` (class-id order of ``boxes.csv``) and save it in ``out_dir``.

    ``index``: the tile index (z, x, y, split); ``store``: layer ``imagery``
    and ``boxes.csv`` (or ``boxes``: truth per tile as :func:`navml.detect.dataset.read_boxes`
    returns it). ``mirror``: the registry's optional mirror mapping of names
    (:func:`navml.detect.augment.mirror_table`); ``classes_of``: the registry
    class of each name (for ``meta.json``). Sizes in pixels. The budget is
    ``steps`` optimizer steps of ``batch_size`` crops of ``crop`` px
    (``steps`` rounds up to a multiple of ``eval_every``). ``score_threshold``
    None chooses the score of best F1 (over all classes, IoU 0.5) on the val
    split. Returns a summary dict (also in ``meta.extra``) with ``seconds``.

    ``store`` and ``index`` may be lists (one per city): the union of their splits, each store's tiles
    and boxes resampled to one ground resolution, ``gsd_m`` (None: the coarsest city's), recorded in
    ``meta.extra["gsd_m"]`` (:func:`navml.segment.train.training_sources`).

    ``refine`` (:class:`~navml.config.RefineParams`, or its mapping): the second stage
    (:mod:`navml.detect.refine`), trained after the detector on the train tiles and the detector's proposals
    there (the mined boxes of ``hard`` among them); ``steps: 0`` or None trains none. The score threshold is
    then chosen on the second stage's scores.

    Hard-negative retraining (:mod:`navml.mining.detect`): ``init_model`` (a detector folder) starts from its
    weights, with its anchors, stride, base filters, offset scale (and ``gsd_m`` when not given) instead of
    new ones; ``hard`` maps train tiles (:class:`~navml.segment.dataset.SourceTile` s over several stores)
    to mined boxes (M, 4) in their store's tile pixels: each such tile is drawn ``hard_repeats`` times per
    pass and the no-object loss weighs ``mined_weight`` in the cells the boxes cover
    (:func:`navml.detect.dataset.batch_stream`).
    """
    from navml.detect.anchors import box_shapes, kmeans_anchors
    from navml.detect.augment import mirror_table
    from navml.models.yolo import receptive_field
    from navml.segment.train import training_sources

    started = time.monotonic()
    names = list(names)
    n = len(names)
    rp = RefineParams(**refine) if isinstance(refine, Mapping) else refine
    first = None
    if init_model is not None:
        from navml.models.io import read_meta

        first = read_meta(init_model)
        if first.task != "detection":
            raise ModelError(f"{init_model}: a {first.task} model, not a detection one; pass the first detector's folder")
        try:
            stride, base_filters = int(first.stride), int(first.extra["base_filters"])
            offset_scale = float(first.extra.get("offset_scale", 1.0))
            first_anchors = np.asarray(first.extra["anchors"], float).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{init_model}: meta.json lacks the detector's anchors or base_filters ({exc}); retrain it") from exc
        anchors = len(first_anchors)
        if gsd_m is None and first.extra.get("gsd_m"):
            gsd_m = float(first.extra["gsd_m"])
    stores, index, factors, gsd_ref = training_sources(store, index, gsd_m)
    store = stores[0]
    size = store.grid.tile_size
    _check_args(names, steps, eval_every, batch_size, patience, crop, stride, size)
    check_offset(offset_scale, neighbours)
    if crop == size:
        crop = None
    if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:
        raise ConfigError(f"params: 'detect.score_threshold' is {score_threshold}; use 0..1 or auto")
    out_dir = Path(out_dir)
    boxes_path = store.root / BOXES_FILE
    if factors == [1.0]:
        truth = read_boxes(boxes_path, n) if boxes is None else dict(boxes)
    else:
        truth = city_boxes([read_boxes(s.root / BOXES_FILE, n) for s in stores] if boxes is None else boxes, factors)

    train_tiles = split_tiles(index, "train", where)
    val_tiles = split_tiles(index, "val", where)
    for split, tiles in (("train", train_tiles), ("val", val_tiles)):
        if not tiles:
            raise InputError(f"{where}: split '{split}' has no tile; enlarge the AOI or raise cover.split.{split}")
        if not count_boxes(truth, tiles, n).sum():
            raise InputError(f"{boxes_path}: split '{split}' has no detection box; check the labels of the detection class or use a larger AOI")
    if factors == [1.0]:
        check_store(store, train_tiles + val_tiles, bands, (IMAGERY,))
    else:
        for i, st in enumerate(stores):
            check_store(st, [t.tile for t in train_tiles + val_tiles if t.source == i], bands, (IMAGERY,))
    train_counts = count_boxes(truth, train_tiles, n)
    val_counts = count_boxes(truth, val_tiles, n)
    train_boxes = np.concatenate([truth[t][0] for t in train_tiles if t in truth])
    if first is None:
        fit = kmeans_anchors(box_shapes(train_boxes), anchors, seed=anchor_seed, where="detect.anchors")
    else:
        from navml.detect.anchors import Anchors, shape_iou

        best = shape_iou(box_shapes(train_boxes), first_anchors).max(axis=1)
        fit = Anchors(wh=first_anchors, mean_iou=float(best.mean()), counts=np.zeros(len(first_anchors), int), iterations=0)
    if hard:
        from navml.segment.dataset import SourceTile

        if len(stores) == 1 and train_tiles and isinstance(train_tiles[0], SourceTile):  # one store, resampled
            hard = {(t if isinstance(t, SourceTile) else SourceTile(t.x, t.y, t.z, 0)): b for t, b in hard.items()}
        known = set(train_tiles)
        outside = sorted(str(t) for t in hard if t not in known)
        if outside:
            raise InputError(f"hard negatives on tile {outside[0]}, which is not a train tile of {where}; only train tiles are mined")
        if factors != [1.0]:  # boxes in store pixels -> model pixels, as the tiles are resampled
            hard = {t: np.asarray(b, float) * factors[t.source] for t, b in hard.items()}
    mirror_ids = mirror_table(names, mirror) if flip else np.arange(n)  # names need a mirror image only when flipped

    import keras

    from navml.detect.loss import YoloLoss
    from navml.models.yolo import build_yolo
    from navml.segment.train import fit_stream, learning_rate_schedule, set_determinism

    set_determinism(seed)
    if factors == [1.0]:
        reader = TileReader(store, 0, bands)
    else:
        reader = CityReader([TileReader(st, 0, bands, cache_mb=1024.0 / len(stores)) for st in stores], factors)
    val_images = tile_images(reader, val_tiles)
    val_truths: list[TileBoxes] = tile_truths(reader, val_tiles, truth)
    if first is None:
        model = build_yolo(bands, n, anchors, stride, base_filters, stem_convs=stem_convs, stem_filters=stem_filters)
    else:
        from navml.models.io import load_model

        model, _ = load_model(init_model)
        first.check_fits(zoom=store.grid.zoom, bands=bands, classes=names, where=str(init_model))
    checks = -(-steps // eval_every)
    total_steps = checks * eval_every
    optimizer = keras.optimizers.Adam(learning_rate_schedule(learning_rate, total_steps, warmup_steps))
    loss = YoloLoss(
        fit.wh, stride, coord=coord, obj=obj, noobj=noobj, cls=cls, prior=prior, ignore_iou=ignore_iou,
        warmup_steps=prior_steps if first is None else 0, max_truths=max_truths, offset_scale=offset_scale,
        noobj_weighted=mined_weight is not None, step=optimizer.iterations,
    )
    model.compile(optimizer=optimizer, loss=loss, jit_compile=False)
    train_ds = training_dataset(
        reader, train_tiles, truth, anchors=fit.wh, n_classes=n, mirror=mirror_ids, batch_size=batch_size, stride=stride,
        crop=crop, flip=flip, rotate=rotate, box_crops=box_crops, neighbours=neighbours, seed=seed,
        hard=hard, hard_repeats=hard_repeats, mined_weight=mined_weight,
    )
    check = _val_check(val_images, val_truths, fit.wh, stride, n, nms_iou, batch_size, patience, offset_scale)
    if init_model is not None:
        check.start_from(model)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.train-", dir=out_dir.parent))
    try:
        fit_started = time.monotonic()
        _, live = fit_stream(model, reader, train_ds, [check, keras.callbacks.TerminateOnNaN()], live_dir=live_dir, progress=progress,
                             epochs=checks, steps_per_epoch=eval_every)
        fit_seconds = time.monotonic() - fit_started
        if check.best_weights is None or not np.isfinite(check.best) or any(not np.isfinite(w).all() for w in check.best_weights):
            raise ModelError(f"training produced no usable weights (loss became NaN?); lower detect.learning_rate (now {learning_rate})")
        model.set_weights(check.best_weights)

        from navml.detect.evaluate import best_f1_threshold, predict_detections

        refiner, refine_summary = _train_refiner(model, reader, train_tiles, truth, hard, rp, fit.wh, stride, n, nms_iou, batch_size,
                                                 offset_scale, _refine_mirror(names, mirror, rp), rotate, seed, progress)
        dets = predict_detections(model, val_images, fit.wh, stride, batch_size=batch_size, nms_iou=nms_iou, offset_scale=offset_scale,
                                  refiner=refiner)
        val_preds = [(d.boxes, d.scores, d.class_ids) for d in dets]
        if refiner is not None:
            from navml.detect.metrics import mean_ap

            refine_summary["val_map50"] = round(mean_ap(val_truths, val_preds, n).map50, 6)
        chosen = best_f1_threshold(val_truths, val_preds, n)
        if score_threshold is not None:
            from navml.detect.metrics import counts_at

            c = counts_at(val_truths, val_preds, n, float(score_threshold))
            tp, fp, fn = int(c.tp.sum()), int(c.fp.sum()), int(c.fn.sum())
            chosen = {"threshold": float(score_threshold), "f1": 2 * tp / max(2 * tp + fp + fn, 1),
                      "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}
        summary = {
            "best_step": (check.best_epoch + 1) * eval_every,
            "steps_run": len(check.scores) * eval_every,
            "best_val_map50": round(check.best, 6),
            "train_samples": len(check.scores) * eval_every * batch_size,
            "crop": crop or size,
            "train_tiles": len(train_tiles),
            "val_tiles": len(val_tiles),
            "train_boxes": {k: int(v) for k, v in zip(names, train_counts)},
            "val_boxes": {k: int(v) for k, v in zip(names, val_counts)},
            "anchor_mean_iou": round(fit.mean_iou, 4),
            "val_f1": round(chosen["f1"], 6),
            "val_precision": round(chosen["precision"], 6),
            "val_recall": round(chosen["recall"], 6),
            "gsd_m": round(gsd_ref, 6),
        }
        if refiner is not None:
            summary["refine_val_map50"] = refine_summary["val_map50"]
        if init_model is not None:
            summary["init_model"] = Path(init_model).as_posix()
            summary["start_val_map50"] = round(check.start, 6)
        if hard:
            summary["hard_tiles"] = len(hard)
            summary["hard_repeats"] = int(hard_repeats)
            summary["mined_boxes"] = int(sum(len(b) for b in hard.values()))
            summary["mined_weight"] = float(mined_weight or 1.0)
        if len(stores) > 1:
            summary["cities"] = [{"store": str(st.root), "factor": round(f, 4)} for st, f in zip(stores, factors)]
        if live is not None:
            live.summary.update({"best_val_map50": summary["best_val_map50"], "best_step": summary["best_step"]})
            live.make_summary()
        from navml.models.io import ModelMeta, save_model

        meta = ModelMeta(
            task="detection",
            classes=names,
            zoom=store.grid.zoom,
            tile_size=size,
            bands=bands,
            stride=stride,
            receptive_field=receptive_field(stride, stem_convs),
            extra={
                "architecture": "yolov2",
                "anchors": np.round(fit.wh, 4).tolist(),
                "offset_scale": offset_scale,
                "score_threshold": round(float(chosen["threshold"]), 6),
                "score_threshold_from": "fixed" if score_threshold is not None else "val_f1",
                "nms_iou": nms_iou,
                "receptive_halo": receptive_halo(stride, stem_convs),
                "names": [[c, nm] for c, nm in zip(classes_of or [""] * n, names)],
                "base_filters": base_filters,
                "stem_convs": stem_convs,
                "stem_filters": stem_filters,
                "seed": seed,
                **summary,
            },
        )
        staged = tmp / "model"
        if refiner is not None:
            from navml.detect.refine import save_refiner

            meta.extra["refine"] = {**save_refiner(refiner, staged), **refine_summary}
        save_model(model, meta, staged)
        replace_dir(staged, out_dir)
        # wall time stays out of meta.json: same params and data give the same metadata
        return {**summary, "score_threshold": meta.extra["score_threshold"], "anchors": meta.extra["anchors"],
                "model_dir": str(out_dir), "seconds": round(time.monotonic() - started, 1), "fit_seconds": round(fit_seconds, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
