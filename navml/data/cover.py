"""Area of interest -> tile index: tiles, shards, label flags and a spatial split.

The split assigns whole *blocks* (parent tiles at ``split_zoom``) to train, val
or test. A labelled object that crosses a block border belongs to the split of
the block holding most of it; the tiles it touches in a block of another split
become ``buffer`` tiles, used by no split (they are still predicted), so no
labelled object is on both sides of a split.
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
from navml.geo.grid import Grid, Tile, shard_of, tile_key, tile_polygon
from navml.geo.tile_index import BUFFER, SPLITS
from navml.geo.features import read_features


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


def _seeded_order(keys: Sequence[str], seed: int) -> list[str]:
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def assign_splits(block_tiles: Mapping[str, int], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign blocks to splits.

    ``block_tiles`` maps a block key to its tile count, ``fractions`` maps split
    -> share of tiles. Blocks are taken in a seeded order and each goes to the
    split furthest below its target (in tiles); every split with a positive
    share gets at least one block when there are enough blocks.
    """
    order = _seeded_order(sorted(block_tiles), seed)
    total = sum(block_tiles.values())
    wanted = [s for s in SPLITS if fractions.get(s, 0) > 0]
    filled = {s: 0 for s in SPLITS}
    assigned: dict[str, list[str]] = {s: [] for s in SPLITS}
    for block in order:
        split = max(wanted, key=lambda s: fractions[s] * total - filled[s])
        assigned[split].append(block)
        filled[split] += block_tiles[block]
    # A split with a positive share but no block takes the smallest block of the
    # split that has the most blocks, as long as that one keeps at least one.
    for s in sorted(wanted, key=lambda s: fractions[s]):
        if not assigned[s]:
            donor = max(wanted, key=lambda d: len(assigned[d]))
            if len(assigned[donor]) > 1:
                block = min(assigned[donor], key=lambda b: (block_tiles[b], b))
                assigned[donor].remove(block)
                assigned[s].append(block)
    return {b: s for s in SPLITS for b in assigned[s]}


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
    per tile: ``z, x, y, shard, block, split, pos_<class>``; ``split`` is one of
    train, val, test or ``buffer``.
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
    block_tiles: dict[str, int] = {}
    for b in block_of:
        block_tiles[b] = block_tiles.get(b, 0) + 1
    split_of = assign_splits(block_tiles, fractions, seed)
    split = [split_of[b] for b in block_of]
    flags = {}
    foreign: set[int] = set()
    for spec in classes:
        pos = [0] * len(tiles)
        for geom in labels.get(spec.name, []):
            parts = {int(i): geom.intersection(boxes[int(i)]).area for i in tree.query(geom, predicate="intersects")}
            hit = [i for i, a in parts.items() if a > 0]
            for i in hit:
                pos[i] = 1
            if len({split[i] for i in hit}) > 1:
                share: dict[str, float] = {}
                for i in hit:
                    share[split[i]] = share.get(split[i], 0.0) + parts[i]
                home = max(sorted(share), key=lambda s: share[s])
                foreign.update(i for i in hit if split[i] != home)
        flags[f"pos_{spec.name}"] = pos
    rows["split"] = [BUFFER if i in foreign else s for i, s in enumerate(split)]
    rows.update(flags)
    return pd.DataFrame(rows)


def write_cover(
    aoi: str | os.PathLike,
    labels: str | os.PathLike,
    grid: Grid,
    classes: Sequence[ClassSpec],
    out: str | os.PathLike,
    *,
    split_zoom: int,
    fractions: Mapping[str, float],
    seed: int,
) -> pd.DataFrame:
    """The tile index of ``aoi`` with the label flags of ``classes`` (from the extract folder ``labels``).

    Writes ``<out>/tiles.csv`` (the index) and ``<out>/tiles.geojson`` (tile
    outlines with split and shard, to look at); returns the index.
    """
    from navml.geo.features import write_features
    from navml.geo.tile_index import write_index

    out = Path(out)
    area = read_aoi(aoi)
    geoms = {}
    for spec in classes:
        path = Path(labels) / f"{spec.name}.geojson"
        geoms[spec.name] = [f["geometry"] for f in read_features(path) if f["properties"].get("label", True)]
    df = build_index(area, grid, classes, geoms, split_zoom=split_zoom, fractions=fractions, seed=seed)
    write_index(df, out / "tiles.csv")
    feats = [
        {"geometry": tile_polygon(Tile(r.x, r.y, r.z)), "properties": {"tile": f"{r.z}/{r.x}/{r.y}", "split": r.split, "shard": r.shard}}
        for r in df.itertuples()
    ]
    write_features(feats, out / "tiles.geojson")
    return df


def cover_summary(df: pd.DataFrame) -> str:
    """One line about a tile index: tiles, shards, blocks, split counts and positive tiles per class."""
    counts = df["split"].value_counts().to_dict()
    pos = {col[4:]: int(df[col].sum()) for col in df.columns if col.startswith("pos_")}
    return f"{len(df)} tiles in {df['shard'].nunique()} shards, {df['block'].nunique()} blocks; split {counts}; positive tiles {pos}"
