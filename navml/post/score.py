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

Plus ``decoys`` (when a decoys file is given, the synthetic city's
``truth/decoys.geojson``): false positives on the look-alikes the city drew, by
kind (plaza, flat_roof, ...): the predicted area outside every truth lot that
lies on a decoy of the class, and the decoys it covers by at least
:data:`DECOY_HIT_M2` m², over the whole AOI (``all``) and on the split's tiles.

Every class is scored on its own: predictions by their ``class`` property,
truth by the file given for the class, or, in one shared file, by the truth
features' ``class`` property (a file without it can describe only one class).
The metrics file holds one section per class: ``{<class>: {new_features, <split>,
geometry}, iou_threshold, split}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from navml.config import ScoreParams
from navml.errors import InputError
from navml.geo.features import read_features, to_mercator
from navml.geo.grid import tile_polygon
from navml.geo.tile_index import read_index, tiles_from_index
from navml.io import write_json

#: Defaults of the keyword arguments below: the params model's, written once there.
_SCORE = ScoreParams()


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


def _truth_lots(path: Path, cls: str | None, only: bool = True) -> list[dict[str, Any]]:
    """Visible truth polygons of class ``cls`` in ``path``; a feature without ``class`` counts only when ``only`` (one class scored from this file)."""
    if not path.exists():
        raise InputError(f"{path}: ground truth not found; it is written by the synth stage (or set score.truth)")
    out = []
    for f in read_features(path):
        p = f["properties"]
        if p.get("visible") is False:
            continue
        if cls is not None:
            if "class" in p and p["class"] != cls:
                continue
            if "class" not in p and not only:
                raise InputError(f"{path}: truth features need a 'class' property when the file holds the truth of several classes")
        if f["geometry"].geom_type not in ("Polygon", "MultiPolygon"):
            continue
        out.append(f)
    return out


#: A decoy counts as hit when at least this much false predicted area (m², outside truth lots) lies on it.
DECOY_HIT_M2 = 25.0


def read_decoys(path: str | os.PathLike, cls: str) -> list[dict[str, Any]]:
    """Decoy polygons of class ``cls`` (their ``class`` property) in ``path``, each with a ``kind``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: decoys file not found; it is written by the synth stage (or set score.decoys: \"\")")
    out = []
    for f in read_features(p):
        props = f["properties"]
        if "kind" not in props:
            raise InputError(f"{p}: decoy features need a 'kind' property (plaza, flat_roof, ...)")
        if props.get("class", cls) == cls and f["geometry"].geom_type in ("Polygon", "MultiPolygon"):
            out.append(f)
    return out


def score_decoys(
    preds: Sequence[dict[str, Any]], decoys: Sequence[dict[str, Any]], lots: Sequence[dict[str, Any]], area: BaseGeometry | None = None
) -> dict[str, dict[str, float | int]]:
    """False positives on decoys by kind: ``{kind: {decoys, hit, area_m2}, total: {...}}`` (features WGS84).

    The false area is the union of the predictions less the union of the truth lots (Web Mercator,
    scaled to ground m² at each decoy's latitude); ``area`` (WGS84) keeps only decoys intersecting it.
    """
    false = shapely.union_all([to_mercator(f["geometry"]) for f in preds]) if preds else None
    if false is not None and lots:
        false = false.difference(shapely.union_all([to_mercator(f["geometry"]) for f in lots]))
    out: dict[str, dict[str, float | int]] = {}
    total = {"decoys": 0, "hit": 0, "area_m2": 0.0}
    for f in decoys:
        if area is not None and not area.intersects(f["geometry"]):
            continue
        kind = str(f["properties"]["kind"])
        row = out.setdefault(kind, {"decoys": 0, "hit": 0, "area_m2": 0.0})
        g = to_mercator(f["geometry"])
        lat = f["geometry"].centroid.y
        m2 = g.intersection(false).area * np.cos(np.radians(lat)) ** 2 if false is not None and not false.is_empty else 0.0
        for r in (row, total):
            r["decoys"] += 1
            r["hit"] += int(m2 >= DECOY_HIT_M2)
            r["area_m2"] += m2
    for r in [*out.values(), total]:
        r["area_m2"] = round(float(r["area_m2"]), 1)
    return {**dict(sorted(out.items())), "total": total}


#: A false detection lies on a decoy when this share of its box does.
DECOY_BOX_SHARE = 0.3


def box_iou_max(boxes: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """Per box (n, 4: x0, y0, x1, y1) its largest IoU with any of ``truths`` (m, 4); 0 without truths."""
    boxes, truths = np.reshape(boxes, (-1, 4)).astype(float), np.reshape(truths, (-1, 4)).astype(float)
    if not len(boxes) or not len(truths):
        return np.zeros(len(boxes))
    ix = np.clip(np.minimum(boxes[:, None, 2], truths[None, :, 2]) - np.maximum(boxes[:, None, 0], truths[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, None, 3], truths[None, :, 3]) - np.maximum(boxes[:, None, 1], truths[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    union = area(boxes)[:, None] + area(truths)[None, :] - inter
    return (inter / np.maximum(union, 1e-9)).max(axis=1)


def score_box_decoys(
    boxes: np.ndarray, truths: np.ndarray, decoys: Sequence[tuple[BaseGeometry, str]], iou_threshold: float = 0.5
) -> dict[str, Any]:
    """False detections on decoys by kind: ``{false_detections, on_decoys, kinds: {kind: n}}``.

    ``boxes`` and ``truths`` (n, 4) and the decoy polygons share one pixel grid. A detection is false when
    its IoU with every truth box is below ``iou_threshold``; it lies on the decoy covering most of it, if
    that covers :data:`DECOY_BOX_SHARE` of its box or more.
    """
    from shapely.geometry import box as make_box

    boxes = np.reshape(boxes, (-1, 4))
    false = boxes[box_iou_max(boxes, truths) < iou_threshold]
    geoms = [g for g, _ in decoys]
    tree = shapely.STRtree(geoms) if geoms else None
    kinds: dict[str, int] = {}
    for b in false:
        if tree is None:
            break
        bb = make_box(*b)
        best, kind = 0.0, None
        for j in tree.query(bb, predicate="intersects").tolist():
            a = bb.intersection(geoms[j]).area
            if a > best:
                best, kind = a, decoys[j][1]
        if kind is not None and best >= DECOY_BOX_SHARE * bb.area:
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"false_detections": int(len(false)), "on_decoys": int(sum(kinds.values())), "kinds": dict(sorted(kinds.items()))}


def score_class(
    preds: Sequence[dict[str, Any]],
    new: Sequence[dict[str, Any]],
    lots: Sequence[dict[str, Any]],
    test_area: BaseGeometry | None,
    *,
    iou_threshold: float = 0.5,
    split: str = "test",
    tiles: int = 0,
) -> dict[str, Any]:
    """``new_features``, ``<split>`` and ``geometry`` scores of one class (features WGS84; ``test_area`` the split's tiles)."""
    unmapped = [f["geometry"] for f in lots if not f["properties"].get("mapped", True)]
    metrics: dict[str, Any] = {"new_features": score_polygons(new, unmapped, iou_threshold)}
    if test_area is not None:
        t_preds = [f for f in preds if test_area.intersects(f["geometry"])]
        t_truth = [f["geometry"] for f in lots if test_area.intersects(f["geometry"])]
        metrics[split] = score_polygons(t_preds, t_truth, iou_threshold)
        metrics[split]["tiles"] = tiles
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
    return metrics


def score_outputs(
    predictions: str | os.PathLike,
    new_features: str | os.PathLike,
    truth: str | os.PathLike | Mapping[str, str | os.PathLike],
    tiles: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: Sequence[str],
    require_truth: bool = True,
    iou_threshold: float = _SCORE.iou,
    split: str = _SCORE.split,
    decoys: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score the vector outputs of every class of ``classes`` against ``truth``; write the metrics JSON ``out`` atomically.

    ``truth``: one GeoJSON of true polygons (WGS84) with a boolean ``mapped``
    property (false: visible but not in OSM) and a ``class`` property, or a
    mapping class -> such a file. ``tiles``: the tile index (``split``
    column). A class without truth polygons is an error when
    ``require_truth``, else left out of the metrics (``unscored``). ``decoys``: a GeoJSON of
    look-alikes (``class``, ``kind``) to count false positives on (:func:`score_decoys`),
    None or "" for none. Returns the metrics.
    """
    if not classes:
        raise InputError("score: no class to score; name them in score.classes or add a segmentation class to the registry")
    for p, stage in ((predictions, "vectorize"), (new_features, "dedupe")):
        if not Path(p).exists():
            raise InputError(f"{p}: not found; run the {stage} stage first")
    all_preds = read_features(predictions)
    all_new = read_features(new_features)
    files = {c: Path(truth[c]) for c in classes if c in truth} if isinstance(truth, Mapping) else {c: Path(truth) for c in classes}
    missing = [c for c in classes if c not in files]
    if missing and require_truth:
        raise InputError(f"score: no truth file for class '{missing[0]}'; add it to score.truth")
    shared = {f: sum(1 for g in files.values() if g == f) for f in set(files.values())}
    df = read_index(tiles)
    test_tiles = tiles_from_index(df, split)
    area = None
    if test_tiles:
        area = shapely.union_all([tile_polygon(t) for t in test_tiles])
        shapely.prepare(area)
    metrics: dict[str, Any] = {}
    unscored = list(missing)
    for c in classes:
        if c not in files:
            continue
        lots = _truth_lots(files[c], c, only=shared[files[c]] == 1)
        if lots and "mapped" not in lots[0]["properties"]:
            raise InputError(f"{files[c]}: truth features need a boolean 'mapped' property (false = not in OSM)")
        if not lots:
            if require_truth:
                raise InputError(f"{files[c]}: no truth polygon of class '{c}'; give the truth features 'class: {c}' or drop it from score.classes")
            unscored.append(c)
            continue
        default = c if len(classes) == 1 else None  # an output without 'class' belongs to the only class
        preds = [f for f in all_preds if f["properties"].get("class", default) == c]
        new = [f for f in all_new if f["properties"].get("class", default) == c]
        metrics[c] = score_class(preds, new, lots, area, iou_threshold=iou_threshold, split=split, tiles=len(test_tiles))
        if decoys:
            found = read_decoys(decoys, c)
            metrics[c]["decoys"] = {"all": score_decoys(preds, found, lots), split: score_decoys(preds, found, lots, area)}
    if not metrics:
        raise InputError(f"score: no truth polygons for any of {', '.join(classes)}; check score.truth")
    metrics["iou_threshold"] = iou_threshold
    metrics["split"] = split
    if unscored:
        metrics["unscored"] = sorted(unscored)
    write_json(out, metrics)
    return metrics
