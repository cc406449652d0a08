"""Burn labels on the tile grid: class masks per shard and detection boxes per tile."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, ExtractDir, Params, Scheduler, StoreDir, TilesCsv, Workers


@exits
def command(
    labels: Path = ExtractDir,
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    params: Path = Params,
    city: str = City,
    scheduler: str = Scheduler,
    workers: int = Workers,
) -> None:
    from navml.data.rasterize import rasterize_labels
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    p = load_params(params, city)
    r = p.rasterize
    legend = rasterize_labels(
        labels, tiles_from_index(read_index(tiles)), Store(store, p.grid.grid()), p.class_specs(), complete=r.complete or None, roads=r.roads,
        scheduler=scheduler, workers=workers,
    )
    for note in legend["notes"]:
        typer.echo(f"navml: note: {note}", err=True)
    typer.echo(f"rasterize: {legend['shards']} mask shards, {legend['boxes']} boxes; labelled pixels {legend['pixels']}")
