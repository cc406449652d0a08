"""Which way, direction of travel and lane a turn arrow serves, and the ``turn:lanes`` tags they make.

Geometry is in a projected frame in metres (Web Mercator metres scaled to
the ground, or a local tangent plane); the OSM way is its centre line, drawn
in the order of its nodes ("forward"). For a marking centre ``p`` the way
gives the arc length ``s`` of the nearest point, the unit tangent ``t`` of
that segment and the signed lateral offset ``d`` (metres, positive on the
left of the way's drawing direction).

Direction of travel: from the arrow's pointing direction when known
(forward iff it points along ``t``); otherwise from the side of the road,
right-hand traffic driving on the right (``d < 0`` -> forward), left-hand
traffic the opposite; a one-way way (``oneway=yes`` / ``-1``) has one direction.

Lane index, 1 = leftmost lane in the direction of travel. With ``l`` the
offset to the left of travel (``d`` forward, ``-d`` backward), ``w`` the
lane width and ``n`` the lanes of that direction: on a two-way way the lanes
of a direction start at the centre line (after half the ``centre_gap_m``);
``k = floor((|l| - gap / 2) / w)`` lanes lie between the marking and the
centre line. In right-hand traffic the centre line is on the driver's left,
so ``index = 1 + k``; in left-hand traffic it is on the right, ``index = n - k``.
On a one-way way the ``n`` lanes span ``n w`` centred on the way,
``index = 1 + floor((n w / 2 - l) / w)``. The index is clipped to ``1 .. n``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from navml.detect.classes import turn_value
from navml.errors import ConfigError, InputError

FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class Station:
    """Where a point lies along a way: arc length (m), unit tangent there, signed left offset (m)."""

    s: float
    tangent: tuple[float, float]
    offset: float


def station(way: np.ndarray, point: Sequence[float]) -> Station:
    """Arc length, tangent and left offset (metres) of ``point`` against the polyline ``way`` (K, 2) metres."""
    xy = np.asarray(way, float).reshape(-1, 2)
    if len(xy) < 2:
        raise InputError("lanes: a way needs at least two vertices")
    p = np.asarray(point, float).reshape(2)
    a, b = xy[:-1], xy[1:]
    ab = b - a
    length = np.hypot(ab[:, 0], ab[:, 1])
    if not (length > 0).any():
        raise InputError("lanes: a way of zero length")
    seg = length > 0
    a, ab, length = a[seg], ab[seg], length[seg]
    u = np.clip(np.einsum("ij,ij->i", p - a, ab) / length**2, 0.0, 1.0)
    foot = a + u[:, None] * ab
    dist = np.hypot(*(p - foot).T)
    k = int(dist.argmin())
    t = ab[k] / length[k]
    v = p - foot[k]
    cum = np.concatenate([[0.0], np.cumsum(length)])
    return Station(s=float(cum[k] + u[k] * length[k]), tangent=(float(t[0]), float(t[1])), offset=float(t[0] * v[1] - t[1] * v[0]))


def travel_direction(
    st: Station, heading: Sequence[float] | None = None, *, oneway: str | None = None, right_hand: bool = True
) -> str:
    """``forward`` or ``backward`` along the way for a marking at station ``st``.

    ``heading``: the arrow's pointing direction (any length) if known;
    ``oneway``: the way's ``oneway`` tag (``yes``/``1``/``true`` forward only,
    ``-1`` backward only; anything else two-way).
    """
    ow = str(oneway).lower() if oneway is not None else ""
    if ow in ("yes", "1", "true"):
        return FORWARD
    if ow == "-1":
        return BACKWARD
    if heading is not None:
        h = np.asarray(heading, float).reshape(2)
        return FORWARD if float(h @ np.asarray(st.tangent)) >= 0 else BACKWARD
    on_right = st.offset < 0
    return FORWARD if on_right == right_hand else BACKWARD


def lane_index(
    st: Station,
    direction: str,
    lanes: int,
    lane_width_m: float = 3.5,
    *,
    one_way: bool = False,
    centre_gap_m: float = 0.0,
    right_hand: bool = True,
) -> int:
    """Lane (1 = leftmost in the direction of travel) of a marking at ``st``; ``lanes`` counts the lanes of that direction."""
    if lanes < 1:
        raise InputError(f"lanes: a direction with {lanes} lanes")
    if lane_width_m <= 0:
        raise ConfigError(f"params: lane width is {lane_width_m} m; use a positive width such as 3.5")
    left = st.offset if direction == FORWARD else -st.offset
    if one_way:
        index = 1 + math.floor((lanes * lane_width_m / 2 - left) / lane_width_m)
    else:
        out = math.floor((abs(left) - centre_gap_m / 2) / lane_width_m)  # lanes between it and the centre line
        index = 1 + out if right_hand else lanes - out
    return int(min(max(index, 1), lanes))


@dataclass(frozen=True)
class LaneMarking:
    """One detection placed on a way: direction, lane, class name, score."""

    way_id: int
    direction: str
    lane: int
    name: str
    score: float = 1.0


def turn_lanes(
    markings: Iterable[LaneMarking],
    lanes: Mapping[tuple[int, str], int],
    *,
    one_way: Mapping[int, bool] | None = None,
    turn_values: Mapping[str, str] | None = None,
    missing: str = "none",
) -> dict[int, dict[str, str]]:
    """``turn:lanes`` tags per way from placed markings: ``{way_id: {tag key: "left|through;right"}}``.

    ``lanes`` gives the lane count of each ``(way_id, direction)``; lanes are
    listed left to right in the direction of travel. Several markings in one
    lane (arrows painted in rows) give the value of the highest-scoring one;
    a lane without a marking gets ``missing``. A one-way way
    (``one_way[way_id]``) gets ``turn:lanes``, a two-way way
    ``turn:lanes:forward`` / ``turn:lanes:backward``.
    """
    one_way = one_way or {}
    best: dict[tuple[int, str, int], LaneMarking] = {}
    for m in markings:
        key = (m.way_id, m.direction, m.lane)
        if key not in best or m.score > best[key].score:
            best[key] = m
    out: dict[int, dict[str, str]] = {}
    for way_id, direction in sorted({(k[0], k[1]) for k in best}):
        n = lanes.get((way_id, direction))
        if n is None:
            raise InputError(f"lanes: no lane count for way {way_id} {direction}")
        values = [turn_value(best[(way_id, direction, i)].name, turn_values) if (way_id, direction, i) in best else missing
                  for i in range(1, n + 1)]
        key = "turn:lanes" if one_way.get(way_id, False) else f"turn:lanes:{direction}"
        out.setdefault(way_id, {})[key] = "|".join(values)
    return out
