"""Detections in the world: boxes on the ground, placed on OSM road ways, lanes and ``turn:lanes``.

Each detection (a global pixel box of :mod:`navml.detect.predict`) becomes its
box on the ground, a WGS84 rectangle (Web Mercator is conformal and the box is
axis-aligned on its grid, so the four corners make the exact footprint).

**Way.** The box centre is matched to the nearest road way of the extract's
``roads.geojson`` within ``max_way_distance_m``, distances in ground metres
(Web Mercator metres times ``cos(lat)`` at the marking, exact to 1e-4 within a
city). An arrow is painted along its lane, so a box clearly longer than wide
(``axis_aspect``) lies along its way: near a junction, where the centre line
of the crossing road may be nearer, only ways running along the box's long
side (within 45°) are candidates when there is one. A square box (a diagonal
arrow) takes the nearest way.

**Direction of travel.** An axis-aligned box does not tell which end of the
arrow is its head, and the class does not either (a left arrow pointing north
and one pointing south have the same box). The direction is read from the
road instead (:func:`navml.detect.lanes.travel_direction`): a one-way way
(``oneway=yes`` / ``-1``) has one; on a two-way way the side of the centre
line gives it, traffic driving on the right (``driving_side: right``: a
marking right of the way's drawing direction serves ``forward``) or on the left.

**Lane.** :func:`navml.detect.lanes.lane_index` from the lateral offset, the
lane width (the way's ``width`` tag over its lanes, else ``lane_width_m``)
and the lane count of the direction: ``lanes:forward`` / ``lanes:backward``,
else the lanes of its ``turn:lanes*`` tag, else half of ``lanes`` (all of it
on a one-way way), else 1. Index 1 is the leftmost lane in the direction of travel.

**Per way.** For each way and direction: the lanes, the arrow seen in each from
left to right (the best-scoring one where several were painted in a row), the
derived ``turn:lanes`` string (:func:`navml.detect.lanes.turn_lanes`; a lane
without an arrow is ``none``) and its comparison with the way's own tag:
``agree`` (every lane equal), ``partial`` (the lanes seen agree, some were not
seen), ``differ``, or ``missing`` in OSM: the candidates a mapper should look at.
Lane values compare as sets (``left;through`` = ``through;left``; ``""`` = ``none``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon

from navml.config import DetectPredictParams, ExtractParams
from navml.detect.lanes import BACKWARD, FORWARD, LaneMarking, lane_index, station, travel_direction, turn_lanes
from navml.errors import InputError
from navml.geo.features import read_features, to_mercator
from navml.geo.grid import Grid, Tile, lonlat_to_mercator, pixel_to_lonlat

_P = DetectPredictParams()
_E = ExtractParams()
ONE_WAY = ("yes", "1", "true", "-1")
#: Comparison of a derived ``turn:lanes`` with the way's tag.
STATUSES = ("agree", "partial", "differ", "missing")


def box_polygons(boxes: np.ndarray, grid: Grid) -> list[Polygon]:
    """WGS84 rectangles of global pixel boxes ``(x0, y0, x1, y1)`` (N, 4) on ``grid``: corners NW, NE, SE, SW, closed."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    lon0, lat0 = pixel_to_lonlat(b[:, 0], b[:, 1], grid.zoom, grid.tile_size)
    lon1, lat1 = pixel_to_lonlat(b[:, 2], b[:, 3], grid.zoom, grid.tile_size)
    return [Polygon([(a, d), (c, d), (c, e), (a, e)]) for a, d, c, e in zip(lon0, lat0, lon1, lat1)]


def _number(value: Any) -> float | None:
    try:
        v = float(str(value).strip().split()[0]) if value is not None and str(value).strip() else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) and v > 0 else None


def turn_key(direction: str, one_way: bool) -> str:
    """The OSM key of a direction's ``turn:lanes``: ``turn:lanes`` on a one-way way, else with ``:forward`` / ``:backward``."""
    return "turn:lanes" if one_way else f"turn:lanes:{direction}"


@dataclass(frozen=True)
class Road:
    """One OSM way of roads.geojson: id, parts in Web Mercator metres, tags."""

    way_id: int
    parts: tuple[np.ndarray, ...]
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def oneway(self) -> str | None:
        v = self.tags.get("oneway")
        return None if v is None else str(v).lower()

    @property
    def one_way(self) -> bool:
        return self.oneway in ONE_WAY

    def directions(self) -> tuple[str, ...]:
        if not self.one_way:
            return (FORWARD, BACKWARD)
        return (BACKWARD,) if self.oneway == "-1" else (FORWARD,)

    def lanes(self, direction: str) -> int:
        """Lane count of one direction (see the module docstring for the order of the tags read)."""
        tags = self.tags
        total = _number(tags.get("lanes"))
        own = turn_key(direction, self.one_way)
        if self.one_way:
            n = total or (len(str(tags[own]).split("|")) if tags.get(own) else None)
        else:
            n = _number(tags.get(f"lanes:{direction}")) or (len(str(tags[own]).split("|")) if tags.get(own) else None)
            n = n or (math.floor(total / 2) if total else None)
        return max(1, int(n or 1))

    def lane_width(self, default_m: float) -> float:
        """Metres per lane: the ``width`` tag over all lanes when both are given, else ``default_m``."""
        width = _number(self.tags.get("width"))
        total = _number(self.tags.get("lanes")) or sum(self.lanes(d) for d in self.directions())
        return width / total if width and total else default_m


def read_roads(path: str | os.PathLike) -> list[Road]:
    """The ways of an extract's ``roads.geojson`` (lines in WGS84, ``osm_id`` and OSM tags as properties)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: OSM roads missing; run the extract stage first (dvc repro extract)")
    roads = []
    for f in read_features(path):
        geom = f["geometry"]
        props = f["properties"]
        if geom.geom_type not in ("LineString", "MultiLineString") or geom.is_empty or props.get("osm_id") is None:
            continue
        merc = to_mercator(geom)
        parts = tuple(np.asarray(g.coords, float)[:, :2] for g in getattr(merc, "geoms", [merc]) if len(g.coords) >= 2)
        if parts:
            roads.append(Road(int(props["osm_id"]), parts, props))
    return roads


@dataclass(frozen=True)
class Placement:
    """Where one marking lies: way id, direction, lane (1 = leftmost), distance to the way and lateral offset (metres)."""

    way_id: int
    direction: str
    lane: int
    distance_m: float
    offset_m: float


class RoadIndex:
    """Nearest-way queries over roads in ground metres."""

    def __init__(self, roads: Sequence[Road]):
        self.roads = list(roads)
        self.lines = [LineString(p) for r in self.roads for p in r.parts]
        self.owner = [i for i, r in enumerate(self.roads) for _ in r.parts]
        self.tree = shapely.STRtree(self.lines) if self.lines else None

    def place(
        self,
        box: Sequence[float],
        grid: Grid,
        *,
        max_way_distance_m: float = _P.max_way_distance_m,
        axis_aspect: float = _P.axis_aspect,
        driving_side: str = _P.driving_side,
        centre_gap_m: float = _P.centre_gap_m,
        lane_width_m: float = _E.lane_width_m,
    ) -> Placement | None:
        """The :class:`Placement` of a global pixel box, or None when no way lies within ``max_way_distance_m``."""
        if self.tree is None:
            return None
        x0, y0, x1, y1 = (float(v) for v in box)
        lon, lat = pixel_to_lonlat((x0 + x1) / 2, (y0 + y1) / 2, grid.zoom, grid.tile_size)
        mx, my = lonlat_to_mercator(lon, lat)
        k = math.cos(math.radians(float(lat)))  # ground metres per Mercator metre here
        p = np.array([float(mx), float(my)])
        cands = self.tree.query(Point(p), predicate="dwithin", distance=max_way_distance_m / k)
        if not len(cands):
            return None
        w, h = x1 - x0, y1 - y0
        axis = None
        if axis_aspect > 1.0 and max(w, h) >= axis_aspect * max(min(w, h), 1e-9):
            axis = np.array([1.0, 0.0]) if w > h else np.array([0.0, 1.0])
        best = None  # ((not aligned, distance, way position), station, road)
        for c in sorted(int(i) for i in cands):
            road = self.roads[self.owner[c]]
            dist = float(self.lines[c].distance(Point(p))) * k
            if dist > max_way_distance_m:
                continue
            st = station(np.asarray(self.lines[c].coords) * k, p * k)
            unaligned = axis is not None and abs(float(np.dot(st.tangent, axis))) < math.sqrt(0.5)
            key = (unaligned, dist, self.owner[c])
            if best is None or key < best[0]:
                best = (key, st, road)
        if best is None:
            return None
        _, st, road = best
        right = driving_side == "right"
        direction = travel_direction(st, None, oneway=road.oneway, right_hand=right)
        n = road.lanes(direction)
        lane = lane_index(st, direction, n, road.lane_width(lane_width_m), one_way=road.one_way, centre_gap_m=centre_gap_m, right_hand=right)
        return Placement(road.way_id, direction, lane, round(best[0][1], 3), round(st.offset, 3))


def _lane_sets(value: str | None) -> list[frozenset[str]]:
    return [frozenset(v.strip() for v in (lane or "none").split(";") if v.strip()) or frozenset({"none"}) for lane in str(value).split("|")]


def compare_turn_lanes(derived: str, osm: str | None) -> str:
    """``agree`` / ``partial`` / ``differ`` / ``missing`` (see the module docstring) of a derived tag against the way's."""
    if osm is None or not str(osm).strip():
        return "missing"
    d, o = _lane_sets(derived), _lane_sets(osm)
    if len(d) != len(o):
        return "differ"
    none = frozenset({"none"})
    if any(a != b for a, b in zip(d, o) if a != none):
        return "differ"
    return "agree" if all(a == b for a, b in zip(d, o)) else "partial"


def by_way(
    placed: Sequence[tuple[Placement, str, float]],
    roads: Sequence[Road],
    turn_values: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per way and direction with markings: lanes, arrows left to right, derived and OSM ``turn:lanes``, status, suggestion.

    ``placed``: ``(placement, class name, score)`` of each matched marking.
    """
    by_id = {r.way_id: r for r in roads}
    marks = [LaneMarking(p.way_id, p.direction, p.lane, name, float(score)) for p, name, score in placed]
    keys = sorted({(m.way_id, m.direction) for m in marks})
    lanes = {(w, d): by_id[w].lanes(d) for w, d in keys}
    derived = turn_lanes(marks, lanes, one_way={w: by_id[w].one_way for w, _ in keys}, turn_values=turn_values)
    best: dict[tuple[int, str, int], LaneMarking] = {}
    for m in marks:
        k = (m.way_id, m.direction, m.lane)
        if k not in best or m.score > best[k].score:
            best[k] = m
    out = []
    for w, d in keys:
        road = by_id[w]
        key = turn_key(d, road.one_way)
        value = derived[w][key]
        osm = road.tags.get(key)
        status = compare_turn_lanes(value, osm)
        arrows = [best[(w, d, i)].name if (w, d, i) in best else None for i in range(1, lanes[(w, d)] + 1)]
        out.append({
            "way": w, "direction": d, "lanes": lanes[(w, d)], "arrows": arrows,
            "markings": sum(1 for m in marks if (m.way_id, m.direction) == (w, d)),
            "key": key, "turn_lanes": value, "osm": osm, "status": status,
            "suggested": {key: value} if status in ("missing", "differ") else {},
        })
    return out


def place_all(
    boxes: np.ndarray,
    roads: Sequence[Road],
    grid: Grid,
    **kwargs: Any,
) -> list[Placement | None]:
    """:meth:`RoadIndex.place` of every box (N, 4) global pixels; ``kwargs`` as there."""
    index = RoadIndex(roads)
    return [index.place(b, grid, **kwargs) for b in np.asarray(boxes, float).reshape(-1, 4)]


def markings(
    detections,
    roads: Sequence[Road],
    grid: Grid,
    *,
    turn_values: Mapping[str, str] | None = None,
    max_way_distance_m: float = _P.max_way_distance_m,
    axis_aspect: float = _P.axis_aspect,
    driving_side: str = _P.driving_side,
    centre_gap_m: float = _P.centre_gap_m,
    lane_width_m: float = _E.lane_width_m,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """``(features, per-way rows, summary)`` of a detections table (:data:`navml.detect.predict.COLUMNS`).

    Features: the WGS84 box of each detection with ``class``, ``class_id``,
    ``score``, ``tile`` and, when matched, ``way``, ``direction``, ``lane``,
    ``distance_m`` (nulls when not). The summary counts detections, matched
    markings and the per-way statuses, with the agreement rate over the
    directions whose way has a tag.
    """
    boxes = detections[["x0", "y0", "x1", "y1"]].to_numpy(float) if len(detections) else np.zeros((0, 4))
    placed = place_all(boxes, roads, grid, max_way_distance_m=max_way_distance_m, axis_aspect=axis_aspect,
                       driving_side=driving_side, centre_gap_m=centre_gap_m, lane_width_m=lane_width_m)
    polys = box_polygons(boxes, grid)
    features = []
    for (_, row), poly, pl in zip(detections.iterrows(), polys, placed):
        features.append({"geometry": poly, "properties": {
            "class": str(row["class"]), "class_id": int(row["class_id"]), "score": float(row["score"]),
            "tile": f"{int(row['z'])}/{int(row['x'])}/{int(row['y'])}",
            "way": pl.way_id if pl else None, "direction": pl.direction if pl else None, "lane": pl.lane if pl else None,
            "distance_m": pl.distance_m if pl else None,
        }})
    matched = [(pl, str(row["class"]), float(row["score"])) for (_, row), pl in zip(detections.iterrows(), placed) if pl is not None]
    rows = by_way(matched, roads, turn_values)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    compared = counts["agree"] + counts["partial"] + counts["differ"]
    summary = {
        "detections": len(features),
        "matched": len(matched),
        "unmatched": len(features) - len(matched),
        "ways": len({r["way"] for r in rows}),
        "directions": len(rows),
        **counts,
        "agreement_rate": round(counts["agree"] / compared, 4) if compared else None,
        "seen_agreement_rate": round((counts["agree"] + counts["partial"]) / compared, 4) if compared else None,
    }
    return features, rows, summary


def _prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"tp": tp, "fp": fp, "fn": fn, "precision": None if p is None else round(p, 4),
            "recall": None if r is None else round(r, 4), "f1": None if f1 is None else round(f1, 4)}


def world_score(
    features: Sequence[dict[str, Any]],
    truth: Mapping[int, Sequence[tuple[Any, str, str]]],
    tiles: Sequence[Tile],
    grid: Grid,
    names: Sequence[str],
    *,
    box_m: Mapping[int, tuple[float, float] | None] | None = None,
    iou: float = 0.5,
) -> dict[str, Any]:
    """End-to-end score of the markings (WGS84 boxes, after NMS and world conversion) against the truth labels.

    ``truth``: labels by class id (:func:`navml.data.rasterize.detection_labels`);
    both sides are read back onto the pixel grid at ``grid.zoom`` and only
    boxes whose centre lies in one of ``tiles`` (the scored area, e.g. the test
    split) count. Matching as in :func:`navml.detect.metrics.counts_at` at IoU
    ``iou``. Returns overall and per-class TP, FP, FN, precision, recall, F1.
    """
    from navml.data.rasterize import label_box
    from navml.detect.metrics import counts_at

    size = grid.tile_size
    area = {(t.x, t.y) for t in tiles}

    def inside(b) -> bool:
        return (int(((b[0] + b[2]) / 2) // size), int(((b[1] + b[3]) / 2) // size)) in area

    tb, tc = [], []
    for cid, items in truth.items():
        for geom, _, _ in items:
            b = label_box(geom, grid, (box_m or {}).get(cid))
            if b is not None and inside(b):
                tb.append(b)
                tc.append(cid)
    pb, ps, pc = [], [], []
    for f in features:
        b = label_box(f["geometry"], grid)
        if b is not None and inside(b):
            pb.append(b)
            ps.append(f["properties"]["score"])
            pc.append(f["properties"]["class_id"])
    n = len(names)
    c = counts_at([(np.reshape(tb, (-1, 4)), np.asarray(tc, int))], [(np.reshape(pb, (-1, 4)), np.asarray(ps, float), np.asarray(pc, int))],
                  n, 0.0, iou)
    return {
        "iou": iou,
        "tiles": len(area),
        "truths": len(tb),
        "detections": len(pb),
        **_prf(int(c.tp.sum()), int(c.fp.sum()), int(c.fn.sum())),
        "classes": {name: {"truths": int(c.tp[i] + c.fn[i]), **_prf(int(c.tp[i]), int(c.fp[i]), int(c.fn[i]))} for i, name in enumerate(names)},
    }


#: Files written by :func:`write_markings` into its output folder.
MARKINGS_FILE = "markings.geojson"
BY_WAY_FILE = "markings_by_way.json"


def write_markings(
    detections_csv: str | os.PathLike,
    roads_geojson: str | os.PathLike,
    out_dir: str | os.PathLike,
    grid: Grid,
    names: Sequence[str],
    *,
    truth: tuple[Mapping[int, Sequence], Mapping[int, tuple[float, float] | None]] | None = None,
    score_tiles: Sequence[Tile] = (),
    score_iou: float = 0.5,
    **kwargs: Any,
) -> dict[str, Any]:
    """Read the detections and the roads, write ``markings.geojson`` and ``markings_by_way.json`` into ``out_dir``; the summary.

    ``kwargs`` as for :func:`markings`. With ``truth`` (labels by class id and
    their ``box_m``, :func:`navml.data.rasterize.detection_labels`) the summary
    gains ``world``: :func:`world_score` over ``score_tiles`` at ``score_iou``.
    Inputs are read (and checked) before anything is written.
    """
    from navml.detect.table import read_detections
    from navml.geo.features import write_features
    from navml.io import write_json

    dets = read_detections(detections_csv, names)
    roads = read_roads(roads_geojson)
    features, rows, summary = markings(dets, roads, grid, **kwargs)
    if truth is not None:
        summary["world"] = world_score(features, truth[0], score_tiles, grid, names, box_m=truth[1], iou=score_iou)
    out = Path(out_dir)
    write_features(features, out / MARKINGS_FILE)
    write_json(out / BY_WAY_FILE, {"summary": summary, "ways": rows})
    return summary
