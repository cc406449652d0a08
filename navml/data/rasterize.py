"""Labels on the tile grid: class masks per shard and detection boxes per tile.

Where OSM mapping is not known to be complete, an unlabelled pixel may be an
unmapped object; such pixels get :data:`IGNORE` (255) so that training and
evaluation neither learn nor score them as background.

Polygons are burned on the exact pixel grid of the tile zoom: a pixel belongs to
a polygon when its centre lies inside, so a lot's pixel count times the squared
ground resolution matches its true area (within 1% for lots of 400 m² and more).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from rasterio.features import rasterize as burn
from rasterio.transform import Affine
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from navml.config import ClassSpec
from navml.geo.grid import Grid, Tile, group_by_shard, shard_window, tile_polygon, tile_window
from navml.geo.store import Store
from navml.geo.features import to_pixels

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
) -> np.ndarray:
    """uint8 mask (rows, cols) of a shard: ``i + 1`` where ``layers[i]`` covers a pixel centre.

    Later layers win where classes overlap. When ``tiles`` is given, pixels of
    other tiles of the shard stay 0. When ``complete`` (WGS84 areas of complete
    mapping) is given, background pixels outside it become :data:`IGNORE`,
    except under ``background`` (WGS84 areas known to hold no class, e.g. road
    surfaces), which stay 0.
    """
    win = shard_window(shard, grid)
    n = grid.shard_size
    out = np.zeros((n, n), dtype="uint8")
    frame = box(0, 0, n, n)
    for i, geoms in enumerate(layers):
        shapes = []
        for g in geoms:
            pg = to_pixels(g, grid.zoom, grid.tile_size, origin=(win.col, win.row))
            if pg.intersects(frame):
                shapes.append((pg, i + 1))
        if shapes:
            burn(shapes, out=out, transform=Affine.identity(), all_touched=False)
    if complete is not None:
        known = np.zeros((n, n), dtype="uint8")
        shapes = [(to_pixels(g, grid.zoom, grid.tile_size, origin=(win.col, win.row)), 1) for g in complete]
        if shapes:
            burn(shapes, out=known, transform=Affine.identity(), all_touched=False)
        shapes = [(to_pixels(g, grid.zoom, grid.tile_size, origin=(win.col, win.row)), 1) for g in background]
        if shapes:
            burn(shapes, out=known, transform=Affine.identity(), all_touched=False)
        out[(known == 0) & (out == 0)] = IGNORE
    if tiles is not None:
        keep = np.zeros((n, n), dtype=bool)
        size = grid.tile_size
        for t in tiles:
            tw = tile_window(t, size)
            r, c = tw.row - win.row, tw.col - win.col
            keep[r : r + size, c : c + size] = True
        out[~keep] = 0
    return out


def write_masks(
    store: Store,
    tiles: Sequence[Tile],
    layers: Sequence[Sequence[BaseGeometry]],
    *,
    complete: Sequence[BaseGeometry] | None = None,
    background: Sequence[BaseGeometry] = (),
    progress: bool = True,
) -> dict[str, int]:
    """Burn the label layers into the ``masks`` layer of ``store``, one shard at a time.

    ``complete``: areas (WGS84) where the labels are complete; ``None`` means
    everywhere. ``background``: areas (WGS84) known to hold no class anywhere
    (mapped road surfaces). Returns counts: shards written and pixels per mask value.
    """
    groups = group_by_shard(tiles, store.grid)
    tree_layers = [(shapely.STRtree(list(g)), list(g)) for g in layers]
    bg_tree, bg = shapely.STRtree(list(background)), list(background)
    counts = {"shards": 0}
    for shard, shard_tiles in tqdm(groups.items(), desc="rasterize masks", unit="shard", disable=not progress):
        b = tile_polygon(shard)
        local = [[geoms[i] for i in tree.query(b, predicate="intersects")] if geoms else [] for tree, geoms in tree_layers]
        known = None if complete is None else [g for g in complete if g.intersects(b)]
        local_bg = [bg[i] for i in bg_tree.query(b, predicate="intersects")] if bg else []
        mask = shard_mask(shard, store.grid, local, shard_tiles, known, local_bg)
        store.write_shard("masks", shard, mask)
        values, n = np.unique(mask, return_counts=True)
        for v, k in zip(values.tolist(), n.tolist()):
            if v:
                counts[f"pixels_{v}"] = counts.get(f"pixels_{v}", 0) + k
        counts["shards"] += 1
    return counts


def tile_boxes(
    tiles: Sequence[Tile],
    grid: Grid,
    labels: Mapping[int, Sequence[tuple[BaseGeometry, str, str]]],
    *,
    min_visible: float = 0.5,
) -> pd.DataFrame:
    """Detection boxes in tile pixel coordinates.

    ``labels`` maps a class id to ``(geometry, class, name)`` triples (WGS84).
    A box is the pixel bounding box of the geometry, clipped to each tile it
    touches; a clipped box is kept when at least ``min_visible`` of its area is
    inside the tile. Returns a DataFrame with :data:`BOX_COLUMNS`, sorted by tile.
    """
    wanted = {(t.z, t.x, t.y) for t in tiles}
    size = grid.tile_size
    rows = []
    for class_id, items in labels.items():
        for geom, cls, name in items:
            x0, y0, x1, y1 = to_pixels(geom, grid.zoom, size).bounds
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


def label_features(labels: Path, name: str) -> list[dict]:
    """Features of class ``name`` in the extract folder ``labels`` that are labels (``label`` not false)."""
    from navml.errors import InputError
    from navml.geo.features import read_features

    path = Path(labels) / f"{name}.geojson"
    if not path.exists():
        raise InputError(f"{path}: labels of class '{name}' not found; run the extract stage first")
    return [f for f in read_features(path) if f["properties"].get("label", True)]


def rasterize_labels(
    labels: str | os.PathLike,
    tiles: Sequence[Tile],
    store: Store,
    classes: Sequence[ClassSpec],
    complete: str | os.PathLike | None,
    roads: bool,
) -> dict:
    """Masks of the segmentation classes and boxes of the detection classes of ``tiles``, written to ``store``.

    ``labels``: the extract folder (``<class>.geojson``, ``roads.geojson``).
    ``complete``: GeoJSON of the areas where OSM mapping is complete, or None
    for complete everywhere; with ``roads``, mapped road surfaces are
    background. Writes ``masks/``, ``boxes.csv`` and ``labels.json`` (the
    legend, returned) in the store root.
    """
    from navml.config import detection_names, segmentation_classes
    from navml.errors import InputError
    from navml.geo.features import read_features

    labels = Path(labels)
    seg = segmentation_classes(list(classes))
    layers = [[f["geometry"] for f in label_features(labels, c.name)] for c in seg]
    areas = [f["geometry"] for f in read_features(complete)] if complete else None
    background = []
    if areas is not None and roads:
        from navml.data.roads import read_road_surfaces

        background = read_road_surfaces(labels, "set rasterize.roads: false")
    counts = write_masks(store, tiles, layers, complete=areas, background=background)

    ids = {pair: i for i, pair in enumerate(detection_names(list(classes)))}
    det: dict[int, list] = {i: [] for i in ids.values()}
    for c in classes:
        if c.task != "detection":
            continue
        for f in label_features(labels, c.name):
            name = str(f["properties"].get("kind") or c.name if len(c.names) > 1 else c.names[0])
            if (c.name, name) not in ids:
                raise InputError(f"{labels / (c.name + '.geojson')}: label kind '{name}' is not in classes.{c.name}.names {list(c.names)}")
            det[ids[(c.name, name)]].append((f["geometry"], c.name, name))
    boxes = tile_boxes(tiles, store.grid, det)
    root = Path(store.root)
    tmp = root / ".boxes.csv.part"
    boxes.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(root / "boxes.csv")
    legend = {
        "mask_values": {**{str(i + 1): c.name for i, c in enumerate(seg)}, str(IGNORE): "ignore"},
        "box_class_ids": {str(i): f"{cls}:{name}" for (cls, name), i in ids.items()},
        "pixels": {("ignore" if int(k[7:]) == IGNORE else seg[int(k[7:]) - 1].name): v for k, v in counts.items() if k.startswith("pixels_")},
        "boxes": int(len(boxes)),
        "shards": int(counts["shards"]),
    }
    tmp = root / ".labels.json.part"
    tmp.write_text(json.dumps({k: v for k, v in legend.items() if k != "shards"}, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / "labels.json")
    return legend
