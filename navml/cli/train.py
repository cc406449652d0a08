"""Train the segmentation U-Net on the train split (early stopping on val IoU)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import Params, StoreDir, TilesCsv

#: Keys of the ``train`` params section (see docs/readme/segmentation.md).
TRAIN_KEYS = {
    "bands", "depth", "base_filters", "encoder", "dropout", "loss", "focal_gamma", "class_weighting",
    "steps", "eval_every", "warmup_steps", "crop", "batch_size", "learning_rate", "patience", "negative_share", "augment", "threshold_metric", "seed",
}


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    out: Path = typer.Option(Path("data/models/seg"), "--out", help="Model folder to write (model.keras, meta.json, thresholds.json)."),
    live: Path = typer.Option(Path("data/metrics/train"), "--live", help="dvclive folder for per-epoch metrics and learning curves."),
    params: Path = Params,
) -> None:
    from navml.config import check_keys, segmentation_classes
    from navml.segment.dataset import Augment
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.segment.train import train_segmentation

    p = load_params(params)
    t = check_keys(p.get("train"), TRAIN_KEYS, "train")
    classes = [c.name for c in segmentation_classes(classes_from(p))]
    share = t.get("negative_share", 0.25)
    result = train_segmentation(
        Store(store, grid_from(p)),
        read_index(tiles),
        classes,
        out,
        bands=int(t.get("bands", 3)),
        depth=int(t.get("depth", 4)),
        base_filters=int(t.get("base_filters", 8)),
        encoder=str(t.get("encoder", "plain")),
        dropout=float(t.get("dropout", 0.0)),
        loss=t.get("loss", "crossentropy+dice"),
        focal_gamma=float(t.get("focal_gamma", 2.0)),
        class_weighting=str(t.get("class_weighting", "sqrt")),
        steps=int(t.get("steps", 240)),
        eval_every=int(t.get("eval_every", 40)),
        warmup_steps=int(t.get("warmup_steps", 24)),
        crop=None if t.get("crop", 128) is None else int(t.get("crop", 128)),
        batch_size=int(t.get("batch_size", 8)),
        learning_rate=float(t.get("learning_rate", 2e-3)),
        patience=int(t.get("patience", 4)),
        negative_share=None if share is None else float(share),
        augment=Augment.from_params(t.get("augment", True)),
        threshold_metric=str(t.get("threshold_metric", "iou")),
        seed=int(t.get("seed", 0)),
        live_dir=live,
        progress=True,
        where=str(tiles),
    )
    thr = ", ".join(f"{k} {v['threshold']:.2f}" for k, v in result["thresholds"].items())
    typer.echo(
        f"train: best val IoU {result['best_val_iou']:.4f} at step {result['best_step']}/{result['steps_run']} "
        f"({result['train_samples']} samples of {result['crop']} px from {result['train_tiles']} tiles, {result['seconds']:.0f} s); thresholds {thr}; model -> {out}"
    )
