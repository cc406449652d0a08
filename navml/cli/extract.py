"""OSM file -> one WGS84 GeoJSON per class (areas or own labels), turn-lane roads and summary.json."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params


@exits
def command(
    pbf: Path = typer.Argument(None, help="OSM file (.osm.pbf, .osm, .osm.bz2); default: extract.pbf in params.", show_default=False),
    params: Path = Params,
    out: Path = typer.Option(Path("data/extract"), "--out", help="Folder for <class>.geojson, roads.geojson and summary.json."),
    index: str = typer.Option(
        None, "--index", help="pyosmium node-location index: flex_mem, or sparse_file_array for big files; default: extract.index."
    ),
    required: list[str] = typer.Option(
        [], "--class", help="A class that must be extracted (repeatable): its missing labels or OSM file is an error, not a skipped class."
    ),
) -> None:
    from navml.cli.grid import classes_from
    from navml.config import check_keys
    from navml.data.extract import extract, format_summary
    from navml.data.roads import LANE_WIDTH_M

    p = load_params(params)
    e = check_keys(p.get("extract"), {"pbf", "index", "lane_width_m"}, "extract")
    source = pbf or e.get("pbf") or None  # none: every class has own labels
    summary = extract(
        Path(source) if source else None,
        classes_from(p),
        out,
        index=index or str(e.get("index") or "flex_mem"),
        lane_width_m=float(e.get("lane_width_m", LANE_WIDTH_M)),
        required=required,
    )
    for note in summary["notes"]:
        typer.echo(f"navml: note: {note}", err=True)
    typer.echo(format_summary(summary, out))
