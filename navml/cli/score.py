"""Score the vector output end to end: new features vs unmapped truth lots, polygon F1 on the test split."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params, TilesCsv

#: Keys of the ``score`` params section.
SCORE_KEYS = {"truth", "class", "iou", "split"}


@exits
def command(
    predictions: Path = typer.Option(Path("data/output/predictions.geojson"), "--predictions", help="All predicted polygons (vectorize)."),
    new: Path = typer.Option(Path("data/output/new_features.geojson"), "--new", help="New features (dedupe)."),
    truth: Path = typer.Option(None, "--truth", help="Truth polygons with a boolean 'mapped' property; default score.truth."),
    tiles: Path = TilesCsv,
    out: Path = typer.Option(Path("data/metrics/features.json"), "--out", help="Metrics JSON to write."),
    params: Path = Params,
) -> None:
    from navml.config import check_keys
    from navml.errors import ConfigError
    from navml.post.score import score_outputs

    p = load_params(params)
    s = check_keys(p.get("score"), SCORE_KEYS, "score")
    truth = truth or Path(s.get("truth", "data/synth/truth/lots.geojson"))
    thr = float(s.get("iou", 0.5))
    if not 0.0 < thr <= 1.0:
        raise ConfigError(f"params: 'score.iou' is {thr}; it must lie in (0, 1]")
    m = score_outputs(predictions, new, truth, tiles, out, class_name=str(s.get("class", "parking")), iou_threshold=thr, split=str(s.get("split", "test")))
    nf, split = m["new_features"], str(s.get("split", "test"))
    typer.echo(
        f"score: new features P {nf['precision']:.3f} R {nf['recall']:.3f} ({nf['tp']}/{nf['predicted']} vs {nf['truth']} unmapped); "
        f"{split} polygons P {m[split]['precision']:.3f} R {m[split]['recall']:.3f} F1 {m[split]['f1']:.3f}; "
        f"median vertices {m['geometry']['median_vertices']:.0f} -> {out}"
    )
