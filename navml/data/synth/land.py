"""Blocks, parcels and what stands on them (everything but the streets).

Blocks are the city square less the street corridors; they are split into
parcels of 30-130 m. Each parcel gets a use, denser downtown: surface parking
lot, multi-storey garage, plaza (some with an underground garage), sports
courts, park, paved yard (a truck or depot yard: asphalt, stains, trucks, no
stalls), office/shop buildings (many with flat grey roofs and HVAC boxes),
houses with pitched roofs and yards, or plain lawn. ``scene.decoy_share`` raises
the number of look-alikes of a parking lot (plazas, courts, yards, flat grey
roofs); each is recorded in ``scene.decoys``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely import affinity, ops
from shapely.geometry import LineString, MultiLineString, Point, Polygon, box

from navml.data.synth.geometry import Path, circle, fit_rect, frame, halfplane_cut, largest, polygons, rect, rot, rotate
from navml.data.synth.lots import CONCRETE, LAWN, VARIANT_SHARE, asphalt, lay_stalls, lot_shape
from navml.data.synth.roads import car_color
from navml.data.synth.scene import Building, Car, Color, Lot, Scene

GRASS = [(88, 118, 62), (98, 126, 66), (84, 110, 60), (110, 128, 74), (122, 130, 84)]
DIRT = [(146, 128, 100), (160, 142, 112), (132, 118, 96)]
#: Flat grey roofs at least this large (m²) are recorded as look-alikes of a lot.
FLAT_ROOF_M2 = 400.0
HOUSE_ROOFS = [(112, 86, 72), (92, 92, 95), (64, 66, 70), (142, 74, 58), (150, 132, 112), (82, 92, 108), (122, 116, 106), (170, 160, 148)]


@dataclass
class Parcel:
    poly: Polygon
    ang: float
    long: float
    short: float
    urban: float
    use: str = "green"

    @property
    def compact(self) -> float:
        return self.poly.area / max(self.long * self.short, 1.0)


def _jitter(rng, c: Color, k: int = 8) -> Color:
    return tuple(int(np.clip(v + rng.integers(-k, k + 1), 0, 255)) for v in c)  # type: ignore[return-value]


def _shade(c: Color, f: float) -> Color:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)  # type: ignore[return-value]


# ---------------------------------------------------------------- parcels


def _split(rng, poly: Polygon, out: list[Polygon], depth: int = 0) -> None:
    ang, long, _ = frame(poly)
    if long <= rng.uniform(70, 130) or poly.area < 2000 or depth > 6:
        out.append(poly)
        return
    c = np.asarray(poly.exterior.coords)
    proj = c @ np.array([math.cos(ang), math.sin(ang)])
    at = proj.min() + rng.uniform(0.38, 0.62) * (proj.max() - proj.min())
    for half in halfplane_cut(poly, ang, at):
        for part in polygons(half):
            if part.area > 30:
                _split(rng, part, out, depth + 1)


def build_parcels(rng: np.random.Generator, scene: Scene) -> list[Parcel]:
    """Parcels of every block, with an ``urban`` factor (1 downtown .. 0 at the outskirts)."""
    size = scene.size_m
    blocks = polygons(box(0, 0, size, size).difference(scene.sidewalk))
    raw: list[Polygon] = []
    for b in sorted(blocks, key=lambda p: (round(p.centroid.y, 3), round(p.centroid.x, 3))):
        if b.area < 60:
            continue
        _split(rng, b, raw)
    centre = np.array([size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6)])
    parcels = []
    for p in raw:
        ang, long, short = frame(p)
        c = p.centroid
        d = float(np.hypot(c.x - centre[0], c.y - centre[1]))
        urban = float(np.clip(1.15 - d / (0.55 * max(size, 800.0)), 0.0, 1.0))
        parcels.append(Parcel(p, ang, long, short, urban))
    return parcels


def _pick(rng, parcels: list[Parcel], n: int, ok, weight) -> list[Parcel]:
    cands = [p for p in parcels if p.use == "green" and ok(p)]
    if not cands or n <= 0:
        return []
    w = np.array([max(weight(p), 1e-3) for p in cands])
    idx = rng.choice(len(cands), size=min(n, len(cands)), replace=False, p=w / w.sum())
    return [cands[i] for i in sorted(idx)]


def assign_uses(rng: np.random.Generator, scene: Scene, parcels: list[Parcel]) -> dict[str, int]:
    """Give every parcel a use and build it; returns the number of parcels per use."""
    area_km2 = (scene.size_m / 1000.0) ** 2
    d = scene.decoy_share
    for p in parcels:
        if p.poly.area < 250 or p.short < 8:
            p.use = "tiny"
    plan = [
        ("lot", int(np.clip(round(22 * area_km2), 4, 70)), lambda p: p.short >= 30 and p.poly.area >= 1100 and p.compact > 0.45,
         lambda p: 0.35 + p.urban),
        ("garage", max(1, round(2 * area_km2)), lambda p: p.short >= 30 and 1500 <= p.poly.area <= 9000 and p.compact > 0.7,
         lambda p: 0.2 + p.urban),
        ("plaza", max(1, round(3 * area_km2 * (1 + 2 * d))), lambda p: 500 <= p.poly.area <= 6000, lambda p: 0.1 + p.urban),
        ("courts", max(1, round(2.5 * area_km2 * (1 + d))), lambda p: p.short >= 24 and p.long >= 40, lambda p: 1.2 - p.urban),
        ("yard", round(6 * area_km2 * d), lambda p: p.short >= 25 and 900 <= p.poly.area <= 8000 and p.compact > 0.5,
         lambda p: 0.3 + p.urban),
        ("park", max(1, round(3 * area_km2)), lambda p: p.poly.area >= 1500, lambda p: 1.1 - p.urban),
    ]
    for use, n, ok, weight in plan:
        for p in _pick(rng, parcels, n, ok, weight):
            p.use = use
    for p in parcels:
        if p.use == "green":
            r = rng.random()
            if r < 0.2 + 0.75 * p.urban:
                p.use = "commercial"
            elif p.short >= 18:
                p.use = "residential"
            elif r > 0.9:
                p.use = "dirt"
    # lot variants: the biggest lots get the holes so that every city has some
    lots = sorted([p for p in parcels if p.use == "lot"], key=lambda p: -p.short)
    variants = []
    for v, share in VARIANT_SHARE.items():
        k = max(1, round(share * len(lots))) if v.startswith("hole") else round(share * len(lots))
        variants += [v] * k
    variants += ["full"] * max(0, len(lots) - len(variants))
    hole = [v for v in variants if v.startswith("hole")]
    other = [variants[i] for i in rng.permutation(len(variants)) if not variants[i].startswith("hole")]
    plan_v = dict(zip([id(p) for p in lots], hole + other))
    # underground garages below some plazas and parks
    n_under = max(1, round(1.5 * area_km2))
    under_hosts = [p for p in parcels if p.use == "plaza"] + [p for p in parcels if p.use == "park"]
    under = {id(p) for p in under_hosts[:n_under]}
    counts: dict[str, int] = {}
    for p in parcels:
        use = p.use
        if use == "lot":
            if not _lot(rng, scene, p, plan_v.get(id(p), "full")):
                use = "commercial"
                _commercial(rng, scene, p)
        elif use == "garage":
            if not _garage(rng, scene, p):
                use = "commercial"
                _commercial(rng, scene, p)
        elif use == "plaza":
            _plaza(rng, scene, p, id(p) in under)
        elif use == "courts":
            if not _courts(rng, scene, p):
                use = "park"
                _park(rng, scene, p, id(p) in under)
        elif use == "park":
            _park(rng, scene, p, id(p) in under)
        elif use == "yard":
            _yard(rng, scene, p)
        elif use == "commercial":
            _commercial(rng, scene, p)
        elif use == "residential":
            _houses(rng, scene, p)
        else:
            _green(rng, scene, p, use)
        counts[use] = counts.get(use, 0) + 1
    return counts


# ---------------------------------------------------------------- buildings


def roof(rng, poly: Polygon, height: float, scene: Scene, style: str | None = None) -> Building:
    """A flat-roofed building with parapet, HVAC boxes (with shadows), penthouse or skylights."""
    styles = ["flat_grey", "white", "gravel", "dark", "metal", "green", "brown"]
    weights = np.array([0.34 + 0.5 * scene.decoy_share, 0.2, 0.15, 0.13, 0.1, 0.04, 0.04])
    style = style or styles[int(rng.choice(len(styles), p=weights / weights.sum()))]
    g = int(rng.integers(86, 138))
    base = {
        "flat_grey": (g, g + int(rng.integers(0, 3)), g + int(rng.integers(1, 6))),
        "white": _jitter(rng, (214, 216, 214), 10),
        "gravel": _jitter(rng, (164, 152, 132), 10),
        "dark": _jitter(rng, (66, 66, 70), 8),
        "metal": _jitter(rng, (170, 174, 176), 10),
        "green": _jitter(rng, (84, 104, 64), 8),
        "brown": _jitter(rng, (120, 92, 74), 8),
    }[style]
    b = Building(poly=poly, height=height, color=base)
    if style == "flat_grey" and poly.area >= FLAT_ROOF_M2:
        scene.decoys.append((poly, "parking", "flat_roof"))
    ang, long, short = frame(poly)
    sx, sy = scene.shadow
    pw = rng.uniform(0.4, 0.9)
    rim = poly.difference(poly.buffer(-pw, join_style="mitre"))
    if not rim.is_empty:
        b.details.append((rim, _shade(base, rng.choice([0.8, 1.15]))))
    if style == "metal":
        q = rotate(poly, -ang)
        x0, y0, x1, y1 = q.bounds
        ribs = MultiLineString([[(x0, y), (x1, y)] for y in np.arange(y0 + 0.5, y1, 0.9)])
        b.details.append((rotate(ribs.buffer(0.12, cap_style="flat"), ang).intersection(poly), _shade(base, 0.86)))
    inner = poly.buffer(-2.5)
    if inner.is_empty:
        return b
    x0, y0, x1, y1 = inner.bounds
    if style in ("white", "flat_grey", "metal") and poly.area > 2000 and rng.random() < 0.45:
        for x in np.arange(x0 + 3, x1 - 3, rng.uniform(7, 12)):
            for y in np.arange(y0 + 3, y1 - 3, rng.uniform(6, 10)):
                sk = Polygon(rect(x, y, 1.6, 3.0, ang))
                if inner.contains(sk):
                    b.details.append((sk, (206, 214, 218)))
    if height > 30 and rng.random() < 0.7:
        c = inner.representative_point()
        pent = fit_rect(inner, c.x, c.y, min(14, long * 0.35), min(10, short * 0.35), ang, min_scale=0.5)
        if pent is not None:
            h = rng.uniform(3, 5)
            b.details.append((shapely.convex_hull(shapely.union(pent, affinity.translate(pent, sx * h, sy * h))).intersection(poly), _shade(base, 0.55)))
            b.details.append((pent, _shade(base, rng.choice([0.75, 1.2]))))
    n_hvac = int(poly.area / 350 * rng.uniform(0.3, 1.3))
    for _ in range(min(n_hvac, 40)):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        box_ = Polygon(rect(x, y, rng.uniform(1.5, 4.5), rng.uniform(1.2, 3.0), ang))
        if not inner.contains(box_):
            continue
        h = rng.uniform(1.2, 2.5)
        shadow = shapely.convex_hull(shapely.union(box_, affinity.translate(box_, sx * h, sy * h))).intersection(poly)
        b.details.append((shadow, _shade(b.color, 0.55)))
        v = int(rng.integers(168, 214))
        b.details.append((box_, (v, v, v + 2)))
    return b


def _building_tags(rng, b: Building, kind: str) -> None:
    b.tags = {"building": kind, "height": f"{b.height:.0f}", "building:levels": str(max(1, int(b.height // 3.5)))}


def _add_building(rng, scene: Scene, poly: Polygon, urban: float, kind: str = "commercial") -> None:
    big = poly.area > 4000
    h = 4.0 + (urban ** 1.5) * rng.gamma(2.0, 14.0)
    if big and urban < 0.7:
        h = min(h, 16.0)
    h = float(np.clip(h, 4.0, 150.0))
    b = roof(rng, poly, h, scene)
    _building_tags(rng, b, kind if h < 30 else "office")
    scene.buildings.append(b)


def _commercial(rng, scene: Scene, p: Parcel) -> None:
    ground = CONCRETE if p.urban > 0.5 and rng.random() < 0.7 else _jitter(rng, LAWN)
    scene.grounds.append((p.poly, ground))
    p0 = largest(p.poly.buffer(-rng.uniform(1.5, 6.0), join_style="mitre"))
    if p0 is None or p0.area < 80:
        return
    foots: list[Polygon] = []
    if p.urban > 0.55 and rng.random() < 0.6:
        foots = [p0]
    else:
        c = p0.representative_point()
        f = fit_rect(p0, c.x, c.y, p.long * rng.uniform(0.55, 0.95), p.short * rng.uniform(0.55, 0.95), p.ang, 0.3)
        foots = [f] if f is not None else [p0]
    if foots[0].area > 2500 and frame(foots[0])[1] > 60 and rng.random() < 0.5:
        ang = frame(foots[0])[0]
        c = np.asarray(foots[0].exterior.coords) @ np.array([math.cos(ang), math.sin(ang)])
        at = c.min() + rng.uniform(0.35, 0.65) * (c.max() - c.min())
        gap = rng.uniform(3, 8)
        a_, _ = halfplane_cut(foots[0], ang, at - gap / 2)
        _, b_ = halfplane_cut(foots[0], ang, at + gap / 2)
        foots = [g for g in (largest(a_), largest(b_)) if g is not None and g.area > 80]
    for f in foots:
        _add_building(rng, scene, f, p.urban, str(rng.choice(["commercial", "retail", "yes", "office"])))
    _scatter_trees(rng, scene, p.poly, int(p.poly.area / 600 * rng.uniform(0, 1.5)), (2.0, 4.0))


def _garage(rng, scene: Scene, p: Parcel) -> bool:
    p0 = largest(p.poly.buffer(-rng.uniform(2.0, 4.0), join_style="mitre"))
    if p0 is None:
        return False
    c = p0.representative_point()
    foot = fit_rect(p0, c.x, c.y, min(p.long, 95.0), min(p.short, 62.0), p.ang, 0.45)
    if foot is None or min(frame(foot)[1:]) < 28:
        return False
    scene.grounds.append((p.poly, CONCRETE))
    h = float(rng.uniform(10.0, 22.0))
    g = int(rng.integers(148, 182))
    deck_color = (g + 3, g + 1, g - 2)
    deck = Lot(poly=foot, kind="multi-storey", variant="garage", tone=deck_color)
    deck_poly = foot.buffer(-1.2, join_style="mitre")
    tmp = Lot(poly=deck_poly, kind="multi-storey", variant="garage", tone=deck_color)
    lay_stalls(rng, tmp, frame(foot)[0], rng.uniform(0.15, 0.65))
    deck.lines, deck.cars, deck.stains, deck.stalls = tmp.lines, tmp.cars, tmp.stains, tmp.stalls
    levels = max(2, int(h // 3.2))
    deck.osm_tags = {"amenity": "parking", "parking": "multi-storey", "building": "parking",
                     "building:levels": str(levels), "capacity": str(max(deck.stalls, 1) * levels)}
    b = Building(poly=foot, height=h, color=deck_color, deck=deck)
    rim = foot.difference(foot.buffer(-0.8, join_style="mitre"))
    b.details.append((rim, _shade(deck_color, 1.12)))
    ang = frame(foot)[0]
    sx, sy = scene.shadow
    corners = np.asarray(foot.exterior.coords)[:4]
    for k in rng.choice(4, size=2, replace=False):
        cen = corners[k] + (np.asarray(foot.centroid.coords[0]) - corners[k]) * 0.08
        tower = Polygon(rect(cen[0], cen[1], 5.0, 4.0, ang))
        th = rng.uniform(2.5, 4.0)
        shadow = shapely.convex_hull(shapely.union(tower, affinity.translate(tower, sx * th, sy * th)))
        b.details.append((shadow.intersection(foot), _shade(deck_color, 0.55)))
        b.details.append((tower.intersection(foot), _jitter(rng, (120, 118, 114))))
    scene.lots.append(deck)
    scene.buildings.append(b)
    return True


# ---------------------------------------------------------------- lots


def _lot(rng, scene: Scene, p: Parcel, variant: str) -> bool:
    shape = None
    for v in (variant, "partial", "full"):
        shape = lot_shape(rng, p.poly, v)
        if shape is not None:
            variant = v
            break
    if shape is None:
        return False
    poly, theta, blds, grounds, trees = shape
    scene.grounds.append((p.poly, _jitter(rng, LAWN)))
    scene.grounds.extend(grounds)
    lot = Lot(poly=poly, kind="surface", variant=variant, tone=asphalt(rng))
    lay_stalls(rng, lot, theta, float(rng.beta(1.4, 1.4)))
    scene.lots.append(lot)
    for b in blds:
        if variant == "hole_building" and b.area < 400:
            bb = roof(rng, b, float(rng.uniform(4, 8)), scene)
            _building_tags(rng, bb, str(rng.choice(["retail", "commercial", "kiosk"])))
            scene.buildings.append(bb)
        else:
            _add_building(rng, scene, b, p.urban, str(rng.choice(["retail", "commercial", "supermarket"])))
    for x, y, r, h in trees:
        scene.trees_raw.append((x, y, r, h))
    # landscaping trees around the lot (their shadows fall on it)
    _scatter_trees(rng, scene, p.poly.difference(poly.buffer(1.0)), int(rng.integers(0, 8)), (1.8, 3.5))
    # driveway to the street
    if scene.carriageway is not None and poly.distance(scene.carriageway) < 18:
        a, b = ops.nearest_points(poly, scene.carriageway)
        d = np.array([b.x - a.x, b.y - a.y])
        n = np.hypot(*d)
        if n > 0.1:
            d /= n
            wdt = rng.uniform(6.0, 8.0)
            q = Polygon(rect((a.x + b.x) / 2, (a.y + b.y) / 2, n + 1.5, wdt, math.atan2(d[1], d[0])))
            scene.driveways.append((q.difference(poly), lot.tone))
    return True


# ---------------------------------------------------------------- open spaces


def _scatter_trees(rng, scene: Scene, area, n: int, radius=(2.5, 5.5), cluster: bool = False) -> None:
    if n <= 0 or area.is_empty:
        return
    x0, y0, x1, y1 = area.bounds
    centres = np.column_stack([rng.uniform(x0, x1, 3), rng.uniform(y0, y1, 3)])
    tries = 0
    placed = 0
    while placed < n and tries < n * 6:
        tries += 1
        if cluster:
            c = centres[int(rng.integers(3))]
            x, y = c + rng.normal(0, 14, 2)
        else:
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if shapely.contains_xy(area, x, y):
            r = rng.uniform(*radius)
            scene.trees_raw.append((float(x), float(y), float(r), float(r * rng.uniform(2.2, 3.4))))
            placed += 1


def _green(rng, scene: Scene, p: Parcel, use: str) -> None:
    color = _jitter(rng, DIRT[int(rng.integers(len(DIRT)))]) if use == "dirt" else _jitter(rng, GRASS[int(rng.integers(len(GRASS)))])
    scene.grounds.append((p.poly, color))
    if use != "dirt":
        _scatter_trees(rng, scene, p.poly.buffer(-1.0), int(p.poly.area / 400 * rng.uniform(0, 1.2)))


def _under(rng, scene: Scene, host: Polygon, variant: str) -> None:
    c = host.representative_point()
    ang, long, short = frame(host)
    r = fit_rect(host.buffer(-3.0), c.x, c.y, long * 0.85, short * 0.85, ang, 0.3)
    if r is None:
        return
    lot = Lot(poly=r, kind="underground", variant=variant)
    lot.osm_tags = {"amenity": "parking", "parking": "underground", "layer": "-1", "access": "yes"}
    scene.lots.append(lot)


def _plaza(rng, scene: Scene, p: Parcel, underground: bool) -> None:
    p0 = p.poly.buffer(-0.5)
    styles = [(198, 192, 182), (206, 190, 164), (172, 168, 160), (164, 122, 102), (140, 140, 138), (120, 121, 124)]
    base = _jitter(rng, styles[int(rng.integers(len(styles)))], 6)
    scene.grounds.append((p.poly, _jitter(rng, LAWN)))
    scene.grounds.append((p0, base))
    ang = p.ang + (math.pi / 4 if rng.random() < 0.25 else 0.0)
    q = rotate(p0, -ang)
    x0, y0, x1, y1 = q.bounds
    step = rng.uniform(1.2, 4.0)
    joint = _shade(base, 0.84)
    segs = [[(x, y0), (x, y1)] for x in np.arange(x0 + step, x1, step)] + [[(x0, y), (x1, y)] for y in np.arange(y0 + step, y1, step)]
    if rng.random() < 0.5:  # checker of pavers
        big = step * int(rng.integers(2, 4))
        tiles = [box(x, y, x + big, y + big) for i, x in enumerate(np.arange(x0, x1, big)) for j, y in enumerate(np.arange(y0, y1, big)) if (i + j) % 2]
        if tiles:
            tg = rotate(shapely.union_all(tiles), ang).intersection(p0)
            scene.grounds.append((tg, _shade(base, rng.choice([0.9, 1.08]))))
    lines = rotate(MultiLineString(segs), ang).intersection(p0) if segs else None
    for g in getattr(lines, "geoms", [lines] if lines is not None and not lines.is_empty else []):
        if g.geom_type == "LineString":
            scene.ground_lines.append((np.asarray(g.coords), joint, 0.08))
    inner = p0.buffer(-3.0)
    if not inner.is_empty:
        c = inner.representative_point()
        if rng.random() < 0.45:
            r = rng.uniform(3, 6)
            if inner.contains(Point(c.x, c.y).buffer(r + 1)):
                scene.grounds.append((Polygon(circle(c.x, c.y, r + 0.8, 40)), _shade(base, 1.1)))
                scene.grounds.append((Polygon(circle(c.x, c.y, r, 40)), _jitter(rng, (78, 118, 132), 8)))
        ix0, iy0, ix1, iy1 = inner.bounds
        for _ in range(int(p0.area / 250)):
            x, y = rng.uniform(ix0, ix1), rng.uniform(iy0, iy1)
            s = rng.uniform(2.5, 4.0)
            pl = Polygon(rect(x, y, s, s, ang))
            if inner.contains(pl):
                scene.grounds.append((pl, (150, 146, 140)))
                scene.grounds.append((pl.buffer(-0.3, join_style="mitre"), _jitter(rng, (84, 112, 58))))
                scene.trees_raw.append((x, y, min(s / 2 + 1.0, rng.uniform(1.8, 3.0)), rng.uniform(5, 9)))
            elif shapely.contains_xy(inner, x, y):
                scene.grounds.append((Polygon(rect(x, y, 2.0, 0.6, ang + rng.choice([0, math.pi / 2]))), (92, 76, 60)))
    scene.osm_areas.append((p0, {"highway": "pedestrian", "area": "yes", "surface": "paving_stones"}))
    scene.decoys.append((p0, "parking", "plaza"))
    if underground:
        _under(rng, scene, p0, "under-plaza")


def _yard(rng, scene: Scene, p: Parcel) -> None:
    """A paved truck or depot yard: asphalt like a lot's, oil stains, a hatched loading zone, trucks and vans, no stalls."""
    from navml.data.synth.lots import asphalt as lot_asphalt

    scene.grounds.append((p.poly, _jitter(rng, LAWN)))
    p0 = largest(p.poly.buffer(-rng.uniform(1.5, 4.0), join_style="mitre"))
    if p0 is None:
        return
    tone = lot_asphalt(rng)
    scene.grounds.append((p0, tone))
    ang, long, short = frame(p0)
    x0, y0, x1, y1 = p0.bounds
    stain = _shade(tone, 0.72)
    for _ in range(int(p0.area / 60)):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if shapely.contains_xy(p0, x, y):
            scene.grounds.append((Point(x, y).buffer(rng.uniform(0.3, 0.9), quad_segs=4), stain))
    # a hatched loading zone along one long side
    q = rotate(p0, -ang)
    qx0, qy0, qx1, qy1 = q.bounds
    zone = box(qx0 + 0.25 * (qx1 - qx0), qy0 + 0.5, qx0 + 0.75 * (qx1 - qx0), qy0 + 6.0)
    hatch = [[(x, qy0 + 0.5), (x + 5.5, qy0 + 6.0)] for x in np.arange(zone.bounds[0], zone.bounds[2] - 5.5, 1.6)]
    yellow = (214, 182, 62)
    for seg in [list(zone.exterior.coords)] + hatch:
        g = rotate(LineString(seg), ang).intersection(p0)
        for part in getattr(g, "geoms", [g]):
            if part.geom_type == "LineString" and not part.is_empty:
                scene.ground_lines.append((np.asarray(part.coords), yellow, 0.15))
    # trucks and vans parked at random, not in rows
    n = max(1, int(p0.area / 450 * rng.uniform(0.5, 1.5)))
    for _ in range(n * 3):
        if n <= 0:
            break
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        big = rng.random() < 0.6
        length, width = (rng.uniform(9.0, 16.5), rng.uniform(2.4, 2.6)) if big else (rng.uniform(5.2, 6.2), rng.uniform(2.0, 2.2))
        a = ang + rng.choice([0.0, math.pi / 2]) + rng.uniform(-0.25, 0.25)
        body = Polygon(rect(x, y, length + 1.0, width + 1.0, a))
        if not p0.buffer(-0.5).contains(body):
            continue
        g = int(rng.integers(200, 240))
        color = (g, g, g - 2) if big and rng.random() < 0.7 else car_color(rng)
        scene.road_cars.append(Car(x, y, a, length, width, color))
        n -= 1
    scene.osm_areas.append((p0, {"landuse": "industrial", "surface": "asphalt"}))
    scene.decoys.append((p0, "parking", "paved_yard"))


def _court_lines(kind: str) -> list[list[tuple[float, float]]]:
    """Court lines in court coordinates (x across, y along, metres, centred)."""
    if kind == "tennis":
        hw, hl = 10.97 / 2, 23.77 / 2
        sw = 8.23 / 2
        return [[(-hw, -hl), (hw, -hl), (hw, hl), (-hw, hl), (-hw, -hl)], [(-sw, -hl), (-sw, hl)], [(sw, -hl), (sw, hl)],
                [(-sw, -6.4), (sw, -6.4)], [(-sw, 6.4), (sw, 6.4)], [(0, -6.4), (0, 6.4)]]
    hw, hl = 7.5, 14.0
    out = [[(-hw, -hl), (hw, -hl), (hw, hl), (-hw, hl), (-hw, -hl)], [(-hw, 0), (hw, 0)]]
    t = np.linspace(0, 2 * np.pi, 33)
    out.append(list(zip(1.8 * np.cos(t), 1.8 * np.sin(t))))
    for sgn in (-1, 1):
        y0 = sgn * hl
        y1 = y0 - sgn * 5.8
        out.append([(-2.45, y0), (-2.45, y1), (2.45, y1), (2.45, y0)])
        out.append(list(zip(1.8 * np.cos(t), y1 + 1.8 * np.sin(t))))
        basket = y0 - sgn * 1.575
        a = np.linspace(-1.2, 1.2, 25)
        out.append(list(zip(6.75 * np.sin(a), basket - sgn * 6.75 * np.cos(a))))
    return out


def _place_court(rng, scene: Scene, container: Polygon, kind: str, ang: float, cx: float, cy: float, n: int, base: Color | None = None) -> Polygon | None:
    cw, cl = (18.3, 36.6) if kind == "tennis" else (19.0, 32.0)
    total = Polygon(rect(cx, cy, cw * n, cl, ang))
    if not container.contains(total):
        return None
    palettes = {"tennis": [((62, 112, 80), (52, 96, 140)), ((54, 86, 132), (54, 86, 132)), ((166, 92, 62), (166, 92, 62)),
                           ((98, 98, 100), (72, 110, 84))],
                "basketball": [((96, 96, 98), (96, 96, 98)), ((152, 84, 52), (64, 90, 140)), ((60, 88, 140), (150, 86, 54))]}
    outer, inner_c = palettes[kind][int(rng.integers(len(palettes[kind])))] if base is None else (base, base)
    scene.grounds.append((total, _jitter(rng, outer, 5)))
    c, s = math.cos(ang), math.sin(ang)
    ux, vx = np.array([c, s]), np.array([-s, c])  # court x across (along the row), y along its length
    for i in range(n):
        off = (i - (n - 1) / 2) * cw
        centre = np.array([cx, cy]) + ux * off
        if kind == "tennis":
            scene.grounds.append((Polygon(rect(centre[0], centre[1], 10.97 + 1.0, 23.77 + 1.0, ang + math.pi / 2)), _jitter(rng, inner_c, 4)))
        for line in _court_lines(kind):
            pts = np.asarray(line)
            xy = centre + np.outer(pts[:, 0], ux) + np.outer(pts[:, 1], vx)
            scene.ground_lines.append((xy, (236, 236, 232), 0.1))
        if kind == "tennis":
            net = centre + np.outer([-6.4, 6.4], ux)
            scene.ground_lines.append((net, (40, 40, 40), 0.12))
    # fence
    fence = np.asarray(total.exterior.coords)
    scene.ground_lines.append((fence, (70, 72, 70), 0.1))
    tags = {"leisure": "pitch", "sport": kind, "surface": "asphalt" if outer[0] == outer[1] else "acrylic"}
    scene.osm_areas.append((total, tags))
    scene.courts.append(total)
    scene.decoys.append((total, "parking", "court"))
    return total


def _courts(rng, scene: Scene, p: Parcel) -> bool:
    p0 = p.poly.buffer(-1.5)
    if p0.is_empty:
        return False
    scene.grounds.append((p.poly, _jitter(rng, GRASS[int(rng.integers(len(GRASS)))])))
    c = p0.representative_point()
    for kind in ("tennis", "basketball") if rng.random() < 0.6 else ("basketball", "tennis"):
        for ang in (p.ang + math.pi / 2, p.ang):
            for n in (4, 3, 2, 1):
                if _place_court(rng, scene, p0, kind, ang, c.x, c.y, n) is not None:
                    _scatter_trees(rng, scene, p0, int(rng.integers(0, 5)), (2.0, 4.0))
                    return True
    return True


def _park(rng, scene: Scene, p: Parcel, underground: bool) -> None:
    grass = _jitter(rng, GRASS[int(rng.integers(len(GRASS)))], 6)
    scene.grounds.append((p.poly, grass))
    p0 = p.poly.buffer(-1.0)
    if p0.is_empty:
        return
    inner = p0.buffer(-10.0)
    court = None
    if rng.random() < 0.3 and not inner.is_empty:
        c = inner.representative_point()
        court = _place_court(rng, scene, p0, "basketball", p.ang, c.x, c.y, 1)
    if not inner.is_empty and rng.random() < 0.3:
        c = inner.representative_point()
        t = np.linspace(0, 2 * np.pi, 36, endpoint=False)
        rr = rng.uniform(6, 14) * (1 + 0.25 * np.sin(3 * t + rng.uniform(0, 6)))
        pond = Polygon(np.column_stack([c.x + rr * np.cos(t) * 1.4, c.y + rr * np.sin(t)])).intersection(inner)
        if court is not None:
            pond = pond.difference(court.buffer(4.0))
        pond = largest(pond)
        if pond is not None and pond.area > 30:
            scene.grounds.append((pond.buffer(1.2), (120, 116, 96)))
            scene.grounds.append((pond, _jitter(rng, (56, 80, 84), 6)))
            scene.courts.append(pond.buffer(1.0))
    ring = p0.exterior
    for _ in range(int(rng.integers(1, 4))):
        a = ring.interpolate(rng.uniform(0, 1), normalized=True)
        b = ring.interpolate(rng.uniform(0, 1), normalized=True)
        c = p0.representative_point()
        ctrl = np.array([c.x, c.y]) + rng.normal(0, 15, 2)
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * np.array([a.x, a.y]) + 2 * (1 - t) * t * ctrl + t ** 2 * np.array([b.x, b.y])
        path = LineString(pts).intersection(p0)
        for ob in scene.courts[-2:]:
            if ob.intersects(p0):
                path = path.difference(ob.buffer(1.5))
        for g in getattr(path, "geoms", [path]):
            if g.geom_type == "LineString" and g.length > 5:
                scene.ground_lines.append((np.asarray(g.coords), _jitter(rng, (188, 182, 170), 8), rng.uniform(2.0, 3.0)))
    _scatter_trees(rng, scene, p0, int(p0.area / 160 * rng.uniform(0.4, 1.1)), (2.5, 6.0), cluster=True)
    scene.osm_areas.append((p0, {"leisure": "park"}))
    if underground:
        _under(rng, scene, p0, "under-park")


# ---------------------------------------------------------------- houses


def _houses(rng, scene: Scene, p: Parcel) -> None:
    lawn = _jitter(rng, GRASS[int(rng.integers(len(GRASS)))], 6)
    scene.grounds.append((p.poly, lawn))
    q = rotate(p.poly, -p.ang)
    ok = q.buffer(-1.5)
    if ok.is_empty:
        return
    x0, y0, x1, y1 = q.bounds
    depth = y1 - y0
    rows = [(y0, 1.0, depth / 2), (y1, -1.0, depth / 2)] if depth >= 44 else [((y0, 1.0, depth) if rng.random() < 0.5 else (y1, -1.0, depth))]
    sun = -np.asarray(scene.shadow) / (np.hypot(*scene.shadow) or 1.0)
    grounds, trees = [], []
    for front, d, row_depth in rows:
        x = x0 + rng.uniform(0, 4)
        while x < x1 - 10:
            cw = rng.uniform(15, 22)
            hw = rng.uniform(8, max(8.5, min(13, cw - 4)))
            hd = rng.uniform(9, max(9.5, min(15, row_depth - 8)))
            set_back = rng.uniform(5, 9)
            cx = x + cw / 2 + rng.uniform(-1, 1)
            cy = front + d * (set_back + hd / 2)
            house = Polygon(rect(cx, cy, hw, hd, 0.0))
            if ok.contains(house):
                _house_roof(rng, scene, house, p.ang, sun)
                # driveway from the street to the side of the house
                side = 1 if rng.random() < 0.5 else -1
                dx = cx + side * (hw / 2 + 1.8)
                drive = box(dx - 1.5, min(front, cy), dx + 1.5, max(front, cy)).intersection(ok)
                if not drive.is_empty:
                    grounds.append((drive, _jitter(rng, (176, 174, 168), 6)))
                back_y = cy + d * (hd / 2 + rng.uniform(3, 6))
                if rng.random() < 0.07:
                    pool = Polygon(rect(cx + rng.uniform(-2, 2), back_y + d * 2.5, rng.uniform(6, 9), rng.uniform(3.5, 4.5), 0.0))
                    if ok.contains(pool.buffer(1.0)):
                        grounds.append((pool.buffer(0.8, join_style="mitre"), (196, 192, 184)))
                        grounds.append((pool, (92, 182, 206)))
                for _ in range(int(rng.integers(0, 3))):
                    tx = cx + rng.uniform(-cw / 2, cw / 2)
                    ty = back_y + d * rng.uniform(2, max(2.5, row_depth - set_back - hd - 4))
                    trees.append((tx, ty))
                if rng.random() < 0.5:
                    trees.append((cx + rng.uniform(-cw / 2, cw / 2), front + d * rng.uniform(1.5, set_back - 1)))
            x += cw
    for g, c in grounds:
        scene.grounds.append((rotate(g, p.ang), c))
    if trees:
        xy = rot(np.asarray(trees), p.ang)
        for tx, ty in xy:
            r = rng.uniform(2.0, 4.5)
            scene.trees_raw.append((float(tx), float(ty), float(r), float(r * rng.uniform(2.2, 3.2))))


def _house_roof(rng, scene: Scene, house_f: Polygon, ang: float, sun: np.ndarray) -> None:
    """Gable or hip roof of a house given in the parcel frame (facets shaded by the sun)."""
    x0, y0, x1, y1 = house_f.bounds
    base = _jitter(rng, HOUSE_ROOFS[int(rng.integers(len(HOUSE_ROOFS)))], 8)
    along_x = (x1 - x0) >= (y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    facets = []  # (polygon, outward normal in frame)
    if along_x:
        hd = (y1 - y0) / 2
        hip = rng.random() < 0.4
        a, b = (x0 + hd, x1 - hd) if hip and x1 - x0 > 2 * hd else (x0, x1)
        facets.append(([(x0, y0), (x1, y0), (b, cy), (a, cy)], (0, -1)))
        facets.append(([(x0, y1), (a, cy), (b, cy), (x1, y1)], (0, 1)))
        if a > x0:
            facets.append(([(x0, y0), (a, cy), (x0, y1)], (-1, 0)))
            facets.append(([(x1, y0), (x1, y1), (b, cy)], (1, 0)))
    else:
        hw = (x1 - x0) / 2
        hip = rng.random() < 0.4
        a, b = (y0 + hw, y1 - hw) if hip and y1 - y0 > 2 * hw else (y0, y1)
        facets.append(([(x0, y0), (cx, a), (cx, b), (x0, y1)], (-1, 0)))
        facets.append(([(x1, y0), (x1, y1), (cx, b), (cx, a)], (1, 0)))
        if a > y0:
            facets.append(([(x0, y0), (x1, y0), (cx, a)], (0, -1)))
            facets.append(([(x0, y1), (cx, b), (x1, y1)], (0, 1)))
    poly = rotate(house_f, ang)
    b = Building(poly=poly, height=float(rng.uniform(5.0, 9.0)), color=base, tags={"building": "house"})
    for pts, nrm in facets:
        n = rot(np.asarray([nrm], float), ang)[0]
        f = 1.0 + 0.28 * float(np.dot(n, sun))
        b.details.append((rotate(Polygon(pts), ang), _shade(base, f)))
    b.tags["building:levels"] = str(1 + int(b.height > 7))
    scene.buildings.append(b)


# ---------------------------------------------------------------- trees


def street_trees(rng, scene: Scene) -> None:
    """Trees on the grass verges of residential and secondary streets."""
    for w in scene.ways:
        s = w.street
        if s.verge <= 0:
            continue
        path = Path(w.coords)
        pos = 14.0 + rng.uniform(0, 5)
        while pos < path.length - 14.0:
            for side in (1.0, -1.0):
                if rng.random() < 0.7:
                    p, t = path.at(pos + rng.uniform(-1, 1))
                    lat = side * (s.width / 2 + s.verge / 2)
                    q = p[0] + lat * np.array([-t[0][1], t[0][0]])
                    r = rng.uniform(2.2, 4.5)
                    scene.trees_raw.append((float(q[0]), float(q[1]), float(r), float(r * rng.uniform(2.4, 3.4))))
            pos += rng.uniform(8.0, 13.0)


def settle_trees(rng, scene: Scene) -> None:
    """Keep trees whose canopy stays off lots, buildings, courts, water and turn arrows."""
    if not scene.trees_raw:
        scene.trees = np.zeros((0, 5))
        return
    t = np.asarray(scene.trees_raw, dtype=float)
    blocked = [lot.poly for lot in scene.lots if lot.visible]
    blocked += [b.poly for b in scene.buildings]
    blocked += list(scene.courts)
    blocked += [Polygon(m.footprint).buffer(0.4) for m in scene.markings]
    keep = np.ones(len(t), dtype=bool)
    if blocked:
        tree = shapely.STRtree(blocked)
        discs = shapely.buffer(shapely.points(t[:, 0], t[:, 1]), t[:, 2], quad_segs=3)
        hit, _ = tree.query(discs, predicate="intersects")
        keep[np.unique(hit)] = False
    inside = (t[:, 0] > -3) & (t[:, 1] > -3) & (t[:, 0] < scene.size_m + 3) & (t[:, 1] < scene.size_m + 3)
    t = t[keep & inside]
    scene.trees = np.column_stack([t, rng.random(len(t))])
