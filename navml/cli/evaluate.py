"""Score the segmentation model on the test split: IoU, precision, recall, F1, PR curve, confusion, overlays."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import Params, StoreDir, TilesCsv

#: Keys of the ``evaluate`` params section.
EVALUATE_KEYS = {"threshold", "batch_size", "overlays", "bins"}


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    model: Path = typer.Option(Path("data/models/seg"), "--model", help="Model folder written by `navml train`."),
    out: Path = typer.Option(Path("data/metrics"), "--out", help="Folder for seg.json and seg_plots/."),
    params: Path = Params,
) -> None:
    from navml.config import check_keys, segmentation_classes
    from navml.errors import ConfigError
    from navml.segment.evaluate import evaluate_segmentation
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index

    p = load_params(params)
    e = check_keys(p.get("evaluate"), EVALUATE_KEYS, "evaluate")
    specs = segmentation_classes(classes_from(p))
    threshold = e.get("threshold", "auto")
    if threshold in (None, "auto"):
        threshold = None
    else:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params: 'evaluate.threshold' is '{threshold}'; use auto or a number in 0..1") from exc
    metrics = evaluate_segmentation(
        Store(store, grid_from(p)),
        read_index(tiles),
        model,
        out,
        classes=[c.name for c in specs],
        colors=[c.color for c in specs],
        threshold=threshold,
        batch_size=int(e.get("batch_size", 8)),
        overlays=int(e.get("overlays", 6)),
        bins=int(e.get("bins", 100)),
        progress=True,
        where=str(tiles),
    )
    per = "; ".join(
        f"{c.name} IoU {metrics[c.name]['iou']:.4f} P {metrics[c.name]['precision']:.3f} R {metrics[c.name]['recall']:.3f} @ {metrics[c.name]['threshold']:.2f}"
        for c in specs
    )
    typer.echo(f"evaluate: {metrics['tiles']} test tiles; {per}; mean IoU {metrics['mean_iou']:.4f} -> {out}/seg.json")
