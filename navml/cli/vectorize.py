"""Turn a probability (or label mask) layer into polygons in WGS84, seamless across shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import City, Params, Scheduler, Workers, override
from navml.config import PostProcess
from navml.config import VectorizeParams as V


@exits
def command(
    store: str = typer.Option("data/predict", "--store", help="Store root holding the layer (data/predict for probs, data/store for masks; a folder or s3://bucket/prefix)."),
    layer: str = override("vectorize", V, "layer"),
    out: Path = typer.Option(Path("data/output/predictions.geojson"), "--out", help="GeoJSON to write (WGS84)."),
    threshold: float = typer.Option(
        None, "--threshold", help=f"Probability threshold 0..1 for every class; default: post.<class>.threshold ({PostProcess.threshold} as shipped).",
        show_default=False,
    ),
    params: Path = Params,
    city: str = City,
    scheduler: str = Scheduler,
    workers: int = Workers,
) -> None:
    from navml.config import segmentation_classes
    from navml.errors import ConfigError
    from navml.geo.store import Store
    from navml.segment.vectorize import vectorize_store

    p = load_params(params, city)
    v = with_overrides(p.vectorize, layer=layer)
    specs = segmentation_classes(p.class_specs())
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold is {threshold}; it must lie in 0..1")
        specs = [dataclasses.replace(c, post=dataclasses.replace(c.post, threshold=threshold)) for c in specs]
    counts = vectorize_store(
        Store(store, p.grid.grid()), v.layer, specs, out, kind=v.resolved_kind(), scheduler=scheduler, workers=workers
    )
    typer.echo(f"vectorize: {', '.join(f'{k} {n}' for k, n in counts.items())} polygons from {store}/{v.layer} -> {out}")
