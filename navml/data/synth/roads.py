"""Streets of the synthetic city: the network, its OSM ways, lane paint and turn arrows.

A grid of streets with uneven block sizes, a one-way primary (with ``turn:lanes``),
a two-way primary, secondaries, residential streets (some ending at a T
junction), a diagonal avenue and a curved street when the city is big enough.
Turn arrows (~5 m x 1.8 m) are painted on approach lanes before the stop line;
which arrows depends on the movements the junction allows, and every kind of
:data:`~navml.data.synth.scene.KINDS` is forced to occur when some approach allows it.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import ops
from shapely.geometry import LineString, Point, Polygon, box

from navml.data.synth.geometry import Path, head, rot, thick
from navml.data.synth.scene import KINDS, TURN_VALUE, Car, Marking, Scene, Street, Way

#: Streets run this far past the city edge so their paint reaches the border.
EXT = 15.0
WHITE = (236, 236, 232)
YELLOW = (226, 188, 64)
LINE_W = 0.12
STOP_W = 0.5
NAMES = ["Lincoln", "Grant", "Logan", "Pennsylvania", "Pearl", "Washington", "Clarkson", "Emerson", "Ogden",
         "Corona", "Downing", "Marion", "Lafayette", "Humboldt", "Franklin", "Gilpin", "Williams", "High", "Race",
         "Vine", "Gaylord", "York", "Josephine", "Columbine"]
CAR_COLORS = [((232, 232, 230), 22), ((22, 22, 24), 18), ((158, 160, 163), 15), ((92, 94, 97), 13), ((156, 28, 26), 9),
              ((28, 48, 112), 8), ((46, 66, 44), 3), ((188, 172, 142), 4), ((206, 172, 30), 2), ((112, 62, 32), 3),
              ((72, 94, 126), 3)]


def car_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A car body colour drawn from a realistic mix (white, black, silver ... few yellow)."""
    w = np.array([c[1] for c in CAR_COLORS], dtype=float)
    base = CAR_COLORS[int(rng.choice(len(CAR_COLORS), p=w / w.sum()))][0]
    j = rng.integers(-10, 11)
    return tuple(int(np.clip(v + j, 0, 255)) for v in base)  # type: ignore[return-value]


def car_size(rng: np.random.Generator) -> tuple[float, float]:
    """Length and width (m) of a compact, sedan, SUV or pickup."""
    k = rng.random()
    if k < 0.15:
        return rng.uniform(3.8, 4.2), rng.uniform(1.65, 1.75)
    if k < 0.65:
        return rng.uniform(4.4, 4.9), rng.uniform(1.75, 1.85)
    if k < 0.9:
        return rng.uniform(4.7, 5.1), rng.uniform(1.85, 1.98)
    return rng.uniform(5.4, 5.9), rng.uniform(1.95, 2.05)


# ---------------------------------------------------------------- streets


def _positions(rng: np.random.Generator, size: float) -> list[float]:
    out, p = [], rng.uniform(30.0, 90.0)
    while p < size - 30.0:
        out.append(float(p))
        p += rng.uniform(85.0, 185.0)
    return out


def _street(rng, coords, ext, highway: str, kind: str, name: str, oneway: bool = False) -> Street:
    if highway == "primary":
        lanes = 3 if oneway else int(rng.choice([4, 4, 6]))
        lane_w, park = 3.5, (2.4 if (oneway and rng.random() < 0.5) else 0.0)
        gap, centre = (0.0, "none") if oneway else (0.5, "double")
        verge, walk = 0.0, rng.uniform(3.5, 5.0)
    elif highway == "secondary":
        lanes = int(rng.choice([2, 4]))
        lane_w, park = 3.4, (2.4 if rng.random() < 0.6 else 0.0)
        gap, centre, verge, walk = 0.5, "double", float(rng.choice([0.0, 1.6])), rng.uniform(2.5, 3.5)
    else:
        lanes, lane_w = 2, 3.2
        park = 2.3 if rng.random() < 0.75 else 0.0
        gap, centre = 0.0, ("dashed" if rng.random() < 0.35 else "none")
        verge, walk = rng.uniform(1.5, 2.6), 1.8
    return Street(
        coords=np.asarray(coords, float), ext=np.asarray(ext, float), highway=highway, lanes=lanes, oneway=oneway,
        lane_w=lane_w, park_w=park, gap=gap, centre=centre, verge=float(verge), walk=float(walk), name=name,
        tone=int(rng.integers(68, 112)), kind=kind,
    )


def _clip(ext: np.ndarray, size: float) -> np.ndarray:
    line = LineString(ext).intersection(box(0, 0, size, size))
    if line.geom_type != "LineString":  # a curve leaving and re-entering: keep the longest piece
        line = max(line.geoms, key=lambda g: g.length)
    c = np.asarray(line.coords)
    # keep the direction of travel
    if np.dot(c[-1] - c[0], ext[-1] - ext[0]) < 0:
        c = c[::-1]
    return c


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def build_streets(rng: np.random.Generator, size: float) -> list[Street]:
    """The streets: vertical and horizontal grid lines, a T-ending street, a diagonal and a curve."""
    xs, ys = _positions(rng, size), _positions(rng, size)
    if not ys:
        ys = [size / 2]
    if not xs:
        xs = [size / 2]
    nv, nh = len(xs), len(ys)
    vcls = ["residential"] * nv
    hcls = ["residential"] * nh
    iv = int(np.argmin(np.abs(np.array(xs) - size * rng.uniform(0.35, 0.65))))
    ih = int(np.argmin(np.abs(np.array(ys) - size * rng.uniform(0.35, 0.65))))
    vcls[iv], hcls[ih] = "primary", "primary"
    couplet = None
    if nv >= 6:
        couplet = iv + 2 if iv + 2 < nv else iv - 2
        vcls[couplet] = "primary"
    for cls, i_p in ((vcls, iv), (hcls, ih)):
        for i in range(len(cls)):
            if cls[i] == "residential" and abs(i - i_p) >= 1 and rng.random() < 0.3:
                cls[i] = "secondary"
    north = bool(rng.random() < 0.5)
    # verticals that end at a T junction (never the primaries)
    cands = [i for i in range(nv) if vcls[i] != "primary"]
    partial = {i for i in cands if rng.random() < 0.3}
    if cands and not partial:
        partial.add(int(rng.choice(cands)))
    full_res = [i for i in range(nv) if vcls[i] == "residential" and i not in partial]
    curved = int(rng.choice(full_res)) if full_res and size >= 600 and rng.random() < 0.85 else None

    streets: list[Street] = []
    for i, x in enumerate(xs):
        name = f"{NAMES[i % len(NAMES)]} Street"
        lo, hi = -EXT, size + EXT
        kind = "grid"
        if i in partial:
            kind = "partial"
            opts = [(lo, ys[0])] + [(ys[a], ys[b]) for a in range(nh) for b in range(a + 1, min(a + 3, nh))] + [(ys[-1], hi)]
            lo, hi = opts[int(rng.integers(len(opts)))]
        if i == curved:
            gaps = [abs(x - xs[j]) for j in (i - 1, i + 1) if 0 <= j < nv]
            amp = min(18.0, 0.2 * min(gaps)) if gaps else 15.0
            lam, ph = rng.uniform(260, 520), rng.uniform(0, 2 * np.pi)
            yy = np.arange(lo, hi + 4.0, 4.0)
            ext = np.column_stack([x + amp * np.sin(2 * np.pi * yy / lam + ph), yy])
            kind, name = "curved", "Crescent Drive"
        else:
            ext = np.array([[x, lo], [x, hi]])
        oneway = vcls[i] == "primary"
        if oneway and (north if i == iv else not north) is False:
            ext = ext[::-1]
        streets.append(_street(rng, _clip(ext, size), ext, vcls[i], kind, name, oneway))
    for j, y in enumerate(ys):
        ext = np.array([[-EXT, y], [size + EXT, y]])
        if rng.random() < 0.5:
            ext = ext[::-1]
        streets.append(_street(rng, _clip(ext, size), ext, hcls[j], "grid", f"East {_ordinal(j + 1)} Avenue"))
    if size >= 700:
        diag = _diagonal(rng, size, streets)
        if diag is not None:
            streets.append(_street(rng, diag, diag, "secondary", "diagonal", "Speer Boulevard"))
    return streets


def _points(geom) -> list[Point]:
    if geom.is_empty:
        return []
    if geom.geom_type == "Point":
        return [geom]
    if geom.geom_type == "MultiPoint":
        return list(geom.geoms)
    return []


def _diagonal(rng, size: float, streets: list[Street]) -> np.ndarray | None:
    """A diagonal avenue from a mid-block T on one avenue to a mid-block T two to four avenues on,
    crossing the streets between well away (>= 20 m) from their junctions."""
    horiz = sorted(float(s.coords[0][1]) for s in streets if s.kind == "grid" and abs(s.coords[0][1] - s.coords[-1][1]) < 1e-6)
    if len(horiz) < 3:
        return None
    lines = [LineString(s.coords) for s in streets]
    grid_pts = [p for i in range(len(lines)) for j in range(i + 1, len(lines)) for p in _points(lines[i].intersection(lines[j]))]
    best, best_score = None, 0.0
    for _ in range(80):
        i = int(rng.integers(0, len(horiz) - 2))
        j = min(len(horiz) - 1, i + int(rng.integers(2, 5)))
        ya, yb = horiz[i], horiz[j]
        ang = math.radians(rng.uniform(25, 50)) * (1 if rng.random() < 0.5 else -1)
        xa = rng.uniform(0.1, 0.9) * size
        xb = xa + (yb - ya) * math.tan(ang)
        if not 25.0 < xb < size - 25.0:
            continue
        line = LineString([(xa, ya), (xb, yb)])
        cross = [p for other in lines for p in _points(line.intersection(other))]
        if len(cross) < 3:
            continue
        score = min(min((p.distance(q) for q in grid_pts), default=1e9) for p in cross)
        along = sorted(line.project(p) for p in cross)
        score = min(score, float(min(np.diff(along))) / 1.5)
        if score > best_score:
            best, best_score = np.array([[xa, ya], [xb, yb]]), score
    return best if best_score >= 20.0 else None


# ---------------------------------------------------------------- network


class _Registry:
    """Junction and end nodes, merged within 5 cm."""

    def __init__(self) -> None:
        self.xy: list[tuple[float, float]] = []

    def add(self, x: float, y: float) -> int:
        for i, (a, b) in enumerate(self.xy):
            if abs(a - x) < 0.05 and abs(b - y) < 0.05:
                return i + 1
        self.xy.append((float(x), float(y)))
        return len(self.xy)


def build_network(scene: Scene) -> None:
    """Split the streets into OSM ways at junctions; fill ``scene.ways``, ``nodes``, ``junctions``."""
    streets = scene.streets
    lines = [LineString(s.coords) for s in streets]
    reg = _Registry()
    cuts: list[list[tuple[float, int]]] = [[] for _ in streets]
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            for p in _points(lines[i].intersection(lines[j])):
                nid = reg.add(p.x, p.y)
                cuts[i].append((lines[i].project(p), nid))
                cuts[j].append((lines[j].project(p), nid))
    pieces = []
    for i, (s, line) in enumerate(zip(streets, lines)):
        a = reg.add(*s.coords[0])
        b = reg.add(*s.coords[-1])
        stops = [(0.0, a)] + sorted((d, n) for d, n in cuts[i] if 0.5 < d < line.length - 0.5) + [(line.length, b)]
        for (d0, n0), (d1, n1) in zip(stops[:-1], stops[1:]):
            if n0 == n1 or d1 - d0 < 0.5:
                continue
            c = np.asarray(ops.substring(line, d0, d1).coords, dtype=float)
            c[0], c[-1] = reg.xy[n0 - 1], reg.xy[n1 - 1]
            pieces.append((s, c, n0, n1))
    next_node = len(reg.xy) + 1
    scene.nodes = {i + 1: xy for i, xy in enumerate(reg.xy)}
    for k, (s, c, n0, n1) in enumerate(pieces):
        ids = [n0]
        for xy in c[1:-1]:
            scene.nodes[next_node] = (float(xy[0]), float(xy[1]))
            ids.append(next_node)
            next_node += 1
        ids.append(n1)
        tags = {"highway": s.highway, "name": s.name, "lanes": str(s.lanes), "surface": "asphalt",
                "maxspeed": {"primary": "35 mph", "secondary": "30 mph"}.get(s.highway, "25 mph")}
        if s.oneway:
            tags["oneway"] = "yes"
        elif s.lanes >= 4:
            tags["lanes:forward"] = tags["lanes:backward"] = str(s.lanes // 2)
        scene.ways.append(Way(id=k + 1, street=s, coords=c, nodes=ids, tags=tags))
    junctions: dict[int, list[tuple[int, bool]]] = {}
    for k, w in enumerate(scene.ways):
        junctions.setdefault(w.nodes[0], []).append((k, True))
        junctions.setdefault(w.nodes[-1], []).append((k, False))
    scene.junctions = junctions


def road_surfaces(scene: Scene) -> None:
    """Sidewalk, verge and carriageway areas of the whole network (with kerb returns)."""
    walks, verges, cways = [], [], []
    for s in scene.streets:
        line = LineString(s.ext)
        walks.append(line.buffer(s.half_total, cap_style="flat"))
        if s.verge > 0:
            verges.append(line.buffer(s.width / 2 + s.verge, cap_style="flat"))
        cways.append(line.buffer(s.width / 2, cap_style="flat"))
    scene.sidewalk = shapely.union_all(walks).buffer(3.0).buffer(-3.0)
    scene.verge = shapely.union_all(verges) if verges else None
    scene.carriageway = shapely.union_all(cways).buffer(5.0).buffer(-5.0)


# ---------------------------------------------------------------- paint and arrows


def _arrow_parts(kind: str) -> list[np.ndarray]:
    """Arrow polygons in a unit frame: u forward 0..5 m, v left -0.9..0.9 m."""
    hw = 0.2
    mirror = kind in ("right", "through_right")
    base = {"right": "left", "through_right": "through_left"}.get(kind, kind)
    if base == "through":
        parts = [thick((0, 0), (3.4, 0), hw), head((3.3, 0), (1, 0), 0.75, 1.7)]
    elif base == "left":
        parts = [thick((0, -0.45), (3.75, -0.45), hw), thick((3.6, -0.45), (4.2, 0.15), hw),
                 head((4.2, 0.12), (0, 1), 0.62, 0.78)]
    elif base == "through_left":
        parts = [thick((0, -0.35), (3.5, -0.35), hw), head((3.4, -0.35), (1, 0), 0.55, 1.6),
                 thick((1.8, -0.35), (2.5, 0.2), hw), head((2.5, 0.17), (0, 1), 0.5, 0.73)]
    else:  # left_right
        parts = [thick((0, 0), (3.75, 0), hw), thick((3.6, 0), (4.4, 0.28), hw), thick((3.6, 0), (4.4, -0.28), hw),
                 head((4.4, 0.25), (0, 1), 0.55, 0.65), head((4.4, -0.25), (0, -1), 0.55, 0.65)]
    if mirror:
        parts = [p * (1, -1) for p in parts]
    return parts


def arrow(kind: str, tail, travel, length: float = 5.0, width: float = 1.8) -> tuple[np.ndarray, Polygon]:
    """Footprint (4, 2) and paint polygon of an arrow with its tail centre at ``tail``, pointing along ``travel``."""
    t = np.asarray(travel, float) / np.hypot(*travel)
    n = np.array([-t[1], t[0]])
    su, sv = length / 5.0, width / 1.8

    def world(uv: np.ndarray) -> np.ndarray:
        return np.asarray(tail) + np.outer(uv[:, 0] * su, t) + np.outer(uv[:, 1] * sv, n)

    shape = shapely.union_all([Polygon(world(p)) for p in _arrow_parts(kind)])
    foot = world(np.array([[0, -0.9], [5, -0.9], [5, 0.9], [0, 0.9]], float))
    return foot, shape


_TEMPLATES: dict[int, dict[str, list[list[str]]]] = {
    1: {"LTR": [["through_left"], ["through_right"], ["through"]], "LR": [["left_right"]], "LT": [["through_left"]],
        "TR": [["through_right"]], "T": [["through"]], "L": [["left"]], "R": [["right"]]},
    2: {"LTR": [["left", "through_right"], ["through_left", "through_right"], ["left", "through"], ["through_left", "right"]],
        "LR": [["left", "right"], ["left", "left_right"], ["left_right", "right"]],
        "LT": [["left", "through"], ["through_left", "through"]], "TR": [["through", "through_right"], ["through", "right"]],
        "T": [["through", "through"]], "L": [["left", "left"]], "R": [["right", "right"]]},
    3: {"LTR": [["left", "through", "through_right"], ["left", "through", "right"], ["through_left", "through", "through_right"],
                ["left", "through_left", "through_right"]],
        "LR": [["left", "left_right", "right"], ["left", "left", "right"]],
        "LT": [["left", "through", "through"], ["left", "through_left", "through"]],
        "TR": [["through", "through", "through_right"], ["through", "through_right", "right"]],
        "T": [["through", "through", "through"]], "L": [["left", "left", "left"]], "R": [["right", "right", "right"]]},
}


def _options(n: int, moves: str) -> list[list[str]]:
    if n <= 3:
        return _TEMPLATES[n].get(moves, [])
    return [t[:1] + ["through"] * (n - 2) + t[-1:] for t in _TEMPLATES[3].get(moves, [])]


def _dir_at(path: Path, at_start: bool) -> np.ndarray:
    """Unit direction leaving the node along the way."""
    if at_start:
        return path.tan[0]
    return -path.tan[-1]


def paint(rng: np.random.Generator, scene: Scene) -> None:
    """Lane lines, stop lines, crosswalks and turn arrows; ``turn:lanes`` tags on the ways."""
    ways, junctions = scene.ways, scene.junctions
    paths = [Path(w.coords) for w in ways]
    ends: dict[tuple[int, bool], dict] = {}
    # 1. per way end: junction box, crosswalk, stop position, allowed movements
    for k, w in enumerate(ways):
        s, path = w.street, paths[k]
        for at_start in (True, False):
            node = w.nodes[0] if at_start else w.nodes[-1]
            inc = junctions[node]
            info = {"junction": len(inc) >= 3, "r_box": 0.0, "stop": 0.0, "crosswalk": False, "moves": "", "lanes": None}
            ends[(k, at_start)] = info
            if len(inc) < 3:
                continue
            out = _dir_at(path, at_start)
            rbox, major = s.width / 2 + 1.0, s.highway != "residential"
            moves = set()
            for k2, at2 in inc:
                if k2 == k and at2 == at_start:
                    continue
                w2 = ways[k2]
                d2 = _dir_at(paths[k2], at2)
                sin_phi = abs(out[0] * d2[1] - out[1] * d2[0])
                cos_phi = abs(float(np.dot(out, d2)))
                if sin_phi > 0.25:
                    rbox = max(rbox, w2.street.half_total / max(sin_phi, 0.35) + s.width / 2 * cos_phi / max(sin_phi, 0.35))
                    major = major or w2.street.highway != "residential"
                if not w2.street.oneway or at2:  # traffic may leave the junction along w2
                    h = -out
                    ang = math.degrees(math.atan2(h[0] * d2[1] - h[1] * d2[0], float(np.dot(h, d2))))
                    moves.add("T" if abs(ang) < 35 else ("L" if 35 <= ang <= 150 else ("R" if -150 <= ang <= -35 else "")))
            moves.discard("")
            info["r_box"] = min(rbox, 0.4 * path.length)
            info["crosswalk"] = bool(rng.random() < (0.85 if major else 0.3))
            info["stop"] = info["r_box"] + (4.2 if info["crosswalk"] else 1.2)
            info["moves"] = "".join(m for m in "LTR" if m in moves)
    # 2. approaches that get arrows
    approaches = []
    for k, w in enumerate(ways):
        s = w.street
        for at_start in (True, False):
            info = ends[(k, at_start)]
            if not info["junction"] or (s.oneway and at_start) or not info["moves"]:
                continue
            other = ends[(k, not at_start)]
            tail = info["stop"] + 2.0 + 5.0
            if tail + 8.0 > paths[k].length - other["stop"] or (not s.oneway and tail > 0.5 * paths[k].length):
                continue
            opts = _options(s.lanes_per_dir, info["moves"])
            if not opts:
                continue
            p = 0.9 if s.highway != "residential" else (0.7 if info["moves"] == "LR" else 0.25)
            if info["moves"] == "T":
                p *= 0.3
            approaches.append({"key": (k, at_start), "opts": opts, "paint": bool(rng.random() < p),
                               "choice": opts[int(rng.integers(len(opts)))]})
    # every kind at least once where some approach allows it
    for kind in KINDS:
        if any(a["paint"] and kind in a["choice"] for a in approaches):
            continue
        cands = [(i, o) for i, a in enumerate(approaches) if not a.get("locked") for o in a["opts"] if kind in o]
        if cands:
            i, o = cands[int(rng.integers(len(cands)))]
            approaches[i].update(paint=True, choice=o, locked=True)
    for a in approaches:
        if a["paint"]:
            ends[a["key"]]["lanes"] = a["choice"]
    # 3. draw every way
    for k, w in enumerate(ways):
        _paint_way(rng, scene, w, paths[k], ends[(k, True)], ends[(k, False)])


def _lane_centres(s: Street) -> list[float]:
    """Lateral offsets (left of travel, m) of the lanes of one direction, leftmost first."""
    n, lw = s.lanes_per_dir, s.lane_w
    if s.oneway:
        return [n * lw / 2 - (i + 0.5) * lw for i in range(n)]
    return [-(s.gap / 2 + (i + 0.5) * lw) for i in range(n)]


def _dashes(rng, a: float, b: float, dash: float = 3.0, gap: float = 9.0) -> list[tuple[float, float]]:
    out, s = [], a + rng.uniform(0, dash + gap)
    while s + dash < b:
        out.append((s, s + dash))
        s += dash + gap
    return out


def _quad(path: Path, s0: float, s1: float, lat0: float, lat1: float) -> np.ndarray:
    """Quad between arc lengths s0..s1 and lateral offsets lat0..lat1 (way frame)."""
    p, t = path.at([s0, s1])
    n = np.column_stack([-t[:, 1], t[:, 0]])
    return np.array([p[0] + lat0 * n[0], p[1] + lat0 * n[1], p[1] + lat1 * n[1], p[0] + lat1 * n[0]])


def _paint_way(rng, scene: Scene, w: Way, path: Path, start: dict, end: dict) -> None:
    s, L = w.street, path.length
    a, b = start["stop"], L - end["stop"]
    lw, n = s.lane_w, s.lanes_per_dir
    lines, polys = scene.paint_lines, scene.paint_polys
    if b - a > 4.0:
        solid_zone = 30.0

        def run(lat: float, color, dashed: bool, solid_a: bool = False, solid_b: bool = False) -> None:
            lo = a + solid_zone if solid_a else a
            hi = b - solid_zone if solid_b else b
            if solid_a:
                lines.append((path.offset(a, min(lo, b), lat), color, LINE_W))
            if solid_b:
                lines.append((path.offset(max(hi, a), b, lat), color, LINE_W))
            if hi <= lo:
                return
            if dashed:
                for d0, d1 in _dashes(rng, lo, hi):
                    lines.append((path.offset(d0, d1, lat), color, LINE_W))
            else:
                lines.append((path.offset(lo, hi, lat), color, LINE_W))

        fwd, bwd = end["lanes"] is not None, start["lanes"] is not None
        if s.oneway:
            run(n * lw / 2, YELLOW, False)
            run(-n * lw / 2, WHITE, False)
            for i in range(1, n):
                run(n * lw / 2 - i * lw, WHITE, True, solid_b=fwd)
        else:
            if s.centre == "double":
                run(s.gap / 2 - 0.1, YELLOW, False)
                run(-(s.gap / 2 - 0.1), YELLOW, False)
            elif s.centre == "dashed":
                run(0.0, YELLOW, True)
            for i in range(1, n):
                run(-(s.gap / 2 + i * lw), WHITE, True, solid_b=fwd)
                run(s.gap / 2 + i * lw, WHITE, True, solid_a=bwd)
            if s.highway == "primary" and s.park_w == 0:
                run(s.width / 2 - 0.4, WHITE, False)
                run(-(s.width / 2 - 0.4), WHITE, False)
        _road_cars(rng, scene, s, path, a, b)
    if rng.random() < 0.35 and L > 30:
        s0 = rng.uniform(0, L - 10)
        q = _quad(path, s0, s0 + rng.uniform(3, 9), -s.width / 2 * rng.uniform(0, 1), s.width / 2 * rng.uniform(0, 1))
        g = int(np.clip(s.tone + rng.integers(-18, 14), 40, 170))
        scene.road_patches.append((Polygon(q), (g, g, g + 2)))
    for at_start, info in ((True, start), (False, end)):
        if not info["junction"]:
            continue
        # distances from the node -> arc length of the way
        def arc(d: float, at_start=at_start) -> float:
            return d if at_start else L - d

        if info["crosswalk"]:
            r = info["r_box"]
            c = -s.width / 2 + 0.6
            s0, s1 = sorted((arc(r + 0.5), arc(r + 3.5)))
            while c < s.width / 2 - 0.5:
                polys.append((_quad(path, s0, s1, c - 0.3, c + 0.3), WHITE))
                c += 1.25
            scene.decoys.append((Polygon(_quad(path, s0, s1, -s.width / 2 + 0.3, c - 0.95)), "turn_markings", "crosswalk"))
        approaching = not s.oneway or not at_start
        if approaching and (info["lanes"] is not None or rng.random() < 0.5 or info["crosswalk"]):
            cen = [-c if at_start else c for c in _lane_centres(s)]  # way frame
            s0, s1 = sorted((arc(info["stop"]), arc(info["stop"] + STOP_W)))
            q = _quad(path, s0, s1, min(cen) - lw / 2, max(cen) + lw / 2)
            polys.append((q, WHITE))
            scene.decoys.append((Polygon(q), "turn_markings", "stop_line"))
            _words(rng, scene, path, info, L - (end["stop"] if at_start else start["stop"]), at_start, cen)
        if info["lanes"] is None:
            continue
        kinds = info["lanes"]
        centres = _lane_centres(s)
        key = "turn:lanes" if s.oneway else ("turn:lanes:backward" if at_start else "turn:lanes:forward")
        w.tags[key] = "|".join(TURN_VALUE[x] for x in kinds)
        if not s.oneway:
            w.tags["lanes:backward" if at_start else "lanes:forward"] = str(n)
        tails = [info["stop"] + 2.0 + 5.0]
        room = (L - end["stop"] if at_start else L - start["stop"]) - 10.0
        if not s.oneway:
            room = min(room, 0.5 * L)
        if tails[0] + 27.0 < room and rng.random() < 0.6:
            tails.append(tails[0] + 27.0)
        for d_tail in tails:
            p, t = path.at(arc(d_tail))
            tw = t[0] * (-1.0 if at_start else 1.0)  # travel direction
            nrm = np.array([-tw[1], tw[0]])
            length, width = rng.uniform(4.6, 5.4), rng.uniform(1.6, 1.95)
            for kind, lat in zip(kinds, centres):
                tail = p[0] + lat * nrm + rng.uniform(-0.15, 0.15) * nrm
                jit = rot(tw[None], rng.uniform(-0.01, 0.01))[0]
                foot, shape = arrow(kind, tail, jit, length, width)
                scene.markings.append(Marking(kind=kind, way_id=w.id, footprint=foot, shape=shape))


#: Stroke font of the painted words: polylines in a unit box (u across the lane, v along travel).
GLYPHS = {
    "O": [[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
    "N": [[(0, 0), (0, 1), (1, 0), (1, 1)]],
    "L": [[(0, 1), (0, 0), (1, 0)]],
    "Y": [[(0, 1), (0.5, 0.55), (1, 1)], [(0.5, 0.55), (0.5, 0)]],
    "S": [[(1, 1), (0, 1), (0, 0.5), (1, 0.5), (1, 0), (0, 0)]],
    "T": [[(0, 1), (1, 1)], [(0.5, 1), (0.5, 0)]],
    "P": [[(0, 0), (0, 1), (1, 1), (1, 0.5), (0, 0.5)]],
    "B": [[(0, 0), (0, 1), (0.8, 1), (1, 0.75), (0.8, 0.5), (0, 0.5)], [(0.8, 0.5), (1, 0.25), (0.8, 0), (0, 0)]],
    "U": [[(0, 1), (0, 0), (1, 0), (1, 1)]],
    "X": [[(0, 0), (1, 1)], [(0, 1), (1, 0)]],
    "I": [[(0.5, 0), (0.5, 1)]],
    "G": [[(1, 1), (0, 1), (0, 0), (1, 0), (1, 0.5), (0.5, 0.5)]],
    "W": [[(0, 1), (0.25, 0), (0.5, 0.6), (0.75, 0), (1, 1)]],
}
WORDS = ("ONLY", "STOP", "BUS", "XING", "SLOW")


def _words(rng, scene: Scene, path: Path, info: dict, room: float, at_start: bool, centres: list[float]) -> None:
    """Painted words (ONLY, STOP, BUS ...) in some approach lanes, 8-10.5 m before the stop line, between stop line and arrows.

    Letters stand side by side across the lane, each 2.4 m long along travel (read by the driver); recorded as decoys.
    """
    d0 = info["stop"] + 10.4  # the word spans 8..10.4 m before the stop line (arrows: 2..7 m)
    if d0 + 1.0 > room or rng.random() >= scene.decoy_share:
        return
    L = path.length
    for lat in centres:
        if rng.random() >= 0.6:
            continue
        word = WORDS[int(rng.integers(len(WORDS)))]
        cw, gap, h = 0.55, 0.2, 2.4
        total = len(word) * cw + (len(word) - 1) * gap
        a0 = d0 + rng.uniform(0.0, 0.3)
        p, t = path.at(L - a0 if not at_start else a0)
        tw = t[0] * (-1.0 if at_start else 1.0)  # travel direction
        nrm = np.array([tw[1], -tw[0]])  # the driver's right
        origin = p[0] + lat * np.array([-t[0][1], t[0][0]]) - nrm * total / 2
        for k, ch in enumerate(word):
            for stroke in GLYPHS[ch]:
                pts = [origin + nrm * (k * (cw + gap) + u * cw) + tw * (v * h) for u, v in stroke]
                for a, b in zip(pts[:-1], pts[1:]):
                    scene.paint_polys.append((thick(a, b, 0.1), WHITE))
        foot = [origin, origin + nrm * total, origin + nrm * total + tw * h, origin + tw * h]
        scene.decoys.append((Polygon(foot), "turn_markings", "word"))


def _road_cars(rng, scene: Scene, s: Street, path: Path, a: float, b: float) -> None:
    """Parked cars in the parking lanes, a few moving cars away from the arrow zones."""
    if s.park_w > 0:
        p_park = 0.45 if s.highway == "residential" else 0.25
        for side in (1.0, -1.0):
            lat = side * (s.width / 2 - s.park_w / 2)
            pos = a + 3.0
            while pos < b - 3.0:
                if rng.random() < p_park:
                    length, width = car_size(rng)
                    pt, t = path.at(pos)
                    ang = math.atan2(t[0][1], t[0][0]) + (0 if (side < 0 or s.oneway) else math.pi)
                    q = pt[0] + np.array([-t[0][1], t[0][0]]) * (lat + rng.uniform(-0.15, 0.15) * side)
                    scene.road_cars.append(Car(q[0], q[1], ang + rng.uniform(-0.03, 0.03), length, width, car_color(rng)))
                pos += rng.uniform(6.2, 7.5)
    lo, hi = a + 45.0, b - 45.0
    pos = lo
    while pos < hi:
        if rng.random() < 0.18:
            cen = _lane_centres(s)
            backward = not s.oneway and rng.random() < 0.5
            lat = cen[int(rng.integers(len(cen)))] * (-1 if backward else 1)
            pt, t = path.at(pos)
            ang = math.atan2(t[0][1], t[0][0]) + (math.pi if backward else 0.0)
            q = pt[0] + np.array([-t[0][1], t[0][0]]) * lat
            length, width = car_size(rng)
            scene.road_cars.append(Car(q[0], q[1], ang, length, width, car_color(rng)))
        pos += rng.uniform(12.0, 25.0)
