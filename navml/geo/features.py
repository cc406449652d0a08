"""Vector files in and out: GeoJSON reading/writing in WGS84, and geometry <-> pixels."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from navml.errors import InputError
from navml.geo.grid import lonlat_to_mercator, lonlat_to_pixel, mercator_to_lonlat, pixel_to_lonlat
from navml.io import atomic_path


def read_features(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Features of a GeoJSON file as ``{"geometry": shapely, "properties": dict}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid GeoJSON ({exc})") from exc
    feats = data.get("features", []) if isinstance(data, dict) else []
    out = []
    for f in feats:
        if not f.get("geometry"):
            continue
        out.append({"geometry": shape(f["geometry"]), "properties": dict(f.get("properties") or {})})
    return out


def write_features(features: list[dict[str, Any]], path: str | os.PathLike, precision: int = 7) -> Path:
    """Write features (``geometry`` shapely in WGS84, ``properties``) as GeoJSON, atomically.

    Coordinates are rounded to ``precision`` decimals (1e-7 deg ~ 1 cm) so the
    output is deterministic and small.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    geoms = shapely.transform([f["geometry"] for f in features], lambda c: np.round(c, precision))
    enc = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        # streamed feature by feature: memory stays flat for large layers
        fh.write('{"features":[')
        for i, (f, g) in enumerate(zip(features, geoms)):
            item = {"geometry": mapping(g), "properties": f.get("properties", {}), "type": "Feature"}
            fh.write(("," if i else "") + enc.encode(item))
        fh.write('],"type":"FeatureCollection"}\n')
    return path


def to_pixels(geom: BaseGeometry, zoom: int, tile_size: int = 256, origin: tuple[float, float] = (0.0, 0.0)) -> BaseGeometry:
    """WGS84 geometry to pixel coordinates at ``zoom``, relative to global pixel ``origin`` (col, row)."""

    def fn(c: np.ndarray) -> np.ndarray:
        px, py = lonlat_to_pixel(c[:, 0], c[:, 1], zoom, tile_size)
        return np.column_stack([px - origin[0], py - origin[1]])

    return shapely.transform(geom, fn)


def to_lonlat(geom: BaseGeometry, zoom: int, tile_size: int = 256, origin: tuple[float, float] = (0.0, 0.0)) -> BaseGeometry:
    """Pixel-coordinate geometry (relative to ``origin``) at ``zoom`` back to WGS84."""

    def fn(c: np.ndarray) -> np.ndarray:
        lon, lat = pixel_to_lonlat(c[:, 0] + origin[0], c[:, 1] + origin[1], zoom, tile_size)
        return np.column_stack([lon, lat])

    return shapely.transform(geom, fn)


def to_mercator(geom: BaseGeometry) -> BaseGeometry:
    """WGS84 geometry to Web Mercator (EPSG:3857) metres."""
    return shapely.transform(geom, lambda c: np.column_stack(lonlat_to_mercator(c[:, 0], c[:, 1])))


def from_mercator(geom: BaseGeometry) -> BaseGeometry:
    """Web Mercator (EPSG:3857) geometry to WGS84 degrees."""
    return shapely.transform(geom, lambda c: np.column_stack(mercator_to_lonlat(c[:, 0], c[:, 1])))
