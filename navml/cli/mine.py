"""Mine hard negatives: the first model's confident regions on background of train tiles inside complete areas."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import city_names, exits, load_params, with_overrides
from navml.cli.options import ExportLimit, Params, StoreDir, TilesCsv, override
from navml.config import MineParams as M
from navml.mining.negatives import FILE as NEGATIVES

SUMMARY = "summary.json"
EXPORT = "export"


def out_option(default: Path):
    """The ``--out`` option of a mining command: its folder of negatives, summary and export."""
    return typer.Option(
        default, "--out",
        help=f"Folder for {NEGATIVES} (merged with what it holds: reviews and vetoes are kept), {SUMMARY} and {EXPORT}/ (PNGs of the mined tiles).",
    )


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    probs: Path = typer.Option(Path("data/first/predict"), "--probs", help="Predict store of the model (layer probs), written by `navml predict`."),
    cities: bool = typer.Option(
        False, "--cities",
        help="Mine over every `role: train` city of params instead: its tile index, store, completeness areas and the first "
        "model's probabilities at <paths.first>/<role>/<name>/predict (--tiles, --store and --probs are not read); "
        "one max-negatives cut over all, a `city` property on each negative, export/<city>/ per city.",
    ),
    model: Path = typer.Option(Path("data/first/models/seg"), "--model", help="The model folder (for its per-class thresholds)."),
    out: Path = out_option(Path("data/mining/seg")),
    threshold: float = override("mine", M, "threshold"),
    min_area_m2: float = override("mine", M, "min_area_m2"),
    max_negatives: int = override("mine", M, "max_negatives"),
    tile_share: float = override("mine", M, "tile_share"),
    edge_m: float = override("mine", M, "edge_m"),
    export_limit: int = ExportLimit,
    params: Path = Params,
) -> None:
    from navml.config import segmentation_classes
    from navml.data.rasterize import complete_areas
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.mining.mine import MineSource, city_sources, mine_sources
    from navml.models.io import read_thresholds

    p = load_params(params)
    names = city_names(p, cities)
    m = with_overrides(p.mine, threshold=threshold, min_area_m2=min_area_m2, max_negatives=max_negatives, tile_share=tile_share, edge_m=edge_m)
    grid = p.grid.grid()
    specs = segmentation_classes(p.class_specs())
    classes = [c.name for c in specs]
    if m.threshold is None:
        found = read_thresholds(model, classes)
        if found is None:
            raise_missing(model)
        thresholds = {n: t for n, (t, _) in zip(classes, found[0])}
    else:
        thresholds = {n: float(m.threshold) for n in classes}
    knobs = dict(min_area_m2=m.min_area_m2, max_negatives=m.max_negatives, tile_share=m.tile_share, edge_m=m.edge_m, seed=m.seed, progress=True)
    if names:
        sources = city_sources(p, names)
    else:
        sources = [MineSource("", Store(probs, grid), Store(store, grid), read_index(tiles), complete_areas(specs, p.rasterize.complete), str(tiles))]
    feats, report = mine_sources(sources, classes, thresholds, **knobs)
    written = write_mined(out, feats, report, sources, p, export_limit, thresholds=thresholds)
    per = "; ".join(f"{n} {r.kept} on {len(r.tiles)} of {r.scanned}" for n, r in report.cities.items())
    typer.echo(
        f"mine: {report.kept} negatives ({report.area_m2:.0f} m²) on {len(report.tiles)} of {report.scanned} scanned train tiles "
        f"({report.found} found, {report.small} small, {report.edge_px} px near labels left out){f' [{per}]' if per else ''}; {written}"
    )


def raise_missing(model: Path) -> None:
    from navml.errors import ModelError

    raise ModelError(f"{model}: no thresholds.json for mine.threshold: auto; train the model first or set mine.threshold")


def write_mined(out: Path, features, report, sources, p, export_limit: int, **extra) -> str:
    """The mining outputs in ``out``: ``features`` merged into its negatives file (:func:`~navml.mining.negatives.merge_previous`),
    the summary (``report``'s, the merge counts, ``extra``) and the PNG export of ``sources`` (:func:`export_negatives`).
    Returns the command line's account of the file and the export."""
    from navml.io import write_json
    from navml.mining.negatives import merge_previous, read_collection, write_collection

    path = out / NEGATIVES
    merged, counts = merge_previous(features, read_collection(path))
    write_collection(path, merged)
    write_json(out / SUMMARY, {**report.as_dict(), **counts, **extra, "features_in_file": len(merged)})
    shown = export_negatives(sources, merged, out / EXPORT, p, export_limit)  # out/<city>/ over several cities
    return (f"file: {len(merged)} features ({counts['reviewed']} reviewed, {counts['vetoed']} vetoed) -> {path}; "
            f"export {shown} tiles -> {out / EXPORT}")


def export_negatives(sources, features, out: Path, p, limit: int) -> int:
    """PNGs of the tiles holding ``features`` (overlay with the negatives outlined), each from its own city's store
    (``out/<city>/`` over several cities); at most ``limit`` tiles in all, taken from the cities in turn. Returns the tiles written."""
    from itertools import chain, zip_longest

    from navml.data.export import export_tiles, read_boxes
    from navml.geo.tile_index import tiles_from_index
    from navml.io import staging_dir
    from navml.mining.negatives import feature_cities, feature_tiles
    from navml.palette import palette_of

    palette = palette_of(p.class_specs())
    if len(sources) == 1 and not sources[0].name:
        st = sources[0].store
        tiles = feature_tiles(features)[:limit] if limit else []
        export_tiles(st, tiles, out, layers=["imagery", "overlay"], palette=palette, boxes=read_boxes(st.root), negatives=features, progress=False)
        return len(tiles)
    owner = feature_cities(features, {s.name: tiles_from_index(s.index) for s in sources})
    own = {s.name: [f for f, o in zip(features, owner) if o == s.name] for s in sources}
    turns = zip_longest(*[[(s.name, t) for t in feature_tiles(own[s.name])] for s in sources])
    picked = [x for x in chain.from_iterable(turns) if x is not None][: max(limit, 0)]
    with staging_dir(out) as tmp:
        for s in sources:
            tiles = [t for n, t in picked if n == s.name]
            if tiles:
                export_tiles(s.store, tiles, tmp / s.name, layers=["imagery", "overlay"], palette=palette, boxes=read_boxes(s.store.root),
                             negatives=own[s.name], progress=False)
    return len(picked)
