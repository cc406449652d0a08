"""The shared ``grid`` and ``classes`` sections as the library takes them (used by several commands)."""

from __future__ import annotations

from navml.config import ClassSpec, Params
from navml.geo.grid import Grid


def grid_from(params: Params) -> Grid:
    """The :class:`Grid` of the ``grid`` params section."""
    return params.grid.grid()


def classes_from(params: Params) -> list[ClassSpec]:
    """The class registry of the ``classes`` params section, with ``post`` settings per segmentation class."""
    return params.class_specs()
