"""Review verdicts from the viewer: hard negatives for mining, every verdict for the record.

A reviewer marks a predicted feature *false* or *correct*. A false one goes
into the hard-negatives file of its kind (default
``data/mining/{model}/hard_negatives.geojson``, ``{model}`` being ``seg`` for a
segmentation feature and ``det`` for a detection; a path without ``{model}`` takes
both), the schema the mining stage reads (:mod:`navml.mining.negatives`, which owns it): a GeoJSON FeatureCollection (WGS84) of
Polygon features with properties ``class``, ``kind`` (``segmentation`` or
``detection``), ``tile`` (``"z-x-y"``), ``area_m2`` (ground m²), ``score``
(0..1 or null), ``source`` (``"review"`` here, ``"mined"`` for what mining found)
and ``keep`` (mining drops features whose ``keep`` is false). Every verdict also
goes to the review file (``data/review/review.geojson``) with ``verdict``.

A feature is identified by its geometry (``review_id``: a hash of the
normalized polygon at 1e-9 degrees): a later verdict on the same feature
replaces the earlier one in both files. A *correct* verdict on a mined negative
vetoes it (``keep: false``, the feature stays in the file); on a reviewed
negative it removes it. Files are rewritten whole and atomically
(:func:`add_review`, :func:`navml.io.write_text`) under a per-file lock, so a
crash of the server leaves either the old or the new file, and concurrent
clicks lose nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import mapping, shape

from navml.errors import InputError
from navml.mining.negatives import KINDS, area_m2, read_collection, review_id, tile_of, write_collection

VERDICTS = ("false", "correct")
#: Default paths (relative to the project root).
NEGATIVES = "data/mining/{model}/hard_negatives.geojson"
#: ``{model}`` of the negatives path per kind: the model folders (data/models/seg, data/models/det) mining reads for.
MODEL_OF_KIND = {"segmentation": "seg", "detection": "det"}
REVIEWS = Path("data/review/review.geojson")
__all__ = ["KINDS", "REVIEWS", "VERDICTS", "ReviewLog", "add_review", "area_m2", "read_collection", "review_feature", "review_id",
           "tile_of", "veto", "write_collection"]


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(Path(path).resolve(), threading.Lock())


def _id_of(feature: Mapping[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    if props.get("review_id"):
        return str(props["review_id"])
    try:
        return review_id(feature["geometry"])
    except Exception:  # noqa: BLE001 - a feature without a usable geometry matches nothing
        return None


def add_review(path: str | os.PathLike, feature: Mapping[str, Any]) -> Path:
    """Put ``feature`` into the FeatureCollection file ``path`` (created when missing), atomically.

    A feature with the same id (``review_id``, else the geometry's) is replaced;
    a mined one (``source: "mined"``) keeps its properties and takes only the new ``keep``.
    """
    path = Path(path)
    key = _id_of(feature)
    with _lock(path):
        feats, out = read_collection(path), []
        new = dict(feature)
        for f in feats:
            if _id_of(f) != key:
                out.append(f)
            elif (f.get("properties") or {}).get("source") == "mined":
                new = {**f, "properties": {**f["properties"], "keep": feature["properties"].get("keep", True), "review_id": key}}
        return write_collection(path, [*out, new])


def veto(path: str | os.PathLike, key: str) -> int:
    """A *correct* verdict on ``path``'s feature ``key``: a mined negative gets ``keep: false``, a reviewed one goes; returns features changed."""
    path = Path(path)
    with _lock(path):
        feats = read_collection(path)
        out, changed = [], 0
        for f in feats:
            if _id_of(f) != key:
                out.append(f)
                continue
            changed += 1
            if (f.get("properties") or {}).get("source") == "mined":
                out.append({**f, "properties": {**f["properties"], "keep": False, "review_id": key}})
        if changed:
            write_collection(path, out)
        return changed


def review_feature(body: Mapping[str, Any], zoom: int) -> tuple[str, dict[str, Any]]:
    """``(verdict, GeoJSON feature)`` of one review request; :class:`InputError` on anything malformed.

    ``body``: ``{"feature": GeoJSON Feature or geometry, "verdict": "false"|"correct",
    "kind": "segmentation"|"detection", "class": name}``. A false verdict gives the
    hard-negative schema with ``keep: true``, a correct one ``keep: false``; both carry ``verdict`` and ``review_id``.
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
        "keep": verdict == "false",
        "verdict": verdict,
        "review_id": review_id(geom),
    }
    geom = shapely.set_precision(geom, 1e-9)
    return verdict, {"type": "Feature", "geometry": mapping(geom), "properties": properties}


class ReviewLog:
    """Records verdicts: false ones into the negatives file of their kind, all into the review file."""

    def __init__(self, negatives: str | os.PathLike = NEGATIVES, reviews: str | os.PathLike = REVIEWS):
        self.negatives = str(negatives)
        self.reviews = Path(reviews)

    def negatives_path(self, kind: str) -> Path:
        """The hard-negatives file of ``kind`` (``{model}`` of the path replaced)."""
        return Path(self.negatives.replace("{model}", MODEL_OF_KIND[kind]))

    def negatives_paths(self) -> list[Path]:
        """Every hard-negatives file this log writes (one per kind, or one for both)."""
        return list(dict.fromkeys(self.negatives_path(k) for k in KINDS))

    def add(self, body: Mapping[str, Any], zoom: int) -> dict[str, Any]:
        """Record one review (see :func:`review_feature`); returns the feature and the files written."""
        verdict, feature = review_feature(body, zoom)
        neg = self.negatives_path(feature["properties"]["kind"])
        written = [str(add_review(self.reviews, feature))]
        if verdict == "false":
            props = {k: v for k, v in feature["properties"].items() if k != "verdict"}
            written.append(str(add_review(neg, {**feature, "properties": props})))
        elif veto(neg, feature["properties"]["review_id"]):
            written.append(str(neg))
        return {"written": written, "feature": feature}

    def export(self) -> dict[str, Any]:
        """Every verdict as one FeatureCollection (the review file)."""
        return {"type": "FeatureCollection", "features": read_collection(self.reviews)}
