"""Score the segmentation model on the test split: IoU, precision, recall, F1, PR curve, confusion, overlays."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, Params, StoreDir, TilesCsv


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    model: Path = typer.Option(Path("data/models/seg"), "--model", help="Model folder written by `navml train`."),
    out: Path = typer.Option(Path("data/metrics"), "--out", help="Folder for seg.json and seg_plots/."),
    params: Path = Params,
    city: str = City,
) -> None:
    from navml.config import segmentation_classes
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.segment.evaluate import evaluate_segmentation

    p = load_params(params, city)
    e = p.evaluate
    specs = segmentation_classes(p.class_specs())
    metrics = evaluate_segmentation(
        Store(store, p.grid.grid()),
        read_index(tiles),
        model,
        out,
        classes=[c.name for c in specs],
        colors=[c.color for c in specs],
        threshold=e.threshold,
        batch_size=e.batch_size,
        overlays=e.overlays,
        bins=e.bins,
        progress=True,
        where=str(tiles),
    )
    per = "; ".join(
        f"{c.name} IoU {metrics[c.name]['iou']:.4f} P {metrics[c.name]['precision']:.3f} R {metrics[c.name]['recall']:.3f} @ {metrics[c.name]['threshold']:.2f}"
        for c in specs
    )
    typer.echo(f"evaluate: {metrics['tiles']} test tiles; {per}; mean IoU {metrics['mean_iou']:.4f} -> {out}/seg.json")
