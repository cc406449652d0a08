"""Labels on the tile grid: class masks per shard and detection boxes per tile.

Where OSM mapping is not known to be complete, an unlabelled pixel may be an
unmapped object; such pixels get :data:`IGNORE` (255) so that training and
evaluation neither learn nor score them as background. Completeness is per
class (``classes.<c>.complete``, default ``rasterize.complete``): a mask has
one value per pixel, so an unlabelled pixel is background (0) only inside the
complete area of *every* segmentation class (or on a mapped road surface), and
unknown elsewhere; a labelled pixel keeps its class everywhere.

Overlapping classes: the *later* class of the registry wins a pixel that
several classes cover (e.g. a building drawn over a parking lot, when
``building`` comes after ``parking``); overlaps are counted and reported.

Detection boxes are the pixel bounding boxes of the labels (points, lines or
areas). A point, or a line with a zero-width or zero-height box, takes the
class's ``box_m`` (ground metres) on its degenerate side(s); without
``box_m`` such labels give no box and are counted and reported, never dropped
silently.

Polygons are burned on the exact pixel grid of the tile zoom: a pixel belongs to
a polygon when its centre lies inside, so a lot's pixel count times the squared
ground resolution matches its true area (within 1% for lots of 400 m² and more).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from rasterio.features import rasterize as burn
from rasterio.transform import Affine
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from navml.config import ClassSpec, detection_names, segmentation_classes
from navml.errors import InputError
from navml.geo.features import read_features, to_pixels
from navml.geo.grid import Grid, Tile, ground_resolution, group_by_shard, shard_window, tile_polygon, tile_window
from navml.geo.store import Store
from navml.io import atomic_path, write_json

#: Mask value of pixels whose class is unknown (outside complete mapping).
IGNORE = 255

BOX_COLUMNS = ["z", "x", "y", "class_id", "class", "name", "xmin", "ymin", "xmax", "ymax"]


def shard_mask(
    shard: Tile,
    grid: Grid,
    layers: Sequence[Sequence[BaseGeometry]],
    tiles: Sequence[Tile] | None = None,
    complete: Sequence[BaseGeometry] | None = None,
    background: Sequence[BaseGeometry] = (),
    *,
    class_complete: Sequence[Sequence[BaseGeometry] | None] | None = None,
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """uint8 mask (rows, cols) of a shard: ``i + 1`` where ``layers[i]`` covers a pixel centre.

    Later layers win where classes overlap (``stats['overlap_pixels']`` counts
    pixels covered by more than one class). When ``tiles`` is given, pixels of
    other tiles of the shard stay 0. ``complete`` (WGS84 areas of complete
    mapping of all classes) and ``class_complete`` (per layer: its areas, or
    None for complete everywhere): background pixels outside any of them become
    :data:`IGNORE`, except under ``background`` (WGS84 areas known to hold no
    class, e.g. road surfaces), which stay 0.
    """
    win = shard_window(shard, grid)
    n = grid.shard_size
    out = np.zeros((n, n), dtype="uint8")
    frame = box(0, 0, n, n)
    count_overlap = stats is not None and len(layers) > 1
    covered = np.zeros((n, n), dtype="uint8") if count_overlap else None

    def px(geoms: Sequence[BaseGeometry]) -> list[BaseGeometry]:
        return [to_pixels(g, grid.zoom, grid.tile_size, origin=(win.col, win.row)) for g in geoms]

    for i, geoms in enumerate(layers):
        shapes = [(pg, i + 1) for pg in px(geoms) if pg.intersects(frame)]
        if not shapes:
            continue
        if covered is None:
            burn(shapes, out=out, transform=Affine.identity(), all_touched=False)
            continue
        hit = burn([(g, 1) for g, _ in shapes], out_shape=(n, n), transform=Affine.identity(), all_touched=False, dtype="uint8")
        covered += hit
        out[hit == 1] = i + 1
    areas = ([] if complete is None else [complete]) + [a for a in (class_complete or ()) if a is not None]
    if areas:
        known = np.ones((n, n), dtype=bool)
        for area in areas:
            shapes = [(g, 1) for g in px(area)]
            inside = np.zeros((n, n), dtype="uint8")
            if shapes:
                burn(shapes, out=inside, transform=Affine.identity(), all_touched=False)
            known &= inside == 1
        shapes = [(g, 1) for g in px(background)]
        if shapes:
            road = np.zeros((n, n), dtype="uint8")
            burn(shapes, out=road, transform=Affine.identity(), all_touched=False)
            known |= road == 1
        out[~known & (out == 0)] = IGNORE
    if tiles is not None:
        keep = np.zeros((n, n), dtype=bool)
        size = grid.tile_size
        for t in tiles:
            tw = tile_window(t, size)
            r, c = tw.row - win.row, tw.col - win.col
            keep[r : r + size, c : c + size] = True
        out[~keep] = 0
        if covered is not None:
            covered[~keep] = 0
    if stats is not None:
        stats["overlap_pixels"] = stats.get("overlap_pixels", 0) + (int((covered > 1).sum()) if covered is not None else 0)
    return out


@dataclass(frozen=True)
class MaskTask:
    """One shard of :func:`write_masks`, as a task of :func:`navml.geo.parallel.map_shards` (picklable: the store is
    a path, the geometries are the ones that touch the shard)."""

    store: Store
    shard: Tile
    tiles: tuple[Tile, ...]
    layers: tuple[tuple[BaseGeometry, ...], ...]
    known: tuple[BaseGeometry, ...] | None
    background: tuple[BaseGeometry, ...]
    class_complete: tuple[tuple[BaseGeometry, ...] | None, ...] | None
    write: bool  # write the shard here (True) or send it back to the client


def mask_task(task: MaskTask) -> tuple[dict[str, int], np.ndarray | None]:
    """Burn one shard's mask; write it (``task.write``) or return it. Returns its counts (pixels per mask value,
    ``overlap_pixels``) and ``None`` or the mask to write."""
    stats: dict[str, int] = {}
    mask = shard_mask(task.shard, task.store.grid, task.layers, task.tiles, task.known, task.background,
                      class_complete=task.class_complete, stats=stats)
    counts = {"overlap_pixels": stats["overlap_pixels"]}
    values, n = np.unique(mask, return_counts=True)
    for v, k in zip(values.tolist(), n.tolist()):
        if v:
            counts[f"pixels_{v}"] = k
    if not task.write:
        return counts, mask
    task.store.write_shard("masks", task.shard, mask)
    return counts, None


def write_masks(
    store: Store,
    tiles: Sequence[Tile],
    layers: Sequence[Sequence[BaseGeometry]],
    *,
    complete: Sequence[BaseGeometry] | None = None,
    class_complete: Sequence[Sequence[BaseGeometry] | None] | None = None,
    background: Sequence[BaseGeometry] = (),
    progress: bool = True,
    scheduler=None,
    workers: int | None = None,
) -> dict[str, int]:
    """Burn the label layers into the ``masks`` layer of ``store``, one shard at a time.

    ``complete``: areas (WGS84) where the labels of all classes are complete;
    ``class_complete``: the same per layer (None: complete everywhere); both
    ``None`` means complete everywhere. ``background``: areas (WGS84) known to
    hold no class anywhere (mapped road surfaces). Returns counts: shards
    written, pixels per mask value and ``overlap_pixels`` (covered by several classes).

    Each shard is a task (:func:`mask_task`, with the geometries that touch
    it) of :func:`navml.geo.parallel.map_shards`, where ``scheduler`` /
    ``workers`` say (in this process by default); the masks are the same bytes
    wherever they are burned.
    """
    from navml.geo.parallel import map_shards, resolve_scheduler, writes_on_workers

    plan = resolve_scheduler(scheduler, workers)
    write = writes_on_workers(plan, store.root)
    groups = group_by_shard(tiles, store.grid)
    tree_layers = [(shapely.STRtree(list(g)), list(g)) for g in layers]
    bg_tree, bg = shapely.STRtree(list(background)), list(background)
    class_trees = [None if a is None else (shapely.STRtree(list(a)), list(a)) for a in (class_complete or ())]

    def near(tree_geoms, b) -> tuple[BaseGeometry, ...]:
        tree, geoms = tree_geoms
        return tuple(geoms[i] for i in tree.query(b, predicate="intersects")) if geoms else ()

    def task(shard: Tile, shard_tiles) -> MaskTask:
        b = tile_polygon(shard)
        local_known = tuple(None if t is None else near(t, b) for t in class_trees)
        return MaskTask(
            store, shard, tuple(shard_tiles), tuple(near(t, b) for t in tree_layers),
            None if complete is None else tuple(g for g in complete if g.intersects(b)),
            near((bg_tree, bg), b), local_known or None, write,
        )

    counts = {"shards": 0, "overlap_pixels": 0}
    shards = list(groups)
    # the tasks are made as the map asks for them: only the shards in flight hold their geometries
    tasks = _Lazy(len(shards), lambda i: task(shards[i], groups[shards[i]]))
    for shard, (got, mask) in zip(shards, map_shards(mask_task, tasks, scheduler=plan, desc="rasterize masks", unit="shard",
                                                       progress=progress)):
        if mask is not None:
            store.write_shard("masks", shard, mask)
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
        counts["shards"] += 1
    return counts


class _Lazy(Sequence):
    """A sequence whose items are made when read."""

    def __init__(self, n: int, make):
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._make(i % self._n)


def label_box(geom: BaseGeometry, grid: Grid, metres: tuple[float, float] | None = None) -> tuple[float, float, float, float] | None:
    """Global pixel box ``(x0, y0, x1, y1)`` at the grid's zoom of a WGS84 label geometry; None for a zero-area one without ``metres``.

    ``metres`` (east-west, north-south, ground metres) gives the degenerate
    side(s) of a point's or a straight line's box their size, converted with
    the ground resolution at the label's latitude.
    """
    size = grid.tile_size
    x0, y0, x1, y1 = to_pixels(geom, grid.zoom, size).bounds
    if x1 - x0 <= 1e-6 or y1 - y0 <= 1e-6:
        if metres is None:
            return None
        res = ground_resolution(geom.centroid.y, grid.zoom, size)
        if x1 - x0 <= 1e-6:
            cx, half = (x0 + x1) / 2, metres[0] / res / 2
            x0, x1 = cx - half, cx + half
        if y1 - y0 <= 1e-6:
            cy, half = (y0 + y1) / 2, metres[1] / res / 2
            y0, y1 = cy - half, cy + half
    return x0, y0, x1, y1


def detection_labels(
    labels: str | os.PathLike, classes: Sequence[ClassSpec]
) -> tuple[dict[int, list[tuple[BaseGeometry, str, str]]], dict[int, tuple[float, float] | None]]:
    """Detection labels of the extract folder ``labels`` by class id: ``({id: [(geometry, class, name)]}, {id: box_m})``.

    Class ids are the positions in :func:`navml.config.detection_names`; a
    label's name is its ``kind`` (classes with several names) or the one name.
    """
    labels = Path(labels)
    ids = {pair: i for i, pair in enumerate(detection_names(list(classes)))}
    det: dict[int, list] = {i: [] for i in ids.values()}
    sizes: dict[int, tuple[float, float] | None] = {}
    for c in classes:
        if c.task != "detection":
            continue
        for n in c.names:
            sizes[ids[(c.name, n)]] = c.box_m
        for f in label_features(labels, c.name):
            name = str(f["properties"].get("kind") or c.name) if len(c.names) > 1 else c.names[0]
            if (c.name, name) not in ids:
                raise InputError(f"{labels / (c.name + '.geojson')}: label kind '{name}' is not in classes.{c.name}.names {list(c.names)}")
            det[ids[(c.name, name)]].append((f["geometry"], c.name, name))
    return det, sizes


def tile_boxes(
    tiles: Sequence[Tile],
    grid: Grid,
    labels: Mapping[int, Sequence[tuple[BaseGeometry, str, str]]],
    *,
    min_visible: float = 0.5,
    box_m: Mapping[int, tuple[float, float] | None] | None = None,
    stats: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Detection boxes in tile pixel coordinates.

    ``labels`` maps a class id to ``(geometry, class, name)`` triples (WGS84).
    A box is the pixel bounding box of the geometry, clipped to each tile it
    touches; a clipped box is kept when at least ``min_visible`` of its area is
    inside the tile. ``box_m`` (per class id: east-west, north-south ground
    metres) gives the degenerate side(s) of a point's or a straight line's box
    their size; without it such a label gets no box and is counted in
    ``stats['zero_area']`` (per class: ``stats['zero_area:<class>']``).
    Returns a DataFrame with :data:`BOX_COLUMNS`, sorted by tile.
    """
    wanted = {(t.z, t.x, t.y) for t in tiles}
    size = grid.tile_size
    box_m = box_m or {}
    rows = []
    for class_id, items in labels.items():
        for geom, cls, name in items:
            box = label_box(geom, grid, box_m.get(class_id))
            if box is None:
                if stats is not None:
                    stats["zero_area"] = stats.get("zero_area", 0) + 1
                    stats[f"zero_area:{cls}"] = stats.get(f"zero_area:{cls}", 0) + 1
                continue
            x0, y0, x1, y1 = box
            area = max((x1 - x0) * (y1 - y0), 1e-9)
            for ty in range(int(y0 // size), int(y1 // size) + 1):
                for tx in range(int(x0 // size), int(x1 // size) + 1):
                    if (grid.zoom, tx, ty) not in wanted:
                        continue
                    cx0, cy0 = max(x0, tx * size), max(y0, ty * size)
                    cx1, cy1 = min(x1, (tx + 1) * size), min(y1, (ty + 1) * size)
                    if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < min_visible * area:
                        continue
                    rows.append(
                        (grid.zoom, tx, ty, class_id, cls, name,
                         round(cx0 - tx * size, 2), round(cy0 - ty * size, 2), round(cx1 - tx * size, 2), round(cy1 - ty * size, 2))
                    )
    df = pd.DataFrame(rows, columns=BOX_COLUMNS)
    return df.sort_values(["z", "y", "x", "class_id", "ymin", "xmin"], kind="stable").reset_index(drop=True)


def overlapping_features(layers: Sequence[Sequence[BaseGeometry]]) -> int:
    """Features of a later layer whose area overlaps a feature of an earlier layer (the later one wins there)."""
    n = 0
    for j in range(1, len(layers)):
        later = np.asarray(list(layers[j]), dtype=object)
        if not len(later):
            continue
        hit = np.zeros(len(later), dtype=bool)
        for i in range(j):
            earlier = np.asarray(list(layers[i]), dtype=object)
            if not len(earlier):
                continue
            a, b = shapely.STRtree(earlier).query(later, predicate="intersects")
            if len(a):
                inter = shapely.area(shapely.intersection(later[a], earlier[b])) > 0
                hit[a[inter]] = True
        n += int(hit.sum())
    return n


def complete_areas(classes: Sequence[ClassSpec], default: str | None) -> list[list[BaseGeometry] | None]:
    """Per segmentation class (mask order): WGS84 areas of complete mapping, or None (complete everywhere).

    A class's ``complete`` wins; a class without one takes ``default``
    (``rasterize.complete``); ``""`` or None means complete everywhere.
    """
    cache: dict[str, list[BaseGeometry]] = {}
    out: list[list[BaseGeometry] | None] = []
    for c in segmentation_classes(list(classes)):
        path, where = (c.complete, f"classes.{c.name}.complete") if c.complete is not None else (default, "rasterize.complete")
        if not path:
            out.append(None)
            continue
        if path not in cache:
            if not Path(path).is_file():
                raise InputError(f"{path}: complete-mapping areas of class '{c.name}' not found; check {where} (\"\" = complete everywhere)")
            geoms = [f["geometry"] for f in read_features(path)]
            geoms = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
            if not geoms:
                raise InputError(f"{path}: no polygon in the complete-mapping areas ({where}); draw the areas, or set \"\" for complete everywhere")
            cache[path] = geoms
        out.append(cache[path])
    return out


def label_features(labels: str | os.PathLike, name: str) -> list[dict]:
    """Features of class ``name`` in the extract folder ``labels`` that are labels (``label`` not false)."""
    path = Path(labels) / f"{name}.geojson"
    if not path.exists():
        raise InputError(f"{path}: labels of class '{name}' not found; run the extract stage first")
    return [f for f in read_features(path) if f["properties"].get("label", True)]


def rasterize_labels(
    labels: str | os.PathLike,
    tiles: Sequence[Tile],
    store: Store,
    classes: Sequence[ClassSpec],
    *,
    complete: str | None = None,
    roads: bool = True,
    progress: bool = True,
    scheduler=None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The ``rasterize`` stage: ``<labels>/<class>.geojson`` -> ``masks`` layer, ``boxes.csv`` and ``labels.json`` of ``store``.

    ``complete``: the default GeoJSON of complete mapping (``rasterize.complete``)
    for classes without ``complete`` of their own. ``roads``: mapped road
    surfaces (``roads.geojson``) are background wherever some class is
    incomplete. Returns the legend written to ``labels.json`` (mask values,
    box class ids, pixels per class, boxes, ``overlaps``, ``zero_area_boxes``)
    with ``notes``: one line per thing the user should know (overlaps, labels
    without a box, classes the extract skipped).
    """
    labels = Path(labels)
    root = Path(store.root)
    notes: list[str] = []
    skipped = _skipped_classes(labels)

    for name, why in skipped.items():
        notes.append(f"class '{name}' has no labels: extract skipped it ({why})")
    seg = segmentation_classes(list(classes))
    layers = [[f["geometry"] for f in label_features(labels, c.name)] for c in seg]
    areas = complete_areas(classes, complete)
    background: list[BaseGeometry] = []
    if roads and any(a is not None for a in areas):
        from navml.data.roads import read_road_surfaces

        background = read_road_surfaces(labels, "set rasterize.roads: false")
    overlaps = overlapping_features(layers)
    counts = write_masks(store, tiles, layers, class_complete=areas, background=background, progress=progress,
                         scheduler=scheduler, workers=workers)
    if overlaps or counts["overlap_pixels"]:
        notes.append(
            f"{overlaps} features overlap a feature of an earlier class ({counts['overlap_pixels']} pixels); "
            "the later class of the registry wins those pixels"
        )

    ids = {pair: i for i, pair in enumerate(detection_names(list(classes)))}
    det, sizes = detection_labels(labels, classes)
    box_stats: dict[str, int] = {}
    boxes = tile_boxes(tiles, grid=store.grid, labels=det, box_m=sizes, stats=box_stats)
    zero = {k.split(":", 1)[1]: v for k, v in box_stats.items() if k.startswith("zero_area:")}
    for cls, k in zero.items():
        notes.append(f"{k} labels of class '{cls}' are points or straight lines (zero-area box) and got no box; set classes.{cls}.box_m (metres)")
    with atomic_path(root / "boxes.csv") as tmp:
        boxes.to_csv(tmp, index=False, lineterminator="\n")
    legend: dict[str, Any] = {
        "mask_values": {**{str(i + 1): c.name for i, c in enumerate(seg)}, str(IGNORE): "ignore"},
        "box_class_ids": {str(i): f"{cls}:{name}" for (cls, name), i in ids.items()},
        "pixels": {("ignore" if int(k[7:]) == IGNORE else seg[int(k[7:]) - 1].name): v for k, v in counts.items() if k.startswith("pixels_")},
        "boxes": len(boxes),
        "overlaps": {"features": overlaps, "pixels": counts["overlap_pixels"], "rule": "later class of the registry wins"},
        "zero_area_boxes": zero,
        "complete": {c.name: ("everywhere" if a is None else (c.complete if c.complete is not None else complete)) for c, a in zip(seg, areas)},
    }
    write_json(root / "labels.json", legend)
    legend["shards"] = counts["shards"]
    legend["notes"] = notes
    return legend


def _skipped_classes(labels: Path) -> dict[str, str]:
    """Classes the extract stage skipped (``summary.json`` ``classes.<c>.skipped``), with the reason."""
    path = labels / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v["skipped"]) for k, v in (summary.get("classes") or {}).items() if isinstance(v, dict) and v.get("skipped")}
