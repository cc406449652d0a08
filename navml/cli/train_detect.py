"""Train the turn-lane detector (YOLOv2-style) on the train split (early stopping on val mAP@0.5)."""

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
    out: Path = typer.Option(Path("data/models/det"), "--out", help="Model folder to write (model.keras; meta.json: anchors, stride, names, threshold)."),
    live: Path = typer.Option(Path("data/metrics/train_detect"), "--live", help="dvclive folder for the loss and val mAP curves."),
    params: Path = Params,
) -> None:
    from navml.config import detection_mapping, detection_names
    from navml.detect.train import train_detection
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index

    p = load_params(params)
    tiles, store = city_sources(p, tiles, store, cities)
    d = p.detect
    pairs = detection_names(p.class_specs())
    aug = d.augment.model_dump() if d.augment else {"flip": False, "rotate": False}
    result = train_detection(
        [Store(s, p.grid.grid()) for s in store],
        [read_index(x) for x in tiles],
        [name for _, name in pairs],
        out,
        classes_of=[cls for cls, _ in pairs],
        mirror=detection_mapping(p.class_specs(), "mirror"),
        **d.model_dump(exclude={"loss", "augment"}),
        **d.loss.model_dump(),
        **aug,
        live_dir=live,
        progress=True,
        where=", ".join(map(str, tiles)),
    )
    second = f", {result['refine_val_map50']:.4f} with the second stage" if "refine_val_map50" in result else ""
    typer.echo(
        f"train_detect: best val mAP@0.5 {result['best_val_map50']:.4f} at step {result['best_step']}/{result['steps_run']}{second} "
        f"({result['train_samples']} crops of {result['crop']} px from {result['train_tiles']} tiles, {result['seconds']:.0f} s); "
        f"{len(result['anchors'])} anchors (mean IoU {result['anchor_mean_iou']:.2f}); score threshold {result['score_threshold']:.3f} "
        f"(val F1 {result['val_f1']:.3f}); model -> {out}"
    )
