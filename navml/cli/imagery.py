"""Imagery into the shard store: a GeoTIFF/COG in any CRS or an XYZ/TMS URL, on the tile grid."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, Params, Scheduler, StoreRoot, TilesCsv, Workers


@exits
def command(
    params: Path = Params,
    city: str = City,
    tiles: Path = TilesCsv,
    store: str = StoreRoot,
    scheduler: str = Scheduler,
    workers: int = Workers,
) -> None:
    from navml.data.imagery import build_imagery
    from navml.errors import InputError
    from navml.geo.parallel import resolve_scheduler
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    plan = resolve_scheduler(scheduler, workers)
    p = load_params(params, city)
    s = p.imagery
    tile_list = tiles_from_index(read_index(tiles))
    if not tile_list:
        raise InputError(f"{tiles}: the tile index has no tiles; check cover.aoi and re-run the cover stage")
    counts = build_imagery(
        Store(store, p.grid.grid()),
        tile_list,
        source=s.source,
        geotiff=s.geotiff or None,
        url=s.url or None,
        token_env=s.token_env or None,
        workers=s.workers,
        retries=s.retries,
        timeout_s=s.timeout_s,
        cache_dir=s.cache_dir or None,
        bands=s.bands,
        band_indexes=s.band_indexes,
        stretch=s.stretch,
        percentiles=tuple(s.percentiles),
        resampling=s.resampling,
        scheduler=plan,
    )
    extra = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("source", "shards", "tiles"))
    typer.echo(f"imagery ({counts['source']}): {counts['tiles']} tiles in {counts['shards']} shards -> {store}/imagery; {extra}")
