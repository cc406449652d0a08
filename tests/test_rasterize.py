import math

import mercantile
import numpy as np
import pandas as pd
import pytest
from pyproj import Geod
from shapely import affinity
from shapely.geometry import box

from navml.data.rasterize import rasterize_labels, shard_mask, tile_boxes, write_masks
from navml.geo.grid import Tile, lonlat_to_pixel, pixel_area_m2, tile_polygon, tiles_of_shard
from navml.geo.store import Store

GEOD = Geod(ellps="WGS84")


def lot_at(lon, lat, w_m, h_m, angle=0.0):
    """A w x h metre rectangle (WGS84) centred on lon/lat, rotated by angle degrees."""
    dlon = w_m / (111320 * math.cos(math.radians(lat)))
    dlat = h_m / 110540
    r = box(lon - dlon / 2, lat - dlat / 2, lon + dlon / 2, lat + dlat / 2)
    return affinity.rotate(r, angle, origin="centroid") if angle else r


def rasterized_error(lot, grid):
    """Relative error of a lot's rasterized area (m²) against its geodesic area."""
    true_m2 = abs(GEOD.geometry_area_perimeter(lot)[0])
    c = lot.centroid
    t = mercantile.tile(c.x, c.y, grid.zoom)
    shard = mercantile.parent(t, zoom=grid.shard_zoom)
    mask = shard_mask(shard, grid, [[lot]])
    px, py = lonlat_to_pixel(*np.array(lot.exterior.coords).T, grid.zoom)
    n = grid.shard_size
    inside = px.min() > shard.x * n and py.min() > shard.y * n and px.max() < (shard.x + 1) * n and py.max() < (shard.y + 1) * n
    area_m2 = mask.sum() * pixel_area_m2(c.y, grid.zoom)
    return (area_m2 - true_m2) / true_m2, true_m2, inside


@pytest.mark.parametrize("lat", [0.0, 39.0, 60.0, -33.9])
@pytest.mark.parametrize("size_m,angle", [(20, 17), (20, 33), (35, 12), (60, 45), (28, 71)])
def test_rasterized_area_within_one_percent(lat, size_m, angle, small_grid):
    rng = np.random.default_rng(7)
    for _ in range(5):
        lon = 10.0 + rng.uniform(0, 0.002)
        la = lat + rng.uniform(0, 0.002)
        err, true_m2, inside = rasterized_error(lot_at(lon, la, size_m, size_m * 1.1, angle), small_grid)
        if not inside:
            continue
        assert true_m2 >= 400
        assert abs(err) < 0.01, (lon, la, err)


@pytest.mark.parametrize("lat", [0.0, 39.0, 60.0, -33.9])
def test_axis_aligned_lots_are_unbiased(lat, small_grid):
    # Edges parallel to the pixel grid carry up to half a pixel of quantization per
    # edge; over many positions the error averages out and stays small per lot.
    rng = np.random.default_rng(11)
    errs = []
    for _ in range(40):
        lot = lot_at(10.0 + rng.uniform(0, 0.002), lat + rng.uniform(0, 0.002), 20, 22)
        err, _, inside = rasterized_error(lot, small_grid)
        if inside:
            errs.append(err)
    assert len(errs) > 20
    assert abs(np.mean(errs)) < 0.005
    # worst case: one pixel row and one pixel column (~33 px per side at 0.6 m/px)
    assert max(abs(e) for e in errs) < 0.06


def test_masks_respect_class_order_and_tiles(tmp_path, small_grid):
    shard = Tile(34308 // 4, 24981 // 4, 16)
    tiles = list(tiles_of_shard(shard, small_grid))
    centre = tile_polygon(tiles[5]).centroid
    a = lot_at(centre.x, centre.y, 60, 60)
    b = lot_at(centre.x, centre.y, 20, 20)
    store = Store(tmp_path, small_grid)
    counts = write_masks(store, tiles[:8], [[a], [b]], progress=False)
    m = store.read_shard("masks", shard)[0]
    assert counts["shards"] == 1
    assert set(np.unique(m)) == {0, 1, 2}
    # the later class wins in its square; pixel counts add up
    assert counts["pixels_1"] + counts["pixels_2"] == int((m > 0).sum())
    # tiles not asked for stay empty
    assert m[512:, :].sum() == 0
    t = store.read_tile("masks", tiles[5])
    assert t.shape == (1, 256, 256) and t[0, 128, 128] == 2


def test_boxes_are_clipped_to_tiles_in_tile_pixels(small_grid):
    t = Tile(137232, 99924, 18)
    poly = tile_polygon(t)
    w, s, e, n = poly.bounds
    # a marking straddling the east edge of t: 70 % inside t, 30 % in its neighbour
    dx = (e - w) / 256
    mark = box(e - 14 * dx, s + (n - s) * 0.5, e + 6 * dx, s + (n - s) * 0.52)
    df = tile_boxes([t, Tile(t.x + 1, t.y, 18)], small_grid, {3: [(mark, "turn", "left")]})
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.x, row.y, row.class_id, row["name"]) == (t.x, t.y, 3, "left")
    assert row.xmin == pytest.approx(242, abs=0.05) and row.xmax == pytest.approx(256, abs=0.01)
    assert 0 < row.ymin < row.ymax < 256


def test_unknown_pixels_outside_complete_mapping(tmp_path, small_grid):
    from navml.data.rasterize import IGNORE

    shard = Tile(34308 // 4, 24981 // 4, 16)
    tiles = list(tiles_of_shard(shard, small_grid))
    w, s, e, n = tile_polygon(shard).bounds
    west_half = box(w, s, (w + e) / 2, n)
    c = tile_polygon(tiles[15]).centroid  # a lot in the east half, outside complete mapping
    lot = lot_at(c.x, c.y, 40, 40)
    mask = shard_mask(shard, small_grid, [[lot]], tiles, complete=[west_half])
    assert (mask[:, :500] == 0).all()
    assert (mask[:, 524:] != 0).all()
    values = set(np.unique(mask[:, 524:]))
    assert values == {1, IGNORE}  # labels stay labels; the rest is unknown


def test_mapped_road_surfaces_are_background_outside_complete_mapping(small_grid):
    from navml.data.rasterize import IGNORE

    shard = Tile(34308 // 4, 24981 // 4, 16)
    tiles = list(tiles_of_shard(shard, small_grid))
    w, s, e, n = tile_polygon(shard).bounds
    west_half = box(w, s, (w + e) / 2, n)
    mid = (s + n) / 2
    road = box(w, mid - 0.00005, e, mid + 0.00005)  # an east-west road surface across the shard
    c = tile_polygon(tiles[15]).centroid
    lot = lot_at(c.x, c.y, 40, 40)
    mask = shard_mask(shard, small_grid, [[lot]], tiles, complete=[west_half], background=[road])
    _, row = lonlat_to_pixel(w, mid, small_grid.zoom, small_grid.tile_size)
    r = int(row) - shard.y * small_grid.shard_size
    assert (mask[r, :] == 0).all()  # the road is background in both halves
    assert set(np.unique(mask[:, 524:])) == {0, 1, IGNORE}
    assert (mask[:, :500] == 0).all()
    # a class pixel under a road stays the class: labels win over background
    under = shard_mask(shard, small_grid, [[lot]], tiles, complete=[west_half], background=[lot.buffer(0.0001)])
    assert (under == 1).sum() == (mask == 1).sum()


def test_rasterize_labels_writes_masks_boxes_and_legend(tmp_path, small_grid):
    import json

    from navml.config import parse_classes
    from navml.errors import InputError
    from navml.geo.features import read_features, write_features

    shard = Tile(8577, 6245, 16)
    tiles = list(tiles_of_shard(shard, small_grid))
    w, s, e, n = tile_polygon(tiles[0]).bounds
    lot = box(w + (e - w) * 0.25, s + (n - s) * 0.25, w + (e - w) * 0.75, s + (n - s) * 0.75)  # the middle quarter of tile 0
    mark = box(w + (e - w) * 0.1, s + (n - s) * 0.1, w + (e - w) * 0.2, s + (n - s) * 0.2)
    labels = tmp_path / "extract"
    write_features([{"geometry": lot, "properties": {}}, {"geometry": lot.buffer(1e-5), "properties": {"label": False}}], labels / "parking.geojson")
    write_features([{"geometry": mark, "properties": {"kind": "left"}}], labels / "marks.geojson")
    classes = parse_classes(
        {
            "parking": {"task": "segmentation", "tags": {"amenity": "parking"}},
            "marks": {"task": "detection", "labels": "x.geojson", "names": ["left", "right"], "label_field": "kind"},
        }
    )
    store = Store(tmp_path / "store", small_grid)
    legend = rasterize_labels(labels, tiles, store, classes, complete=None, roads=True)
    assert legend["shards"] == 1 and legend["boxes"] == 1
    assert legend["pixels"]["parking"] == pytest.approx(128 * 128, rel=0.02)  # half the tile side squared, px
    assert legend["box_class_ids"] == {"0": "marks:left", "1": "marks:right"}
    assert json.loads((tmp_path / "store/labels.json").read_text())["mask_values"] == {"1": "parking", "255": "ignore"}
    boxes = pd.read_csv(tmp_path / "store/boxes.csv")
    assert list(boxes["name"]) == ["left"] and boxes["xmin"][0] == pytest.approx(25.6, abs=1) and boxes["ymax"][0] == pytest.approx(230.4, abs=1)
    assert (store.read_tile("masks", tiles[0])[0] == 1).sum() == legend["pixels"]["parking"]
    write_features([{"geometry": mark, "properties": {"kind": "u_turn"}}], labels / "marks.geojson")
    with pytest.raises(InputError, match="u_turn"):
        rasterize_labels(labels, tiles, store, classes, complete=None, roads=True)
    (labels / "parking.geojson").unlink()
    with pytest.raises(InputError, match="run the extract stage"):
        rasterize_labels(labels, tiles, store, classes, complete=None, roads=True)
    assert len(read_features(labels / "marks.geojson")) == 1


# --- per-class completeness, overlaps, boxes of points (issue 7) -----------


def quadrants(shard):
    w, s, e, n = tile_polygon(shard).bounds
    mx, my = (w + e) / 2, (s + n) / 2
    return {"west": box(w, s, mx, n), "north": box(w, my, e, n)}


def test_background_only_where_every_class_is_complete(small_grid):
    from navml.data.rasterize import IGNORE

    shard = Tile(34308 // 4, 24981 // 4, 16)
    q = quadrants(shard)
    # class 1 complete in the west half, class 2 in the north half: background only in the north-west quadrant
    mask = shard_mask(shard, small_grid, [[], []], class_complete=[[q["west"]], [q["north"]]])
    h = small_grid.shard_size // 2
    assert (mask[:h - 2, :h - 2] == 0).all()
    assert (mask[h + 2:, :] == IGNORE).all() and (mask[:, h + 2:] == IGNORE).all()
    # a class complete everywhere (None) adds no unknown pixels
    only_west = shard_mask(shard, small_grid, [[], []], class_complete=[[q["west"]], None])
    assert (only_west[:, : h - 2] == 0).all() and (only_west[:, h + 2 :] == IGNORE).all()
    assert (shard_mask(shard, small_grid, [[], []], class_complete=[None, None]) == 0).all()


def test_complete_areas_per_class_with_the_global_default(tmp_path):
    from navml.config import parse_classes
    from navml.data.rasterize import complete_areas
    from navml.errors import InputError
    from navml.geo.features import write_features

    west, north = box(0, 0, 1, 2), box(0, 1, 2, 2)
    write_features([{"geometry": west, "properties": {}}], tmp_path / "west.geojson")
    write_features([{"geometry": north, "properties": {}}], tmp_path / "north.geojson")
    classes = parse_classes({
        "parking": {"task": "segmentation", "tags": {"amenity": "parking"}},  # takes rasterize.complete
        "building": {"task": "segmentation", "tags": {"building": "*"}, "osm_tags": {"building": "yes"}, "complete": str(tmp_path / "north.geojson")},
        "pitch": {"task": "segmentation", "tags": {"leisure": "pitch"}, "complete": ""},  # complete everywhere
        "marks": {"task": "detection", "labels": "m.geojson"},
    })
    areas = complete_areas(classes, str(tmp_path / "west.geojson"))
    assert [None if a is None else [g.bounds for g in a] for a in areas] == [[west.bounds], [north.bounds], None]
    assert complete_areas(classes, None)[0] is None
    with pytest.raises(InputError, match=r"classes.building.complete"):
        complete_areas(parse_classes({"building": {"task": "segmentation", "tags": {"b": "*"}, "osm_tags": {"b": "yes"}, "complete": "nope.geojson"}}), None)


def test_overlaps_are_counted_and_the_later_class_wins(tmp_path, small_grid):
    from navml.data.rasterize import overlapping_features

    shard = Tile(34308 // 4, 24981 // 4, 16)
    tiles = list(tiles_of_shard(shard, small_grid))
    c = tile_polygon(tiles[5]).centroid
    lot = lot_at(c.x, c.y, 20, 20)  # a tile is ~24 m wide at this latitude (81 N)
    building = lot_at(c.x, c.y, 8, 8)  # inside the lot
    far = tile_polygon(tiles[15]).centroid
    shed = lot_at(far.x, far.y, 5, 5)  # three tiles away
    assert overlapping_features([[lot], [building, shed]]) == 1
    assert overlapping_features([[lot, shed], []]) == 0
    stats = {}
    m = shard_mask(shard, small_grid, [[lot], [building, shed]], stats=stats)
    assert stats["overlap_pixels"] == int((m == 2).sum()) - int((shard_mask(shard, small_grid, [[], [shed]]) == 2).sum())
    # the building's 8 m x 8 m in pixels of ~0.093 m (zoom 18 at 81 N): ~7400
    assert stats["overlap_pixels"] == pytest.approx(64 / pixel_area_m2(c.y, small_grid.zoom), rel=0.03)
    counts = write_masks(Store(tmp_path, small_grid), tiles, [[lot], [building]], progress=False)
    assert counts["overlap_pixels"] == stats["overlap_pixels"]


def test_points_get_box_m_and_zero_area_boxes_are_counted(small_grid):
    from shapely.geometry import LineString, Point

    from navml.geo.grid import ground_resolution

    t = Tile(137232, 99924, 18)
    c = tile_polygon(t).centroid
    point = Point(c.x, c.y)
    flat_line = LineString([(c.x - 0.00005, c.y + 0.0001), (c.x + 0.00005, c.y + 0.0001)])
    labels = {0: [(point, "hydrant", "hydrant")], 1: [(flat_line, "stop", "stop"), (point, "stop", "stop")]}
    stats = {}
    df = tile_boxes([t], small_grid, labels, stats=stats)
    assert len(df) == 0 and stats == {"zero_area": 3, "zero_area:hydrant": 1, "zero_area:stop": 2}
    df = tile_boxes([t], small_grid, labels, box_m={0: (5.0, 2.0), 1: (1.0, 1.0)})
    assert len(df) == 3
    res = ground_resolution(c.y, small_grid.zoom, small_grid.tile_size)
    hyd = df[df["class"] == "hydrant"].iloc[0]
    assert hyd.xmax - hyd.xmin == pytest.approx(5.0 / res, abs=0.02) and hyd.ymax - hyd.ymin == pytest.approx(2.0 / res, abs=0.02)
    line = df[(df["class"] == "stop")].sort_values("ymin").iloc[0]  # the line lies north of the point
    assert line.ymax - line.ymin == pytest.approx(1.0 / res, abs=0.02)  # zero height -> 1 m
    assert line.xmax - line.xmin == pytest.approx(2 * 0.00005 / 360 * 256 * 2**18, rel=0.01)  # its own length


def test_rasterize_stage_on_a_cut_extract_with_points(tmp_path, small_grid):
    """extract (cut OSM file: points, lines, a road cut at the edge) -> rasterize_labels: masks, boxes, notes."""
    import json

    from test_extract import CUT_BOUNDS, DET_CLASSES, write_cut_xml

    from navml.config import parse_classes
    from navml.data.extract import extract
    from navml.data.rasterize import IGNORE, rasterize_labels
    from navml.geo.features import write_features

    classes = parse_classes({**DET_CLASSES, "hydrant": {"task": "detection", "tags": {"emergency": "fire_hydrant"}}})  # no box_m
    extract(write_cut_xml(tmp_path / "cut.osm"), classes, tmp_path / "extract", progress=False)
    w, s, e, n = CUT_BOUNDS
    tiles = [Tile(t.x, t.y, t.z) for t in mercantile.tiles(w, s, e, n, 18)]
    west = box(w, s, (w + e) / 2, n)
    write_features([{"geometry": west, "properties": {}}], tmp_path / "west.geojson")
    store = Store(tmp_path / "store", small_grid)
    legend = rasterize_labels(tmp_path / "extract", tiles, store, classes, complete=str(tmp_path / "west.geojson"), progress=False)
    on_disk = json.loads((tmp_path / "store" / "labels.json").read_text())
    assert on_disk["complete"] == {"parking": str(tmp_path / "west.geojson")} and on_disk["boxes"] == legend["boxes"]
    boxes = pd.read_csv(tmp_path / "store" / "boxes.csv")
    # arrows: 2 nodes with box_m 2 x 5 m and the through line; the u_turn node names none; hydrant: no box_m
    assert sorted(boxes["name"]) == ["left", "left", "through"] and legend["zero_area_boxes"] == {"hydrant": 1}
    assert any("1 labels of class 'hydrant' are points" in n and "classes.hydrant.box_m" in n for n in legend["notes"])
    left = boxes[boxes["name"] == "left"].iloc[0]
    res = 0.597 * math.cos(math.radians(39.74))  # m/px at zoom 18
    assert left.xmax - left.xmin == pytest.approx(2.0 / res, rel=0.02) and left.ymax - left.ymin == pytest.approx(5.0 / res, rel=0.02)
    # masks: the lot is class 1; outside the complete west half, unlabelled pixels are unknown except on the road
    values = set()
    for t in tiles:
        values |= set(np.unique(store.read_tile("masks", t)).tolist())
    assert values == {0, 1, IGNORE} and legend["pixels"]["parking"] > 1000
