"""Mine hard negatives of the turn-lane detector: its confident boxes matching no truth box on train tiles."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import city_names, city_sources, exits, load_params, with_overrides
from navml.cli.mine import out_option
from navml.cli.options import ExportLimit, Params, StoresList, TilesList, override
from navml.config import MineDetectParams as M


@exits
def command(
    tiles: list[Path] = TilesList,
    store: list[Path] = StoresList,
    cities: bool = typer.Option(
        False, "--cities",
        help="Mine the train tiles of every `role: train` city of params (their tiles and stores) instead; each negative gets its `city`.",
    ),
    model: Path = typer.Option(Path("data/first/models/det"), "--model", help="The first detector's model folder (meta.json: score_threshold)."),
    out: Path = out_option(Path("data/mining/det")),
    score_threshold: float = override("mine_detect", M, "score_threshold"),
    iou: float = override("mine_detect", M, "iou"),
    margin_m: float = override("mine_detect", M, "margin_m"),
    min_size_m2: float = override("mine_detect", M, "min_size_m2"),
    max_negatives: int = override("mine_detect", M, "max_negatives"),
    tile_share: float = override("mine_detect", M, "tile_share"),
    export_limit: int = ExportLimit,
    params: Path = Params,
) -> None:
    from navml.cli.mine import write_mined
    from navml.config import detection_names
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.mining.detect import detection_complete_areas, mine_detection
    from navml.mining.mine import MineSource

    p = load_params(params)
    m = with_overrides(p.mine_detect, score_threshold=score_threshold, iou=iou, margin_m=margin_m, min_size_m2=min_size_m2,
                       max_negatives=max_negatives, tile_share=tile_share)
    tiles, store = city_sources(p, tiles, store, cities)
    names = city_names(p, cities)
    grid = p.grid.grid()
    pairs = detection_names(p.class_specs())
    complete = None
    if m.complete:
        views = [p.for_city(n) for n in names] if names else [p]
        areas = [detection_complete_areas(v.class_specs(), v.rasterize.complete) for v in views]
        complete = None if any(a is None for a in areas) else [g for a in areas for g in a]
    stores, indexes = [Store(s, grid) for s in store], [read_index(x) for x in tiles]
    feats, report = mine_detection(
        model, stores, indexes, [n for _, n in pairs], classes_of=[c for c, _ in pairs], cities=names,
        complete=complete, score_threshold=m.score_threshold, iou=m.iou, margin_m=m.margin_m, min_size_m2=m.min_size_m2,
        max_negatives=m.max_negatives, tile_share=m.tile_share, batch_size=m.batch_size, seed=m.seed, progress=True,
        where=", ".join(map(str, tiles)),
    )
    sources = [MineSource(names[i] if names else "", None, st, indexes[i], None) for i, st in enumerate(stores)]
    written = write_mined(out, feats, report, sources, p, export_limit)
    typer.echo(
        f"mine_detect: {report.kept} negatives on {len(report.tiles)} of {report.scanned} train tiles at score >= {report.threshold:.3f} "
        f"({report.detections} detections: {report.matched} on truths, {report.near} near truths, {report.small} small, {report.found} false); {written}"
    )
