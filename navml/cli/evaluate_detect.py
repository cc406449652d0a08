"""Score the turn-lane detector on the test split: mAP@0.5, mAP@0.5:0.95, AP per class, P/R, confusion, PR curves, overlays."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, Params, StoreDir, TilesCsv


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    model: Path = typer.Option(Path("data/models/det"), "--model", help="Model folder written by `navml train_detect`."),
    out: Path = typer.Option(Path("data/metrics"), "--out", help="Folder for detect.json and detect_plots/."),
    params: Path = Params,
    city: str = City,
) -> None:
    from navml.config import detection_names
    from navml.detect.evaluate import evaluate_detection
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.models.io import read_meta

    p = load_params(params, city)
    e = p.evaluate
    names = [name for _, name in detection_names(p.class_specs())]
    read_meta(model)  # a missing model is the one error line, before any note on the decoys
    m = evaluate_detection(
        Store(store, p.grid.grid()),
        read_index(tiles),
        model,
        out,
        names=names,
        batch_size=e.batch_size,
        overlays=e.overlays,
        decoys=marking_decoys(p),
        progress=True,
        where=str(tiles),
    )
    per = ", ".join(f"{k} {v['ap50']:.3f}" for k, v in m["classes"].items() if v["ap50"] is not None and v["ap50"] == v["ap50"])
    typer.echo(
        f"evaluate_detect: {m['tiles']} test tiles, {m['truths']} truths; mAP@0.5 {m['map50']:.4f}, mAP@0.5:0.95 {m['map50_95']:.4f} "
        f"over {m['classes_scored']} classes (AP@0.5 {per}); P {m['precision']:.3f} R {m['recall']:.3f} at score "
        f"{m['score_threshold']:.3f} -> {out}/detect.json"
    )
    if "decoys" in m:
        d = m["decoys"]
        kinds = ", ".join(f"{k} {v}" for k, v in d["kinds"].items()) or "none"
        typer.echo(f"evaluate_detect: {d['false_detections']} false detections on test tiles, {d['on_decoys']} on decoys ({kinds})")


def marking_decoys(p) -> list | None:
    """``[(WGS84 polygon, kind), ...]`` of the detection classes' decoys in score.decoys; None without a decoys file."""
    from shapely.geometry import shape

    from navml.cli.score import decoys_file
    from navml.post.score import read_decoys

    path = decoys_file(p.score.decoys)
    if path is None:
        return None
    return [(shape(f["geometry"]), str(f["properties"]["kind"]))
            for c in p.class_specs() if c.task == "detection" for f in read_decoys(path, c.name)]
