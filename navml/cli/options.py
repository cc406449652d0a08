"""Options shared by several commands (one definition each, like rasterio's)."""

from __future__ import annotations

from pathlib import Path

import typer

Params = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read the command's section(s) from.")
TilesCsv = typer.Option(Path("data/cover/tiles.csv"), "--tiles", help="Tile index written by `navml cover`.")
StoreDir = typer.Option(Path("data/store"), "--store", help="Shard store folder (imagery, masks).")
ExtractDir = typer.Option(Path("data/extract"), "--labels", help="Folder of per-class GeoJSON written by `navml extract`.")
