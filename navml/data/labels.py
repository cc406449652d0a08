"""Label layers: the features of one class (WGS84) with counts, and "bring your own labels".

A :class:`Layer` collects the features that end up in one ``<class>.geojson``
written by the ``extract`` stage, plus how many were excluded or skipped.
:func:`read_labels` fills one from a user's own vector file (GeoJSON,
GeoPackage, anything GDAL reads) instead of OpenStreetMap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from navml.config import ClassSpec
from navml.errors import InputError

WGS84 = "EPSG:4326"


@dataclass
class Layer:
    """Features of one output file and what happened to the rest.

    ``kept`` counts features written with ``label: true``, ``excluded`` those
    written with ``label: false`` (e.g. ``parking=underground``: kept for
    de-duplication, never a training label), ``skipped_broken`` features whose
    geometry could not be built or is invalid (not written).
    """

    name: str
    source: str
    features: list[tuple[tuple[int, int], BaseGeometry, dict[str, Any]]] = field(default_factory=list)
    kept: int = 0
    excluded: int = 0
    skipped_broken: int = 0
    #: Features of a segmentation class mapped as OSM nodes (no outline): not written.
    nodes_skipped: int = 0
    #: Detection features whose name tag names none of the class's ``names`` (written with ``label: false``).
    unnamed: int = 0
    unnamed_values: dict[str, int] = field(default_factory=dict)
    #: Roads cut at the extract's edge, kept in part.
    partial: int = 0
    #: Own labels outside the OSM file's extent (dropped).
    outside: int = 0

    def add(self, key: tuple[int, int], geometry: BaseGeometry, properties: dict[str, Any]) -> None:
        """Add one feature; ``key`` orders the output (OSM type rank, id) and ``properties['label']`` is counted."""
        self.features.append((key, geometry, properties))
        if properties.get("label", True):
            self.kept += 1
        elif properties.get("kind", "") is not None:  # unnamed features are counted as such, not as excluded
            self.excluded += 1

    def sorted_features(self) -> list[dict[str, Any]]:
        """Features in output order (by ``key``, stable), as :func:`navml.geo.features.write_features` takes them."""
        return [{"geometry": g, "properties": p} for _, g, p in sorted(self.features, key=lambda f: f[0])]

    def counts(self) -> dict[str, Any]:
        """``source``, ``kept``, ``excluded``, ``skipped_broken`` and the real-data counts that are not zero (for summary.json)."""
        out: dict[str, Any] = {"source": self.source, "kept": self.kept, "excluded": self.excluded, "skipped_broken": self.skipped_broken}
        for key in ("nodes_skipped", "unnamed", "outside"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.unnamed_values:
            out["unnamed_values"] = dict(sorted(self.unnamed_values.items()))
        return out


def usable(geometries: Any) -> np.ndarray:
    """Per geometry: can it be written as a label (present, non-empty and valid in the OGC sense)?"""
    g = np.asarray(geometries, dtype=object)
    return ~shapely.is_missing(g) & ~shapely.is_empty(g) & shapely.is_valid(g)


def tidy(geometries: Any) -> np.ndarray:
    """RFC 7946 shapes: exterior rings counter-clockwise, holes clockwise; one-part MultiPolygons become Polygons."""
    g = shapely.orient_polygons(np.asarray(geometries, dtype=object), exterior_cw=False)
    single = (shapely.get_type_id(g) == 6) & (shapely.get_num_geometries(g) == 1)
    g[single] = shapely.get_geometry(g[single], 0)
    return g


def add_checked(layer: Layer, keys: Sequence[tuple[int, int]], geometries: Any, properties: Sequence[dict[str, Any]]) -> None:
    """Add the usable geometries to ``layer`` (tidied), count the others as ``skipped_broken``."""
    g = np.asarray(geometries, dtype=object)
    if not len(g):
        return
    ok = usable(g)
    g[ok] = tidy(g[ok])
    for key, geom, props, good in zip(keys, g, properties, ok, strict=True):
        if good:
            layer.add(key, geom, props)
        else:
            layer.skipped_broken += 1


def read_labels(spec: ClassSpec, path: str | os.PathLike | None = None) -> Layer:
    """The labels of class ``spec`` from its own vector file (``spec.labels`` unless ``path``), in WGS84.

    Every feature gets ``osm_id: null``, ``osm_type: null``, ``tags: {}``,
    ``label: true`` and, when ``spec.label_field`` is set, that attribute as
    ``kind`` (checked against ``spec.names`` for a detection class with more
    than one name). Features are kept in file order; missing, empty or invalid
    geometries are counted as ``skipped_broken``. A file without a CRS is taken
    as WGS84 (GeoJSON's rule) when its coordinates are degrees.
    """
    import geopandas as gpd

    path = Path(path if path is not None else spec.labels or "")
    where = f"classes.{spec.name}.labels"
    if not path.is_file():
        raise InputError(f"{path}: labels file of class '{spec.name}' not found; check the path in {where}")
    try:
        df = gpd.read_file(path)
    except Exception as exc:  # pyogrio/GDAL raise several types; all mean "cannot read"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read labels of class '{spec.name}' ({reason}); use a GeoJSON or GeoPackage file") from exc
    field_name = spec.label_field
    if field_name and field_name not in df.columns:
        have = ", ".join(c for c in df.columns if c != df.geometry.name) or "none"
        raise InputError(
            f"{path}: no attribute '{field_name}' (classes.{spec.name}.label_field); attributes in the file: {have}"
        )
    if df.crs is None:
        minx, miny, maxx, maxy = df.total_bounds if len(df) else (0.0, 0.0, 0.0, 0.0)
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise InputError(f"{path}: no CRS and coordinates are not degrees; save the file with its CRS (e.g. EPSG:32613)")
        df = df.set_crs(WGS84)
    elif not df.crs.equals(WGS84):
        df = df.to_crs(WGS84)

    layer = Layer(spec.name, str(path))
    names = list(spec.names) if spec.task == "detection" and len(spec.names) > 1 else None
    geoms = np.asarray(df.geometry.values, dtype=object)
    props = [{"osm_id": None, "osm_type": None, "tags": {}, "label": True} for _ in range(len(df))]
    if field_name:
        for i, kind in enumerate(df[field_name].tolist()):
            if kind is None or kind != kind:  # None or NaN
                raise InputError(f"{path}: feature {i} has no '{field_name}' value; give every label a {field_name}")
            if names is not None and str(kind) not in names:
                raise InputError(f"{path}: feature {i} has {field_name} '{kind}', not one of classes.{spec.name}.names {names}")
            props[i]["kind"] = str(kind)
    add_checked(layer, [(0, i) for i in range(len(df))], geoms, props)
    return layer
