"""Mapped roads as surfaces: what OSM already says is *not* a parking lot (or a building...).

OSM maps a road as a centre line. Its surface is that line buffered by half
the carriageway width, from the ``width`` tag when it has one, otherwise from
the lane count times a lane width. Two uses:

* ``rasterize``: road surfaces are known background even outside the areas of
  complete mapping (where an unlabelled pixel is otherwise "unknown");
* ``dedupe``: a prediction lying mostly on a mapped road is not proposed.
"""

from __future__ import annotations

import math
import re
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shapely.geometry.base import BaseGeometry

from navml.errors import InputError
from navml.geo.features import from_mercator, read_features, to_mercator

#: File of the extract stage that holds the roads.
ROADS_FILE = "roads.geojson"

#: Lane width (metres) used when a road has no ``width`` tag.
LANE_WIDTH_M = 3.5
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|metres|meters)?\s*$")


def _number(value: Any) -> float | None:
    m = _NUMBER.match(str(value)) if value is not None else None
    return float(m.group(1)) if m else None


def road_width_m(tags: Mapping[str, Any], lane_width_m: float = LANE_WIDTH_M) -> float:
    """Carriageway width in metres of a ``highway`` way from its tags.

    ``width`` (metres) wins; else ``lanes``, else ``lanes:forward`` +
    ``lanes:backward``, else 1 lane for ``oneway=yes`` and 2 otherwise, times
    ``lane_width_m``. Unparseable values fall through to the next rule.
    """
    width = _number(tags.get("width"))
    if width:
        return width
    lanes = _number(tags.get("lanes"))
    if not lanes:
        fwd, bwd = _number(tags.get("lanes:forward")), _number(tags.get("lanes:backward"))
        lanes = (fwd or 0) + (bwd or 0) or None
    if not lanes:
        lanes = 1 if str(tags.get("oneway", "")).lower() in ("yes", "1", "true", "-1") else 2
    return float(lanes) * float(lane_width_m)


def road_surfaces(roads: Sequence[Mapping[str, Any]]) -> list[BaseGeometry]:
    """WGS84 polygons of road surfaces from road features (``geometry`` a line, ``properties.width_m``).

    Buffered in Web Mercator by half the width in ground metres scaled by
    ``1 / cos(lat)`` at the road's mid-latitude, with flat ends (junctions are
    covered by the roads meeting there).
    """
    out = []
    for f in roads:
        line = f["geometry"]
        width = float(f["properties"].get("width_m") or 0.0)
        if line is None or line.is_empty or width <= 0:
            continue
        lat = line.centroid.y
        surface = to_mercator(line).buffer(width / 2.0 / math.cos(math.radians(lat)), cap_style="flat")
        out.append(from_mercator(surface))
    return out


def read_road_surfaces(extract_dir: str | os.PathLike, without: str) -> list[BaseGeometry]:
    """Road surfaces (WGS84) of ``<extract_dir>/roads.geojson``; ``without`` says how to do without them."""
    path = Path(extract_dir) / ROADS_FILE
    if not path.exists():
        raise InputError(f"{path}: OSM roads missing; run the extract stage first (dvc repro extract), or {without}")
    return road_surfaces(read_features(path))
