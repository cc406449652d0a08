"""Tile index of the area of interest: tiles, shards, label flags, train/val/test split."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import ExtractDir, Params


@exits
def command(
    aoi: str = typer.Option(None, "--aoi", help="AOI GeoJSON or 'west,south,east,north' (deg); default cover.aoi."),
    labels: Path = ExtractDir,
    out: Path = typer.Option(Path("data/cover"), "--out", help="Folder for tiles.csv and tiles.geojson."),
    params: Path = Params,
) -> None:
    from navml.config import check_keys
    from navml.data.cover import build_index, read_aoi
    from navml.geo.grid import Tile, tile_polygon
    from navml.geo.tile_index import write_index
    from navml.geo.features import read_features, write_features

    p = load_params(params)
    c = check_keys(p.get("cover"), {"aoi", "split_zoom", "split", "seed"}, "cover", required=("aoi",))
    grid = grid_from(p)
    classes = classes_from(p)
    area = read_aoi(aoi or c["aoi"])
    geoms = {}
    for spec in classes:
        path = labels / f"{spec.name}.geojson"
        geoms[spec.name] = [f["geometry"] for f in read_features(path) if f["properties"].get("label", True)]
    df = build_index(
        area,
        grid,
        classes,
        geoms,
        split_zoom=int(c.get("split_zoom", grid.zoom - 2)),
        fractions=c.get("split", {"train": 0.7, "val": 0.15, "test": 0.15}),
        seed=int(c.get("seed", 0)),
    )
    write_index(df, out / "tiles.csv")
    feats = [
        {"geometry": tile_polygon(Tile(r.x, r.y, r.z)), "properties": {"tile": f"{r.z}/{r.x}/{r.y}", "split": r.split, "shard": r.shard}}
        for r in df.itertuples()
    ]
    write_features(feats, out / "tiles.geojson")
    counts = df["split"].value_counts().to_dict()
    pos = {col[4:]: int(df[col].sum()) for col in df.columns if col.startswith("pos_")}
    typer.echo(f"cover: {len(df)} tiles in {df['shard'].nunique()} shards, {df['block'].nunique()} blocks; split {counts}; positive tiles {pos}")
