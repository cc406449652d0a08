"""Predict class probabilities over every tile of the AOI, seamless across tile and shard borders."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, Params, Scheduler, TilesCsv, Workers


@exits
def command(
    tiles: Path = TilesCsv,
    store: str = typer.Option("data/store", "--store", help="Shard store holding the imagery (a folder or s3://bucket/prefix)."),
    model: Path = typer.Option(Path("data/models/seg"), "--model", help="Segmentation model folder written by `navml train`."),
    out: str = typer.Option("data/predict", "--out", help="Prediction store (a folder or s3://bucket/prefix); probabilities go to <out>/probs/<shard>.tif."),
    params: Path = Params,
    city: str = City,
    scheduler: str = Scheduler,
    workers: int = Workers,
) -> None:
    from navml.config import segmentation_classes
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index
    from navml.segment.predict import predict_store

    p = load_params(params, city)
    s = p.predict
    grid = p.grid.grid()
    report = predict_store(
        Store(store, grid),
        tiles_from_index(read_index(tiles)),
        model,
        Store(out, grid),
        [c.name for c in segmentation_classes(p.class_specs())],
        window=s.window_px,
        halo=s.halo_px or None,
        resample=s.resample,
        scheduler=scheduler,
        workers=workers,
    )
    typer.echo(
        f"predict: {report.tiles} tiles in {report.shards} shards, {report.windows} windows, halo {report.halo} px "
        f"(x{report.overhead:.2f} pixels), {report.tiles / report.seconds:.1f} tiles/s"
        + (f", resampled x{report.factor:.3f} to the model's ground resolution" if report.factor != 1.0 else "")
        + f" -> {out}/probs"
    )
