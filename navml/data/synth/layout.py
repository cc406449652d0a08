"""The scene of the synthetic city in local metres: streets, parcels, lots, OSM mapping state.

:func:`build_scene` is deterministic for a seed: every part draws from its own
random stream (``numpy.random.default_rng([seed, part])``), so changing one
part does not reshuffle the others.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import box

from navml.data.synth.land import assign_uses, build_parcels, settle_trees, street_trees
from navml.data.synth.roads import build_network, build_streets, paint, road_surfaces
from navml.data.synth.scene import Scene

#: Random streams of the parts of a scene.
STREAMS = {"sun": 0, "streets": 1, "paint": 2, "parcels": 3, "uses": 4, "trees": 5, "complete": 6, "mapping": 7, "render": 8, "osm": 9}


def rng_for(seed: int, part: str) -> np.random.Generator:
    """The random stream of one part of the city."""
    return np.random.default_rng([int(seed), STREAMS[part]])


def sun_shadow(rng: np.random.Generator, lat: float) -> tuple[float, float]:
    """Ground shadow offset (dx, dy) per metre of height: sun in the south (north) hemisphere's equator side."""
    az = rng.uniform(125, 235) if lat >= 0 else rng.uniform(-55, 55)  # degrees from north, clockwise
    elev = rng.uniform(38, 58)
    k = 1.0 / math.tan(math.radians(elev))
    return (-math.sin(math.radians(az)) * k, -math.cos(math.radians(az)) * k)


def build_scene(
    seed: int, size_m: float, gsd_m: float, lat: float, unmapped_share: float, shift_m: float, decoy_share: float = 0.5
) -> tuple[Scene, dict[str, int]]:
    """The whole city (geometry, colours, mapping state) and the number of parcels per use."""
    n_px = int(round(size_m / gsd_m))
    scene = Scene(size_m=n_px * gsd_m, n_px=n_px, gsd=gsd_m, shadow=sun_shadow(rng_for(seed, "sun"), lat), decoy_share=decoy_share)
    scene.streets = build_streets(rng_for(seed, "streets"), scene.size_m)
    build_network(scene)
    road_surfaces(scene)
    paint(rng_for(seed, "paint"), scene)
    parcels = build_parcels(rng_for(seed, "parcels"), scene)
    uses = assign_uses(rng_for(seed, "uses"), scene, parcels)
    trees_rng = rng_for(seed, "trees")
    street_trees(trees_rng, scene)
    settle_trees(trees_rng, scene)
    _drop_blocked_driveways(scene)
    complete_area(rng_for(seed, "complete"), scene, unmapped_share)
    map_lots(rng_for(seed, "mapping"), scene, unmapped_share, shift_m)
    return scene, uses


def _drop_blocked_driveways(scene: Scene) -> None:
    if not scene.driveways or not scene.buildings:
        return
    tree = shapely.STRtree([b.poly for b in scene.buildings])
    lots = shapely.STRtree([lot.poly for lot in scene.lots if lot.visible])
    keep = []
    for g, c in scene.driveways:
        hits = tree.query(g, predicate="intersects")
        if any(g.intersection(scene.buildings[i].poly).area > 0.5 for i in hits):
            continue
        if len(lots.query(g, predicate="intersects")) > 1:
            continue
        keep.append((g, c))
    scene.driveways = keep


def complete_area(rng: np.random.Generator, scene: Scene, unmapped_share: float) -> None:
    """Half the city, cut along street centrelines, where OSM parking mapping will be complete.

    A street centreline never crosses a lot, so every lot lies wholly inside or outside.
    """
    size = scene.size_m

    def pick(vertical: bool) -> float:
        axis = 0 if vertical else 1
        cands = [float(s.coords[0][axis]) for s in scene.streets
                 if s.kind == "grid" and abs(s.coords[0][axis] - s.coords[-1][axis]) < 1e-6]
        target = size * rng.uniform(0.4, 0.6)
        return min(cands, key=lambda v: abs(v - target)) if cands else size / 2

    xv, yh = pick(True), pick(False)
    quads = {"sw": box(0, 0, xv, yh), "se": box(xv, 0, size, yh), "nw": box(0, yh, xv, size), "ne": box(xv, yh, size, size)}
    pairs = [("sw", "se"), ("nw", "ne"), ("sw", "nw"), ("se", "ne"), ("sw", "ne"), ("nw", "se")]
    areas = [shapely.union(quads[a], quads[b]) for a, b in pairs]
    # prefer halves that leave enough lots outside for the unmapped share
    lots = [lot.poly for lot in scene.lots if lot.visible]
    need = int(round(unmapped_share * len(lots)))
    outside = [sum(not area.intersects(p) for p in lots) for area in areas]
    ok = [i for i, n in enumerate(outside) if n >= need]
    pick_i = ok[int(rng.integers(len(ok)))] if ok else int(np.argmax(outside))
    scene.complete = areas[pick_i]


def map_lots(rng: np.random.Generator, scene: Scene, unmapped_share: float, shift_m: float) -> None:
    """Number the visible lots, leave ``unmapped_share`` of them (outside the complete area) out of OSM,
    shift the mapped outlines by up to ``shift_m`` metres and give them OSM tags."""
    visible = [lot for lot in scene.lots if lot.visible]
    for i, lot in enumerate(visible):
        lot.lot_id = i + 1
    outside = [lot for lot in visible if not lot.poly.intersects(scene.complete)]
    k = min(int(round(unmapped_share * len(visible))), len(outside))
    for i in sorted(rng.choice(len(outside), size=k, replace=False).tolist()) if k else []:
        outside[i].mapped = False
    for lot in visible:
        if not lot.mapped:
            continue
        d, a = rng.uniform(0, shift_m), rng.uniform(0, 2 * math.pi)
        lot.shift = (d * math.cos(a), d * math.sin(a))
        tags = {"amenity": "parking"}
        if rng.random() < 0.6:
            tags["parking"] = "surface"
        if rng.random() < 0.35:
            tags["capacity"] = str(lot.stalls)
        if rng.random() < 0.3:
            tags["surface"] = "concrete" if lot.tone[0] > 140 else "asphalt"
        if rng.random() < 0.2:
            tags["access"] = str(rng.choice(["customers", "private", "yes"]))
        lot.osm_tags = tags
