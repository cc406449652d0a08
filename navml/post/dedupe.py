"""Keep only predictions that are not in OSM yet: the review-ready new features.

A prediction is *matched* (already mapped) when its overlap with the existing
OSM features of its class passes ``min_overlap``:

* ``share``: the part of the prediction's area covered by existing areas;
* ``iou``: intersection over union with the existing areas it touches.

Existing point features (e.g. a parking mapped as a node) inside a prediction
match it too. Every feature of the extract counts, also those not used as
training labels (``label: false``, e.g. underground parking). Overlaps are
measured in Web Mercator (area ratios are the same as on the ground over a
lot's extent). Candidates come from a shapely ``STRtree``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from navml.config import ClassSpec, DedupeParams
from navml.data.roads import read_road_surfaces
from navml.errors import ConfigError, InputError
from navml.geo.features import read_features, to_mercator, write_features
from navml.io import write_json, write_text
from navml.post.josm import osm_xml

#: Defaults of the keyword arguments below: the params model's, written once there.
_DEDUPE = DedupeParams()


MATCHES = ("share", "iou")


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    g = geom if geom.is_valid else shapely.make_valid(geom)
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def overlaps(predictions: Sequence[BaseGeometry], existing: Sequence[BaseGeometry], match: str = "share") -> np.ndarray:
    """Overlap (0..1) of each prediction with ``existing`` features; both WGS84.

    ``share``: covered share of the prediction's area; ``iou``: IoU with the
    union of the existing areas it intersects. A prediction containing an
    existing point scores 1.
    """
    if match not in MATCHES:
        raise ConfigError(f"dedupe.match is '{match}'; use one of {', '.join(MATCHES)}")
    out = np.zeros(len(predictions))
    if not len(predictions) or not len(existing):
        return out
    areas, points = [], []
    for g in existing:
        if g is None or g.is_empty:
            continue
        if g.geom_type in ("Point", "MultiPoint"):
            points.append(to_mercator(g))
            continue
        p = _polygonal(to_mercator(g))
        if p is not None:
            areas.append(p)
    area_tree = shapely.STRtree(areas)
    point_tree = shapely.STRtree(points)
    for i, pred in enumerate(predictions):
        pm = to_mercator(pred)
        if not pm.is_valid:
            pm = _polygonal(pm) or pm
        if pm.is_empty or pm.area <= 0:
            continue
        if points and len(point_tree.query(pm, predicate="intersects")):
            out[i] = 1.0
            continue
        idx = area_tree.query(pm, predicate="intersects")
        if not len(idx):
            continue
        union = shapely.union_all([areas[j] for j in idx])
        inter = pm.intersection(union).area
        if match == "share":
            out[i] = inter / pm.area
        else:
            out[i] = inter / pm.union(union).area
    return np.clip(out, 0.0, 1.0)


def dedupe(
    predictions: str | os.PathLike,
    extract_dir: str | os.PathLike,
    classes: Sequence[ClassSpec],
    out_dir: str | os.PathLike,
    *,
    match: str = _DEDUPE.match,
    min_overlap: float = _DEDUPE.min_overlap,
    source: str = _DEDUPE.source,
    max_road_share: float | None = None,
) -> dict[str, Any]:
    """Split ``predictions`` (GeoJSON from vectorize) into matched and new; write the outputs.

    Reads ``<extract_dir>/<class>.geojson`` for every segmentation class in
    ``classes``; writes ``new_features.geojson`` (WGS84; properties class,
    area_m2, score, overlap), ``new_features.osm`` (JOSM; the class's
    ``osm_tags`` plus ``source``) and ``summary.json`` into ``out_dir``. All
    inputs are read and checked before anything is written. Returns the summary.

    ``max_road_share``: a prediction whose area lies on mapped road surfaces
    (``<extract_dir>/roads.geojson``, :func:`navml.data.roads.road_surfaces`) for
    this share or more is dropped too, counted as ``on_roads``; ``None`` keeps them.
    """
    if match not in MATCHES:
        raise ConfigError(f"dedupe.match is '{match}'; use one of {', '.join(MATCHES)}")
    if not 0.0 < float(min_overlap) <= 1.0:
        raise ConfigError(f"dedupe.min_overlap is {min_overlap}; it must lie in (0, 1]")
    if max_road_share is not None and not 0.0 < float(max_road_share) <= 1.0:
        raise ConfigError(f"dedupe.max_road_share is {max_road_share}; it must lie in (0, 1], or null to keep predictions on roads")
    seg = [c for c in classes if c.task == "segmentation"]
    if not seg:
        raise ConfigError("params: the registry has no segmentation class to dedupe")
    pred_path = Path(predictions)
    if not pred_path.exists():
        raise InputError(f"{pred_path}: predictions not found; run the vectorize stage first")
    preds = read_features(pred_path)
    names = {c.name for c in seg}
    for f in preds:
        cls = f["properties"].get("class")
        if cls not in names:
            raise InputError(f"{pred_path}: a feature has class '{cls}', not a segmentation class of the registry; re-run vectorize")
    existing: dict[str, list[BaseGeometry]] = {}
    for c in seg:
        path = Path(extract_dir) / f"{c.name}.geojson"
        if not path.exists():
            raise InputError(f"{path}: OSM extract of class '{c.name}' missing; run the extract stage first (dvc repro extract)")
        existing[c.name] = [f["geometry"] for f in read_features(path)]
    surfaces: list[BaseGeometry] = []
    if max_road_share is not None:
        surfaces = read_road_surfaces(extract_dir, "set dedupe.max_road_share: null")

    new: list[dict[str, Any]] = []
    per_class: dict[str, dict[str, int]] = {}
    for c in seg:
        mine = [f for f in preds if f["properties"]["class"] == c.name]
        geoms = [f["geometry"] for f in mine]
        ov = overlaps(geoms, existing[c.name], match)
        on_road = overlaps(geoms, surfaces, "share")
        counts = {"existing_osm": len(existing[c.name]), "predicted": len(mine), "matched_existing": 0, "on_roads": 0, "new": 0}
        for f, o, r in zip(mine, ov, on_road):
            if o >= min_overlap:
                counts["matched_existing"] += 1
            elif max_road_share is not None and r >= max_road_share:
                counts["on_roads"] += 1
            else:
                counts["new"] += 1
                props = {**f["properties"], "overlap": round(float(o), 4), "road_share": round(float(r), 4)}
                new.append({"geometry": f["geometry"], "properties": props})
        per_class[c.name] = counts
    summary = {
        **{k: sum(v[k] for v in per_class.values()) for k in ("predicted", "matched_existing", "on_roads", "new")},
        "classes": per_class,
        "match": match,
        "min_overlap": float(min_overlap),
        "max_road_share": None if max_road_share is None else float(max_road_share),
    }
    tags = {c.name: {**c.osm_tags, "source": source} if source else dict(c.osm_tags) for c in seg}
    xml = osm_xml(new, tags)

    out = Path(out_dir)
    write_features(new, out / "new_features.geojson")
    write_text(out / "new_features.osm", xml)
    write_json(out / "summary.json", summary)
    return summary
