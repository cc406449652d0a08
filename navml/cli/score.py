"""Score the vector output end to end: new features vs unmapped truth lots, polygon F1 on the test split."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import City, Params, TilesCsv, override
from navml.config import ScoreParams as S


@exits
def command(
    predictions: Path = typer.Option(Path("data/output/predictions.geojson"), "--predictions", help="All predicted polygons (vectorize)."),
    new: Path = typer.Option(Path("data/output/new_features.geojson"), "--new", help="New features (dedupe)."),
    truth: Path = override("score", S, "truth"),
    tiles: Path = TilesCsv,
    out: Path = typer.Option(Path("data/metrics/features.json"), "--out", help="Metrics JSON to write."),
    params: Path = Params,
    city: str = City,
) -> None:
    from navml.config import segmentation_classes
    from navml.post.score import score_outputs

    p = load_params(params, city)
    s = with_overrides(p.score, truth=str(truth) if truth else None)
    if not s.truth:  # a city without truth (cities.<name>.truth): predicted, not scored
        from navml.io import write_json

        write_json(out, {"scored": False, "reason": f"city {city} has no truth polygons", "split": s.split})
        typer.echo(f"score: city {city} has no truth; nothing scored -> {out}")
        return
    registry = [c.name for c in segmentation_classes(p.class_specs())]
    given = s.truth if isinstance(s.truth, dict) else Path(s.truth)
    m = score_outputs(
        predictions, new, given, tiles, out,
        classes=list(s.classes) or registry, require_truth=bool(s.classes), iou_threshold=s.iou, split=s.split,
        decoys=decoys_file(s.decoys),
    )
    for c in m.get("unscored", []):
        typer.echo(f"navml: note: class '{c}' has no truth polygons in score.truth; not scored", err=True)
    per = []
    for c in (k for k in m if isinstance(m[k], dict)):
        nf, sp, g = m[c]["new_features"], m[c][s.split], m[c]["geometry"]
        per.append(
            f"{c}: new features P {nf['precision']:.3f} R {nf['recall']:.3f} ({nf['tp']}/{nf['predicted']} vs {nf['truth']} unmapped); "
            f"{s.split} polygons P {sp['precision']:.3f} R {sp['recall']:.3f} F1 {sp['f1']:.3f}; median vertices {g['median_vertices']:.0f}"
        )
        if "decoys" in m[c]:
            d = m[c]["decoys"]["all"]
            kinds = ", ".join(f"{k} {v['hit']}/{v['decoys']}" for k, v in d.items() if k != "total")
            per[-1] += f"; decoys hit {d['total']['hit']}/{d['total']['decoys']} ({kinds}), {d['total']['area_m2']:.0f} m²"
    typer.echo(f"score: {' | '.join(per)} -> {out}")


def decoys_file(path: str) -> str | None:
    """``score.decoys`` when it names an existing file; None (with a note) when it names none, None when empty."""
    if not path:
        return None
    if not Path(path).is_file():
        typer.echo(f"navml: note: {path}: no decoys file (the synthetic city writes one); false positives on decoys not scored", err=True)
        return None
    return path
