"""Labels on the tile grid: class masks per shard and detection boxes per tile.

Where OSM mapping is not known to be complete, an unlabelled pixel may be an
unmapped object; such pixels get :data:`IGNORE` (255) so that training and
evaluation neither learn nor score them as background.

Polygons are burned on the exact pixel grid of the tile zoom: a pixel belongs to
a polygon when its centre lies inside, so a lot's pixel count times the squared
ground resolution matches its true area (within 1% for lots of 400 m² and more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import shapely
from rasterio.features import rasterize as burn
from rasterio.transform import Affine
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

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
