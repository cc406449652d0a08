"""Write tiles of the store as slippy-map PNGs (imagery, masks, overlay with boxes) to look at."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import Params, StoreDir, TilesCsv


@exits
def command(
    out: Path = typer.Argument(..., help="Folder to write <layer>/<z>/<x>/<y>.png and index.html into."),
    tile: list[str] = typer.Option([], "--tile", help="A tile z/x/y (repeatable)."),
    tile_range: str = typer.Option(None, "--range", help="Tiles from z/x0/y0 to z/x1/y1 inclusive, e.g. 18/54610/99480:18/54613/99483."),
    bbox: str = typer.Option(None, "--bbox", help="All index tiles touching west,south,east,north (degrees)."),
    split: str = typer.Option(None, "--split", help="Only index tiles of this split (train/val/test)."),
    limit: int = typer.Option(64, "--limit", help="At most this many tiles (0: no limit)."),
    layers: str = typer.Option("imagery,masks,overlay", "--layers", help="Comma-separated: imagery, masks, probs, overlay."),
    probs: Path = typer.Option(None, "--probs", help="Predict store holding the 'probs' layer."),
    store: Path = StoreDir,
    tiles: Path = TilesCsv,
    params: Path = Params,
) -> None:
    import pandas as pd
    import shapely

    from navml.palette import palette_of
    from navml.data.cover import read_aoi
    from navml.errors import ConfigError
    from navml.data.export import export_tiles
    from navml.geo.grid import Tile, parse_tile, tile_polygon
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    p = load_params(params)
    grid = grid_from(p)
    chosen = [parse_tile(t) for t in tile]
    if tile_range:
        try:
            a, b = (parse_tile(s) for s in tile_range.split(":"))
        except ValueError as exc:
            raise ConfigError(f"--range '{tile_range}': write it as z/x0/y0:z/x1/y1") from exc
        if a.z != b.z:
            raise ConfigError(f"--range '{tile_range}': both ends need the same zoom")
        chosen += [Tile(x, y, a.z) for y in range(min(a.y, b.y), max(a.y, b.y) + 1) for x in range(min(a.x, b.x), max(a.x, b.x) + 1)]
    if not chosen:
        df = read_index(tiles)
        cand = tiles_from_index(df, split)
        if bbox:
            area = read_aoi(bbox)
            cand = [t for t in cand if shapely.intersects(area, tile_polygon(t))]
        chosen = cand
    if any(t.z != grid.zoom for t in chosen):
        raise ConfigError(f"export: tiles must be at the store zoom {grid.zoom}")
    if limit and len(chosen) > limit:
        typer.echo(f"export: {len(chosen)} tiles, writing the first {limit} (--limit 0 for all)")
        chosen = chosen[:limit]
    boxes_csv = store / "boxes.csv"
    boxes = pd.read_csv(boxes_csv) if boxes_csv.exists() else None
    n = export_tiles(
        Store(store, grid),
        chosen,
        out,
        layers=[s.strip() for s in layers.split(",") if s.strip()],
        palette=palette_of(classes_from(p)),
        boxes=boxes,
        probs=Store(probs, grid) if probs else None,
    )
    typer.echo(f"export: wrote {n} PNGs for {len(chosen)} tiles; open {out / 'index.html'}")
