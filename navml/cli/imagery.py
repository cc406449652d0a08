"""Imagery into the shard store: a GeoTIFF/COG in any CRS or an XYZ/TMS URL, on the tile grid."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import grid_from
from navml.cli.options import Params, StoreDir, TilesCsv

#: Keys of the ``imagery`` params section (bands, band_indexes, stretch, percentiles, resampling, cache_dir optional).
KEYS = {
    "source", "geotiff", "url", "token_env", "workers", "retries", "timeout_s", "bands", "band_indexes", "stretch",
    "percentiles", "resampling", "cache_dir",
}


@exits
def command(
    params: Path = Params,
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
) -> None:
    from navml.config import check_keys
    from navml.errors import InputError
    from navml.data.imagery import build_imagery
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    p = load_params(params)
    s = check_keys(p.get("imagery"), KEYS, "imagery", required=("source",))
    grid = grid_from(p)
    tile_list = tiles_from_index(read_index(tiles))
    if not tile_list:
        raise InputError(f"{tiles}: the tile index has no tiles; check cover.aoi and re-run the cover stage")
    counts = build_imagery(
        Store(store, grid),
        tile_list,
        source=str(s["source"]),
        geotiff=s.get("geotiff") or None,
        url=s.get("url") or None,
        token_env=s.get("token_env") or None,
        workers=int(s.get("workers", 8)),
        retries=int(s.get("retries", 5)),
        timeout_s=float(s.get("timeout_s", 20)),
        cache_dir=s.get("cache_dir") or None,
        bands=int(s["bands"]) if s.get("bands") is not None else None,
        band_indexes=s.get("band_indexes") or None,
        stretch=str(s.get("stretch") or "none"),
        percentiles=s.get("percentiles") or (2.0, 98.0),
        resampling=str(s.get("resampling", "bilinear")),
    )
    extra = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("source", "shards", "tiles"))
    typer.echo(f"imagery ({counts['source']}): {counts['tiles']} tiles in {counts['shards']} shards -> {store / 'imagery'}; {extra}")
