"""Options shared by several commands (one definition each, like rasterio's), and options built from the params model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

Params = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read (the whole file is validated first).")
City = typer.Option(
    None, "--city", help="Run for this city of the params' `cities` section: its imagery, OSM file, AOI, labels and truth (docs/cities.md).",
    show_default=False,
)
TilesCsv = typer.Option(Path("data/cover/tiles.csv"), "--tiles", help="Tile index written by `navml cover`.")
StoreDir = typer.Option(Path("data/store"), "--store", help="Shard store folder (imagery, masks).")
StoreRoot = typer.Option("data/store", "--store", help="Shard store holding the imagery: a folder or s3://bucket/prefix.")
Scheduler = typer.Option(
    None,
    "--scheduler",
    envvar="NAVML_DASK_SCHEDULER",
    help="Where the shard work runs: a Dask scheduler address (tcp://host:8786), 'local' (a local Dask cluster) or 'threads'; "
    "default: in this process (or a local cluster with --workers > 1). Outputs are the same bytes wherever it runs.",
    show_default=False,
)
Workers = typer.Option(
    None,
    "--workers",
    min=1,
    help="Worker processes of a local Dask cluster (threads with --scheduler threads); default: 1 (in this process), "
    "or one per CPU core with --scheduler local. Ignored with a scheduler address.",
    show_default=False,
)
TilesList = typer.Option(
    [Path("data/cover/tiles.csv")], "--tiles", help="Tile index written by `navml cover`; repeat with --store per city to train on several."
)
StoresList = typer.Option([Path("data/store")], "--store", help="Shard store folder (imagery, masks, boxes.csv); one per --tiles.")
TrainCities = typer.Option(False, "--cities", help="Train on the union of the `role: train` cities of params (their tiles and stores) instead.")
ExportLimit = typer.Option(64, "--export-limit", help="At most this many mined tiles in the PNG export (0: none).")
ExtractDir = typer.Option(Path("data/extract"), "--labels", help="Folder of per-class GeoJSON written by `navml extract`.")


def override(section: str, model: Any, name: str, *flags: str, **kwargs: Any) -> Any:
    """An option that overrides ``<section>.<name>`` of params.yaml; help and shown default come from the params model."""
    flags = flags or (f"--{name.replace('_', '-')}",)
    default = model.default(name)
    text = model.help(name).replace("[", "\\[")  # not rich markup
    return typer.Option(
        None,
        *flags,
        help=f"{text[:1].upper()}{text[1:]}; default: {section}.{name} of params ({default!r} as shipped).",
        show_default=False,
        **kwargs,
    )
