"""Area of interest -> tile index: tiles, shards, label flags and a spatial split.

The split assigns whole *blocks* (parent tiles at ``split_zoom``) to train, val
or test. Blocks joined by a label feature that crosses their border are
assigned together, so no labelled object is on both sides of a split.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import mercantile
import pandas as pd
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from navml.config import ClassSpec
from navml.errors import ConfigError, InputError
from navml.grid import Grid, Tile, shard_of, tile_key, tile_polygon
from navml.tiles_index import SPLITS
from navml.vectors import read_features


def read_aoi(aoi: str | os.PathLike) -> BaseGeometry:
    """The area of interest (WGS84) from a GeoJSON file or a ``"west,south,east,north"`` string (degrees)."""
    text = str(aoi)
    parts = text.split(",")
    if len(parts) == 4:
        try:
            w, s, e, n = (float(p) for p in parts)
        except ValueError:
            pass
        else:
            if not (-180 <= w < e <= 180 and -85.06 <= s < n <= 85.06):
                raise ConfigError(f"aoi '{text}': need west < east and south < north, in degrees")
            return box(w, s, e, n)
    geoms = [f["geometry"] for f in read_features(Path(text))]
    if not geoms:
        raise InputError(f"{text}: the area of interest has no geometry")
    geom = shapely.union_all([shapely.make_valid(g) for g in geoms])
    if geom.is_empty or geom.area == 0:
        raise InputError(f"{text}: the area of interest is empty; it must be a polygon")
    return geom


def cover_tiles(aoi: BaseGeometry, zoom: int) -> list[Tile]:
    """Tiles at ``zoom`` whose interior intersects the AOI, sorted north to south, west to east."""
    w, s, e, n = aoi.bounds
    candidates = list(mercantile.tiles(w, s, e, n, zooms=zoom))
    boxes = [tile_polygon(t) for t in candidates]
    shapely.prepare(aoi)
    keep = [t for t, b in zip(candidates, boxes) if aoi.intersects(b) and aoi.intersection(b).area > 0]
    return sorted(keep, key=lambda t: (t.y, t.x))


def _union_find(n: int):
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    return find, union


def _seeded_order(keys: Sequence[str], seed: int) -> list[str]:
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def assign_splits(
    block_tiles: Mapping[str, int], links: Sequence[Sequence[str]], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Assign blocks to splits, keeping linked blocks together.

    ``block_tiles`` maps a block key to its tile count, ``links`` lists groups of
    blocks that must share a split, ``fractions`` maps split -> share of tiles.
    Groups are taken in a seeded order and each goes to the split furthest below
    its target (in tiles); every split with a positive share gets at least one
    group when there are enough groups.
    """
    keys = sorted(block_tiles)
    pos = {k: i for i, k in enumerate(keys)}
    find, union = _union_find(len(keys))
    for group in links:
        members = [pos[b] for b in group if b in pos]
        for m in members[1:]:
            union(members[0], m)
    groups: dict[int, list[str]] = {}
    for k in keys:
        groups.setdefault(find(pos[k]), []).append(k)
    named = {min(g): g for g in groups.values()}
    order = _seeded_order(list(named), seed)
    total = sum(block_tiles.values())
    wanted = [s for s in SPLITS if fractions.get(s, 0) > 0]
    filled = {s: 0 for s in SPLITS}
    assigned: dict[str, list[str]] = {s: [] for s in SPLITS}
    for g in order:
        split = max(wanted, key=lambda s: fractions[s] * total - filled[s])
        assigned[split].append(g)
        filled[split] += sum(block_tiles[b] for b in named[g])
    # A split with a positive share but no group takes the smallest group of the
    # split that has the most groups, as long as that one keeps at least one.
    for s in sorted(wanted, key=lambda s: fractions[s]):
        if not assigned[s]:
            donor = max(wanted, key=lambda d: len(assigned[d]))
            if len(assigned[donor]) > 1:
                g = min(assigned[donor], key=lambda g: (sum(block_tiles[b] for b in named[g]), g))
                assigned[donor].remove(g)
                assigned[s].append(g)
    return {b: s for s in SPLITS for g in assigned[s] for b in named[g]}


def build_index(
    aoi: BaseGeometry,
    grid: Grid,
    classes: Sequence[ClassSpec],
    labels: Mapping[str, Sequence[BaseGeometry]],
    *,
    split_zoom: int,
    fractions: Mapping[str, float],
    seed: int,
) -> pd.DataFrame:
    """The tile index of an AOI.

    ``labels`` maps a class name to its label geometries (WGS84). Returns one row
    per tile: ``z, x, y, shard, block, split, pos_<class>``.
    """
    if not grid.shard_zoom <= split_zoom <= grid.zoom:
        raise ConfigError(f"cover.split_zoom {split_zoom} must lie between grid.shard_zoom {grid.shard_zoom} and grid.zoom {grid.zoom}")
    bad = [s for s in fractions if s not in SPLITS]
    if bad:
        raise ConfigError(f"cover.split: unknown split {bad[0]!r}; use {', '.join(SPLITS)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or any(v < 0 for v in fractions.values()):
        raise ConfigError(f"cover.split: shares {dict(fractions)} must be >= 0 and add up to 1")
    tiles = cover_tiles(aoi, grid.zoom)
    if not tiles:
        raise InputError("the area of interest covers no tile; check its coordinates (lon, lat order)")
    boxes = [tile_polygon(t) for t in tiles]
    tree = shapely.STRtree(boxes)
    block_of = [tile_key(mercantile.parent(t, zoom=split_zoom) if split_zoom < grid.zoom else t) for t in tiles]
    rows = {
        "z": [t.z for t in tiles],
        "x": [t.x for t in tiles],
        "y": [t.y for t in tiles],
        "shard": [tile_key(shard_of(t, grid)) for t in tiles],
        "block": block_of,
    }
    links: list[list[str]] = []
    flags = {}
    for spec in classes:
        pos = [0] * len(tiles)
        for geom in labels.get(spec.name, []):
            hit = [int(i) for i in tree.query(geom, predicate="intersects") if geom.intersection(boxes[int(i)]).area > 0]
            for i in hit:
                pos[i] = 1
            touched = sorted({block_of[i] for i in hit})
            if len(touched) > 1:
                links.append(touched)
        flags[f"pos_{spec.name}"] = pos
    block_tiles: dict[str, int] = {}
    for b in block_of:
        block_tiles[b] = block_tiles.get(b, 0) + 1
    split_of = assign_splits(block_tiles, links, fractions, seed)
    rows["split"] = [split_of[b] for b in block_of]
    rows.update(flags)
    return pd.DataFrame(rows)
