import json

import mercantile
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from navml.errors import InputError
from navml.geo.features import write_features
from navml.post.score import match_greedy, prf, score_outputs, vertex_count

LAT0 = 39.74


def test_greedy_matching_follows_confidence():
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    preds = [box(1, 0, 11, 10), box(0, 0, 10, 10), box(20, 0, 30, 4), box(50, 50, 60, 60)]
    # pred 0 (IoU 0.82) has the higher score, so it takes truth 0 before the exact pred 1
    pairs = match_greedy(preds, [0.9, 0.8, 0.7, 0.6], truth, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)]
    assert pairs[0][2] == pytest.approx(90 / 110)
    pairs = match_greedy(preds, [0.5, 0.8, 0.7, 0.6], truth, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(1, 0)]  # the exact one first; pred 0 finds truth 0 taken
    assert prf(1, 4, 2) == {"precision": 0.25, "recall": 0.5, "f1": 0.3333, "tp": 1, "fp": 3, "fn": 1, "predicted": 4, "truth": 2}
    assert prf(0, 0, 0)["f1"] == 1.0 and prf(0, 3, 0)["precision"] == 0.0 and prf(0, 0, 3)["precision"] == 0.0
    assert vertex_count(shapely.Polygon(box(0, 0, 4, 4).exterior, [box(1, 1, 2, 2).exterior.coords])) == 8


def lot(tile, fx, fy, w=0.3, h=0.2):
    """A box at fractions of a tile's extent (WGS84)."""
    b = mercantile.bounds(tile)
    x0 = b.west + fx * (b.east - b.west)
    y0 = b.south + fy * (b.north - b.south)
    return box(x0, y0, x0 + w * (b.east - b.west), y0 + h * (b.north - b.south))


def two_tile_index(tmp_path):
    """``tiles.csv`` of two neighbouring z18 tiles in Denver: a train tile and, east of it, a test tile."""
    t_train = mercantile.tile(-104.99, LAT0, 18)
    t_test = mercantile.Tile(t_train.x + 1, t_train.y, 18)
    pd.DataFrame(
        [
            {"z": 18, "x": t_train.x, "y": t_train.y, "shard": "15-0-0", "block": "b1", "split": "train"},
            {"z": 18, "x": t_test.x, "y": t_test.y, "shard": "15-0-0", "block": "b2", "split": "test"},
        ]
    ).to_csv(tmp_path / "tiles.csv", index=False)
    return t_train, t_test


def test_score_outputs_on_new_features_and_test_split(tmp_path):
    t_train, t_test = two_tile_index(tmp_path)
    truth = [
        {"geometry": lot(t_train, 0.1, 0.1), "properties": {"mapped": True}},
        {"geometry": lot(t_train, 0.5, 0.5), "properties": {"mapped": False}},
        {"geometry": lot(t_test, 0.1, 0.1), "properties": {"mapped": False}},
        {"geometry": lot(t_test, 0.5, 0.5), "properties": {"mapped": True}},
        {"geometry": lot(t_test, 0.5, 0.1), "properties": {"mapped": True}},
    ]
    preds = [
        {"geometry": lot(t_train, 0.1, 0.1), "properties": {"class": "parking", "score": 0.9, "area_m2": 1}},
        {"geometry": lot(t_train, 0.52, 0.5), "properties": {"class": "parking", "score": 0.8, "area_m2": 1}},
        {"geometry": lot(t_test, 0.12, 0.1), "properties": {"class": "parking", "score": 0.7, "area_m2": 1}},
        {"geometry": lot(t_test, 0.5, 0.5, 0.1, 0.1), "properties": {"class": "parking", "score": 0.6, "area_m2": 1}},  # too small: IoU 1/6
    ]
    new = [preds[1], preds[2], preds[3]]
    write_features(truth, tmp_path / "lots.geojson")
    write_features(preds, tmp_path / "predictions.geojson")
    write_features(new, tmp_path / "new.geojson")
    out = tmp_path / "metrics" / "features.json"
    m = score_outputs(tmp_path / "predictions.geojson", tmp_path / "new.geojson", tmp_path / "lots.geojson", tmp_path / "tiles.csv", out,
                      classes=["parking"])
    assert json.loads(out.read_text()) == m
    assert set(m) == {"parking", "iou_threshold", "split"}
    m = m["parking"]
    # new features: 3 proposed, 2 of them are the 2 unmapped lots
    assert (m["new_features"]["tp"], m["new_features"]["predicted"], m["new_features"]["truth"]) == (2, 3, 2)
    assert m["new_features"]["precision"] == pytest.approx(2 / 3, abs=1e-4) and m["new_features"]["recall"] == 1.0
    # test split: 2 predictions and 3 truth lots in the test tile; 1 match
    assert (m["test"]["tp"], m["test"]["predicted"], m["test"]["truth"]) == (1, 2, 3)
    assert m["test"]["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3), abs=1e-4)
    assert m["geometry"] == {"features": 4, "valid_share": 1.0, "median_vertices": 4.0,
                             "rectangular_lots_matched": 3, "median_vertices_rectangular": 4.0}

    with pytest.raises(InputError, match="run the dedupe stage"):
        score_outputs(tmp_path / "predictions.geojson", tmp_path / "none.geojson", tmp_path / "lots.geojson", tmp_path / "tiles.csv", out,
                      classes=["parking"])
    with pytest.raises(InputError, match="ground truth not found"):
        score_outputs(tmp_path / "predictions.geojson", tmp_path / "new.geojson", tmp_path / "x.geojson", tmp_path / "tiles.csv", out,
                      classes=["parking"])


def two_class_outputs(tmp_path):
    t_train, t_test = two_tile_index(tmp_path)
    truth = [
        {"geometry": lot(t_test, 0.1, 0.1), "properties": {"class": "parking", "mapped": False}},
        {"geometry": lot(t_test, 0.5, 0.5), "properties": {"class": "building", "mapped": False}},
        {"geometry": lot(t_test, 0.5, 0.1), "properties": {"class": "building", "mapped": True}},
    ]
    preds = [
        {"geometry": lot(t_test, 0.1, 0.1), "properties": {"class": "parking", "score": 0.9}},
        # a building prediction right on the parking lot: a false positive for buildings, not a parking match
        {"geometry": lot(t_test, 0.1, 0.1), "properties": {"class": "building", "score": 0.9}},
        {"geometry": lot(t_test, 0.51, 0.5), "properties": {"class": "building", "score": 0.8}},
    ]
    write_features(truth, tmp_path / "truth.geojson")
    write_features(preds, tmp_path / "predictions.geojson")
    write_features(preds, tmp_path / "new.geojson")
    return truth, preds


def test_every_class_is_scored_on_its_own(tmp_path):
    truth, _ = two_class_outputs(tmp_path)
    args = (tmp_path / "predictions.geojson", tmp_path / "new.geojson", tmp_path / "truth.geojson", tmp_path / "tiles.csv", tmp_path / "m.json")
    m = first = score_outputs(*args, classes=["parking", "building"])
    assert set(m) == {"parking", "building", "iou_threshold", "split"}
    assert (m["parking"]["test"]["tp"], m["parking"]["test"]["predicted"], m["parking"]["test"]["truth"]) == (1, 1, 1)
    assert (m["building"]["test"]["tp"], m["building"]["test"]["predicted"], m["building"]["test"]["truth"]) == (1, 2, 2)
    assert (m["building"]["new_features"]["tp"], m["building"]["new_features"]["truth"]) == (1, 1)
    assert m["building"]["geometry"]["features"] == 2
    # a registry class without truth: an error when named, left out (unscored) by default
    with pytest.raises(InputError, match="no truth polygon of class 'pitch'"):
        score_outputs(*args, classes=["parking", "pitch"])
    m = score_outputs(*args, classes=["parking", "pitch"], require_truth=False)
    assert m["unscored"] == ["pitch"] and "pitch" not in m
    # one truth file per class; features without 'class' belong to that file's class
    write_features([{"geometry": f["geometry"], "properties": {"mapped": f["properties"]["mapped"]}} for f in truth[1:]], tmp_path / "b.geojson")
    m2 = score_outputs(*args[:2], {"parking": tmp_path / "truth.geojson", "building": tmp_path / "b.geojson"}, *args[3:], classes=["parking", "building"])
    assert m2 == first
    # a shared file without 'class' cannot describe two classes
    write_features([{"geometry": f["geometry"], "properties": {"mapped": True}} for f in truth], tmp_path / "plain.geojson")
    with pytest.raises(InputError, match="need a 'class' property"):
        score_outputs(*args[:2], tmp_path / "plain.geojson", *args[3:], classes=["parking", "building"])


def test_score_cli_scores_every_segmentation_class(tmp_path):
    import typer
    import yaml
    from typer.testing import CliRunner

    from navml.cli.score import command

    two_class_outputs(tmp_path)
    classes = {
        "parking": {"task": "segmentation", "tags": {"amenity": "parking"}},
        "building": {"task": "segmentation", "tags": {"building": "*"}, "osm_tags": {"building": "yes"}},
        "pitch": {"task": "segmentation", "tags": {"leisure": "pitch"}},
        "marks": {"task": "detection", "labels": "m.geojson"},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"classes": classes, "score": {"truth": str(tmp_path / "truth.geojson"), "iou": 0.5, "split": "test"}}))
    app = typer.Typer()
    app.command()(command)
    args = ["--predictions", str(tmp_path / "predictions.geojson"), "--new", str(tmp_path / "new.geojson"),
            "--tiles", str(tmp_path / "tiles.csv"), "--out", str(tmp_path / "m.json"), "--params", str(params)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "parking: new features P 1.000" in res.output and "building: new features P 0.500" in res.output
    assert "class 'pitch' has no truth polygons" in res.output
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"parking", "building", "iou_threshold", "split", "unscored"}
    params.write_text(yaml.safe_dump({"classes": classes, "score": {"truth": str(tmp_path / "truth.geojson"), "classes": ["marks"]}}))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "not a segmentation class" in res.output


def test_false_area_on_decoys_by_kind():
    from navml.post.score import score_decoys

    t = mercantile.tile(-104.99, LAT0, 18)
    plaza, court = lot(t, 0.1, 0.1, 0.3, 0.3), lot(t, 0.6, 0.6, 0.3, 0.3)
    truth_lot = lot(t, 0.1, 0.6, 0.3, 0.3)
    preds = [{"geometry": plaza.buffer(0), "properties": {}}, {"geometry": truth_lot, "properties": {}}]
    decoys = [{"geometry": plaza, "properties": {"kind": "plaza"}}, {"geometry": court, "properties": {"kind": "court"}},
              {"geometry": truth_lot, "properties": {"kind": "plaza"}}]  # a decoy under a true lot: no false area
    lots = [{"geometry": truth_lot, "properties": {"mapped": True}}]
    d = score_decoys(preds, decoys, lots)
    from pyproj import Geod

    m2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(plaza)[0])
    assert d["plaza"]["decoys"] == 2 and d["plaza"]["hit"] == 1 and d["plaza"]["area_m2"] == pytest.approx(m2, rel=0.01)
    assert d["court"] == {"decoys": 1, "hit": 0, "area_m2": 0.0}
    assert d["total"]["hit"] == 1 and d["total"]["decoys"] == 3
    assert score_decoys([], decoys, lots)["total"]["area_m2"] == 0.0
    assert score_decoys(preds, decoys, lots, area=court)["total"]["decoys"] == 1  # only decoys on the scored area


def test_false_detections_on_decoys_by_kind():
    from navml.post.score import score_box_decoys

    truths = [[0, 0, 10, 4]]
    boxes = [[0, 0, 10, 4], [20, 0, 30, 4], [50, 0, 60, 4], [100, 100, 104, 104]]  # a true one, two on decoys, one elsewhere
    decoys = [(box(18, -1, 40, 5), "crosswalk"), (box(55, 0, 70, 4), "word")]
    d = score_box_decoys(boxes, truths, decoys)
    assert d == {"false_detections": 3, "on_decoys": 2, "kinds": {"crosswalk": 1, "word": 1}}  # 50% of box 3 on the word
    assert score_box_decoys(boxes, [], [])["false_detections"] == 4
