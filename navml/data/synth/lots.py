"""Parking lots of the synthetic city: outlines, stall layout, parked cars, oil stains.

Variants of a visible surface lot, all in local metres:

* ``full``: the parcel less a landscaped setback (trapezoids where a diagonal cuts the block);
* ``partial``: part of the parcel, a shop building on the rest;
* ``L``: the parcel less a corner where a building stands (L-shaped lot);
* ``rotated``: a rectangle turned 12-35 degrees against the block, lawn around;
* ``hole_building`` / ``hole_island``: a lot with an inner ring, a kiosk building or a planted
  island (OSM multipolygon with an ``inner`` member).

The stall grid (2.5-2.75 m stalls, 5.5 m deep, 6.5-7.6 m aisles; some 60/45 degree
angled) is laid in the lot's own frame; a stall is painted only if it and the aisle in
front of it lie inside the lot.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import Point, Polygon, box

from navml.data.synth.geometry import fit_rect, frame, halfplane_cut, largest, polygons, rect, rotate
from navml.data.synth.roads import car_color, car_size
from navml.data.synth.scene import Car, Color, Lot

WHITE_LINE = (228, 228, 224)
YELLOW_LINE = (222, 190, 72)
LAWN = (92, 122, 66)
CONCRETE = (182, 180, 174)

#: Lot variants and their share among visible lots (the rest are ``full``).
VARIANT_SHARE = {"hole_building": 0.08, "hole_island": 0.08, "rotated": 0.12, "L": 0.15, "partial": 0.25}


def asphalt(rng: np.random.Generator) -> Color:
    """Surface colour of a lot: asphalt from fresh black to faded grey, sometimes concrete."""
    if rng.random() < 0.1:
        g = int(rng.integers(148, 178))
        return (g + 4, g + 2, g - 3)
    g = int(rng.integers(58, 138))
    return (g, g + int(rng.integers(0, 3)), g + int(rng.integers(1, 7)))


def _fade(line: Color, tone: Color, f: float) -> Color:
    return tuple(int(t + f * (c - t)) for c, t in zip(line, tone))  # type: ignore[return-value]


def lot_shape(rng: np.random.Generator, parcel: Polygon, variant: str):
    """Outline of a lot of ``variant`` on ``parcel``, or None when the parcel does not allow it.

    Returns ``(lot, stall_angle, buildings, grounds, trees)`` in world metres: the lot polygon,
    the stall row direction (rad), footprints for buildings, ground patches ``(poly, colour)``
    and trees ``(x, y, r, h)``.
    """
    p0 = largest(parcel.buffer(-rng.uniform(1.0, 3.0), join_style="mitre"))
    if p0 is None or p0.area < 700:
        return None
    ang, _, _ = frame(p0)
    q = rotate(p0, -ang)
    buildings: list[Polygon] = []
    grounds: list[tuple[Polygon, Color]] = []
    trees: list[tuple[float, float, float, float]] = []
    # keep a lot's sides near 30..110 m; the rest of a big parcel gets a building
    for axis in (0, 1):
        minx, miny, maxx, maxy = q.bounds
        lo, hi = (minx, maxx) if axis == 0 else (miny, maxy)
        if hi - lo > 110:
            cut_ang = 0.0 if axis == 0 else math.pi / 2
            at = lo + rng.uniform(70, 105)
            if rng.random() < 0.5:
                keep, rest = halfplane_cut(q, cut_ang, at)
            else:
                at = hi - (at - lo)
                rest, keep = halfplane_cut(q, cut_ang, at)
            q = largest(keep)
            b = largest(rest.buffer(-3.0, join_style="mitre")) if rest is not None else None
            if b is not None and b.area > 150:
                buildings.append(b)
    minx, miny, maxx, maxy = q.bounds
    dx, dy = maxx - minx, maxy - miny
    stall_ang = 0.0 if rng.random() < 0.7 else math.pi / 2
    lot = q
    if variant == "partial":
        if dx < 55:
            return None
        at = minx + rng.uniform(0.38, 0.6) * dx
        low, _ = halfplane_cut(q, 0.0, at - 1.5)
        _, high = halfplane_cut(q, 0.0, at + 1.5)
        if rng.random() < 0.5:
            low, high = high, low
        lot, bld = largest(low), largest(high.buffer(-1.0, join_style="mitre"))
        if lot is None or bld is None or bld.area < 120:
            return None
        buildings.append(bld)
        grounds.append((q.difference(lot).difference(bld), CONCRETE))
    elif variant == "L":
        if dx < 45 or dy < 40:
            return None
        a, b = dx * rng.uniform(0.35, 0.55), dy * rng.uniform(0.4, 0.6)
        cx = minx if rng.random() < 0.5 else maxx - a
        cy = miny if rng.random() < 0.5 else maxy - b
        corner = box(cx, cy, cx + a, cy + b)
        lot = largest(q.difference(corner.buffer(2.0, join_style="mitre")))
        bld = largest(q.intersection(corner).buffer(-0.5, join_style="mitre"))
        if lot is None or bld is None or bld.area < 100:
            return None
        buildings.append(bld)
    elif variant == "rotated":
        if min(dx, dy) < 32:
            return None
        delta = math.radians(rng.uniform(12, 35)) * (1 if rng.random() < 0.5 else -1)
        c = q.representative_point()
        lot = fit_rect(q.buffer(-1.5), c.x, c.y, dx * 0.95, dy * 0.95, delta, min_scale=0.35)
        if lot is None or min(frame(lot)[1:]) < 25:
            return None
        stall_ang = delta
        # trees on the lawn around the turned lot
        for _ in range(int(rng.integers(2, 7))):
            x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            trees.append((x, y, rng.uniform(2.0, 3.5), rng.uniform(6, 11)))
    elif variant in ("hole_building", "hole_island"):
        inner = q.buffer(-8.0)
        if inner.is_empty:
            return None
        if variant == "hole_building":
            w, h = rng.uniform(10, 20), rng.uniform(8, 14)
        else:
            w, h = rng.uniform(12, 30), rng.uniform(4.5, 8)
        c = inner.representative_point()
        x = c.x + rng.uniform(-0.25, 0.25) * dx
        y = c.y + rng.uniform(-0.2, 0.2) * dy
        hole = Polygon(rect(x, y, w, h, 0.0))
        ring = hole.buffer(1.5, join_style="mitre") if variant == "hole_building" else hole
        if not inner.contains(ring):
            hole = Polygon(rect(c.x, c.y, w, h, 0.0))
            ring = hole.buffer(1.5, join_style="mitre") if variant == "hole_building" else hole
            if not inner.contains(ring):
                return None
        lot = Polygon(q.exterior.coords, [ring.exterior.coords])
        if variant == "hole_building":
            buildings.append(hole)
            grounds.append((ring, CONCRETE))
        else:
            grounds.append((ring, (205, 200, 190)))  # kerb
            grounds.append((ring.buffer(-0.35, join_style="mitre"), LAWN))
            half = min(w, h) / 2 - 0.4
            k = max(1, int(max(w, h) // 9))
            span = max(w, h) - 2 * half
            for i in range(k):
                t = ((i + 0.5) / k - 0.5) * span
                tx, ty = (x + t, y) if w >= h else (x, y + t)
                trees.append((tx, ty, min(half, rng.uniform(1.8, 3.2)), rng.uniform(5, 9)))
    if lot is None or lot.area < 600:
        return None
    def back(g):
        return rotate(g, ang)

    world_trees = []
    for x, y, r, h in trees:
        p = back(Point(x, y))
        world_trees.append((p.x, p.y, r, h))
    return back(lot), ang + stall_ang, [back(b) for b in buildings], [(back(g), c) for g, c in grounds if not g.is_empty], world_trees


def lay_stalls(rng: np.random.Generator, lot: Lot, theta: float, occupancy: float) -> None:
    """Stall lines, parked cars and oil stains of ``lot``, rows along direction ``theta`` (rad)."""
    q = rotate(lot.poly, -theta)
    inner = q.buffer(-0.6)
    if inner.is_empty:
        return
    minx, miny, maxx, maxy = inner.bounds
    k = rng.random()
    alpha = math.pi / 2 if k < 0.78 else (math.radians(60) if k < 0.95 else math.radians(45))
    sw = rng.uniform(2.5, 2.75)
    depth = 5.5 if alpha == math.pi / 2 else 5.8
    aisle = rng.uniform(6.5, 7.6) if alpha == math.pi / 2 else rng.uniform(4.6, 5.6)
    end = aisle if rng.random() < 0.6 else 0.3
    pitch = sw / math.sin(alpha)
    shear = depth / math.tan(alpha)
    rows = []  # (y_back, direction)
    y = miny + rng.uniform(0.0, 1.5)
    rows.append((y, 1.0))
    y += depth + aisle
    while y < maxy:
        rows.append((y + depth, -1.0))
        rows.append((y + depth, 1.0))
        y += 2 * depth + aisle
    xs = np.arange(minx + end, maxx - end - pitch, pitch)
    if len(xs) == 0:
        return
    lines: list[np.ndarray] = []
    fade = rng.uniform(0.55, 1.0)
    lot.line_color = _fade(WHITE_LINE if rng.random() < 0.72 else YELLOW_LINE, lot.tone, fade)
    back_line = rng.random() < 0.5
    pole_gap = rng.uniform(25, 40) if rng.random() < 0.7 else 0.0
    poles: list[tuple[float, float]] = []
    n_stalls = 0
    cars: list[Car] = []
    for yb, d in rows:
        # corners of every stall of the row (frame coordinates)
        ax, ay = xs, np.full_like(xs, yb)
        bx = xs + pitch
        cx, cy = xs + pitch + shear, np.full_like(xs, yb + d * depth)
        dx_ = xs + shear
        fx, fy = xs + pitch / 2 + shear, np.full_like(xs, yb + d * (depth + aisle / 2))
        ok = (
            shapely.contains_xy(inner, ax, ay) & shapely.contains_xy(inner, bx, ay)
            & shapely.contains_xy(inner, cx, cy) & shapely.contains_xy(inner, dx_, cy)
            & shapely.contains_xy(inner, fx, fy)
        )
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            continue
        n_stalls += len(idx)
        edges = sorted(set(idx.tolist()) | set((idx + 1).tolist()))
        for e in edges:
            x0 = minx + end + e * pitch
            lines.append(np.array([[x0, yb], [x0 + shear, yb + d * depth]]))
        runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
        if back_line and d > 0:
            for r in runs:
                lines.append(np.array([[xs[r[0]], yb], [xs[r[-1]] + pitch, yb]]))
        if d > 0 and pole_gap > 0:
            for r in runs:
                for px in np.arange(xs[r[0]] + pole_gap / 3, xs[r[-1]] + pitch, pole_gap):
                    poles.append((float(px), float(yb)))
        heading = math.atan2(d * depth, shear)
        for i in idx:
            mx = xs[i] + pitch / 2 + shear / 2
            my = yb + d * depth / 2
            if rng.random() < occupancy:
                length, width = car_size(rng)
                length = min(length, depth / math.sin(alpha) * 0.97)
                off = rng.uniform(-0.25, 0.3)
                ux, uy = math.cos(heading), math.sin(heading)
                flip = math.pi if rng.random() < 0.25 else 0.0
                cars.append(Car(mx + ux * off * d, my + uy * off * d, heading + flip + rng.uniform(-0.05, 0.05),
                                length, width, car_color(rng)))
            elif rng.random() < 0.4:
                lot.stains.append((mx, my, heading, rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.6)))
    # back to world coordinates
    c, s = math.cos(theta), math.sin(theta)

    def w(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([xy[:, 0] * c - xy[:, 1] * s, xy[:, 0] * s + xy[:, 1] * c])

    lot.lines = [w(seg) for seg in lines]
    for car in cars:
        p = w(np.array([[car.x, car.y]]))[0]
        lot.cars.append(Car(float(p[0]), float(p[1]), car.ang + theta, car.length, car.width, car.color))
    stains = []
    for x, y, a, ra, rb in lot.stains:
        p = w(np.array([[x, y]]))[0]
        stains.append((float(p[0]), float(p[1]), a + theta, ra, rb))
    lot.stains = stains
    lot.poles = [tuple(float(v) for v in w(np.array([pt]))[0]) for pt in poles]  # type: ignore[misc]
    lot.stalls = n_stalls
    # a few re-sealed patches of another tone
    for _ in range(int(rng.integers(0, 3))):
        b = lot.poly.bounds
        x, y = rng.uniform(b[0], b[2]), rng.uniform(b[1], b[3])
        patch = Polygon(rect(x, y, rng.uniform(6, 25), rng.uniform(4, 15), theta)).intersection(lot.poly)
        if not patch.is_empty:
            g = int(np.clip(lot.tone[0] + rng.integers(-22, 16), 35, 200))
            lot.patches.extend((p, (g, g + 1, g + 3)) for p in polygons(patch))
