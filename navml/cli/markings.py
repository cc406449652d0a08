"""Turn-lane markings in the world: detections as WGS84 boxes on OSM ways (direction, lane) and turn:lanes per way vs OSM."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import City, ExtractDir, Params, TilesCsv


@exits
def command(
    detections: Path = typer.Option(Path("data/predict/detections.csv"), "--detections", help="Detections table written by `navml predict_detect`."),
    roads: Path = typer.Option(Path("data/extract/roads.geojson"), "--roads", help="OSM road ways written by `navml extract`."),
    out: Path = typer.Option(Path("data/output"), "--out", help="Folder for markings.geojson and markings_by_way.json."),
    metrics: Path = typer.Option(Path("data/metrics/markings.json"), "--metrics", help="Counts, turn:lanes vs OSM, world-level score (dvc metrics)."),
    tiles: Path = TilesCsv,
    labels: Path = ExtractDir,
    params: Path = Params,
    city: str = City,
) -> None:
    from navml.config import detection_mapping, detection_names
    from navml.data.rasterize import detection_labels
    from navml.detect.markings import BY_WAY_FILE, MARKINGS_FILE, write_markings
    from navml.errors import ConfigError
    from navml.geo.tile_index import read_index
    from navml.io import write_json
    from navml.segment.dataset import split_tiles

    p = load_params(params, city)
    s = p.detect_predict
    names = [n for _, n in detection_names(p.class_specs())]
    if not names:
        raise ConfigError(f"{params}: classes: no class has task: detection; markings has nothing to place")
    summary = write_markings(
        detections,
        roads,
        out,
        p.grid.grid(),
        names,
        turn_values=detection_mapping(p.class_specs(), "turn_values"),
        truth=detection_labels(labels, p.class_specs()),
        score_tiles=split_tiles(read_index(tiles), p.score.split, str(tiles)),
        score_iou=p.score.iou,
        max_way_distance_m=s.max_way_distance_m,
        axis_aspect=s.axis_aspect,
        driving_side=s.driving_side,
        centre_gap_m=s.centre_gap_m,
        lane_width_m=p.extract.lane_width_m,
    )
    from navml.cli.score import decoys_file

    if decoys_file(p.score.decoys):
        summary["decoys"] = marking_decoys(out, p, labels)
    write_json(metrics, summary)
    rate = summary["agreement_rate"]
    typer.echo(
        f"markings: {summary['detections']} detections, {summary['matched']} on a way within {s.max_way_distance_m:g} m; "
        f"{summary['directions']} way directions: {summary['agree']} agree with OSM turn:lanes, {summary['partial']} partly, "
        f"{summary['differ']} differ, {summary['missing']} not in OSM (agreement {'n/a' if rate is None else f'{rate:.0%}'}) "
        f"-> {out}/{MARKINGS_FILE}, {BY_WAY_FILE}"
    )
    w = summary["world"]

    def f3(v):
        return "n/a" if v is None else f"{v:.3f}"

    typer.echo(
        f"markings: in the world over the {p.score.split} split ({w['tiles']} tiles, IoU {w['iou']:g}): "
        f"P {f3(w['precision'])} R {f3(w['recall'])} F1 {f3(w['f1'])} ({w['tp']} of {w['truths']} truths, {w['fp']} false)"
    )
    if "decoys" in summary:
        d = summary["decoys"]
        kinds = ", ".join(f"{k} {v}" for k, v in d["kinds"].items()) or "none"
        typer.echo(f"markings: {d['false_detections']} false detections in the AOI, {d['on_decoys']} on decoys ({kinds})")
    if not summary["detections"]:
        typer.echo(f"markings: warning: {detections} holds no detection; check detect_predict.score_threshold and the detector", err=True)


def marking_decoys(out: Path, p, labels: Path) -> dict:
    """False detections (markings.geojson vs the truth labels, whole AOI) on the decoys of score.decoys, by kind."""
    import numpy as np

    from navml.data.rasterize import detection_labels, label_box
    from navml.detect.markings import MARKINGS_FILE
    from navml.geo.features import read_features, to_pixels
    from navml.post.score import read_decoys, score_box_decoys

    grid = p.grid.grid()
    truth, box_m = detection_labels(labels, p.class_specs())
    tb = [label_box(g, grid, box_m.get(cid)) for cid, items in truth.items() for g, _, _ in items]
    feats = read_features(out / MARKINGS_FILE)
    pb = [label_box(f["geometry"], grid) for f in feats]
    decoys = []
    for c in (c for c in p.class_specs() if c.task == "detection"):
        decoys += [(to_pixels(f["geometry"], grid.zoom, grid.tile_size), str(f["properties"]["kind"])) for f in read_decoys(p.score.decoys, c.name)]
    return score_box_decoys(np.array([b for b in pb if b is not None]), np.array([b for b in tb if b is not None]), decoys, p.score.iou)
