"""Reading the shared ``grid`` and ``classes`` params sections (used by several commands)."""

from __future__ import annotations

from typing import Any

from navml.config import ClassSpec, check_keys, parse_classes
from navml.geo.grid import Grid, make_grid


def grid_from(params: dict[str, Any]) -> Grid:
    """The :class:`Grid` of the ``grid`` params section."""
    g = check_keys(params.get("grid"), {"zoom", "tile_size", "shard_zoom"}, "grid", required=("zoom", "tile_size", "shard_zoom"))
    return make_grid(int(g["zoom"]), int(g["tile_size"]), int(g["shard_zoom"]))


def classes_from(params: dict[str, Any]) -> list[ClassSpec]:
    """The class registry of the ``classes`` params section, with ``post`` settings per segmentation class."""
    return parse_classes(params.get("classes") or {}, params.get("post"))
