"""Burn labels on the tile grid: class masks per shard and detection boxes per tile."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import ExtractDir, Params, StoreDir, TilesCsv


@exits
def command(
    labels: Path = ExtractDir,
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    params: Path = Params,
) -> None:
    from navml.config import check_keys
    from navml.data.rasterize import rasterize_labels
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    p = load_params(params)
    r = check_keys(p.get("rasterize"), {"complete", "roads"}, "rasterize")
    classes, grid = classes_from(p), grid_from(p)  # params first: a typo is reported before any file is read
    legend = rasterize_labels(
        labels,
        tiles_from_index(read_index(tiles)),
        Store(store, grid),
        classes,
        complete=r.get("complete") or None,
        roads=bool(r.get("roads", True)),
    )
    for note in legend["notes"]:
        typer.echo(f"navml: note: {note}", err=True)
    typer.echo(f"rasterize: {legend['shards']} mask shards, {legend['boxes']} boxes; labelled pixels {legend['pixels']}")
