"""Shared fixtures: tiny real inputs built by the tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from navml.geo.grid import Grid


@pytest.fixture
def small_grid() -> Grid:
    """A small grid: zoom-18 tiles of 256 px in zoom-16 shards (4 x 4 tiles, 1024 px)."""
    return Grid(zoom=18, tile_size=256, shard_zoom=16)
