"""Shared fixtures and helpers: tiny real inputs built by the tests.

``navml(...)`` runs the command line in a fresh process, as a user does
(import it: ``from conftest import navml``). The class fixtures are the
registry entries the tests share, written as in params.yaml.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from navml.config import ClassSpec, parse_classes  # noqa: E402
from navml.geo.grid import Grid  # noqa: E402

#: the parking class as params.yaml declares it (``classes.parking``)
PARKING = {
    "task": "segmentation",
    "tags": {"amenity": "parking"},
    "osm_tags": {"amenity": "parking", "parking": "surface"},
}


def navml(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m navml *args`` in ``cwd`` with this interpreter; output captured as text."""
    return subprocess.run([sys.executable, "-m", "navml", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def small_grid() -> Grid:
    """A small grid: zoom-18 tiles of 256 px in zoom-16 shards (4 x 4 tiles, 1024 px)."""
    return Grid(zoom=18, tile_size=256, shard_zoom=16)


@pytest.fixture
def parking_registry() -> dict:
    """A ``classes`` params section with the parking class only (a fresh copy per test)."""
    return {"parking": copy.deepcopy(PARKING)}


@pytest.fixture
def parking(parking_registry) -> ClassSpec:
    """The parking class of ``parking_registry``, parsed as the stages parse it."""
    return parse_classes(parking_registry)[0]
