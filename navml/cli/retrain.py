"""Retrain the segmentation model with the hard negatives (mined tiles oversampled, mined pixels weighted)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import city_names, exits, load_params, retrain_outcome
from navml.cli.options import Params, StoreDir, TilesCsv


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    cities: bool = typer.Option(
        False, "--cities",
        help="Train over the union of the `role: train` cities of params (their tiles and stores; --tiles and --store are not read), "
        "each negative on its city's store (its `city` property, else the city holding its tile).",
    ),
    model: Path = typer.Option(Path("data/first/models/seg"), "--model", help="The first model folder (fine-tuned, or copied when nothing was mined)."),
    negatives: Path = typer.Option(
        Path("data/mining/seg/hard_negatives.geojson"), "--negatives", help="Hard negatives (navml mine; keep: false vetoes one)."
    ),
    out: Path = typer.Option(Path("data/models/seg_mined"), "--out", help="Model folder of the mined model."),
    summary: Path = typer.Option(Path("data/metrics/retrain.json"), "--summary", help="JSON summary: negatives used, tiles, training."),
    params: Path = Params,
) -> None:
    from navml.config import segmentation_classes
    from navml.data.rasterize import complete_areas
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.io import write_json
    from navml.mining.mine import MineSource, city_sources
    from navml.mining.negatives import read_mined
    from navml.mining.retrain import retrain_rounds
    from navml.segment.dataset import Augment

    p = load_params(params)
    names = city_names(p, cities)
    r, t = p.retrain, p.train
    specs = segmentation_classes(p.class_specs())
    mined = read_mined(negatives, "mine")
    again = r.rounds > 1  # only later rounds mine, and read the complete areas
    if names:
        sources = city_sources(p, names, probs=False, complete=again)
    else:
        areas = complete_areas(specs, p.rasterize.complete) if again else [None] * len(specs)
        sources = [MineSource("", None, Store(store, p.grid.grid()), read_index(tiles), areas, str(tiles))]
    train = {**t.model_dump(exclude={"augment"}), "augment": Augment(**t.augment.model_dump()) if t.augment else None}
    result = retrain_rounds(
        sources, [c.name for c in specs], model, mined, out, train=train, rounds=r.rounds, mine=p.mine,
        window=p.predict.window_px, resample=p.predict.resample, **r.model_dump(exclude={"rounds"}),
    )
    write_json(summary, result)
    how = retrain_outcome(result, "model", "IoU", "best_val_iou")
    per = "; ".join(f"{n} {c['negatives_used']} on {c['hard_tiles']} tiles" for n, c in result.get("by_city", {}).items())
    typer.echo(
        f"retrain: {result['negatives_used']} negatives ({result['vetoed']} vetoed) on {result['hard_tiles']} train tiles"
        f"{f' [{per}]' if per else ''}, {result['mined_pixels']} px x{r.weight:g}, tiles x{r.oversample}; {how}; "
        f"{len(result['rounds'])} round(s) -> {out}"
    )
