"""Ground truth of the synthetic city as GeoJSON (WGS84), and the local-metres <-> WGS84 mapping.

* ``truth/lots.geojson``: every visible surface lot, true outline with holes;
  ``lot_id``, ``mapped``, ``osm_id``/``osm_type`` (null when unmapped), ``area_m2``, ``variant``.
* ``truth/markings.geojson``: every painted turn arrow's footprint rectangle; ``kind``, ``lane_way``.
* ``truth/complete_aoi.geojson``: where OSM parking mapping is complete.
* ``truth/decoys.geojson``: every look-alike the city draws: ``class`` (the class it
  resembles: parking, turn_markings), ``kind`` (plaza, flat_roof, court, paved_yard;
  crosswalk, stop_line, word), ``decoy_id``, ``area_m2``.
* ``aoi.geojson``: the city square.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from navml.data.synth.geometry import polygons
from navml.data.synth.scene import Scene
from navml.geo.features import write_features


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone holding (lon, lat): 326zz north, 327zz south."""
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def lonlat_mapper(epsg: int, west: float, south: float) -> Callable[[np.ndarray], np.ndarray]:
    """A function from local metres (n, 2) to WGS84 lon/lat (n, 2), for a city whose SW corner is (west, south) in ``epsg``."""
    from pyproj import Transformer

    tr = Transformer.from_crs(epsg, 4326, always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype="float64").reshape(-1, 2)
        lon, lat = tr.transform(xy[:, 0] + west, xy[:, 1] + south)
        return np.column_stack([lon, lat])

    return fn


def to_wgs84(geom: BaseGeometry, to_lonlat: Callable[[np.ndarray], np.ndarray]) -> BaseGeometry:
    return shapely.transform(geom, to_lonlat)


def write_truth(scene: Scene, folder: Path, to_lonlat: Callable[[np.ndarray], np.ndarray]) -> None:
    """Write ``aoi.geojson`` and ``truth/*.geojson`` into ``folder``."""
    size = scene.size_m
    square = box(0, 0, size, size).segmentize(size / 16)
    write_features([{"geometry": to_wgs84(square, to_lonlat), "properties": {"name": "navml synthetic city", "size_m": round(size, 3)}}],
                   folder / "aoi.geojson")
    lots = []
    for lot in scene.lots:
        if not lot.visible:
            continue
        lots.append({
            "geometry": to_wgs84(lot.poly, to_lonlat),
            "properties": {
                "lot_id": lot.lot_id, "mapped": lot.mapped, "osm_id": lot.osm_id if lot.mapped else None,
                "osm_type": lot.osm_type if lot.mapped else None, "area_m2": round(float(lot.poly.area), 1),
                "variant": lot.variant, "stalls": lot.stalls,
            },
        })
    write_features(lots, folder / "truth" / "lots.geojson")
    marks = [
        {"geometry": to_wgs84(Polygon(m.footprint), to_lonlat), "properties": {"kind": m.kind, "lane_way": m.way_id, "marking_id": i + 1}}
        for i, m in enumerate(scene.markings)
    ]
    write_features(marks, folder / "truth" / "markings.geojson")
    done = [
        {"geometry": to_wgs84(p.segmentize(size / 16), to_lonlat), "properties": {"area_id": i + 1, "complete": "parking"}}
        for i, p in enumerate(polygons(scene.complete))
    ]
    write_features(done, folder / "truth" / "complete_aoi.geojson")
    decoys = [
        {"geometry": to_wgs84(g, to_lonlat),
         "properties": {"decoy_id": i + 1, "class": cls, "kind": kind, "area_m2": round(float(g.area), 1)}}
        for i, (g, cls, kind) in enumerate(scene.decoys)
        if not g.is_empty
    ]
    write_features(decoys, folder / "truth" / "decoys.geojson")
