"""Small plane-geometry helpers of the synthetic city (local metres, angles in radians)."""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry


def polygons(geom: BaseGeometry | None) -> list[Polygon]:
    """The non-empty polygons of any geometry (Polygon, MultiPolygon, collection)."""
    if geom is None or geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in polygons(g)]
    return []


def largest(geom: BaseGeometry | None) -> Polygon | None:
    """The largest polygon of ``geom`` (None when it has none)."""
    parts = polygons(geom)
    return max(parts, key=lambda p: p.area) if parts else None


def frame(poly: BaseGeometry) -> tuple[float, float, float]:
    """Angle of the long side of the minimum rotated rectangle, its long and short side (metres)."""
    rect = shapely.minimum_rotated_rectangle(poly)
    if rect.geom_type != "Polygon":
        return 0.0, 0.0, 0.0
    c = np.asarray(rect.exterior.coords)[:4]
    e1, e2 = c[1] - c[0], c[2] - c[1]
    l1, l2 = float(np.hypot(*e1)), float(np.hypot(*e2))
    e, long, short = (e1, l1, l2) if l1 >= l2 else (e2, l2, l1)
    ang = math.atan2(e[1], e[0])
    if ang <= -math.pi / 2:
        ang += math.pi
    elif ang > math.pi / 2:
        ang -= math.pi
    return ang, long, short


def rotate(geom: BaseGeometry, ang: float) -> BaseGeometry:
    """``geom`` rotated by ``ang`` radians about the origin (counter-clockwise)."""
    return affinity.rotate(geom, ang, origin=(0.0, 0.0), use_radians=True)


def rot(xy: np.ndarray, ang: float) -> np.ndarray:
    """Points (n, 2) rotated by ``ang`` radians about the origin."""
    c, s = math.cos(ang), math.sin(ang)
    xy = np.asarray(xy, dtype="float64")
    return np.column_stack([xy[:, 0] * c - xy[:, 1] * s, xy[:, 0] * s + xy[:, 1] * c])


def rect(cx: float, cy: float, length: float, width: float, ang: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle centred at (cx, cy), ``length`` along direction ``ang``."""
    hl, hw = length / 2, width / 2
    return rot(np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]]), ang) + (cx, cy)


def thick(p, q, half: float) -> np.ndarray:
    """Quad (4, 2) of the segment p-q widened to ``2 * half``."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1.0) * half
    return np.array([p + n, q + n, q - n, p - n])


def head(base, direction, half: float, length: float) -> np.ndarray:
    """Triangle (3, 2) of an arrow head: base centred at ``base``, tip ``length`` along ``direction``."""
    b = np.asarray(base, float)
    d = np.asarray(direction, float)
    d = d / np.hypot(*d)
    n = np.array([-d[1], d[0]]) * half
    return np.array([b + n, b + d * length, b - n])


def circle(cx: float, cy: float, r: float, k: int = 24) -> np.ndarray:
    """Polygon ring (k, 2) approximating a circle."""
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def fit_rect(container: BaseGeometry, cx: float, cy: float, length: float, width: float, ang: float, min_scale: float = 0.3) -> Polygon | None:
    """The largest scaled copy (scale <= 1) of a rectangle that fits inside ``container``, or None."""
    lo, hi = min_scale, 1.0
    if not container.contains(Polygon(rect(cx, cy, length * lo, width * lo, ang))):
        return None
    for _ in range(10):
        mid = (lo + hi) / 2
        if container.contains(Polygon(rect(cx, cy, length * mid, width * mid, ang))):
            lo = mid
        else:
            hi = mid
    return Polygon(rect(cx, cy, length * lo, width * lo, ang))


def halfplane_cut(poly: BaseGeometry, ang: float, at: float) -> tuple[BaseGeometry, BaseGeometry]:
    """``poly`` cut by the line perpendicular to direction ``ang`` at coordinate ``at`` along it."""
    big = 1e5
    low = rotate(Polygon([(-big, -big), (at, -big), (at, big), (-big, big)]), ang)
    high = rotate(Polygon([(at, -big), (big, -big), (big, big), (at, big)]), ang)
    return poly.intersection(low), poly.intersection(high)


class Path:
    """A polyline with arc-length parametrisation (metres)."""

    def __init__(self, coords):
        self.c = np.asarray(coords, dtype="float64")
        d = np.diff(self.c, axis=0)
        seg = np.hypot(d[:, 0], d[:, 1])
        seg[seg == 0] = 1e-9
        self.cum = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.cum[-1])
        self.tan = d / seg[:, None]

    def at(self, s) -> tuple[np.ndarray, np.ndarray]:
        """Points and unit tangents (n, 2) at arc lengths ``s``."""
        s = np.clip(np.atleast_1d(np.asarray(s, dtype="float64")), 0.0, self.length)
        i = np.clip(np.searchsorted(self.cum, s, side="right") - 1, 0, len(self.tan) - 1)
        return self.c[i] + self.tan[i] * (s - self.cum[i])[:, None], self.tan[i]

    def offset(self, s0: float, s1: float, lateral: float) -> np.ndarray:
        """The polyline between arc lengths s0 < s1, shifted ``lateral`` metres to its left."""
        inner = self.cum[(self.cum > s0) & (self.cum < s1)]
        s = np.concatenate([[s0], inner, [s1]])
        p, t = self.at(s)
        return p + lateral * np.column_stack([-t[:, 1], t[:, 0]])
