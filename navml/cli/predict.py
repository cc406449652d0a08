"""Predict class probabilities over every tile of the AOI, seamless across tile and shard borders."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import Params, StoreDir, TilesCsv

#: Keys of the ``predict`` params section.
PREDICT_KEYS = {"window_px", "halo_px"}


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    model: Path = typer.Option(Path("data/models/seg"), "--model", help="Segmentation model folder written by `navml train`."),
    out: Path = typer.Option(Path("data/predict"), "--out", help="Prediction store root; probabilities go to <out>/probs/<shard>.tif."),
    params: Path = Params,
) -> None:
    from navml.config import check_keys, segmentation_classes
    from navml.segment.predict import DEFAULT_WINDOW, predict_store
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    p = load_params(params)
    s = check_keys(p.get("predict"), PREDICT_KEYS, "predict")
    grid = grid_from(p)
    names = [c.name for c in segmentation_classes(classes_from(p))]
    halo = s.get("halo_px") or None
    report = predict_store(
        Store(store, grid),
        tiles_from_index(read_index(tiles)),
        model,
        Store(out, grid),
        names,
        window=int(s.get("window_px") or DEFAULT_WINDOW),
        halo=int(halo) if halo else None,
    )
    typer.echo(
        f"predict: {report.tiles} tiles in {report.shards} shards, {report.windows} windows, halo {report.halo} px "
        f"(x{report.overhead:.2f} pixels), {report.tiles / report.seconds:.1f} tiles/s -> {out}/probs"
    )
