"""Burn labels on the tile grid: class masks per shard and detection boxes per tile."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.grid import classes_from, grid_from
from navml.cli.options import ExtractDir, Params, StoreDir, TilesCsv


@exits
def command(
    labels: Path = ExtractDir,
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    params: Path = Params,
) -> None:
    from navml.config import check_keys, detection_names, segmentation_classes
    from navml.errors import InputError
    from navml.data.rasterize import IGNORE, tile_boxes, write_masks
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index
    from navml.geo.features import read_features

    p = load_params(params)
    r = check_keys(p.get("rasterize"), {"complete", "roads"}, "rasterize")
    grid = grid_from(p)
    classes = classes_from(p)
    tile_list = tiles_from_index(read_index(tiles))
    st = Store(store, grid)

    def label_features(name: str) -> list[dict]:
        path = labels / f"{name}.geojson"
        if not path.exists():
            raise InputError(f"{path}: labels of class '{name}' not found; run the extract stage first")
        return [f for f in read_features(path) if f["properties"].get("label", True)]

    seg = segmentation_classes(classes)
    layers = [[f["geometry"] for f in label_features(c.name)] for c in seg]
    complete = [f["geometry"] for f in read_features(r["complete"])] if r.get("complete") else None
    background = []
    if complete is not None and r.get("roads", True):
        from navml.data.roads import read_road_surfaces

        background = read_road_surfaces(labels, "set rasterize.roads: false")
    counts = write_masks(st, tile_list, layers, complete=complete, background=background)

    ids = {pair: i for i, pair in enumerate(detection_names(classes))}
    det: dict[int, list] = {i: [] for i in ids.values()}
    for c in classes:
        if c.task != "detection":
            continue
        for f in label_features(c.name):
            name = str(f["properties"].get("kind") or c.name if len(c.names) > 1 else c.names[0])
            if (c.name, name) not in ids:
                raise InputError(f"{labels / (c.name + '.geojson')}: label kind '{name}' is not in classes.{c.name}.names {list(c.names)}")
            det[ids[(c.name, name)]].append((f["geometry"], c.name, name))
    boxes = tile_boxes(tile_list, grid, det)
    tmp = store / ".boxes.csv.part"
    boxes.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(store / "boxes.csv")
    legend = {
        "mask_values": {**{str(i + 1): c.name for i, c in enumerate(seg)}, str(IGNORE): "ignore"},
        "box_class_ids": {str(i): f"{cls}:{name}" for (cls, name), i in ids.items()},
        "pixels": {("ignore" if int(k[7:]) == IGNORE else seg[int(k[7:]) - 1].name): v for k, v in counts.items() if k.startswith("pixels_")},
        "boxes": int(len(boxes)),
    }
    (store / "labels.json").write_text(json.dumps(legend, indent=2, sort_keys=True) + "\n")
    typer.echo(f"rasterize: {counts['shards']} mask shards, {len(boxes)} boxes; labelled pixels {legend['pixels']}")
