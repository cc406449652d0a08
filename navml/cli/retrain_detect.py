"""Retrain the turn-lane detector with its hard negatives (mined tiles oversampled, no-object loss weighted in mined boxes)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import city_names, city_sources, exits, load_params, retrain_outcome
from navml.cli.options import Params, StoresList, TilesList


@exits
def command(
    tiles: list[Path] = TilesList,
    store: list[Path] = StoresList,
    cities: bool = typer.Option(
        False, "--cities",
        help="Train over the `role: train` cities of params (their tiles and stores), each negative on the store of its `city`.",
    ),
    model: Path = typer.Option(Path("data/first/models/det"), "--model", help="The first detector's folder (fine-tuned, or copied when nothing was mined)."),
    negatives: Path = typer.Option(
        Path("data/mining/det/hard_negatives.geojson"), "--negatives", help="Hard negatives (navml mine_detect; keep: false vetoes one)."
    ),
    out: Path = typer.Option(Path("data/models/det_mined"), "--out", help="Model folder of the mined detector."),
    summary: Path = typer.Option(Path("data/metrics/retrain_detect.json"), "--summary", help="JSON summary: negatives used, tiles, training."),
    params: Path = Params,
) -> None:
    from navml.config import detection_mapping, detection_names
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.io import write_json
    from navml.mining.detect import retrain_detection
    from navml.mining.negatives import read_mined

    p = load_params(params)
    r, d = p.retrain_detect, p.detect
    tiles, store = city_sources(p, tiles, store, cities)
    names = city_names(p, cities)
    mined = read_mined(negatives, "mine_detect")
    pairs = detection_names(p.class_specs())
    aug = d.augment.model_dump() if d.augment else {"flip": False, "rotate": False}
    train = {**d.model_dump(exclude={"loss", "augment"}), **d.loss.model_dump(), **aug,
             "mirror": detection_mapping(p.class_specs(), "mirror")}
    result = retrain_detection(
        [Store(s, p.grid.grid()) for s in store], [read_index(x) for x in tiles], [n for _, n in pairs], model,
        mined, out, classes_of=[c for c, _ in pairs], cities=names, train=train,
        mode=r.mode, steps=r.steps, eval_every=r.eval_every, learning_rate=r.learning_rate, warmup_steps=r.warmup_steps,
        oversample=r.oversample, weight=r.weight, progress=True, where=", ".join(map(str, tiles)),
    )
    write_json(summary, result)
    how = retrain_outcome(result, "detector", "mAP@0.5", "best_val_map50")
    typer.echo(
        f"retrain_detect: {result['negatives_used']} negatives ({result['vetoed']} vetoed) as {result['mined_boxes']} boxes on "
        f"{result['hard_tiles']} train tiles, no-object x{r.weight:g} there, tiles x{r.oversample}; {how} -> {out}"
    )
