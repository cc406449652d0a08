"""The hard-negatives file: what mining found and reviewers judged, in one GeoJSON per model.

A FeatureCollection (WGS84) of Polygon features with properties ``class``,
``kind`` (``segmentation`` or ``detection``), ``tile`` (``"z-x-y"``, the tile it
was found on), ``area_m2`` (ground m², geodesic), ``score`` (0..1 or null),
``source`` (``"mined"``: found by ``navml mine``; ``"review"``: a reviewer marked a
prediction false in the viewer) and ``keep`` (false: vetoed, not used), plus
``review_id`` (a hash of the geometry that the viewer identifies a feature by);
mined over several cities (``navml mine --cities``), also ``city`` (the city whose
store it lies in; a reviewer's negative may lack it: :func:`feature_cities`
then finds it by its tile).
The viewer (:mod:`navml.viewer.review`) writes the same schema; both go through
:func:`write_collection` (atomic).

Re-mining keeps what people did: reviewed negatives stay as they are, vetoed
mined ones stay vetoed, and a newly mined region that mostly lies on a vetoed
one (:data:`VETO_OVERLAP` of its area) is not added again (:func:`merge_previous`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mercantile
import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry import mapping, shape

from navml.errors import InputError
from navml.geo.grid import Grid, Tile, parse_tile, tile_key, tile_polygon, tile_window
from navml.io import dumps_json, write_text

#: The file's name in a mining folder (``<paths.mining>/seg``) and in a mined model's folder.
FILE = "hard_negatives.geojson"
KINDS = ("segmentation", "detection")
SOURCES = ("mined", "review")
#: A newly mined region lying this much (share of its area) on a vetoed one stays vetoed.
VETO_OVERLAP = 0.5
_GEOD = Geod(ellps="WGS84")


def read_collection(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Features of a GeoJSON FeatureCollection file; ``[]`` when the file does not exist."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        data = json.loads(p.read_text())
        return list(data["features"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{p}: not a GeoJSON FeatureCollection ({exc}); fix or remove it") from exc


def read_mined(path: str | os.PathLike, command: str) -> list[dict[str, Any]]:
    """The features of the hard-negatives file ``path`` that a retraining reads; a one-line InputError naming
    ``command`` (the stage that writes it) when the file is missing."""
    if not Path(path).is_file():
        raise InputError(f"{path}: hard-negatives file not found; run `navml {command}` (dvc repro {command}) first")
    return read_collection(path)


def write_collection(path: str | os.PathLike, features: list[dict[str, Any]]) -> Path:
    """Write ``features`` (GeoJSON dicts) as one FeatureCollection, atomically."""
    return write_text(path, dumps_json({"type": "FeatureCollection", "features": features}))


def review_id(geometry) -> str:
    """A stable id of a polygon (WGS84): SHA-1 of its normalized WKB at 1e-9 degrees, 16 hex digits."""
    g = shapely.set_precision(shape(geometry) if isinstance(geometry, Mapping) else geometry, 1e-9).normalize()
    return hashlib.sha1(shapely.to_wkb(g, hex=False)).hexdigest()[:16]


def area_m2(geometry) -> float:
    """Geodesic ground area (m², WGS84 ellipsoid) of a polygon in WGS84 degrees."""
    return abs(float(_GEOD.geometry_area_perimeter(geometry)[0]))


def tile_of(geometry, zoom: int) -> str:
    """``"z-x-y"`` of the tile at ``zoom`` holding the geometry's representative point."""
    p = geometry.representative_point()
    t = mercantile.tile(p.x, p.y, zoom)
    return f"{t.z}-{t.x}-{t.y}"


def negative_feature(geom, *, cls: str, kind: str, tile: str, score: float | None, source: str = "mined") -> dict[str, Any]:
    """One hard negative as a GeoJSON feature dict of the file's schema (``keep: true``)."""
    geom = shapely.set_precision(geom, 1e-9)
    return {
        "type": "Feature",
        "geometry": mapping(geom),
        "properties": {
            "class": cls,
            "kind": kind,
            "tile": tile,
            "area_m2": round(area_m2(geom), 1),
            "score": None if score is None else round(float(score), 4),
            "source": source,
            "keep": True,
            "review_id": review_id(geom),
        },
    }


def kept(features: Iterable[Mapping[str, Any]], kind: str, classes: Sequence[str]) -> list[dict[str, Any]]:
    """The features of ``kind`` and one of ``classes`` that are not vetoed (``keep`` not false)."""
    out = []
    for f in features:
        p = f.get("properties") or {}
        if p.get("keep", True) is False or p.get("kind", kind) != kind or p.get("class") not in classes:
            continue
        out.append(dict(f))
    return out


def count_vetoed(features: Iterable[Mapping[str, Any]]) -> int:
    """How many of ``features`` are vetoed (``keep: false``)."""
    return sum(1 for f in features if (f.get("properties") or {}).get("keep", True) is False)


def merge_previous(new: Sequence[dict[str, Any]], previous: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The file's new content: reviewed negatives and vetoed mined ones of ``previous``, then ``new`` less what lies on a veto.

    Returns ``(features, counts)`` with counts ``reviewed``, ``vetoed`` (kept from before) and ``still_vetoed`` (new ones dropped).
    """
    carried = [dict(f) for f in previous if (f.get("properties") or {}).get("source") == "review"
               or (f.get("properties") or {}).get("keep", True) is False]
    vetoes = [shape(f["geometry"]) for f in carried if (f.get("properties") or {}).get("keep", True) is False]
    tree = shapely.STRtree(vetoes) if vetoes else None
    out, dropped = [], 0
    for f in new:
        g = shape(f["geometry"])
        if tree is not None:
            on = sum(g.intersection(vetoes[j]).area for j in tree.query(g, predicate="intersects").tolist())
            if on >= VETO_OVERLAP * g.area:
                dropped += 1
                continue
        out.append(f)
    counts = {
        "reviewed": sum((f.get("properties") or {}).get("source") == "review" for f in carried),
        "vetoed": len(vetoes),
        "still_vetoed": dropped,
    }
    return carried + out, counts


def tile_masks(features: Sequence[Mapping[str, Any]], grid: Grid, tiles: Iterable[Tile]) -> dict[Tile, np.ndarray]:
    """Boolean ``(rows, cols)`` masks of the negatives' areas on each of ``tiles`` they cover (pixel centres inside).

    Only ``tiles`` are considered (the caller passes the train split): a negative reaching into a val or
    test tile is used on its train tiles only.
    """
    from rasterio.features import rasterize

    from navml.geo.features import to_pixels

    tiles = list(tiles)
    if not features or not tiles:
        return {}
    footprints = [tile_polygon(t) for t in tiles]
    tree = shapely.STRtree(footprints)
    size = grid.tile_size
    out: dict[Tile, np.ndarray] = {}
    geoms = [shape(f["geometry"]) for f in features]
    for g in geoms:
        for j in tree.query(g, predicate="intersects").tolist():
            t = tiles[j]
            w = tile_window(t, size)
            local = to_pixels(g, grid.zoom, size, origin=(w.col, w.row))
            burnt = rasterize([(local, 1)], out_shape=(size, size), fill=0, dtype="uint8").astype(bool)
            if burnt.any():
                out[t] = out[t] | burnt if t in out else burnt
    return out


def feature_cities(features: Sequence[Mapping[str, Any]], cities: Mapping[str, Iterable[Tile]]) -> list[str | None]:
    """Per feature the city (a key of ``cities``: name -> the tiles of its index) it belongs to, or None (none of them).

    Its ``city`` property when it has one (None when that is no key of ``cities``: a city no longer mined
    over); else the one city whose tiles hold its ``tile``. A ``tile`` in two or more of them without a
    ``city`` is an :class:`InputError`.
    """
    sets = {name: set(tiles) for name, tiles in cities.items()}
    out: list[str | None] = []
    for f in features:
        p = f.get("properties") or {}
        if p.get("city") is not None:
            out.append(str(p["city"]) if str(p["city"]) in sets else None)
            continue
        text = p.get("tile")
        try:
            tile = parse_tile(str(text))
        except Exception as exc:  # noqa: BLE001 - parse_tile raises ConfigError with the reason
            raise InputError(f"hard negative with tile {text!r}: {exc}") from None
        hit = [name for name, tiles in sets.items() if tile in tiles]
        if len(hit) > 1:
            raise InputError(
                f"hard negative {p.get('review_id', '')} on tile {text} has no city and that tile lies in cities {' and '.join(hit)}; "
                "give it a city property"
            )
        out.append(hit[0] if hit else None)
    return out


def feature_tiles(features: Sequence[Mapping[str, Any]]) -> list[Tile]:
    """The distinct ``tile`` properties of ``features`` (sorted); a malformed one is an :class:`InputError`."""
    found = set()
    for f in features:
        text = (f.get("properties") or {}).get("tile")
        try:
            found.add(parse_tile(str(text)))
        except Exception as exc:  # noqa: BLE001 - parse_tile raises ConfigError with the reason
            raise InputError(f"hard negative with tile {text!r}: {exc}") from None
    return sorted(found, key=lambda t: (t.z, t.y, t.x))


__all__ = [
    "FILE", "KINDS", "SOURCES", "area_m2", "count_vetoed", "feature_cities", "feature_tiles", "kept", "merge_previous", "negative_feature",
    "read_collection", "read_mined", "review_id", "tile_key", "tile_masks", "tile_of", "write_collection",
]
