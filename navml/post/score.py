"""End-to-end scores of the vector output against ground-truth polygons.

Matching is SpaceNet's: predictions in descending confidence order, each takes
the still unmatched truth polygon of highest IoU if that IoU is at least the
threshold (0.5). IoU is measured in Web Mercator metres (ratios of areas are
the same as on the ground at a lot's scale).

Two scores, both from real outputs:

* ``new_features``: the review-ready new features (after dedupe) against the
  truth lots that exist but are not in OSM (``mapped == false``): is what we
  propose really missing (precision), and do we find what is missing (recall)?
* ``test``: all predicted polygons (before dedupe) against all visible truth
  lots, both restricted to those intersecting the test-split tiles: polygon
  precision, recall and F1 on tiles the model never trained on.

Plus geometry checks: share of valid output geometries, median vertex count
of all predictions and of those matching a rectangular (4-corner) truth lot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from navml.geo.features import to_mercator
from navml.errors import InputError
from navml.geo.grid import tile_polygon
from navml.geo.tile_index import read_index, tiles_from_index
from navml.geo.features import read_features


def iou(a: BaseGeometry, b: BaseGeometry) -> float:
    """Intersection over union of two areas (same CRS)."""
    inter = a.intersection(b).area
    return inter / (a.area + b.area - inter) if inter > 0 else 0.0


def match_greedy(
    preds: Sequence[BaseGeometry], scores: Sequence[float], truths: Sequence[BaseGeometry], threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """``(pred index, truth index, IoU)`` pairs, greedy in descending score, each truth used once.

    Geometries must share a metric-like CRS (e.g. Web Mercator).
    """
    if not len(preds) or not len(truths):
        return []
    tree = shapely.STRtree(list(truths))
    used: set[int] = set()
    pairs = []
    for i in sorted(range(len(preds)), key=lambda k: (-float(scores[k]), k)):
        best, best_j = 0.0, -1
        for j in tree.query(preds[i], predicate="intersects").tolist():
            if j in used:
                continue
            v = iou(preds[i], truths[j])
            if v > best or (v == best and best_j >= 0 and j < best_j):
                best, best_j = v, j
        if best_j >= 0 and best >= threshold:
            used.add(best_j)
            pairs.append((i, best_j, best))
    return pairs


def prf(tp: int, n_pred: int, n_truth: int) -> dict[str, float | int]:
    """Precision, recall, F1 and counts; an empty denominator scores 1.0 when both sides are empty, else 0."""
    precision = tp / n_pred if n_pred else (1.0 if not n_truth else 0.0)
    recall = tp / n_truth if n_truth else (1.0 if not n_pred else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": int(tp),
        "fp": int(n_pred - tp),
        "fn": int(n_truth - tp),
        "predicted": int(n_pred),
        "truth": int(n_truth),
    }


def score_polygons(preds: Sequence[dict[str, Any]], truths: Sequence[BaseGeometry], threshold: float = 0.5) -> dict[str, Any]:
    """:func:`prf` of predicted features (WGS84, ``properties.score``) against truth polygons (WGS84)."""
    pg = [to_mercator(f["geometry"]) for f in preds]
    tg = [to_mercator(g) for g in truths]
    sc = [float(f["properties"].get("score", 1.0)) for f in preds]
    pairs = match_greedy(pg, sc, tg, threshold)
    out = prf(len(pairs), len(pg), len(tg))
    out["mean_iou_matched"] = round(float(np.mean([p[2] for p in pairs])), 4) if pairs else 0.0
    return out


def vertex_count(geom: BaseGeometry) -> int:
    """Distinct vertices of a polygon's rings (closing repeats not counted)."""
    return sum(len(r.coords) - 1 for p in shapely.get_parts(geom) for r in [p.exterior, *p.interiors])


def _truth_lots(path: Path, cls: str | None) -> list[dict[str, Any]]:
    if not path.exists():
        raise InputError(f"{path}: ground truth not found; it is written by the synth stage (or set score.truth)")
    out = []
    for f in read_features(path):
        p = f["properties"]
        if p.get("visible") is False or (cls and p.get("class", cls) != cls):
            continue
        if f["geometry"].geom_type not in ("Polygon", "MultiPolygon"):
            continue
        out.append(f)
    return out


def score_outputs(
    predictions: str | os.PathLike,
    new_features: str | os.PathLike,
    truth: str | os.PathLike,
    tiles: str | os.PathLike,
    out: str | os.PathLike,
    *,
    class_name: str = "parking",
    iou_threshold: float = 0.5,
    split: str = "test",
) -> dict[str, Any]:
    """Score the vector outputs against ``truth`` and write the metrics JSON ``out`` atomically.

    ``truth``: GeoJSON of the true lots (WGS84) with a boolean ``mapped``
    property (false: visible but not in OSM); ``tiles``: the tile index
    (``split`` column). Returns the metrics.
    """
    for p, stage in ((predictions, "vectorize"), (new_features, "dedupe")):
        if not Path(p).exists():
            raise InputError(f"{p}: not found; run the {stage} stage first")
    preds = [f for f in read_features(predictions) if f["properties"].get("class", class_name) == class_name]
    new = [f for f in read_features(new_features) if f["properties"].get("class", class_name) == class_name]
    lots = _truth_lots(Path(truth), None)
    if lots and "mapped" not in lots[0]["properties"]:
        raise InputError(f"{truth}: truth features need a boolean 'mapped' property (false = not in OSM)")
    unmapped = [f["geometry"] for f in lots if not f["properties"].get("mapped", True)]

    df = read_index(tiles)
    test_tiles = tiles_from_index(df, split)
    metrics: dict[str, Any] = {"new_features": score_polygons(new, unmapped, iou_threshold)}
    if test_tiles:
        area = shapely.union_all([tile_polygon(t) for t in test_tiles])
        shapely.prepare(area)
        t_preds = [f for f in preds if area.intersects(f["geometry"])]
        t_truth = [f["geometry"] for f in lots if area.intersects(f["geometry"])]
        metrics[split] = score_polygons(t_preds, t_truth, iou_threshold)
        metrics[split]["tiles"] = len(test_tiles)
    else:
        metrics[split] = prf(0, 0, 0) | {"tiles": 0}
    geoms = [f["geometry"] for f in preds]
    verts = [vertex_count(g) for g in geoms]
    # Vertex count of predictions matched (whole AOI) to truth lots that are rectangles.
    rect = [i for i, f in enumerate(lots) if vertex_count(f["geometry"]) == 4]
    pairs = match_greedy([to_mercator(g) for g in geoms], [float(f["properties"].get("score", 1.0)) for f in preds],
                         [to_mercator(lots[i]["geometry"]) for i in rect], iou_threshold)
    rect_verts = [verts[i] for i, _, _ in pairs]
    metrics["geometry"] = {
        "features": len(geoms),
        "valid_share": round(float(np.mean([g.is_valid for g in geoms])), 4) if geoms else 1.0,
        "median_vertices": float(np.median(verts)) if verts else 0.0,
        "rectangular_lots_matched": len(rect_verts),
        "median_vertices_rectangular": float(np.median(rect_verts)) if rect_verts else 0.0,
    }
    metrics["iou_threshold"] = iou_threshold
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return metrics
