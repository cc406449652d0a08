"""Markings in the world: pixel boxes to WGS84, matching to OSM ways, direction and lane, turn:lanes per way vs OSM."""

from __future__ import annotations

import json
from pathlib import Path

import mercantile
import numpy as np
import pandas as pd
import pytest
from conftest import navml
from pyproj import Geod
from shapely.geometry import LineString

from navml.detect.markings import (
    BY_WAY_FILE,
    MARKINGS_FILE,
    Road,
    box_polygons,
    compare_turn_lanes,
    markings,
    read_roads,
    world_score,
    write_markings,
)
from navml.detect.table import COLUMNS
from navml.errors import InputError
from navml.geo.features import read_features, write_features
from navml.geo.grid import Grid, ground_resolution, lonlat_to_pixel, pixel_to_lonlat

ROOT = Path(__file__).resolve().parents[1]
GRID = Grid(18, 256, 15)
NAMES = ["left", "right", "through", "through_left", "through_right", "left_right"]
LON0, LAT0 = -104.99, 39.74  # Denver


@pytest.mark.parametrize("lat", [39.74, 59.91])
def test_a_box_of_known_pixels_is_its_rectangle_on_the_ground(lat):
    tile = mercantile.tile(10.75, lat, 18)
    b = mercantile.bounds(tile)
    x0, y0 = tile.x * 256, tile.y * 256
    whole, arrow = box_polygons(np.array([[x0, y0, x0 + 256, y0 + 256], [x0 + 10, y0 + 20, x0 + 21, y0 + 24]]), GRID)
    np.testing.assert_allclose(whole.bounds, (b.west, b.south, b.east, b.north), atol=1e-9)
    assert list(whole.exterior.coords)[0] == pytest.approx((b.west, b.north))  # NW first, then NE, SE, SW
    # an 11 x 4 px arrow box measures 11 x 4 ground pixels on the ellipsoid (Web Mercator's sphere: within 0.5 %)
    lon, lat_ = np.array(arrow.exterior.coords).T
    geod = Geod(ellps="WGS84")
    ew = geod.inv(lon[0], lat_[0], lon[1], lat_[1])[2]
    ns = geod.inv(lon[1], lat_[1], lon[2], lat_[2])[2]
    gr = ground_resolution(lat, 18)
    assert ew == pytest.approx(11 * gr, rel=5e-3) and ns == pytest.approx(4 * gr, rel=5e-3)
    assert gr < 0.46 if lat < 50 else gr < 0.30


# --- a hand-made junction: two-way way 1 (west -> east), way 2 crossing north-south at its east end,
# one-way way 3 (three lanes, no turn:lanes in OSM) further north. Ground metres east / north of (LON0, LAT0).

P0 = np.array(lonlat_to_pixel(LON0, LAT0, 18))
GR = ground_resolution(LAT0, 18)


def px(e: float, n: float) -> np.ndarray:
    return P0 + np.array([e, -n]) / GR


def lonlat(e: float, n: float) -> tuple[float, float]:
    lon, lat = pixel_to_lonlat(*px(e, n), 18)
    return float(lon), float(lat)


def arrow(e: float, n: float, along_x: bool = True) -> list[float]:
    """A 5 x 1.8 m arrow box centred at (e, n) metres, lying east-west (or north-south)."""
    c = px(e, n)
    hw, hh = (2.5 / GR, 0.9 / GR) if along_x else (0.9 / GR, 2.5 / GR)
    return [c[0] - hw, c[1] - hh, c[0] + hw, c[1] + hh]


def roads_file(tmp_path) -> Path:
    base = {"highway": "primary", "lanes": None, "lanes:forward": None, "lanes:backward": None, "oneway": None, "width": None,
            "turn:lanes": None, "turn:lanes:forward": None, "turn:lanes:backward": None, "osm_type": "way"}
    feats = [
        {"geometry": LineString([lonlat(0, 0), lonlat(100, 0)]),
         "properties": {**base, "osm_id": 1, "lanes": "4", "lanes:forward": "2", "lanes:backward": "2",
                        "turn:lanes:forward": "left|through", "turn:lanes:backward": "through|through;right"}},
        {"geometry": LineString([lonlat(100, -60), lonlat(100, 60)]), "properties": {**base, "osm_id": 2, "lanes": "2"}},
        {"geometry": LineString([lonlat(0, 40), lonlat(90, 40)]),
         "properties": {**base, "osm_id": 3, "lanes": "3", "oneway": "yes", "turn:lanes": None}},
    ]
    return write_features(feats, tmp_path / "roads.geojson")


def table(boxes: list[list[float]], classes: list[str], scores: list[float] | None = None) -> pd.DataFrame:
    b = np.array(boxes, float).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return pd.DataFrame({"z": 18, "x": (cx // 256).astype(int), "y": (cy // 256).astype(int), "x0": b[:, 0], "y0": b[:, 1],
                         "x1": b[:, 2], "y1": b[:, 3], "class_id": [NAMES.index(c) for c in classes], "class": classes,
                         "score": scores or [0.9] * len(classes)}, columns=COLUMNS)


def junction_detections() -> pd.DataFrame:
    rows = [
        # way 1 eastbound (forward) drives on the south side: lane 1 next to the centre line
        (arrow(60, -1.75), "left"), (arrow(60, -5.25), "through"),
        # a second row of arrows further back, weaker: the best-scoring arrow of a lane wins
        (arrow(33, -1.75), "through"),
        # way 1 westbound (backward), north side: lane 1 (leftmost for a westbound driver) next to the centre line
        (arrow(40, 1.75), "through"),
        # a forward arrow near the junction: way 2's centre line (4 m) is nearer than way 1's (5.25 m)
        (arrow(96, -5.25), "through"),
        # one-way way 3: three lanes centred on the way, lane 1 on the north (left of eastbound travel)
        (arrow(50, 43.5), "left"), (arrow(50, 40), "through"), (arrow(50, 36.5), "through_right"),
        # far from every road
        (arrow(30, 200), "right"),
    ]
    scores = [0.9, 0.9, 0.5, 0.8, 0.7, 0.9, 0.9, 0.9, 0.9]
    return table([r[0] for r in rows], [r[1] for r in rows], scores)


def test_markings_find_their_way_direction_and_lane(tmp_path):
    roads = read_roads(roads_file(tmp_path))
    feats, rows, summary = markings(junction_detections(), roads, GRID)
    got = [(f["properties"]["way"], f["properties"]["direction"], f["properties"]["lane"]) for f in feats]
    assert got == [
        (1, "forward", 1), (1, "forward", 2), (1, "forward", 1), (1, "backward", 1), (1, "forward", 2),
        (3, "forward", 1), (3, "forward", 2), (3, "forward", 3), (None, None, None),
    ]
    assert feats[4]["properties"]["distance_m"] == pytest.approx(5.25, abs=0.01)
    assert all(f["geometry"].geom_type == "Polygon" for f in feats)
    by = {(r["way"], r["direction"]): r for r in rows}
    assert by[(1, "forward")]["arrows"] == ["left", "through"] and by[(1, "forward")]["turn_lanes"] == "left|through"
    assert by[(1, "forward")]["status"] == "agree" and by[(1, "forward")]["suggested"] == {}
    assert by[(1, "backward")]["arrows"] == ["through", None]
    assert by[(1, "backward")]["turn_lanes"] == "through|none" and by[(1, "backward")]["status"] == "partial"
    assert by[(3, "forward")]["key"] == "turn:lanes" and by[(3, "forward")]["osm"] is None
    assert by[(3, "forward")]["status"] == "missing"
    assert by[(3, "forward")]["suggested"] == {"turn:lanes": "left|through|through;right"}
    assert summary == {"detections": 9, "matched": 8, "unmatched": 1, "ways": 2, "directions": 3, "agree": 1, "partial": 1,
                       "differ": 0, "missing": 1, "agreement_rate": 0.5, "seen_agreement_rate": 1.0}


def test_nearest_way_without_the_box_axis_and_left_hand_traffic(tmp_path):
    roads = read_roads(roads_file(tmp_path))
    dets = junction_detections()
    feats, _, _ = markings(dets, roads, GRID, axis_aspect=1.0)
    assert feats[4]["properties"]["way"] == 2  # the nearest centre line, whatever the arrow's axis
    feats, rows, _ = markings(dets, roads, GRID, driving_side="left")
    assert [f["properties"]["direction"] for f in feats[:4]] == ["backward", "backward", "backward", "forward"]
    # left-hand traffic: the centre line is on the driver's right, so the lane next to it is the rightmost
    assert [f["properties"]["lane"] for f in feats[:4]] == [2, 1, 2, 2]
    assert feats[5]["properties"]["direction"] == "forward"  # a one-way way keeps its direction
    feats, _, summary = markings(dets, roads, GRID, max_way_distance_m=1.0)
    assert [f["properties"]["way"] for f in feats].count(None) == 8 and summary["matched"] == 1


def test_turn_lanes_comparison():
    assert compare_turn_lanes("left|through", "left|through") == "agree"
    assert compare_turn_lanes("left;through|right", "through;left|right") == "agree"
    assert compare_turn_lanes("none|through", "left|through") == "partial"
    assert compare_turn_lanes("none|through", "|through") == "agree"  # "" is none in OSM
    assert compare_turn_lanes("left|through", "through|through") == "differ"
    assert compare_turn_lanes("left", "left|through") == "differ"
    assert compare_turn_lanes("left", None) == "missing" and compare_turn_lanes("left", " ") == "missing"


def test_lane_counts_and_widths_from_tags():
    line = (np.zeros((2, 2)),)
    assert Road(1, line, {"lanes": "4"}).lanes("forward") == 2
    assert Road(1, line, {"lanes": "3", "lanes:backward": "1"}).lanes("backward") == 1
    assert Road(1, line, {"turn:lanes:forward": "left|through|right"}).lanes("forward") == 3
    assert Road(1, line, {"oneway": "yes", "lanes": "3"}).lanes("forward") == 3
    assert Road(1, line, {"oneway": "-1"}).directions() == ("backward",)
    assert Road(1, line, {}).lanes("backward") == 1
    assert Road(1, line, {"lanes": "4", "width": "12 m"}).lane_width(3.5) == 3.0
    assert Road(1, line, {"lanes": "four"}).lane_width(3.5) == 3.5


def test_no_detections_give_a_valid_empty_file_and_say_so(tmp_path):
    det = tmp_path / "detections.csv"
    table([], []).to_csv(det, index=False)
    roads = roads_file(tmp_path)
    summary = write_markings(det, roads, tmp_path / "out", GRID, NAMES)
    assert summary["detections"] == 0 and summary["agreement_rate"] is None
    data = json.loads((tmp_path / "out" / MARKINGS_FILE).read_text())
    assert data == {"features": [], "type": "FeatureCollection"}
    assert json.loads((tmp_path / "out" / BY_WAY_FILE).read_text())["ways"] == []
    proc = navml("markings", "--detections", str(det), "--roads", str(roads), "--out", str(tmp_path / "cli"),
                 "--metrics", str(tmp_path / "m.json"), "--params", str(ROOT / "params.yaml"),
                 *truth_files(tmp_path, junction_detections()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "P n/a R 0.000 F1 0.000 (0 of 9 truths, 0 false)" in proc.stdout
    assert "markings: 0 detections" in proc.stdout and "holds no detection" in proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["detections"] == 0
    assert read_features(tmp_path / "cli" / MARKINGS_FILE) == []


def test_cli_writes_markings_and_fails_in_one_line(tmp_path):
    det = tmp_path / "detections.csv"
    junction_detections().to_csv(det, index=False)
    roads = roads_file(tmp_path)
    args = ["--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--params", str(ROOT / "params.yaml"),
            *truth_files(tmp_path, junction_detections())]
    proc = navml("markings", "--detections", str(det), "--roads", str(roads), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "9 detections, 8 on a way" in proc.stdout and "1 agree" in proc.stdout
    assert "over the test split (" in proc.stdout and "P 1.000 R 1.000 F1 1.000 (9 of 9 truths, 0 false)" in proc.stdout
    world = json.loads((tmp_path / "m.json").read_text())["world"]
    assert world["classes"]["left"]["tp"] == 2 and world["classes"]["through_right"]["f1"] == 1.0
    feats = read_features(tmp_path / "out" / MARKINGS_FILE)
    assert len(feats) == 9 and feats[0]["properties"]["class"] == "left" and feats[0]["properties"]["lane"] == 1
    for bad, match in [
        (["--detections", str(det), "--roads", str(tmp_path / "none.geojson")], "OSM roads missing"),
        (["--detections", str(tmp_path / "none.csv"), "--roads", str(roads)], "run the predict_detect stage"),
    ]:
        proc = navml("markings", *bad, *args[:2], "--metrics", str(tmp_path / "m2.json"), *args[4:], cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and match in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "m2.json").exists()
    proc = navml("predict_detect", "--tiles", str(tmp_path / "none.csv"), "--params", str(ROOT / "params.yaml"), cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "tile index not found" in lines[0]


def truth_files(tmp_path, dets: pd.DataFrame, split: str = "test") -> list[str]:
    """The detections as truth labels (extract folder with turn_markings.geojson) and a tile index of their tiles in ``split``."""
    feats = [{"geometry": poly, "properties": {"kind": c, "label": True}}
             for poly, c in zip(box_polygons(dets[["x0", "y0", "x1", "y1"]].to_numpy(float), GRID), dets["class"])]
    write_features(feats, tmp_path / "extract" / "turn_markings.geojson")
    tiles = sorted({(int(x), int(y)) for x, y in zip(dets["x"], dets["y"])})
    pd.DataFrame({"z": 18, "x": [t[0] for t in tiles], "y": [t[1] for t in tiles], "shard": "15-0-0", "block": "0",
                  "split": split}).to_csv(tmp_path / "tiles.csv", index=False)
    return ["--labels", str(tmp_path / "extract"), "--tiles", str(tmp_path / "tiles.csv")]


def test_world_score_counts_per_class_inside_the_scored_tiles():
    truth_boxes = [arrow(60, -1.75), arrow(60, -5.25), arrow(40, 1.75), arrow(30, 200)]
    truth = {0: [(box_polygons(np.array([truth_boxes[0]]), GRID)[0], "turn_markings", "left")],
             2: [(p, "turn_markings", "through") for p in box_polygons(np.array(truth_boxes[1:]), GRID)]}
    shifted = np.array(arrow(40, 1.75)) + [0.0, 1.5, 0.0, 1.5]  # 1.5 px off a 3.9 px high box: IoU 0.45
    dets = table([arrow(60, -1.75), arrow(60, -5.25), list(shifted), arrow(0, -20)], ["left", "left", "through", "right"])
    feats, _, _ = markings(dets, [], GRID)
    far = mercantile.tile(*lonlat(30, 200), 18)
    tiles = sorted({mercantile.Tile(int(x), int(y), 18) for x, y in zip(dets["x"], dets["y"])} - {far})
    w = world_score(feats, truth, tiles, GRID, NAMES)
    assert (w["truths"], w["detections"]) == (3, 4)  # the truth at (30, 200) lies outside the scored tiles
    assert (w["tp"], w["fp"], w["fn"]) == (1, 3, 2)
    assert w["classes"]["left"] == {"truths": 1, "tp": 1, "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0, "f1": 0.6667}
    assert w["classes"]["through"]["fn"] == 2 and w["classes"]["through"]["recall"] == 0.0
    assert w["classes"]["right"] == {"truths": 0, "tp": 0, "fp": 1, "fn": 0, "precision": 0.0, "recall": None, "f1": 0.0}
    assert w["classes"]["left_right"]["f1"] is None
    assert world_score(feats, truth, tiles, GRID, NAMES, iou=0.4)["classes"]["through"]["tp"] == 1


def test_read_roads_needs_the_file(tmp_path):
    with pytest.raises(InputError, match="extract"):
        read_roads(tmp_path / "roads.geojson")
