"""Hard negatives of the turn-lane detector: its confident boxes that match no truth box, and training again with them.

Mining (:func:`mine_detection`) runs the first detector over the **train-split**
tiles of one store or of several (cities), never val or test. Markings are own
labels, complete wherever the AOI is, so every train tile counts unless
complete areas are given (``mine_detect.complete``). A detection at or above
the score threshold (``auto``: the model's ``score_threshold`` of
``meta.json``) is a hard negative when its IoU with every truth box of its
tile is below ``iou`` and it lies farther than ``margin_m`` from every truth
box (a box beside an arrow is the label's shift, not a look-alike), and its
ground area is at least ``min_size_m2``. The ``max_negatives`` of highest
score are kept. Each becomes a feature of the hard-negatives schema
(:mod:`navml.mining.negatives`: ``kind: detection``, ``source: mined``) with
``name`` (the detection name it was taken for), ``city`` (the city's name over
several cities, else null) and the box as a WGS84 polygon.

Retraining (:func:`retrain_detection`) maps the kept negatives (``keep:
false`` ones are not used) back to their store by ``city`` and to the train
tiles they cover as boxes in tile pixels, then runs
:func:`navml.detect.train.train_detection` from the first detector
(``mode: finetune``) or afresh (``scratch``) with those tiles drawn
``oversample`` times per pass and the no-object loss weighing ``weight`` in the
cells of the mined boxes. Without a usable negative the first detector is copied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import box as make_box
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from navml.config import MineDetectParams, RetrainDetectParams
from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Tile, metres_to_pixels, pixel_area_m2, tile_key, tile_polygon, tile_window
from navml.geo.store import Store

#: Defaults of the keyword arguments below: the params models', written once there.
_MINE = MineDetectParams()
_RETRAIN = RetrainDetectParams()


@dataclass
class DetectMineReport:
    """What a detector mining run saw and kept."""

    threshold: float = 0.0
    candidates: int = 0  # train tiles (inside complete areas, when given)
    scanned: int = 0  # of them, scanned (tile_share)
    detections: int = 0  # at or above the threshold
    matched: int = 0  # IoU >= iou with a truth box
    near: int = 0  # false, but within margin_m of a truth box
    small: int = 0  # false, below min_size_m2
    found: int = 0  # negatives before the max_negatives cut
    kept: int = 0
    by_name: dict[str, int] = field(default_factory=dict)
    by_city: dict[str, int] = field(default_factory=dict)
    tiles: list[str] = field(default_factory=list)  # tiles of the kept negatives, "z-x-y" or "<city>/z-x-y"

    def as_dict(self) -> dict[str, Any]:
        return {
            "score_threshold": round(self.threshold, 6),
            "train_tiles": self.candidates,
            "tiles_scanned": self.scanned,
            "detections": self.detections,
            "matched_truth": self.matched,
            "left_out_near_truth": self.near,
            "left_out_small": self.small,
            "found": self.found,
            "negatives": self.kept,
            "tiles_with_negatives": len(self.tiles),
            "by_name": dict(sorted(self.by_name.items())),
            "by_city": dict(sorted(self.by_city.items())),
        }


def box_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (px) between each box of ``a`` (n, 4) and each of ``b`` (m, 4): 0 where they touch or overlap; (n, m)."""
    a, b = np.reshape(a, (-1, 4)).astype(float), np.reshape(b, (-1, 4)).astype(float)
    dx = np.maximum(0.0, np.maximum(b[None, :, 0] - a[:, None, 2], a[:, None, 0] - b[None, :, 2]))
    dy = np.maximum(0.0, np.maximum(b[None, :, 1] - a[:, None, 3], a[:, None, 1] - b[None, :, 3]))
    return np.hypot(dx, dy)


def false_boxes(
    boxes: np.ndarray, truths: np.ndarray, iou: float = _MINE.iou, margin_px: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(false, near)`` boolean (n,) of detections (n, 4) against the tile's truth boxes (m, 4), one pixel grid:
    ``false``: IoU below ``iou`` with every truth and farther than ``margin_px`` from all (touching counts as near
    when ``margin_px > 0``); ``near``: below ``iou`` but within the margin."""
    from navml.post.score import box_iou_max

    boxes = np.reshape(boxes, (-1, 4))
    low = box_iou_max(boxes, truths) < iou
    if margin_px > 0 and len(np.reshape(truths, (-1, 4))) and len(boxes):
        close = (box_gap(boxes, truths) <= margin_px).any(axis=1)
    else:
        close = np.zeros(len(boxes), bool)
    return low & ~close, low & close


def _detector(model_dir: str | os.PathLike):
    from navml.models.io import read_meta

    meta = read_meta(model_dir)
    if meta.task != "detection":
        raise ModelError(f"{model_dir}: a {meta.task} model, not a detection one; pass the detector's model folder")
    try:
        anchors = np.asarray(meta.extra["anchors"], float).reshape(-1, 2)
        threshold = float(meta.extra["score_threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{model_dir}: meta.json lacks the detector's anchors or score_threshold ({exc}); retrain it") from exc
    return meta, anchors, threshold


def mine_detection(
    model_dir: str | os.PathLike,
    stores: Sequence[Store],
    indexes: Sequence[pd.DataFrame],
    names: Sequence[str],
    *,
    classes_of: Sequence[str],
    cities: Sequence[str | None] | None = None,
    boxes: Sequence[Mapping] | None = None,
    complete: Sequence[BaseGeometry] | None = None,
    score_threshold: float | None = _MINE.score_threshold,
    iou: float = _MINE.iou,
    margin_m: float = _MINE.margin_m,
    min_size_m2: float = _MINE.min_size_m2,
    max_negatives: int = _MINE.max_negatives,
    tile_share: float = _MINE.tile_share,
    batch_size: int = _MINE.batch_size,
    seed: int = _MINE.seed,
    progress: bool = False,
    where: str = "tile index",
) -> tuple[list[dict[str, Any]], DetectMineReport]:
    """Hard negatives of the detector in ``model_dir`` over the train tiles of ``stores`` (one tile index each).

    ``names``: the detection names in class-id order, ``classes_of`` the registry class of each (the
    feature's ``class``); ``cities``: a name per store (the feature's ``city``; None: null); ``boxes``: truth
    per store (default: each store's ``boxes.csv``); ``complete``: WGS84 areas a train tile must overlap (None:
    every train tile). ``score_threshold`` None takes the model's. Returns ``(features, report)``, features
    sorted by city, tile, then score.
    """
    from tqdm import tqdm

    from navml.detect.dataset import BOXES_FILE, EMPTY, read_boxes, tile_images
    from navml.detect.evaluate import detect_images
    from navml.detect.refine import load_refiner
    from navml.geo.features import to_lonlat
    from navml.geo.grid import tiles_ground_resolution
    from navml.mining.mine import pick_tiles
    from navml.mining.negatives import negative_feature
    from navml.models.io import load_model
    from navml.models.scale import scale_factor
    from navml.segment.dataset import IMAGERY, TileReader, check_store, split_tiles

    stores, indexes, names = list(stores), list(indexes), list(names)
    if len(stores) != len(indexes) or not stores:
        raise ConfigError(f"mine_detect needs one tile index per store; got {len(stores)} store(s) and {len(indexes)} index(es)")
    cities = list(cities) if cities is not None else [None] * len(stores)
    if len(cities) != len(stores):
        raise ConfigError(f"mine_detect: {len(cities)} city names for {len(stores)} stores")
    if max_negatives < 0 or min_size_m2 < 0 or margin_m < 0 or not 0.0 < iou <= 1.0:
        raise ConfigError("params: mine_detect.max_negatives, min_size_m2 and margin_m must be 0 or more, iou in (0, 1]")
    meta, anchors, model_threshold = _detector(model_dir)
    threshold = model_threshold if score_threshold is None else float(score_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"params: mine_detect.score_threshold is {threshold}; use 0..1 or auto")
    report = DetectMineReport(threshold=threshold)
    area = None
    if complete is not None:
        area = shapely.union_all(list(complete))
        shapely.prepare(area)
    model = None
    found: list[tuple[float, int, int, dict[str, Any]]] = []
    for s, (store, index, city) in enumerate(zip(stores, indexes, cities)):
        grid = store.grid
        size = grid.tile_size
        tiles = split_tiles(index, "train", where)
        if area is not None:
            tiles = [t for t in tiles if area.intersects(tile_polygon(t)) and not area.touches(tile_polygon(t))]
        report.candidates += len(tiles)
        tiles = pick_tiles(tiles, tile_share, seed + s)
        report.scanned += len(tiles)
        if not tiles:
            continue
        bands = store.count(IMAGERY)
        if bands == 0:
            raise InputError(f"{store.root / IMAGERY}: no imagery shard; run `dvc repro imagery`")
        meta.check_fits(zoom=grid.zoom, bands=bands, classes=names, where=str(model_dir))
        check_store(store, tiles, bands, (IMAGERY,))
        truth = read_boxes(store.root / BOXES_FILE, len(names)) if boxes is None else dict(boxes[s])
        if model is None:
            model, _ = load_model(model_dir)
            refiner = load_refiner(model_dir, meta)
        factor = scale_factor(meta.extra.get("gsd_m"), tiles_ground_resolution(tiles, size))
        reader = TileReader(store, 0, bands)
        offset_scale = float(meta.extra.get("offset_scale", 1.0))
        nms_iou = float(meta.extra.get("nms_iou", 0.5))
        for start in tqdm(range(0, len(tiles), batch_size), desc="mine_detect", unit="batch", disable=None if progress else True):
            chunk = tiles[start : start + batch_size]
            dets = detect_images(model, tile_images(reader, chunk), anchors, meta.stride, factor=factor, batch_size=batch_size,
                                 nms_iou=nms_iou, offset_scale=offset_scale, refiner=refiner)
            for tile, d in zip(chunk, dets):
                d = d.take(d.scores >= threshold)
                report.detections += len(d)
                if not len(d):
                    continue
                lat = tile_polygon(tile).centroid.y
                margin_px = metres_to_pixels(margin_m, lat, grid.zoom, size) if margin_m else 0.0
                false, near = false_boxes(d.boxes, truth.get(tile, EMPTY)[0], iou, margin_px)
                report.near += int(near.sum())
                report.matched += int(len(d) - false.sum() - near.sum())
                px_m2 = pixel_area_m2(lat, grid.zoom, size)
                w = tile_window(tile, size)
                for k in np.flatnonzero(false):
                    x0, y0, x1, y1 = (float(v) for v in d.boxes[k])
                    if (x1 - x0) * (y1 - y0) * px_m2 < min_size_m2 or x1 <= x0 or y1 <= y0:
                        report.small += 1
                        continue
                    geom = to_lonlat(make_box(x0, y0, x1, y1), grid.zoom, size, origin=(w.col, w.row))
                    cid = int(d.class_ids[k])
                    feat = negative_feature(geom, cls=classes_of[cid], kind="detection", tile=tile_key(tile), score=float(d.scores[k]))
                    feat["properties"].update(name=names[cid], city=city)
                    found.append((-float(d.scores[k]), s, len(found), feat))
    report.found = len(found)
    best = sorted(found, key=lambda x: x[:3])[:max_negatives]
    kept = [f for *_, f in sorted(best, key=lambda x: (x[1], _tile_order(x[3]), x[0], x[2]))]
    report.kept = len(kept)
    for f in kept:
        p = f["properties"]
        report.by_name[p["name"]] = report.by_name.get(p["name"], 0) + 1
        key = str(p["city"]) if p["city"] is not None else "-"
        report.by_city[key] = report.by_city.get(key, 0) + 1
    # "z-x-y", or "<city>/z-x-y" over several cities
    report.tiles = sorted({(f"{p['city']}/" if p["city"] is not None else "") + p["tile"] for p in (f["properties"] for f in kept)})
    return kept, report


def _tile_order(feature: Mapping[str, Any]) -> tuple[int, int, int]:
    z, x, y = (int(v) for v in feature["properties"]["tile"].split("-"))
    return (z, y, x)


def hard_boxes(
    features: Sequence[Mapping[str, Any]], grid, tiles: Sequence[Tile]
) -> dict[Tile, np.ndarray]:
    """The negatives' boxes (k, 4) in tile pixels on each of ``tiles`` they overlap (their bounds, clipped to the
    tile); only ``tiles`` (the train split) are considered."""
    from navml.geo.features import to_pixels

    tiles = list(tiles)
    if not features or not tiles:
        return {}
    size = grid.tile_size
    footprints = [tile_polygon(t) for t in tiles]
    tree = shapely.STRtree(footprints)
    out: dict[Tile, list] = {}
    for f in features:
        g = shape(f["geometry"])
        for j in tree.query(g, predicate="intersects").tolist():
            t = tiles[j]
            w = tile_window(t, size)
            x0, y0, x1, y1 = to_pixels(g, grid.zoom, size, origin=(w.col, w.row)).bounds
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(size)), min(y1, float(size))
            if x1 > x0 and y1 > y0:
                out.setdefault(t, []).append((x0, y0, x1, y1))
    return {t: np.asarray(b, float) for t, b in out.items()}


def retrain_detection(
    stores: Sequence[Store],
    indexes: Sequence[pd.DataFrame],
    names: Sequence[str],
    first_dir: str | os.PathLike,
    negatives: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    classes_of: Sequence[str],
    cities: Sequence[str] | None = None,
    train: Mapping[str, Any],
    mode: str = _RETRAIN.mode,
    steps: int = _RETRAIN.steps,
    eval_every: int = _RETRAIN.eval_every,
    learning_rate: float = _RETRAIN.learning_rate,
    warmup_steps: int = _RETRAIN.warmup_steps,
    oversample: int = _RETRAIN.oversample,
    weight: float = _RETRAIN.weight,
    progress: bool = True,
    where: str = "tile index",
) -> dict[str, Any]:
    """The mined detector of ``first_dir`` in ``out_dir``; returns a summary (negatives used, tiles, training result).

    ``negatives``: features of the negatives schema (``kind: detection``, a ``class`` of ``classes_of``);
    ``cities``: a name per store, matched with each negative's ``city`` (None: one store, every negative on it);
    ``train``: the keyword arguments of :func:`navml.detect.train.train_detection` (the detect section), of
    which ``mode: finetune`` replaces ``steps``, ``eval_every``, ``learning_rate`` and ``warmup_steps``.
    """
    from navml.detect.train import train_detection
    from navml.mining.negatives import count_vetoed, kept
    from navml.mining.retrain import copy_model, train_kwargs
    from navml.segment.dataset import SourceTile, split_tiles

    if mode not in ("finetune", "scratch"):
        raise ConfigError(f"retrain_detect.mode is '{mode}'; use finetune or scratch")
    stores, indexes = list(stores), list(indexes)
    if len(stores) != len(indexes) or not stores:
        raise ConfigError(f"retrain_detect needs one tile index per store; got {len(stores)} store(s) and {len(indexes)} index(es)")
    if cities is not None and len(cities) != len(stores):
        raise ConfigError(f"retrain_detect: {len(cities)} city names for {len(stores)} stores")
    usable = kept(negatives, "detection", sorted(set(classes_of)))
    vetoed = count_vetoed(negatives)
    per_store: list[list[Mapping[str, Any]]] = [[] for _ in stores]
    for f in usable:
        city = (f.get("properties") or {}).get("city")
        if cities is None or len(stores) == 1 and city is None:
            per_store[0].append(f)
        elif city in cities:
            per_store[list(cities).index(city)].append(f)
        else:
            raise InputError(f"hard negative {f['properties'].get('review_id')} of city {city!r}: not a training city "
                             f"({', '.join(map(str, cities))}); mine again with the same --cities or drop it")
    hard: dict = {}
    used = 0
    for s, (store, index, feats) in enumerate(zip(stores, indexes, per_store)):
        boxes = hard_boxes(feats, store.grid, split_tiles(index, "train", where))
        used += sum(1 for f in feats if hard_boxes([f], store.grid, list(boxes))) if boxes else 0
        for t, b in boxes.items():
            hard[t if len(stores) == 1 else SourceTile(t.x, t.y, t.z, s)] = b
    summary: dict[str, Any] = {
        "negatives_in_file": len(negatives),
        "vetoed": vetoed,
        "negatives_used": used,
        "hard_tiles": len(hard),
        "mined_boxes": int(sum(len(b) for b in hard.values())),
        "mode": mode,
    }
    if not hard:
        copy_model(first_dir, out_dir)
        return {**summary, "copied_first_model": True, "model_dir": str(out_dir)}
    kwargs = train_kwargs(train, mode, steps=steps, eval_every=eval_every, learning_rate=learning_rate, warmup_steps=warmup_steps)
    result = train_detection(
        stores if len(stores) > 1 else stores[0], indexes if len(stores) > 1 else indexes[0], names, out_dir, **kwargs,
        classes_of=list(classes_of), init_model=first_dir if mode == "finetune" else None,
        hard=hard, hard_repeats=oversample, mined_weight=weight, progress=progress, where=where,
    )
    return {**summary, "copied_first_model": False, **{k: v for k, v in result.items() if k not in ("anchors",)}}





def detection_complete_areas(classes: Sequence, default: str | None) -> list[BaseGeometry] | None:
    """WGS84 complete-mapping areas of the detection classes (each class's ``complete``, else ``default``:
    ``rasterize.complete``), joined; None when any class is complete everywhere (``""`` or None)."""
    from navml.geo.features import read_features

    out: list[BaseGeometry] = []
    for c in (c for c in classes if c.task == "detection"):
        path = c.complete if c.complete is not None else default
        if not path:
            return None
        if not Path(path).is_file():
            raise InputError(f"{path}: complete-mapping areas of class '{c.name}' not found; set mine_detect.complete: false or fix the path")
        out += [f["geometry"] for f in read_features(path) if f["geometry"].geom_type in ("Polygon", "MultiPolygon")]
    return out or None


__all__ = ["DetectMineReport", "box_gap", "detection_complete_areas", "false_boxes", "hard_boxes", "mine_detection", "retrain_detection"]
