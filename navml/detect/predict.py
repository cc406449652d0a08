"""Seamless detection of turn-lane markings over every tile of an AOI.

The detector runs on the windows of :mod:`navml.models.inference` (the
segmentation's windowing: cores of whole tiles up to ``window`` px, a halo of
at least half the receptive field read across tile and shard borders,
windows on the output-stride grid). Of each window's output only the cells
of its core are decoded, with the window's offset as ``origin`` so that the
boxes are in global pixels; a decoded centre lies in its own cell (with an
offset scale ``s > 1``, ``detect.offset_scale``, up to ``(s - 1) / 2`` cells beyond
it, so one more ring of cells is decoded), so a box comes from the one window
whose core holds its centre
(:func:`~navml.detect.nms.centre_in_core` checks it, and with
``core_margin_px > 0`` also takes boxes just outside the core, whose twins NMS
then drops). Class-aware NMS runs once over the whole AOI
(:func:`grid_nms`: the greedy NMS of :func:`navml.detect.nms.nms`, with a
spatial hash instead of the all-pairs IoU matrix, so memory stays linear in
the detections). Since every output cell equals the cell of one run over the
whole mosaic, the detections equal those of that run: a marking on a tile or
shard border comes out once, whatever the window size.

No imagery, no detection: a box whose centre pixel has no valid imagery, or
lies outside the AOI tiles, is dropped; a window without valid imagery is not run.

The model folder is the one of :func:`navml.models.io.save_model` with
``task: detection``; ``classes`` are the detection names in class-id order
and ``extra`` holds ``anchors`` (list of ``[w, h]`` pixels, the head's anchor
order) and ``score_threshold`` (the score the training chose, used when
``score_threshold`` is None).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from navml.config import DetectPredictParams
from navml.detect.nms import box_iou, centre_in_core, nms
from navml.detect.table import COLUMNS, detections_table, read_detections, write_detections  # noqa: F401 - the table of this stage
from navml.detect.targets import N_BOX, TO, Detections, decode_cells, sigmoid
from navml.errors import ConfigError, ModelError
from navml.geo.grid import Grid, Tile, tiles_ground_resolution
from navml.geo.store import Store, WindowReader
from navml.models.inference import (
    READER_SHARDS,
    Job,
    ModelFiles,
    Rescale,
    check_inputs,
    model_input,
    model_runner,
    prediction_halo,
    rescaled_jobs,
    scale_factor,
    tf_threads,
    to_model_grid,
)

_P = DetectPredictParams()
#: Params section named in messages.
KEY = "detect_predict"


@dataclass(frozen=True)
class Detector:
    """What prediction needs from a detector's ``meta.json``."""

    names: list[str]
    anchors: np.ndarray  # (A, 2) w, h pixels
    stride: int
    receptive_field: int
    score_threshold: float | None
    offset_scale: float = 1.0  # centre offset s sigmoid(t) - (s - 1) / 2 (navml.detect.targets)


def detector_of(meta, where: str) -> Detector:
    """The :class:`Detector` of a :class:`~navml.models.io.ModelMeta`; a :class:`ModelError` when it is not a usable detector."""
    if meta.task != "detection":
        raise ModelError(f"{where}: is a {meta.task} model; predict_detect needs a detection model (data/models/det)")
    try:
        anchors = np.asarray(meta.extra["anchors"], float).reshape(-1, 2)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: meta.json has no anchors (extra.anchors: list of [w, h] pixels); retrain the detector") from exc
    if not len(anchors) or not (np.isfinite(anchors).all() and (anchors > 0).all()):
        raise ModelError(f"{where}: meta.json anchors {anchors.tolist()} are not positive [w, h] pixels; retrain the detector")
    thr = meta.extra.get("score_threshold")
    scale = float(meta.extra.get("offset_scale", 1.0))
    return Detector(list(meta.classes), anchors, int(meta.stride), int(meta.receptive_field), None if thr is None else float(thr), scale)


def check_detector(meta, grid: Grid, bands: int, names: Sequence[str], where: str) -> Detector:
    """Refuse a model trained for another task, zoom, tile size, band count or list of names; return its :class:`Detector`."""
    det = detector_of(meta, where)
    if meta.tile_size != grid.tile_size:
        raise ModelError(
            f"{where}: model was trained on {meta.tile_size}-px tiles (another pixel size), the store has {grid.tile_size}-px tiles; "
            f"retrain or set grid.tile_size: {meta.tile_size}"
        )
    meta.check_fits(zoom=grid.zoom, bands=bands, classes=list(names), where=where)
    if grid.tile_size % det.stride:
        raise ModelError(f"{where}: output stride {det.stride} px does not divide the {grid.tile_size}-px tiles; windows would be off the cell grid")
    return det


def grid_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float = _P.nms_iou) -> np.ndarray:
    """Indices kept by greedy class-aware NMS, highest score first: the result of :func:`navml.detect.nms.nms`, in its order.

    A box is dropped when a kept box of its class with a higher score (ties:
    the earlier box) overlaps it by more than ``iou_threshold``. Kept boxes are
    hashed into square cells of the largest box side, so each box is compared
    only with kept boxes of the neighbouring cells: time and memory linear in
    the number of boxes for boxes of bounded size.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"params: {KEY}.nms_iou is {iou_threshold}; use a value in (0, 1], such as 0.5")
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    scores = np.asarray(scores, float).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    if not len(boxes):
        return np.zeros(0, int)
    cell = max(float(np.max(boxes[:, 2:] - boxes[:, :2])), 1e-6)
    order = np.argsort(-scores, kind="stable")
    kept: dict[tuple, list[int]] = {}
    keep: list[int] = []
    for n in order:
        b = boxes[n]
        c = class_ids[n]
        i0, j0 = math.floor(b[0] / cell), math.floor(b[1] / cell)
        i1, j1 = math.floor(b[2] / cell), math.floor(b[3] / cell)
        near = [k for i in range(i0 - 1, i1 + 2) for j in range(j0 - 1, j1 + 2) for k in kept.get((c, i, j), ())]
        if near and (box_iou(b[None], boxes[near])[0] > iou_threshold).any():
            continue
        keep.append(int(n))
        kept.setdefault((c, i0, j0), []).append(int(n))
    k = np.array(keep, dtype=int)
    return k[np.lexsort((k, class_ids[k], -scores[k]))]  # nms's order: score, then class, then input order


def _concat(parts: Sequence[Detections]) -> Detections:
    """One :class:`Detections` of several."""
    if not parts:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    return Detections(np.concatenate([p.boxes.reshape(-1, 4) for p in parts]), np.concatenate([p.scores for p in parts]),
                      np.concatenate([np.asarray(p.class_ids, int) for p in parts]))


@dataclass(frozen=True)
class DetectReport:
    """What :func:`detect_store` did."""

    tiles: int
    shards: int
    windows: int
    halo: int  # pixels
    aoi_pixels: int
    input_pixels: int  # pixels fed to the detector, halo included
    candidates: int  # boxes kept in the cores before NMS
    detections: int  # after NMS
    score_threshold: float
    seconds: float

    @property
    def overhead(self) -> float:
        """Pixels fed to the detector per AOI pixel (1.0 = no halo cost)."""
        return self.input_pixels / max(1, self.aoi_pixels)


@dataclass(frozen=True)
class DetectTask:
    """One window of :func:`detect_store`, as a task of :func:`navml.geo.parallel.map_shards` (picklable: the store is
    a path; ``present`` holds only the AOI tiles the window's input touches)."""

    store: Store
    layer: str
    bands: int
    job: Job
    det: Detector
    n_names: int
    score_threshold: float
    core_margin_px: float
    present: frozenset[tuple[int, int]]
    where: str
    threads: int | None = None  # TensorFlow threads per op on a worker (the client's: same bytes); None: as it is
    rescale: Rescale | None = None  # a store at another ground resolution than the detector's: read and model windows
    nms_iou: float = _P.nms_iou  # NMS of the proposals before the second stage reads them


def read_detect_input(task: DetectTask, reader: WindowReader | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """The detector input of a window (None when its core has no imagery) and the input's valid-data mask.

    ``reader``: a :class:`~navml.geo.store.WindowReader` of the task's layer, kept open across the windows
    of one thread (the shards a halo shares with the next window are not opened and decoded again);
    None: one for this window only (its mask and pixels still share the open shards)."""
    if reader is None:
        with task.store.reader(task.layer) as own:
            return read_detect_input(task, own)
    job, rs = task.job, task.rescale
    src = rs.read if rs else job.input
    valid = reader.read_valid(src)
    r0, c0 = job.core.row - src.row, job.core.col - src.col
    if not valid[r0 : r0 + job.core.height, c0 : c0 + job.core.width].any():
        return None, valid
    x = model_input(reader.read_window(src, bands=task.bands))
    return (to_model_grid(x, rs) if rs else x), valid


def keep_boxes(task: DetectTask, y: np.ndarray, valid: np.ndarray, x: np.ndarray | None = None, refiner=None) -> Detections:
    """Boxes of a window's core (and margin) from the detector's raw output ``y`` (batch, rows, cols, values):
    decoded, centre in core, on imagery, in an AOI tile.

    Resampled (:class:`~navml.models.scale.Rescale`), boxes are decoded on the model's grid and divided
    by the factor back into store pixels. ``refiner`` (:class:`navml.detect.refine.Refiner`, with the window's
    model input ``x``): the proposals of the core (down to its floor, after NMS) are read again by the second
    stage, and those scoring at least the threshold are kept. Which window a box belongs to is decided by its
    proposal's centre, so each proposal is refined in exactly one window."""
    if refiner is not None and x is None:
        raise ModelError(f"{task.where}: the second stage needs the window's input")
    det, job, rs = task.det, task.job, task.rescale
    stride, size = det.stride, task.store.grid.tile_size
    per = N_BOX + task.n_names
    n_out = len(det.anchors) * per
    if y.ndim != 4:
        raise ModelError(f"{task.where}: detector output has shape {y.shape}; expected (batch, rows / stride, cols / stride, {n_out})")
    y = y[0]
    f = rs.factor if rs else 1.0
    # a centre lies in its own cell, or up to (s - 1) / 2 cells beyond it with an offset scale s > 1
    margin_cells = math.ceil(task.core_margin_px * f / stride + (det.offset_scale - 1.0) / 2.0)
    inp, core = (rs.model if rs else job.input), job.core
    src = rs.read if rs else job.input
    gh, gw = inp.height // stride, inp.width // stride
    if y.shape != (gh, gw, n_out):
        raise ModelError(f"{task.where}: detector output has shape {y.shape} for a {inp.height} x {inp.width} window; expected ({gh}, {gw}, {n_out})")
    i0 = max(0, math.floor((core.row * f - inp.row) / stride) - margin_cells)
    j0 = max(0, math.floor((core.col * f - inp.col) / stride) - margin_cells)
    i1 = min(gh, math.ceil(((core.row + core.height) * f - inp.row) / stride) + margin_cells)
    j1 = min(gw, math.ceil(((core.col + core.width) * f - inp.col) / stride) + margin_cells)
    y = y[i0:i1, j0:j1]
    # only cells (and anchors) whose objectness reaches the threshold can hold a box (score <= objectness); they
    # are decoded as decode() decodes each run of such rows (the same values, origins and order: by run, then
    # by score, ties in cell order), without decoding the other cells of those rows
    n_a = len(det.anchors)
    gate = refiner.floor if refiner is not None else task.score_threshold
    hit = sigmoid(y[..., TO::per]) >= gate
    ii, jj, aa = np.nonzero(hit)
    if len(ii):
        runs = np.flatnonzero(np.diff(np.concatenate([[0], hit.any(axis=(1, 2)).astype(np.int8), [0]])))[::2]
        start = runs[np.searchsorted(runs, ii, side="right") - 1]  # first row of each cell's run
        raw = y.reshape(*y.shape[:2], n_a, per)[ii, jj, aa]
        boxes, scores, class_ids = decode_cells(raw, ii - start, jj, aa, det.anchors, stride, det.offset_scale)
        ok = np.flatnonzero(scores >= gate)
        order = ok[np.lexsort((-scores[ok], start[ok]))]  # stable: decode's argsort within each run
        ox = np.full(len(order), float(inp.col + j0 * stride))
        oy = (inp.row + (i0 + start[order]) * stride).astype(float)  # each run's origin, as decode is given it
        d = Detections(boxes[order] + np.stack([ox, oy, ox, oy], axis=1), scores[order], class_ids[order])
    else:
        d = _concat([])
    d = d.take(centre_in_core(d.boxes / f, (core.col, core.row, core.col + core.width, core.row + core.height), task.core_margin_px))
    if refiner is not None and len(d):
        d = d.take(nms(d.boxes, d.scores, d.class_ids, task.nms_iou))
        d = refiner(x[0], d, origin=(float(inp.col), float(inp.row)))
        d = d.take(d.scores >= task.score_threshold)
    if f != 1.0 and len(d):
        d = Detections(d.boxes / f, d.scores, d.class_ids)
    if not len(d):
        return d
    cx = np.floor((d.boxes[:, 0] + d.boxes[:, 2]) / 2).astype(int)
    cy = np.floor((d.boxes[:, 1] + d.boxes[:, 3]) / 2).astype(int)
    r, c = np.clip(cy - src.row, 0, src.height - 1), np.clip(cx - src.col, 0, src.width - 1)
    ok = valid[r, c] & np.array([(int(a) // size, int(b) // size) in task.present for a, b in zip(cx, cy)], bool)
    return d.take(ok)


def detect_window(task: DetectTask, model: ModelFiles) -> Detections:
    """The boxes of one window, its input read here: a task that runs on any worker (the model built once per worker)."""
    x, valid = read_detect_input(task)
    if x is None:
        return _concat([])
    return keep_boxes(task, model.runner(task.bands, task.threads)(x), valid, x, refiner_of(model))


def refiner_of(model: ModelFiles):
    """The second stage in a model's files (:func:`navml.detect.refine.load_refiner`), loaded once per process; None
    when they hold none."""
    from navml.detect.refine import load_refiner
    from navml.geo.parallel import worker_cached
    from navml.models.io import read_meta

    def build():
        with model.unpacked() as tmp:
            return load_refiner(tmp, read_meta(tmp))

    return worker_cached(("refiner", model.digest), build)


def detect_store(
    store: Store,
    tiles: Sequence[Tile],
    model_dir: str | os.PathLike,
    names: Sequence[str],
    *,
    window: int = _P.window_px,
    halo: int | None = None,
    nms_iou: float = _P.nms_iou,
    score_threshold: float | None = _P.score_threshold,
    core_margin_px: float = _P.core_margin_px,
    layer: str = "imagery",
    progress: bool = True,
    resample: bool = True,
    scheduler=None,
    workers: int | None = None,
) -> tuple[Detections, DetectReport]:
    """Detections (global pixel boxes) of the detector in ``model_dir`` over every tile of ``tiles``.

    ``names``: the detection names of the registry in class-id order (the
    model must have the same). ``halo`` None: half the receptive field;
    ``score_threshold`` None: the model's own (``meta.json``). The inputs are
    checked before the model is loaded. ``resample``: windows of a store at another ground resolution
    than the detector's (``meta.extra["gsd_m"]``) run resampled to it (as :mod:`navml.segment.predict`).

    ``scheduler`` / ``workers`` say where the windows run
    (:func:`navml.geo.parallel.resolve_scheduler`): in this process by
    default; else each window is a task (:func:`detect_window`) that reads its
    input by path and runs the model (its files sent once to each worker,
    loaded once per worker, with this process's TensorFlow threads per op),
    and NMS runs here over the boxes of all windows in plan order, so the
    detections are the same wherever the windows ran.
    """
    from navml.geo.parallel import map_shards, resolve_scheduler
    from navml.models.io import load_model, read_meta

    plan = resolve_scheduler(scheduler, workers)
    check_inputs(store, tiles, window, layer, KEY)
    kw = dict(window=window, halo=halo, nms_iou=nms_iou, score_threshold=score_threshold, core_margin_px=core_margin_px,
              layer=layer, progress=progress, where=str(model_dir), resample=resample)
    if plan.serial:
        from navml.detect.refine import load_refiner

        model, meta = load_model(model_dir)
        return detect_with_model(store, tiles, model, meta, names, refiner=load_refiner(model_dir, meta), **kw)
    meta = read_meta(model_dir)
    files = ModelFiles.read(model_dir)

    def windows(tasks: list[DetectTask]):
        if plan.distributed:  # workers compute as this process would: the same boxes
            threads = tf_threads()
            tasks = [dataclasses.replace(t, threads=threads) for t in tasks]
        return map_shards(detect_window, tasks, scheduler=plan, shared=files, desc=KEY, unit="window", progress=False)

    return _detect(store, tiles, meta, names, windows=windows, **kw)


def detect_with_model(
    store: Store,
    tiles: Sequence[Tile],
    model,
    meta,
    names: Sequence[str],
    *,
    window: int = _P.window_px,
    halo: int | None = None,
    nms_iou: float = _P.nms_iou,
    score_threshold: float | None = _P.score_threshold,
    core_margin_px: float = _P.core_margin_px,
    layer: str = "imagery",
    progress: bool = True,
    where: str = "model",
    resample: bool = True,
    refiner=None,
) -> tuple[Detections, DetectReport]:
    """:func:`detect_store` with a model in memory (``keras.Model`` and its ``ModelMeta``), in this process;
    ``where`` names it in errors; ``refiner``: its second stage (:func:`navml.detect.refine.load_refiner`), if any."""

    def windows(tasks: list[DetectTask]):
        # one reading thread with the shards kept open across windows: read the next window, decode the last
        with (tasks[0].store.reader(tasks[0].layer, READER_SHARDS) as shards, ThreadPoolExecutor(1) as reader,
              ThreadPoolExecutor(1) as post):
            next_x = reader.submit(read_detect_input, tasks[0], shards)  # read while the model is folded and traced
            run = model_runner(model, tasks[0].bands)
            for i, task in enumerate(tasks):
                x, valid = next_x.result()
                if i + 1 < len(tasks):
                    next_x = reader.submit(read_detect_input, tasks[i + 1], shards)
                if x is None:
                    yield None
                    continue
                y = run(x)
                yield post.submit(keep_boxes, task, y, valid, x if refiner is not None else None, refiner)
                del x

    return _detect(store, tiles, meta, names, window=window, halo=halo, nms_iou=nms_iou, score_threshold=score_threshold,
                   core_margin_px=core_margin_px, layer=layer, progress=progress, where=where, windows=windows,
                   resample=resample)


def _detect(store, tiles, meta, names, *, window, halo, nms_iou, score_threshold, core_margin_px, layer, progress, where,
            windows, resample=True) -> tuple[Detections, DetectReport]:
    """Plan the windows, get their boxes from ``windows(tasks)`` (in task order: Detections, futures of them, or None),
    and run NMS over all of them."""
    t_start = time.perf_counter()
    tiles, bands, groups = check_inputs(store, tiles, window, layer, KEY)
    grid = store.grid
    det = check_detector(meta, grid, bands, names, where)
    if score_threshold is None:
        if det.score_threshold is None:
            raise ModelError(f"{where}: meta.json has no score_threshold; set {KEY}.score_threshold to a score 0..1")
        score_threshold = det.score_threshold
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"params: {KEY}.score_threshold is {score_threshold}; use a score in 0..1")
    if core_margin_px < 0:
        raise ConfigError(f"params: {KEY}.core_margin_px is {core_margin_px}; use 0 or more")
    stride = det.stride
    halo = prediction_halo(det.receptive_field, stride, halo, KEY)
    factor = scale_factor(meta.extra.get("gsd_m"), tiles_ground_resolution(tiles, grid.tile_size)) if resample else 1.0
    planned = rescaled_jobs(tiles, grid, window, halo, stride, factor)
    jobs = [j for j, _ in planned]
    size = grid.tile_size
    present = {(t.x, t.y) for t in tiles}

    def touched(job: Job, rs: Rescale | None) -> frozenset[tuple[int, int]]:
        w = rs.read if rs else job.input
        return frozenset((x, y) for y in range(w.row // size, (w.row + w.height - 1) // size + 1)
                         for x in range(w.col // size, (w.col + w.width - 1) // size + 1) if (x, y) in present)

    tasks = [DetectTask(store, layer, bands, job, det, len(names), float(score_threshold), float(core_margin_px),
                        touched(job, rs), where, rescale=rs, nms_iou=nms_iou) for job, rs in planned]
    parts: list = []
    with tqdm(total=len(tiles), desc="predict_detect", unit="tile", disable=None if progress else True) as bar:
        for job, got in zip(jobs, windows(tasks)):
            if got is not None:
                parts.append(got)
            bar.update(job.tiles)
        parts = [p.result() if hasattr(p, "result") else p for p in parts]
    merged = _concat(parts)
    out = merged.take(grid_nms(merged.boxes, merged.scores, merged.class_ids, nms_iou))
    report = DetectReport(
        tiles=len(tiles),
        shards=len(groups),
        windows=len(jobs),
        halo=halo,
        aoi_pixels=len(tiles) * size**2,
        input_pixels=sum((r.model if r else j.input).width * (r.model if r else j.input).height for j, r in planned),
        candidates=len(merged),
        detections=len(out),
        score_threshold=float(score_threshold),
        seconds=time.perf_counter() - t_start,
    )
    return out, report
