"""Metrics per city and the cross-city gap: held-out cities' polygon F1, new-feature P/R and mAP next to the training cities'."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params


@exits
def command(
    params: Path = Params,
    out: Path = typer.Option(Path("data/metrics/cities.json"), "--out", help="Gap JSON to write (a DVC metrics file)."),
) -> None:
    from navml.errors import InputError
    from navml.post.cities import city_metrics, write_gap

    p = load_params(params)
    if not p.cities:
        raise InputError(f"{params}: no `cities` section; the gap compares held-out cities with the training cities")
    cities, roles = {}, {}
    for name in p.cities:
        c = p.city(name)
        folder = Path(c.results) / "metrics"
        features, detect = folder / "features.json", folder / "detect.json"
        if not features.exists() and not detect.exists():
            if c.truth:
                raise InputError(f"{features}: missing; run the score stage of city {name} (dvc repro score@{name})")
            continue  # no truth: predicted, not scored
        cities[name] = city_metrics(
            json.loads(features.read_text()) if features.exists() else None,
            json.loads(detect.read_text()) if detect.exists() else None,
        )
        roles[name] = c.role
    gap = write_gap(out, cities, roles)
    worst = "n/a" if gap["worst_gap"] is None else f"{gap['worst_gap']:+.3f}"
    lots = ""
    for cls, held in gap["held_out"].items():
        own = gap["in_city"].get(cls, {})
        if held.get("new_unmapped") is not None and own:
            lots += f"; {cls} new lots found held out {held['new_found']}/{held['new_unmapped']}, in city {own.get('new_found')}/{own.get('new_unmapped')}"
    typer.echo(f"gap: {len(cities)} cities scored; worst held-out minus in-city {worst} (goal >= -{gap['tolerance']}){lots} -> {out}")
