"""The OpenStreetMap extract of the synthetic city, written as .osm.pbf with pyosmium.

Road ways (split at junctions, sharing junction nodes; ``turn:lanes*`` where
arrows are painted), mapped surface lots (closed ways; multipolygon relations
with an ``inner`` member where the lot has a hole) shifted by up to
``shift_m``, underground and multi-storey garages, buildings, parks, pitches
and squares. Ids are positive and dense, every object has ``version=1``, a
changeset, a user and a timestamp drawn from the seed, so the file is
byte-identical for a seed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from shapely import affinity
from shapely.geometry import Polygon

from navml.data.synth.geometry import polygons
from navml.data.synth.scene import Scene

#: Earliest and latest edit time of the synthetic objects.
EPOCH = dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc)
SPAN_S = 12 * 365 * 86400
USERS = ["navml-synth", "parkmapper", "lanepainter", "citysurveyor", "gridwalker"]


@dataclass
class OsmData:
    """Nodes ``id -> (lon, lat, tags)``, ways ``(id, node ids, tags)`` and relations ``(id, members, tags)``."""

    nodes: dict[int, tuple[float, float, dict[str, str]]] = field(default_factory=dict)
    ways: list[tuple[int, list[int], dict[str, str]]] = field(default_factory=list)
    relations: list[tuple[int, list[tuple[str, int, str]], dict[str, str]]] = field(default_factory=list)


def build_osm(scene: Scene, to_lonlat: Callable[[np.ndarray], np.ndarray]) -> OsmData:
    """OSM objects of the scene; sets ``osm_type``/``osm_id`` on every mapped lot and building."""
    data = OsmData()
    ids = sorted(scene.nodes)
    ll = to_lonlat(np.array([scene.nodes[i] for i in ids])) if ids else np.zeros((0, 2))
    for i, (lon, lat) in zip(ids, ll):
        data.nodes[i] = (float(lon), float(lat), {})
    major = {w.nodes[0] for w in scene.ways if w.street.highway != "residential"} | {w.nodes[-1] for w in scene.ways if w.street.highway != "residential"}
    for node, inc in scene.junctions.items():
        if len(inc) >= 3 and node in major:
            lon, lat, _ = data.nodes[node]
            data.nodes[node] = (lon, lat, {"highway": "traffic_signals"})
    for w in scene.ways:
        data.ways.append((w.id, list(w.nodes), dict(w.tags)))
    next_node = max(data.nodes, default=0) + 1
    next_way = max((w.id for w in scene.ways), default=0) + 1
    next_rel = 1

    def ring(coords) -> list[int]:
        nonlocal next_node
        pts = np.asarray(coords, dtype=float)[:-1]
        out = []
        for lon, lat in to_lonlat(pts):
            data.nodes[next_node] = (float(lon), float(lat), {})
            out.append(next_node)
            next_node += 1
        return out + out[:1]

    def area(poly: Polygon, tags: dict[str, str]) -> tuple[str, int]:
        nonlocal next_way, next_rel
        poly = poly.simplify(0.05)
        if not poly.interiors:
            data.ways.append((next_way, ring(poly.exterior.coords), tags))
            next_way += 1
            return "way", next_way - 1
        members = []
        for role, r in [("outer", poly.exterior)] + [("inner", i) for i in poly.interiors]:
            data.ways.append((next_way, ring(r.coords), {}))
            members.append(("w", next_way, role))
            next_way += 1
        data.relations.append((next_rel, members, {"type": "multipolygon", **tags}))
        next_rel += 1
        return "relation", next_rel - 1

    for lot in scene.lots:
        if lot.kind == "surface" and not lot.mapped:
            continue
        poly = affinity.translate(lot.poly, *lot.shift) if lot.kind == "surface" else lot.poly
        lot.osm_type, lot.osm_id = area(poly, dict(lot.osm_tags))
    for b in scene.buildings:
        if b.deck is not None or not b.tags:
            continue
        for p in polygons(b.poly)[:1]:
            _, b.osm_id = area(p, dict(b.tags))
    for poly, tags in scene.osm_areas:
        for p in polygons(poly)[:1]:
            area(p, dict(tags))
    return data


def write_pbf(path: Path, data: OsmData, rng: np.random.Generator, bbox: tuple[float, float, float, float]) -> None:
    """Write ``data`` to ``path`` (.osm.pbf), nodes then ways then relations, each sorted by id."""
    import osmium
    from osmium.osm import mutable

    header = osmium.io.Header()
    header.set("generator", "navml synth")
    header.add_box(osmium.osm.Box(osmium.osm.Location(bbox[0], bbox[1]), osmium.osm.Location(bbox[2], bbox[3])))

    def meta() -> dict:
        k = int(rng.integers(len(USERS)))
        return {
            "version": 1,
            "visible": True,
            "changeset": int(1000 + rng.integers(0, 400)),
            "timestamp": EPOCH + dt.timedelta(seconds=int(rng.integers(0, SPAN_S))),
            "uid": k + 1,
            "user": USERS[k],
        }

    writer = osmium.SimpleWriter(str(path), header=header)
    try:
        for i in sorted(data.nodes):
            lon, lat, tags = data.nodes[i]
            writer.add_node(mutable.Node(id=i, location=(lon, lat), tags=tags, **meta()))
        for i, nodes, tags in sorted(data.ways, key=lambda w: w[0]):
            writer.add_way(mutable.Way(id=i, nodes=nodes, tags=tags, **meta()))
        for i, members, tags in sorted(data.relations, key=lambda r: r[0]):
            writer.add_relation(mutable.Relation(id=i, members=members, tags=tags, **meta()))
    finally:
        writer.close()
