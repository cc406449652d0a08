"""Score the vector output end to end: new features vs unmapped truth lots, polygon F1 on the test split."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import Params, TilesCsv, override
from navml.config import ScoreParams as S


@exits
def command(
    predictions: Path = typer.Option(Path("data/output/predictions.geojson"), "--predictions", help="All predicted polygons (vectorize)."),
    new: Path = typer.Option(Path("data/output/new_features.geojson"), "--new", help="New features (dedupe)."),
    truth: Path = override("score", S, "truth"),
    tiles: Path = TilesCsv,
    out: Path = typer.Option(Path("data/metrics/features.json"), "--out", help="Metrics JSON to write."),
    params: Path = Params,
) -> None:
    from navml.post.score import score_outputs

    p = load_params(params)
    s = with_overrides(p.score, truth=str(truth) if truth else None)
    m = score_outputs(predictions, new, Path(s.truth), tiles, out, class_name=s.class_, iou_threshold=s.iou, split=s.split)
    nf, split = m["new_features"], s.split
    typer.echo(
        f"score: new features P {nf['precision']:.3f} R {nf['recall']:.3f} ({nf['tp']}/{nf['predicted']} vs {nf['truth']} unmapped); "
        f"{split} polygons P {m[split]['precision']:.3f} R {m[split]['recall']:.3f} F1 {m[split]['f1']:.3f}; "
        f"median vertices {m['geometry']['median_vertices']:.0f} -> {out}"
    )
