"""Drop predictions already in OSM; write the new features as GeoJSON and a JOSM file."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, ExtractDir, Params


@exits
def command(
    predictions: Path = typer.Option(Path("data/output/predictions.geojson"), "--predictions", help="Polygons written by `navml vectorize`."),
    labels: Path = ExtractDir,
    out: Path = typer.Option(Path("data/output"), "--out", help="Folder for new_features.geojson, new_features.osm, summary.json."),
    params: Path = Params,
    city: str = City,
) -> None:
    from navml.config import segmentation_classes
    from navml.post.dedupe import dedupe

    p = load_params(params, city)
    s = p.dedupe
    summary = dedupe(
        predictions,
        labels,
        segmentation_classes(p.class_specs()),
        out,
        match=s.match,
        min_overlap=s.min_overlap,
        source=s.source,
        max_road_share=s.max_road_share,
    )
    typer.echo(
        f"dedupe: {summary['predicted']} predicted, {summary['matched_existing']} already in OSM, "
        f"{summary['on_roads']} on mapped roads, {summary['new']} new "
        f"-> {out}/new_features.geojson, new_features.osm"
    )
