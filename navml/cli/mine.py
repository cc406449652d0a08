"""Mine hard negatives: the first model's confident regions on background of train tiles inside complete areas."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params, with_overrides
from navml.cli.options import Params, StoreDir, TilesCsv, override
from navml.config import MineParams as M

NEGATIVES = "hard_negatives.geojson"
SUMMARY = "summary.json"
EXPORT = "export"


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    probs: Path = typer.Option(Path("data/first/predict"), "--probs", help="Predict store of the model (layer probs), written by `navml predict`."),
    model: Path = typer.Option(Path("data/first/models/seg"), "--model", help="The model folder (for its per-class thresholds)."),
    out: Path = typer.Option(
        Path("data/mining/seg"), "--out",
        help=f"Folder for {NEGATIVES} (merged with what it holds: reviews and vetoes are kept), {SUMMARY} and {EXPORT}/ (PNGs of the mined tiles).",
    ),
    threshold: float = override("mine", M, "threshold"),
    min_area_m2: float = override("mine", M, "min_area_m2"),
    max_negatives: int = override("mine", M, "max_negatives"),
    tile_share: float = override("mine", M, "tile_share"),
    edge_m: float = override("mine", M, "edge_m"),
    export_limit: int = typer.Option(64, "--export-limit", help="At most this many mined tiles in the PNG export (0: none)."),
    params: Path = Params,
) -> None:
    from navml.config import segmentation_classes
    from navml.data.rasterize import complete_areas
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.io import write_json
    from navml.mining.mine import mine_segmentation
    from navml.mining.negatives import merge_previous, read_collection, write_collection
    from navml.models.io import read_thresholds

    p = load_params(params)
    m = with_overrides(p.mine, threshold=threshold, min_area_m2=min_area_m2, max_negatives=max_negatives, tile_share=tile_share, edge_m=edge_m)
    grid = p.grid.grid()
    specs = segmentation_classes(p.class_specs())
    names = [c.name for c in specs]
    if m.threshold is None:
        found = read_thresholds(model, names)
        if found is None:
            raise_missing(model)
        thresholds = {n: t for n, (t, _) in zip(names, found[0])}
    else:
        thresholds = {n: float(m.threshold) for n in names}
    st = Store(store, grid)
    feats, report = mine_segmentation(
        Store(probs, grid), st, read_index(tiles), names, complete_areas(specs, p.rasterize.complete), thresholds,
        min_area_m2=m.min_area_m2, max_negatives=m.max_negatives, tile_share=m.tile_share, edge_m=m.edge_m, seed=m.seed,
        progress=True, where=str(tiles),
    )
    path = out / NEGATIVES
    merged, counts = merge_previous(feats, read_collection(path))
    write_collection(path, merged)
    summary = {**report.as_dict(), **counts, "thresholds": thresholds, "features_in_file": len(merged)}
    write_json(out / SUMMARY, summary)
    shown = export_negatives(st, merged, out / EXPORT, p, export_limit)
    typer.echo(
        f"mine: {report.kept} negatives ({report.area_m2:.0f} m²) on {len(report.tiles)} of {report.scanned} scanned train tiles "
        f"({report.found} found, {report.small} small, {report.edge_px} px near labels left out); "
        f"file: {len(merged)} features ({counts['reviewed']} reviewed, {counts['vetoed']} vetoed) -> {path}; export {shown} tiles -> {out / EXPORT}"
    )


def raise_missing(model: Path) -> None:
    from navml.errors import ModelError

    raise ModelError(f"{model}: no thresholds.json for mine.threshold: auto; train the model first or set mine.threshold")


def export_negatives(store, features, out: Path, p, limit: int) -> int:
    """PNGs of the tiles holding ``features`` (overlay with the negatives outlined); returns the tiles written."""
    from navml.data.export import export_tiles, read_boxes
    from navml.mining.negatives import feature_tiles
    from navml.palette import palette_of

    tiles = feature_tiles(features)[: limit or 0] if limit else []
    export_tiles(store, tiles, out, layers=["imagery", "overlay"], palette=palette_of(p.class_specs()),
                 boxes=read_boxes(store.root), negatives=features, progress=False)
    return len(tiles)
