"""Write tiles of the store as slippy-map PNGs (imagery, masks, overlay with boxes) to look at."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, Params


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
    negatives: Path = typer.Option(
        None, "--negatives",
        help="A hard-negatives GeoJSON (navml mine, the viewer's review): outlined on the overlay; without a tile choice, its tiles.",
    ),
    store: Path = typer.Option(None, "--store", help="Shard store folder (imagery, masks); default: the city's, else data/store.", show_default=False),
    tiles: Path = typer.Option(None, "--tiles", help="Tile index; default: the city's, else data/cover/tiles.csv.", show_default=False),
    city: str = City,
    params: Path = Params,
) -> None:
    from navml.data.export import export_tiles, read_boxes, select_tiles
    from navml.geo.store import Store
    from navml.palette import palette_of

    p = load_params(params)
    grid = p.grid.grid()
    if city:  # the city's store and tiles as the pipeline lays them out, its final probabilities if they exist
        c = p.city(city)
        store, tiles = store or Path(c.store), tiles or Path(c.tiles)
        done = Path(c.results) / "predict"
        probs = probs or (done if (done / "probs").is_dir() else None)
    store, tiles = store or Path("data/store"), tiles or Path("data/cover/tiles.csv")
    negs = None
    if negatives is not None:
        from navml.errors import InputError
        from navml.mining.negatives import feature_tiles, read_collection

        if not negatives.is_file():
            raise InputError(f"{negatives}: hard-negatives file not found; run `navml mine` (dvc repro mine) or review in `navml serve`")
        negs = read_collection(negatives)
    if negs is not None and not (tile or tile_range or bbox):
        chosen = feature_tiles(negs)
    else:
        chosen = select_tiles(grid.zoom, tiles, tiles=tile, range_=tile_range, bbox=bbox, split=split)
    if limit and len(chosen) > limit:
        typer.echo(f"export: {len(chosen)} tiles, writing the first {limit} (--limit 0 for all)")
        chosen = chosen[:limit]
    n = export_tiles(
        Store(store, grid),
        chosen,
        out,
        layers=[s.strip() for s in layers.split(",") if s.strip()],
        palette=palette_of(p.class_specs()),
        boxes=read_boxes(store),
        probs=Store(probs, grid) if probs else None,
        negatives=negs,
    )
    typer.echo(f"export: wrote {n} PNGs for {len(chosen)} tiles; open {out / 'index.html'}")
