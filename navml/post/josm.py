"""OSM XML (API 0.6) for new features, to open, review and upload in JOSM.

Every object is new: negative ids (one counter over nodes, ways and
relations), no version. A polygon without holes is a closed way carrying the
tags; a polygon with holes, or a multipolygon, is a ``type=multipolygon``
relation carrying the tags, with untagged ``outer`` / ``inner`` member ways.
Coordinates are rounded to 7 decimals (OSM's precision, about 1 cm).
Nothing is ever uploaded by navml.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from shapely.geometry.base import BaseGeometry

from navml.perms import follow_umask

#: OSM's coordinate precision, decimals.
PRECISION = 7


def _attr(value: str) -> str:
    """A double-quoted, escaped XML attribute value."""
    return '"' + escape(str(value), {'"': "&quot;", "\n": "&#10;", "\t": "&#9;", "\r": "&#13;"}) + '"'


def _ring_nodes(ring) -> list[tuple[float, float]]:
    """A ring's distinct consecutive (lon, lat) at OSM precision, without the closing repeat."""
    out: list[tuple[float, float]] = []
    for x, y in ring.coords:
        p = (round(x, PRECISION), round(y, PRECISION))
        if not out or out[-1] != p:
            out.append(p)
    while len(out) > 1 and out[0] == out[-1]:
        out.pop()
    return out


def osm_xml(features: Sequence[Mapping[str, Any]], tags: Mapping[str, Mapping[str, str]], generator: str = "navml") -> str:
    """OSM XML text for ``features`` (``geometry`` WGS84 Polygon/MultiPolygon, ``properties.class``).

    ``tags`` maps a class name to the OSM tags its new features carry (the
    registry's ``osm_tags`` plus ``source`` and the like).
    """
    nodes: list[str] = []
    ways: list[str] = []
    rels: list[str] = []
    next_id = [0]

    def new_id() -> int:
        next_id[0] -= 1
        return next_id[0]

    def tag_lines(t: Mapping[str, str]) -> list[str]:
        return [f"    <tag k={_attr(k)} v={_attr(v)}/>" for k, v in sorted(t.items())]

    def way(ring, t: Mapping[str, str] | None) -> int | None:
        pts = _ring_nodes(ring)
        if len(pts) < 3:
            return None
        ids = []
        for lon, lat in pts:
            i = new_id()
            ids.append(i)
            nodes.append(f'  <node id="{i}" visible="true" lat="{lat:.{PRECISION}f}" lon="{lon:.{PRECISION}f}"/>')
        wid = new_id()
        body = [f'    <nd ref="{i}"/>' for i in ids + ids[:1]]
        ways.append("\n".join([f'  <way id="{wid}" visible="true">', *body, *tag_lines(t or {}), "  </way>"]))
        return wid

    for f in features:
        geom: BaseGeometry = f["geometry"]
        cls = f.get("properties", {}).get("class")
        t = dict(tags.get(cls, {}))
        polys = list(getattr(geom, "geoms", [geom]))
        polys = [p for p in polys if p.geom_type == "Polygon" and not p.is_empty]
        if not polys:
            continue
        if len(polys) == 1 and not polys[0].interiors:
            way(polys[0].exterior, t)
            continue
        members = []
        for p in polys:
            w = way(p.exterior, None)
            if w is not None:
                members.append((w, "outer"))
                members += [(w2, "inner") for w2 in (way(r, None) for r in p.interiors) if w2 is not None]
        if not any(role == "outer" for _, role in members):
            continue
        rid = new_id()
        body = [f'    <member type="way" ref="{m}" role="{role}"/>' for m, role in members]
        rels.append("\n".join([f'  <relation id="{rid}" visible="true">', *body, *tag_lines({"type": "multipolygon", **t}), "  </relation>"]))
    head = f'<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator={_attr(generator)}>'
    return "\n".join([head, *nodes, *ways, *rels, "</osm>"]) + "\n"


def write_osm(features: Sequence[Mapping[str, Any]], tags: Mapping[str, Mapping[str, str]], path: str | os.PathLike) -> Path:
    """Write :func:`osm_xml` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(osm_xml(features, tags))
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
