"""Tile index of the area of interest: tiles, shards, label flags, train/val/test split."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import City, ExtractDir, Params, override
from navml.config import CoverParams as C


@exits
def command(
    aoi: str = override("cover", C, "aoi"),
    labels: Path = ExtractDir,
    out: Path = typer.Option(Path("data/cover"), "--out", help="Folder for tiles.csv and tiles.geojson."),
    params: Path = Params,
    city: str = City,
) -> None:
    from navml.data.cover import cover_summary, write_cover

    p = load_params(params, city)
    c = with_overrides(p.cover, aoi=aoi)
    df = write_cover(c.aoi, labels, p.grid.grid(), p.class_specs(), out, split_zoom=c.split_zoom, fractions=c.split, seed=c.seed)
    typer.echo(f"cover: {cover_summary(df)}")
