"""Score the vector output end to end: new features vs unmapped truth lots, polygon F1 on the test split."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params, TilesCsv

#: Keys of the ``score`` params section (``class``: deprecated, one class; use ``classes``).
SCORE_KEYS = {"truth", "classes", "class", "iou", "split"}


@exits
def command(
    predictions: Path = typer.Option(Path("data/output/predictions.geojson"), "--predictions", help="All predicted polygons (vectorize)."),
    new: Path = typer.Option(Path("data/output/new_features.geojson"), "--new", help="New features (dedupe)."),
    truth: Path = typer.Option(None, "--truth", help="Truth polygons with a boolean 'mapped' property; default score.truth."),
    tiles: Path = TilesCsv,
    out: Path = typer.Option(Path("data/metrics/features.json"), "--out", help="Metrics JSON to write."),
    params: Path = Params,
) -> None:
    from navml.cli.grid import classes_from
    from navml.config import check_keys, segmentation_classes
    from navml.errors import ConfigError
    from navml.post.score import score_outputs

    p = load_params(params)
    s = check_keys(p.get("score"), SCORE_KEYS, "score")
    registry = [c.name for c in segmentation_classes(classes_from(p))]
    named = s.get("classes") or ([s["class"]] if s.get("class") else [])
    if isinstance(named, str):
        named = [named]
    bad = [c for c in named if c not in registry]
    if bad:
        raise ConfigError(f"params: 'score.classes' names '{bad[0]}', not a segmentation class of 'classes' ({', '.join(registry)})")
    given = truth or s.get("truth") or None
    if not given:
        raise ConfigError("params: 'score.truth' is not set; give a GeoJSON of true polygons (or one per class: {class: path})")
    if not isinstance(given, (str, Path, dict)):
        raise ConfigError("params: 'score.truth' must be a GeoJSON path or a mapping class -> GeoJSON path")
    thr = float(s.get("iou", 0.5))
    if not 0.0 < thr <= 1.0:
        raise ConfigError(f"params: 'score.iou' is {thr}; it must lie in (0, 1]")
    split = str(s.get("split", "test"))
    m = score_outputs(
        predictions, new, given if isinstance(given, dict) else Path(given), tiles, out,
        classes=list(named) or registry, require_truth=bool(named), iou_threshold=thr, split=split,
    )
    for c in m.get("unscored", []):
        typer.echo(f"navml: note: class '{c}' has no truth polygons in score.truth; not scored", err=True)
    per = []
    for c in (k for k in m if isinstance(m[k], dict)):
        nf, sp, g = m[c]["new_features"], m[c][split], m[c]["geometry"]
        per.append(
            f"{c}: new features P {nf['precision']:.3f} R {nf['recall']:.3f} ({nf['tp']}/{nf['predicted']} vs {nf['truth']} unmapped); "
            f"{split} polygons P {sp['precision']:.3f} R {sp['recall']:.3f} F1 {sp['f1']:.3f}; median vertices {g['median_vertices']:.0f}"
        )
    typer.echo(f"score: {' | '.join(per)} -> {out}")
