"""Drop predictions already in OSM; write the new features as GeoJSON and a JOSM file."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from
from navml.cli.options import ExtractDir, Params

#: Keys of the ``dedupe`` params section.
DEDUPE_KEYS = {"match", "min_overlap", "source", "max_road_share"}


@exits
def command(
    predictions: Path = typer.Option(Path("data/output/predictions.geojson"), "--predictions", help="Polygons written by `navml vectorize`."),
    labels: Path = ExtractDir,
    out: Path = typer.Option(Path("data/output"), "--out", help="Folder for new_features.geojson, new_features.osm, summary.json."),
    params: Path = Params,
) -> None:
    from navml.config import check_keys, segmentation_classes
    from navml.post.dedupe import dedupe

    p = load_params(params)
    s = check_keys(p.get("dedupe"), DEDUPE_KEYS, "dedupe")
    summary = dedupe(
        predictions,
        labels,
        segmentation_classes(classes_from(p)),
        out,
        match=str(s.get("match", "share")),
        min_overlap=float(s.get("min_overlap", 0.5)),
        source=str(s.get("source", "navml")),
        max_road_share=None if s.get("max_road_share") is None else float(s["max_road_share"]),
    )
    typer.echo(
        f"dedupe: {summary['predicted']} predicted, {summary['matched_existing']} already in OSM, "
        f"{summary['on_roads']} on mapped roads, {summary['new']} new "
        f"-> {out}/new_features.geojson, new_features.osm"
    )
