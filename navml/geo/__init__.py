"""Geometry on the Web Mercator tile grid: the grid, the shard store, vector files, the tile index."""
