"""Detect turn-lane markings over every tile of the AOI, seamless across tile and shard borders."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, Params, Scheduler, StoreRoot, TilesCsv, Workers


@exits
def command(
    tiles: Path = TilesCsv,
    store: str = StoreRoot,
    model: Path = typer.Option(Path("data/models/det"), "--model", help="Detector folder (model.keras, meta.json) written by `navml train_detect`."),
    out: Path = typer.Option(Path("data/predict/detections.csv"), "--out", help="Detections table: tile, global pixel box, class, score."),
    params: Path = Params,
    city: str = City,
    scheduler: str = Scheduler,
    workers: int = Workers,
) -> None:
    from navml.config import detection_names
    from navml.detect.predict import detect_store, detections_table, write_detections
    from navml.errors import ConfigError
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index

    p = load_params(params, city)
    s = p.detect_predict
    grid = p.grid.grid()
    names = [n for _, n in detection_names(p.class_specs())]
    if not names:
        raise ConfigError(f"{params}: classes: no class has task: detection; predict_detect has nothing to detect")
    dets, report = detect_store(
        Store(store, grid),
        tiles_from_index(read_index(tiles)),
        model,
        names,
        window=s.window_px,
        halo=s.halo_px or None,
        nms_iou=s.nms_iou,
        score_threshold=s.score_threshold,
        core_margin_px=s.core_margin_px,
        scheduler=scheduler,
        workers=workers,
    )
    write_detections(detections_table(dets, names, grid), out)
    typer.echo(
        f"predict_detect: {report.tiles} tiles in {report.shards} shards, {report.windows} windows, halo {report.halo} px "
        f"(x{report.overhead:.2f} pixels), {report.candidates} boxes in the cores, {report.detections} after NMS "
        f"(score >= {report.score_threshold:g}), {report.tiles / report.seconds:.1f} tiles/s -> {out}"
    )
