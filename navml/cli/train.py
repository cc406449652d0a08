"""Train the segmentation U-Net on the train split (early stopping on val IoU)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import city_sources, exits, load_params
from navml.cli.options import Params, StoresList, TilesList, TrainCities


@exits
def command(
    tiles: list[Path] = TilesList,
    store: list[Path] = StoresList,
    cities: bool = TrainCities,
    out: Path = typer.Option(Path("data/models/seg"), "--out", help="Model folder to write (model.keras, meta.json, thresholds.json)."),
    live: Path = typer.Option(Path("data/metrics/train"), "--live", help="dvclive folder for per-epoch metrics and learning curves."),
    params: Path = Params,
) -> None:
    from navml.config import segmentation_classes
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.segment.dataset import Augment
    from navml.segment.train import train_segmentation

    p = load_params(params)
    t = p.train
    tiles, store = city_sources(p, tiles, store, cities)
    grid = p.grid.grid()
    result = train_segmentation(
        [Store(s, grid) for s in store],
        [read_index(x) for x in tiles],
        [c.name for c in segmentation_classes(p.class_specs())],
        out,
        **t.model_dump(exclude={"augment"}),
        augment=Augment(**t.augment.model_dump()) if t.augment else None,
        live_dir=live,
        progress=True,
        where=", ".join(map(str, tiles)),
    )
    thr = ", ".join(f"{k} {v['threshold']:.2f}" for k, v in result["thresholds"].items())
    typer.echo(
        f"train: best val IoU {result['best_val_iou']:.4f} at step {result['best_step']}/{result['steps_run']} "
        f"({result['train_samples']} samples of {result['crop']} px from {result['train_tiles']} tiles, {result['seconds']:.0f} s); "
        f"thresholds {thr}; model -> {out}"
    )
