import json
import math

import mercantile
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.features import rasterize
from shapely import affinity
from shapely.geometry import Polygon, box

from navml.config import ClassSpec, PostProcess
from navml.errors import ConfigError, InputError
from navml.geo.features import read_features, to_pixels
from navml.geo.grid import Tile, Window, lonlat_to_mercator, shard_window, window_transform
from navml.geo.store import Store
from navml.segment.vectorize import polygon_feature, trace, vectorize_array, vectorize_store

GEOD = Geod(ellps="WGS84")
PARKING = ClassSpec("parking", "segmentation", post=PostProcess(threshold=0.5, open_m=1.5, close_m=2.0, simplify_m=1.0, min_area_m2=20))


def pixel_poly_to_mask(polys, window: Window) -> np.ndarray:
    """Burn pixel-coordinate polygons (global px) into a window (pixel centres inside)."""
    shapes = [(affinity.translate(p, -window.col, -window.row), 1) for p in polys]
    return rasterize(shapes, out_shape=(window.height, window.width), transform=Affine.identity(), dtype="uint8")


def write_mosaic(store: Store, layer: str, mosaic: np.ndarray, window: Window) -> None:
    """Cut a (bands, rows, cols) mosaic covering whole shards into shard files."""
    g = store.grid
    n = g.shard_size
    for sy in range(window.row // n, (window.row + window.height) // n):
        for sx in range(window.col // n, (window.col + window.width) // n):
            sw = shard_window(Tile(sx, sy, g.shard_zoom), g)
            r, c = sw.row - window.row, sw.col - window.col
            store.write_shard(layer, Tile(sx, sy, g.shard_zoom), mosaic[:, r : r + n, c : c + n])


def match_iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


@pytest.fixture
def city_shards(small_grid):
    """2 x 2 shards (1024 px each) around a shard corner at 39.7 N."""
    t = mercantile.tile(-104.99, 39.74, small_grid.shard_zoom)
    n = small_grid.shard_size
    return Window(t.x * n, t.y * n, 2 * n, 2 * n)


def test_lot_across_shard_corner_is_one_polygon_equal_to_mosaic(tmp_path, small_grid, city_shards):
    w = city_shards
    n = small_grid.shard_size
    cx, cy = w.col + n, w.row + n  # the shard corner, also a tile corner
    # A lot with a hole centred on the corner, an L crossing the vertical border, a
    # strip along the horizontal border, specks and a lot inside one shard.
    lot = Polygon([(cx - 90, cy - 60), (cx + 70, cy - 75), (cx + 85, cy + 50), (cx - 70, cy + 80)],
                  [[(cx - 20, cy - 15), (cx + 25, cy - 20), (cx + 20, cy + 20), (cx - 15, cy + 18)]])
    ell = Polygon([(cx - 40, w.row + 200), (cx + 60, w.row + 200), (cx + 60, w.row + 240), (cx + 5, w.row + 240),
                   (cx + 5, w.row + 380), (cx - 40, w.row + 380)])
    strip = affinity.rotate(box(w.col + 300, cy - 12, w.col + 700, cy + 14), 8)
    inner = affinity.rotate(box(w.col + 1400, w.row + 1500, w.col + 1500, w.row + 1560), 20)
    mask = pixel_poly_to_mask([lot, ell, strip, inner], w)
    rng = np.random.default_rng(3)
    probs = np.where(mask > 0, rng.integers(150, 256, mask.shape), rng.integers(0, 90, mask.shape)).astype("uint8")
    specks = rng.random(mask.shape) < 0.002
    probs[specks] = 255
    mosaic = probs[None]
    store = Store(tmp_path / "predict", small_grid)
    write_mosaic(store, "probs", mosaic, w)

    out = tmp_path / "pred.geojson"
    counts = vectorize_store(store, "probs", [PARKING], out, progress=False)
    got = read_features(out)
    ref = vectorize_array(mosaic, w, small_grid, [PARKING])
    assert counts == {"parking": 4} == {"parking": len(ref)}
    for f, r in zip(got, ref):
        assert f["geometry"].is_valid and f["geometry"].geom_type == "Polygon"
        assert match_iou(f["geometry"], r["geometry"]) > 0.99
        assert f["properties"]["area_m2"] == pytest.approx(r["properties"]["area_m2"], rel=1e-6)
        assert f["properties"]["score"] == pytest.approx(r["properties"]["score"], abs=1e-4)
    # The corner lot is one polygon with its hole, and its pixels cross all four shards.
    big = max(got, key=lambda f: f["properties"]["area_m2"])
    poly = to_pixels(big["geometry"], small_grid.zoom)
    assert len(poly.interiors) == 1
    assert match_iou(poly, lot) > 0.95
    assert poly.bounds[0] < cx < poly.bounds[2] and poly.bounds[1] < cy < poly.bounds[3]
    assert 0.6 < big["properties"]["score"] < 0.85  # mean of 150..255 over the lot


def test_pieces_touching_at_a_corner_stay_apart_like_the_mosaic(tmp_path, small_grid, city_shards):
    w = city_shards
    n = small_grid.shard_size
    cx, cy = w.col + n, w.row + n
    # Two squares meeting only at the shard corner point.
    a = box(cx - 40, cy - 40, cx, cy)
    b = box(cx, cy, cx + 40, cy + 40)
    mosaic = (pixel_poly_to_mask([a, b], w) * 255)[None].astype("uint8")
    store = Store(tmp_path / "p", small_grid)
    write_mosaic(store, "probs", mosaic, w)
    spec = ClassSpec("parking", "segmentation", post=PostProcess(0.5, 0.0, 0.0, 0.5, 10))
    vectorize_store(store, "probs", [spec], tmp_path / "o.geojson", progress=False)
    got = read_features(tmp_path / "o.geojson")
    assert len(got) == 2 == len(vectorize_array(mosaic, w, small_grid, [spec]))


def known_lots(lon: float, lat: float) -> list[Polygon]:
    """Rotated rectangles, an L and a lot with a courtyard, in WGS84, about 20..70 m across."""
    m_lon = 111320 * math.cos(math.radians(lat))
    m_lat = 110574

    def rect(dx, dy, w, h, angle):
        r = box(lon + dx / m_lon, lat + dy / m_lat, lon + (dx + w) / m_lon, lat + (dy + h) / m_lat)
        # rotate in a metric frame: scale to metres, rotate, scale back
        r = affinity.scale(r, m_lon, m_lat, origin=(lon, lat))
        r = affinity.rotate(r, angle, origin="centroid")
        return affinity.scale(r, 1 / m_lon, 1 / m_lat, origin=(lon, lat))

    ell = rect(0, 0, 60, 20, 0).union(rect(0, 0, 20, 50, 0))
    court = rect(100, 0, 70, 60, 10).difference(rect(120, 18, 25, 22, 10))
    return [rect(0, 100, 40, 25, 17), rect(80, 90, 55, 30, 33), rect(-80, 20, 25, 45, 71), ell, court]


@pytest.mark.parametrize("lat", [39.0, 60.0])
def test_rasterize_vectorize_round_trip(tmp_path, small_grid, lat):
    lon = 10.001
    lots = known_lots(lon, lat)
    tile = mercantile.tile(lon, lat, small_grid.shard_zoom)
    shard = Tile(tile.x, tile.y, tile.z)
    store = Store(tmp_path / "store", small_grid)
    for sx in (shard.x - 1, shard.x, shard.x + 1):
        for sy in (shard.y - 1, shard.y, shard.y + 1):
            s = Tile(sx, sy, shard.z)
            tr = window_transform(shard_window(s, small_grid), small_grid.zoom, small_grid.tile_size)
            merc = [shapely.transform(g, lambda c: np.column_stack(lonlat_to_mercator(c[:, 0], c[:, 1]))) for g in lots]
            mask = rasterize([(g, 1) for g in merc], out_shape=(small_grid.shard_size,) * 2, transform=tr, dtype="uint8")
            store.write_shard("masks", s, mask)
    spec = ClassSpec("parking", "segmentation", post=PostProcess(0.5, 1.5, 2.0, 1.0, 100))
    out = tmp_path / "labels.geojson"
    vectorize_store(store, "masks", [spec], out, kind="labels", progress=False)
    got = [f for f in read_features(out)]
    assert len(got) == len(lots)
    for lot in lots:
        best = max(got, key=lambda f: match_iou(f["geometry"], lot))
        g = best["geometry"]
        assert g.is_valid
        assert len(g.interiors) == len(lot.interiors)
        # IoU in a local metric frame (degrees are anisotropic but IoU is affine invariant)
        assert match_iou(g, lot) > 0.95
        true_m2 = abs(GEOD.geometry_area_perimeter(lot)[0])
        assert best["properties"]["area_m2"] == pytest.approx(true_m2, rel=0.02)
        assert best["properties"]["score"] == 1.0
        if not lot.interiors and len(lot.exterior.coords) == 5:
            assert len(g.exterior.coords) - 1 <= 6  # a rectangle stays a (nearly) 4-corner polygon


def adversarial_masks() -> dict[str, np.ndarray]:
    out = {}
    m = np.zeros((80, 120), bool)
    m[10:60, 10:50] = True
    m[10:60, 70:110] = True
    m[34:35, 50:70] = True  # one-pixel neck
    out["neck"] = m
    m = np.zeros((80, 80), bool)
    m[5:75, 5:75] = True
    m[7:40, 7:40] = False  # hole one pixel from the outer edge, on two sides
    m[6:7, 20:22] = False  # and a notch almost breaking through
    out["hole_near_edge"] = m
    m = np.zeros((60, 200), bool)
    m[5:55, 5:195] = True
    for x in range(10, 190, 6):
        m[5:45, x : x + 3] = False  # comb of thin slots
    out["comb"] = m
    m = np.zeros((101, 101), bool)
    for r in range(5, 50, 6):
        m[50 - r : 51 + r, 50 - r] = m[50 - r : 51 + r, 50 + r] = True
        m[50 - r, 50 - r : 51 + r] = m[50 + r, 50 - r : 51 + r] = True
        m[50 - r : 50 - r + 3, 50 - r] = r == 5  # open each ring but the innermost
    out["nested_rings"] = m
    rng = np.random.default_rng(1)
    out["noise"] = rng.random((60, 60)) < 0.55
    m = np.zeros((60, 60), bool)
    m[10:50, 10:50] = True
    m[11:49:2, 11:49:2] = False  # many one-pixel holes, each a pixel from the next
    out["sieve"] = m
    return out


@pytest.mark.parametrize("name", list(adversarial_masks()))
@pytest.mark.parametrize("simplify_m", [0.5, 2.0, 6.0])
def test_simplification_keeps_geometry_valid(name, simplify_m, small_grid):
    mask = adversarial_masks()[name]
    t = mercantile.tile(13.4, 52.5, small_grid.zoom)
    pieces = trace(mask, None, t.x * 256, t.y * 256)
    assert pieces
    spec = ClassSpec("parking", "segmentation", post=PostProcess(0.5, 0, 0, simplify_m, 0.0))
    for p in pieces:
        f = polygon_feature(p, spec, small_grid, "labels")
        assert f is not None, (name, p.geom.area)  # min_area_m2 is 0: every piece is kept, however small
        g = f["geometry"]
        assert g.geom_type == "Polygon" and g.is_valid, (name, shapely.is_valid_reason(g))
        shell = Polygon(g.exterior)
        for hole in g.interiors:
            assert shell.contains(Polygon(hole))
        # simplification moves the outline by at most about the tolerance
        px = to_pixels(g, small_grid.zoom)
        assert abs(px.area - p.geom.area) <= p.geom.length * 6.0 / 0.46 + 1


def test_threshold_out_of_range_and_missing_layer(tmp_path, small_grid, city_shards):
    bad = ClassSpec("parking", "segmentation", post=PostProcess(threshold=1.5))
    store = Store(tmp_path / "p", small_grid)
    with pytest.raises(ConfigError, match="threshold"):
        vectorize_store(store, "probs", [bad], tmp_path / "o.geojson", progress=False)
    with pytest.raises(InputError, match="no shards"):
        vectorize_store(store, "probs", [PARKING], tmp_path / "o.geojson", progress=False)
    assert not (tmp_path / "o.geojson").exists()


def test_empty_prediction_gives_valid_empty_geojson(tmp_path, small_grid, city_shards):
    store = Store(tmp_path / "p", small_grid)
    s = Tile(city_shards.col // 1024, city_shards.row // 1024, small_grid.shard_zoom)
    store.write_shard("probs", s, np.full((1, 1024, 1024), 100, "uint8"))  # p = 0.39 everywhere
    out = tmp_path / "o.geojson"
    assert vectorize_store(store, "probs", [PARKING], out, progress=False) == {"parking": 0}
    data = json.loads(out.read_text())
    assert data == {"type": "FeatureCollection", "features": []}


def test_probability_one_is_kept_and_threshold_one_selects_it(tmp_path, small_grid, city_shards):
    w = city_shards
    s = Tile(w.col // 1024, w.row // 1024, small_grid.shard_zoom)
    arr = np.zeros((1, 1024, 1024), "uint8")
    arr[0, 100:200, 100:200] = 255
    arr[0, 400:500, 400:500] = 254
    store = Store(tmp_path / "p", small_grid)
    store.write_shard("probs", s, arr)
    spec = ClassSpec("parking", "segmentation", post=PostProcess(1.0, 0, 0, 1.0, 10))
    feats = vectorize_array(arr, Window(w.col, w.row, 1024, 1024), small_grid, [spec])
    assert len(feats) == 1 and feats[0]["properties"]["score"] == 1.0
    assert feats[0]["properties"]["area_m2"] == pytest.approx(100 * 100 * 0.597**2 * math.cos(math.radians(39.74)) ** 2, rel=0.02)


def test_cli_threshold_outside_0_1_is_one_line_and_writes_nothing(tmp_path, small_grid, city_shards):
    import yaml
    from conftest import navml as run_navml

    store = Store(tmp_path / "data/predict", small_grid)
    s = Tile(city_shards.col // 1024, city_shards.row // 1024, small_grid.shard_zoom)
    arr = np.zeros((1, 1024, 1024), "uint8")
    arr[0, 100:300, 100:250] = 230
    store.write_shard("probs", s, arr)
    params = {
        "classes": {"parking": {"task": "segmentation", "tags": {"amenity": "parking"}}},
        "post": {"parking": {"threshold": 1.2}},
        "grid": {"zoom": 18, "tile_size": 256, "shard_zoom": 16},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def navml(*args):
        return run_navml("vectorize", *args, cwd=tmp_path)

    for proc in (navml(), navml("--threshold", "-0.1")):
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("navml: error:") and "0..1" in proc.stderr
    assert not (tmp_path / "data/output").exists()
    params["post"]["parking"]["threshold"] = 0.9  # the option overrides it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = navml("--threshold", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "parking 1 polygons" in proc.stdout
    (feat,) = read_features(tmp_path / "data/output/predictions.geojson")
    assert feat["properties"]["score"] == pytest.approx(230 / 255, abs=1e-3)


def test_probs_of_other_classes_are_refused(tmp_path, small_grid, city_shards):
    store = Store(tmp_path / "p", small_grid)
    s = Tile(city_shards.col // 1024, city_shards.row // 1024, small_grid.shard_zoom)
    store.write_shard("probs", s, np.zeros((1, 1024, 1024), "uint8"), tags={"classes": "building"})
    with pytest.raises(InputError, match="classes 'building', the registry has 'parking'"):
        vectorize_store(store, "probs", [PARKING], tmp_path / "o.geojson", progress=False)
    with pytest.raises(InputError, match="1 band.*2 segmentation"):
        vectorize_store(store, "probs", [PARKING, PARKING], tmp_path / "o.geojson", progress=False)


def test_no_polygon_where_the_layer_has_no_data(tmp_path, small_grid, city_shards):
    """High probabilities on both sides of a 3 px strip without data (an orthophoto's edge seam):
    closing would bridge it into one polygon; with the valid-data mask no polygon covers a pixel
    without data, and the shard-by-shard result equals the mosaic's."""
    w = city_shards
    n = small_grid.shard_size
    g = small_grid
    probs = np.zeros((1, 2 * n, 2 * n), "uint8")
    probs[0, :, : n - 3] = 230  # p = 0.9 over the west shards
    probs[0, n - 100 : n + 100, n : n + 200] = 230  # a 200 px lot just east of the strip, across the shard corner
    valid = np.ones((2 * n, 2 * n), bool)
    valid[:, n - 3 : n] = False  # the strip: no data, probability 0
    store = Store(tmp_path / "p", g)
    for sy in (0, 1):
        for sx in (0, 1):
            rows, cols = slice(sy * n, (sy + 1) * n), slice(sx * n, (sx + 1) * n)
            store.write_shard("probs", Tile(w.col // n + sx, w.row // n + sy, g.shard_zoom), probs[:, rows, cols], valid=valid[rows, cols])
    spec = ClassSpec("parking", "segmentation", post=PostProcess(threshold=0.5, open_m=1.0, close_m=4.0, simplify_m=0.0, min_area_m2=1))
    # Without the mask, closing (4 m = 9 px) joins the lot to the west area across the strip.
    assert len(vectorize_array(probs, w, g, [spec])) == 1

    vectorize_store(store, "probs", [spec], tmp_path / "o.geojson", progress=False)

    feats = read_features(tmp_path / "o.geojson")
    ref = vectorize_array(probs, w, g, [spec], valid=valid)
    assert len(feats) == len(ref) == 2
    lot, west = sorted((to_pixels(f["geometry"], g.zoom) for f in feats), key=lambda p: p.area)
    assert lot.area == pytest.approx(200 * 200, rel=0.01)
    assert west.area == pytest.approx((n - 3) * 2 * n, rel=0.01)
    assert not (pixel_poly_to_mask([lot, west], w).astype(bool) & ~valid).any()
    for a, b in zip(sorted(feats, key=lambda f: f["properties"]["area_m2"]), sorted(ref, key=lambda f: f["properties"]["area_m2"])):
        assert match_iou(a["geometry"], b["geometry"]) > 0.999
