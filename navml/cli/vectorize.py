"""Turn a probability (or label mask) layer into polygons in WGS84, seamless across shards."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import Params

#: Keys of the ``vectorize`` params section.
VECTORIZE_KEYS = {"layer", "kind"}


@exits
def command(
    store: Path = typer.Option(Path("data/predict"), "--store", help="Store root holding the layer (data/predict for probs, data/store for masks)."),
    layer: str = typer.Option(None, "--layer", help="Layer to vectorize; default vectorize.layer (probs)."),
    out: Path = typer.Option(Path("data/output/predictions.geojson"), "--out", help="GeoJSON to write (WGS84)."),
    threshold: float = typer.Option(None, "--threshold", help="Probability threshold 0..1 for every class (default: post.<class>.threshold)."),
    params: Path = Params,
) -> None:
    import dataclasses

    from navml.config import check_keys, segmentation_classes
    from navml.errors import ConfigError
    from navml.geo.store import Store
    from navml.segment.vectorize import vectorize_store

    p = load_params(params)
    s = check_keys(p.get("vectorize"), VECTORIZE_KEYS, "vectorize")
    layer = layer or s.get("layer") or "probs"
    kind = s.get("kind") or "auto"
    if kind == "auto":
        kind = "labels" if layer == "masks" else "probs"
    specs = segmentation_classes(classes_from(p))
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold is {threshold}; it must lie in 0..1")
        specs = [dataclasses.replace(c, post=dataclasses.replace(c.post, threshold=threshold)) for c in specs]
    counts = vectorize_store(Store(store, grid_from(p)), layer, specs, out, kind=kind)
    typer.echo(f"vectorize: {', '.join(f'{k} {v}' for k, v in counts.items())} polygons from {store}/{layer} -> {out}")
