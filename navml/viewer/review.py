"""Review verdicts from the viewer: hard negatives for mining, confirmations for the record.

A reviewer marks a predicted feature *false* or *correct*. A false one is
appended to the hard-negatives file (default ``data/mining/seg/hard_negatives.geojson``),
the schema the mining stage reads: a GeoJSON FeatureCollection (WGS84) of
Polygon features with properties ``class``, ``kind`` (``segmentation`` or
``detection``), ``tile`` (``"z-x-y"``), ``area_m2`` (ground m²), ``score``
(0..1 or null), ``source: "review"`` and ``keep: true`` (mining drops features
whose ``keep`` is false). A correct one goes to ``data/review/review.geojson``
with ``verdict: "correct"``. Files are rewritten whole and atomically
(:func:`navml.io.write_text`); :class:`ReviewLog` serialises writers with a lock.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mercantile
import shapely
from pyproj import Geod
from shapely.geometry import mapping, shape

from navml.errors import InputError
from navml.io import dumps_json, write_text

VERDICTS = ("false", "correct")
KINDS = ("segmentation", "detection")
#: Default paths (relative to the project root).
NEGATIVES = Path("data/mining/seg/hard_negatives.geojson")
REVIEWS = Path("data/review/review.geojson")
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


def write_collection(path: str | os.PathLike, features: list[dict[str, Any]]) -> Path:
    """Write ``features`` as one FeatureCollection, atomically."""
    return write_text(path, dumps_json({"type": "FeatureCollection", "features": features}))


def area_m2(geometry) -> float:
    """Geodesic ground area (m², WGS84 ellipsoid) of a polygon in WGS84 degrees."""
    return abs(float(_GEOD.geometry_area_perimeter(geometry)[0]))


def tile_of(geometry, zoom: int) -> str:
    """``"z-x-y"`` of the tile at ``zoom`` holding the geometry's representative point."""
    p = geometry.representative_point()
    t = mercantile.tile(p.x, p.y, zoom)
    return f"{t.z}-{t.x}-{t.y}"


def review_feature(body: Mapping[str, Any], zoom: int) -> tuple[str, dict[str, Any]]:
    """``(verdict, GeoJSON feature)`` of one review request; :class:`InputError` on anything malformed.

    ``body``: ``{"feature": GeoJSON Feature or geometry, "verdict": "false"|"correct",
    "kind": "segmentation"|"detection", "class": name}``. A false verdict gives the
    hard-negative schema (``keep: true``); a correct one adds ``verdict``.
    """
    verdict = body.get("verdict")
    kind = body.get("kind", "segmentation")
    if verdict not in VERDICTS:
        raise InputError(f"verdict is {verdict!r}; use one of {', '.join(VERDICTS)}")
    if kind not in KINDS:
        raise InputError(f"kind is {kind!r}; use one of {', '.join(KINDS)}")
    feat = body.get("feature")
    if not isinstance(feat, Mapping):
        raise InputError("feature: a GeoJSON Feature is required")
    geom_json = feat.get("geometry", feat) if feat.get("type") == "Feature" else feat
    props = dict(feat.get("properties") or {}) if feat.get("type") == "Feature" else {}
    try:
        geom = shape(geom_json)
    except Exception as exc:  # noqa: BLE001 - shapely raises several types for bad GeoJSON
        raise InputError(f"feature: not a GeoJSON geometry ({exc})") from None
    if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
        geom = geom.geoms[0]
    if geom.geom_type != "Polygon" or geom.is_empty or not geom.is_valid:
        raise InputError(f"feature: need one valid Polygon, got {geom.geom_type}")
    if not (-180 <= geom.bounds[0] <= geom.bounds[2] <= 180 and -90 <= geom.bounds[1] <= geom.bounds[3] <= 90):
        raise InputError("feature: coordinates are not WGS84 degrees")
    cls = body.get("class") or props.get("class")
    if not isinstance(cls, str) or not cls:
        raise InputError("class: a class name is required")
    score = props.get("score")
    properties: dict[str, Any] = {
        "class": cls,
        "kind": kind,
        "tile": tile_of(geom, zoom),
        "area_m2": round(area_m2(geom), 1),
        "score": None if score is None else float(score),
        "source": "review",
    }
    if verdict == "false":
        properties["keep"] = True
    else:
        properties["verdict"] = "correct"
    geom = shapely.set_precision(geom, 1e-9)
    return verdict, {"type": "Feature", "geometry": mapping(geom), "properties": properties}


class ReviewLog:
    """Appends reviewed features to the negatives and review files, one writer at a time."""

    def __init__(self, negatives: str | os.PathLike = NEGATIVES, reviews: str | os.PathLike = REVIEWS):
        self.negatives = Path(negatives)
        self.reviews = Path(reviews)
        self._lock = threading.Lock()

    def add(self, body: Mapping[str, Any], zoom: int) -> dict[str, Any]:
        """Record one review (see :func:`review_feature`); returns the feature written and the file."""
        verdict, feature = review_feature(body, zoom)
        path = self.negatives if verdict == "false" else self.reviews
        with self._lock:
            write_collection(path, [*read_collection(path), feature])
        return {"written": str(path), "feature": feature}

    def export(self) -> dict[str, Any]:
        """Every review as one FeatureCollection: the negatives (``verdict: "false"``) then the correct ones."""
        with self._lock:
            neg = read_collection(self.negatives)
            ok = read_collection(self.reviews)
        out = [{**f, "properties": {**f.get("properties", {}), "verdict": "false"}} for f in neg if f.get("properties", {}).get("source") == "review"]
        return {"type": "FeatureCollection", "features": [*out, *ok]}
