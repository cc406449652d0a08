"""OSM file -> one WGS84 GeoJSON per class (areas or own labels), turn-lane roads and summary.json."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import City, Params, override
from navml.config import ExtractParams as E


@exits
def command(
    pbf: Path = typer.Argument(None, help="OSM file (.osm.pbf, .osm, .osm.bz2); default: extract.pbf in params.", show_default=False),
    params: Path = Params,
    city: str = City,
    out: Path = typer.Option(Path("data/extract"), "--out", help="Folder for <class>.geojson, roads.geojson and summary.json."),
    index: str = override("extract", E, "index"),
    required: list[str] = typer.Option(
        [], "--class", help="A class that must be extracted (repeatable): its missing labels or OSM file is an error, not a skipped class."
    ),
) -> None:
    from navml.data.extract import extract, format_summary

    p = load_params(params, city)
    e = with_overrides(p.extract, pbf=str(pbf) if pbf else None, index=index)
    summary = extract(
        Path(e.pbf) if e.pbf else None,  # none: every class has own labels
        p.class_specs(),
        out,
        index=e.index,
        lane_width_m=e.lane_width_m,
        required=required,
    )
    for note in summary["notes"]:
        typer.echo(f"navml: note: {note}", err=True)
    typer.echo(format_summary(summary, out))
