"""Mine hard negatives of a segmentation model: its confident regions where the labels say background.

Only where a false region is known to be false: **train-split** tiles (val and
test stay unseen), pixels labelled background (mask 0: inside the class's
complete area, or a mapped road), and inside the class's complete-mapping
areas (a region is clipped to them, so a mapped road outside them is not
taken either). Outside complete areas a confident region may be a real,
unmapped lot: exactly what the product exists to find.

The model's probabilities come from a probability store (the ``predict``
layer ``probs`` of the first model over the AOI), so mining costs no model
run and sees the very pixels the pipeline's outputs come from. Per tile and
class: pixels at or above the class threshold, on background, farther than
``edge_m`` from the class's labelled pixels (label outlines are shifted by up
to a few metres: slivers along a lot's edge are label noise, not look-alikes);
8-connected groups of at least ``min_area_m2`` become polygons (pixel edges,
WGS84) with their mean probability as ``score``. The ``max_negatives`` of
highest score are kept (ties: larger first).

Over several cities (:func:`mine_cities`): each city's own store, probabilities,
tile index and complete areas (:class:`MineSource`), one ``max_negatives`` cut
over all of them, and a ``city`` property on every negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from navml.config import MineParams, Params
from navml.errors import ConfigError, InputError
from navml.geo.features import to_lonlat
from navml.geo.grid import Tile, Window, metres_to_pixels, pixel_area_m2, shard_of, tile_key, tile_polygon, tile_window
from navml.geo.store import Store
from navml.segment.dataset import TileReader, split_tiles

#: Defaults of the keyword arguments below: the params model's, written once there.
_MINE = MineParams()
#: Probability layer of a predict store.
PROBS = "probs"


@dataclass
class MineReport:
    """What a mining run saw and kept."""

    candidates: int = 0  # train tiles inside a complete area
    scanned: int = 0  # of them, scanned (tile_share)
    found: int = 0  # regions found before the max_negatives cut
    kept: int = 0
    small: int = 0  # regions below min_area_m2
    outside: int = 0  # regions wholly outside the complete areas (on a mapped road there, say)
    edge_px: int = 0  # predicted background pixels within edge_m of a label, left out
    area_m2: float = 0.0  # of the kept regions
    tiles: list[str] = field(default_factory=list)  # tiles of the kept regions (over cities: "<city>:<z-x-y>")
    cities: dict[str, MineReport] = field(default_factory=dict)  # over several cities: each one's

    def as_dict(self) -> dict[str, Any]:
        out = {
            "train_tiles_in_complete_areas": self.candidates,
            "tiles_scanned": self.scanned,
            "regions_found": self.found,
            "negatives": self.kept,
            "tiles_with_negatives": len(self.tiles),
            "area_m2": round(self.area_m2, 1),
            "left_out_small": self.small,
            "left_out_outside_complete": self.outside,
            "left_out_edge_px": self.edge_px,
        }
        if self.cities:
            out["cities"] = {name: r.as_dict() for name, r in self.cities.items()}
        return out


def _union(areas: Sequence[BaseGeometry] | None) -> BaseGeometry | None:
    if areas is None:
        return None
    u = shapely.union_all(list(areas))
    shapely.prepare(u)
    return u


def candidate_tiles(index: pd.DataFrame, complete: Sequence[BaseGeometry | None], where: str = "tile index") -> list[Tile]:
    """Train-split tiles intersecting the complete area of at least one class (``None``: complete everywhere)."""
    tiles = split_tiles(index, "train", where)
    if any(a is None for a in complete):
        return tiles
    return [t for t in tiles if any(_overlaps(a, tile_polygon(t)) for a in complete)]


def _overlaps(area: BaseGeometry | None, foot: BaseGeometry) -> bool:
    """Whether ``area`` (None: everywhere) shares more than a border with ``foot``."""
    return area is None or (area.intersects(foot) and not area.touches(foot))


def pick_tiles(tiles: Sequence[Tile], share: float, seed: int) -> list[Tile]:
    """``share`` of ``tiles`` (at least one when any), drawn with ``seed``, in the input order."""
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"params: 'mine.tile_share' is {share}; use a share in (0, 1]")
    if share >= 1.0 or not tiles:
        return list(tiles)
    k = max(1, int(round(share * len(tiles))))
    pick = np.sort(np.random.default_rng(seed).choice(len(tiles), size=k, replace=False))
    return [tiles[i] for i in pick]


def _near_labels(store: Store, tile: Tile, value: int, radius_px: int) -> np.ndarray:
    """Pixels of ``tile`` within ``radius_px`` of a pixel labelled ``value`` (also across tile borders)."""
    size = store.grid.tile_size
    w = tile_window(tile, size)
    if radius_px <= 0:
        return np.zeros((size, size), dtype=bool)
    win = Window(w.col - radius_px, w.row - radius_px, size + 2 * radius_px, size + 2 * radius_px)
    labels = (store.read_window("masks", win, bands=1)[0] == value).astype("uint8")
    k = 2 * radius_px + 1
    grown = cv2.dilate(labels, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return grown[radius_px : radius_px + size, radius_px : radius_px + size].astype(bool)


def tile_regions(
    probs: np.ndarray, mask: np.ndarray, near: np.ndarray, threshold: float, min_px: int
) -> tuple[list[tuple[np.ndarray, float]], int, int]:
    """``([(component mask, mean probability), ...], regions too small, predicted pixels left out near labels)`` of one class on one tile.

    ``probs``: uint8 0..255 (rows, cols); ``mask``: the tile's labels (0 = background); ``near``: pixels to leave out.
    """
    level = int(math.ceil(threshold * 255.0 - 1e-9))
    predicted = (probs >= level) & (mask == 0)
    edge = int(np.count_nonzero(predicted & near))
    cand = (predicted & ~near).astype("uint8")
    n, comp, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
    out, small = [], 0
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_px:
            small += 1
            continue
        m = comp == i
        out.append((m, float(probs[m].mean()) / 255.0))
    return out, small, edge


def _polygon(m: np.ndarray, tile: Tile, size: int) -> BaseGeometry:
    """The pixel-edge polygon(s) of a boolean tile mask, WGS84."""
    from rasterio.features import shapes

    parts = [shape(g) for g, v in shapes(m.astype("uint8"), mask=m, connectivity=8) if v == 1]
    w = tile_window(tile, size)
    return to_lonlat(shapely.union_all(parts), tile.z, size, origin=(w.col, w.row))


class MineSource(NamedTuple):
    """One city (or the single store) to mine over: its name, the model's probabilities over it, its store
    (``masks``, ``imagery``), tile index and per-class complete areas (WGS84; None: complete everywhere).

    ``probs`` may be None where nothing is mined from it yet (the first round of :func:`~navml.mining.retrain.retrain_rounds`).
    """

    name: str
    probs: Store | None
    store: Store
    index: pd.DataFrame
    complete: Sequence[Sequence[BaseGeometry] | None]
    where: str = "tile index"


def _check(classes: Sequence[str], complete: Sequence[Any], max_negatives: int, min_area_m2: float, edge_m: float, where: str) -> None:
    if len(complete) != len(classes):
        raise ConfigError(f"mine: {len(complete)} complete-area entries for {len(classes)} segmentation classes ({where})")
    if max_negatives < 0 or min_area_m2 < 0 or edge_m < 0:
        raise ConfigError("params: mine.max_negatives, mine.min_area_m2 and mine.edge_m must be 0 or more")


def _scan(
    probs: Store,
    store: Store,
    index: pd.DataFrame,
    classes: Sequence[str],
    complete: Sequence[Sequence[BaseGeometry] | None],
    thresholds: Mapping[str, float],
    *,
    min_area_m2: float,
    tile_share: float,
    edge_m: float,
    seed: int,
    progress: bool,
    where: str,
    desc: str = "mine",
) -> tuple[list[tuple[float, float, int, dict[str, Any]]], MineReport]:
    """Every region of one store before the ``max_negatives`` cut: ``([(-score, -area, tile position, feature), ...], report)``."""
    from tqdm import tqdm

    from navml.mining.negatives import negative_feature

    grid = store.grid
    size = grid.tile_size
    areas = [_union(a) for a in complete]
    report = MineReport()
    tiles = candidate_tiles(index, areas, where)
    report.candidates = len(tiles)
    tiles = pick_tiles(tiles, tile_share, seed)
    report.scanned = len(tiles)
    missing = [t for t in tiles if not probs.has(PROBS, shard_of(t, grid))]
    if missing:
        raise InputError(f"{probs.path(PROBS, shard_of(missing[0], grid))}: no probabilities for train tile {tile_key(missing[0])}; run predict first")
    reader = TileReader(store, len(classes), store.count("imagery") or 3)
    found: list[tuple[float, float, int, dict[str, Any]]] = []
    for k, tile in enumerate(tqdm(tiles, desc=desc, unit="tile", disable=None if progress else True)):
        foot = tile_polygon(tile)
        lat = foot.centroid.y
        px_m2 = pixel_area_m2(lat, grid.zoom, size)
        radius = int(math.ceil(metres_to_pixels(edge_m, lat, grid.zoom, size))) if edge_m else 0
        min_px = max(1, int(math.ceil(min_area_m2 / px_m2)))
        p = probs.read_tile(PROBS, tile)
        mask = reader.mask(tile)
        for i, name in enumerate(classes):
            area = areas[i]
            if not _overlaps(area, foot):
                continue
            near = _near_labels(store, tile, i + 1, radius)
            regions, small, edge = tile_regions(p[i], mask, near, float(thresholds[name]), min_px)
            report.small += small
            report.edge_px += edge
            for m, score in regions:
                geom = _polygon(m, tile, size)
                if area is not None:
                    geom = geom.intersection(area)
                if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
                    report.outside += 1
                    continue
                feat = negative_feature(geom, cls=name, kind="segmentation", tile=tile_key(tile), score=score)
                if feat["properties"]["area_m2"] < min_area_m2:
                    report.small += 1
                    continue
                found.append((-score, -feat["properties"]["area_m2"], k, feat))
    report.found = len(found)
    return found, report


def _kept(report: MineReport, features: Sequence[dict[str, Any]]) -> MineReport:
    report.kept = len(features)
    report.area_m2 = float(sum(f["properties"]["area_m2"] for f in features))
    report.tiles = sorted({f["properties"]["tile"] for f in features})
    return report


def mine_segmentation(
    probs: Store,
    store: Store,
    index: pd.DataFrame,
    classes: Sequence[str],
    complete: Sequence[Sequence[BaseGeometry] | None],
    thresholds: Mapping[str, float],
    *,
    min_area_m2: float = _MINE.min_area_m2,
    max_negatives: int = _MINE.max_negatives,
    tile_share: float = _MINE.tile_share,
    edge_m: float = _MINE.edge_m,
    seed: int = _MINE.seed,
    progress: bool = False,
    where: str = "tile index",
) -> tuple[list[dict[str, Any]], MineReport]:
    """Hard negatives of every segmentation class (mask order ``classes``) as features of the negatives schema.

    ``probs``: a store with layer ``probs`` (one uint8 band per class); ``store``: layers ``masks`` and
    ``imagery``; ``complete``: per class, WGS84 areas of complete mapping (None: everywhere);
    ``thresholds``: class -> probability threshold. Returns ``(features, report)``; features are
    sorted by tile, then position, and carry ``source: "mined"``, ``keep: true``.
    """
    _check(classes, complete, max_negatives, min_area_m2, edge_m, where)
    found, report = _scan(probs, store, index, classes, complete, thresholds, min_area_m2=min_area_m2, tile_share=tile_share,
                          edge_m=edge_m, seed=seed, progress=progress, where=where)
    best = sorted(found, key=lambda x: x[:3])[:max_negatives]
    kept = [f for *_, f in sorted(best, key=lambda x: (x[2], -x[1]))]
    return kept, _kept(report, kept)


def mine_cities(
    sources: Sequence[MineSource],
    classes: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    min_area_m2: float = _MINE.min_area_m2,
    max_negatives: int = _MINE.max_negatives,
    tile_share: float = _MINE.tile_share,
    edge_m: float = _MINE.edge_m,
    seed: int = _MINE.seed,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], MineReport]:
    """Hard negatives over several cities (the ``role: train`` ones): :func:`mine_segmentation` on each source,
    one ``max_negatives`` cut over all of them (highest score first; ties: larger, then the earlier city).

    Each city's ``tile_share`` draw uses ``seed`` (so it does not depend on the other cities); every
    feature gets a ``city`` property (the source's name). Features come city by city (in ``sources``
    order), then by tile and position. The report sums the cities and holds each one's in ``cities``.
    """
    if not sources:
        raise ConfigError("mine: no city to mine over; give at least one role: train city")
    names = [s.name for s in sources]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"mine: city names must be distinct and not empty; got {names}")
    found: list[tuple[float, float, int, int, dict[str, Any]]] = []
    reports: dict[str, MineReport] = {}
    for c, src in enumerate(sources):
        if src.probs is None:
            raise ConfigError(f"mine: city {src.name} has no probability store")
        _check(classes, src.complete, max_negatives, min_area_m2, edge_m, src.where)
        got, reports[src.name] = _scan(src.probs, src.store, src.index, classes, src.complete, thresholds, min_area_m2=min_area_m2,
                                       tile_share=tile_share, edge_m=edge_m, seed=seed, progress=progress, where=src.where,
                                       desc=f"mine {src.name}")
        found += [(s, a, c, k, {**f, "properties": {**f["properties"], "city": src.name}}) for s, a, k, f in got]
    best = sorted(found, key=lambda x: x[:4])[:max_negatives]
    kept = [f for *_, f in sorted(best, key=lambda x: (x[2], x[3], -x[1]))]
    total = MineReport()
    for src in sources:
        r = _kept(reports[src.name], [f for f in kept if f["properties"]["city"] == src.name])
        for k in ("candidates", "scanned", "found", "small", "outside", "edge_px"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
    total = _kept(total, kept)
    total.tiles = [f"{src.name}:{t}" for src in sources for t in reports[src.name].tiles]
    total.cities = reports
    return kept, total


def mine_sources(
    sources: Sequence[MineSource], classes: Sequence[str], thresholds: Mapping[str, float], **knobs: Any
) -> tuple[list[dict[str, Any]], MineReport]:
    """Hard negatives of ``sources``: a single source named ``""`` is the single store (:func:`mine_segmentation`,
    no ``city`` property), else the cities (:func:`mine_cities`); ``knobs``: their keyword arguments."""
    if len(sources) == 1 and not sources[0].name:
        s = sources[0]
        return mine_segmentation(s.probs, s.store, s.index, classes, s.complete, thresholds, **knobs, where=s.where)
    return mine_cities(sources, classes, thresholds, **knobs)


def city_sources(params: Params, names: Sequence[str], *, probs: bool = True, complete: bool = True) -> list[MineSource]:
    """The :class:`MineSource` of each city ``names`` of ``params``: its tile index and store
    (:meth:`~navml.config.Params.city`), the first model's probabilities at ``<city.first>/predict``
    (None with ``probs=False``) and its complete areas (:meth:`~navml.config.Params.for_city`: the city's
    ``complete``, or a class's own; not read with ``complete=False``, for a caller that mines nothing:
    None per class)."""
    from navml.config import segmentation_classes
    from navml.data.rasterize import complete_areas
    from navml.geo.tile_index import read_index

    grid = params.grid.grid()
    out = []
    for name in names:
        c, pc = params.city(name), params.for_city(name)
        specs = segmentation_classes(pc.class_specs())
        out.append(MineSource(
            name=name,
            probs=Store(f"{c.first}/predict", grid) if probs else None,
            store=Store(c.store, grid),
            index=read_index(c.tiles),
            complete=complete_areas(specs, pc.rasterize.complete) if complete else [None] * len(specs),
            where=c.tiles,
        ))
    return out


__all__ = [
    "MineReport", "MineSource", "city_sources", "candidate_tiles", "mine_cities", "mine_segmentation", "mine_sources", "pick_tiles",
    "tile_regions",
]
