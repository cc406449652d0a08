import math

import mercantile
import numpy as np
import pytest

from navml.errors import ConfigError
from navml.geo.grid import (
    Grid,
    Tile,
    Window,
    ground_resolution,
    lonlat_to_pixel,
    make_grid,
    metres_to_pixels,
    parse_tile,
    pixel_area_m2,
    pixel_to_lonlat,
    shard_of,
    shard_window,
    tile_window,
    tiles_of_shard,
    window_transform,
)

LATITUDES = [0.0, 39.0, 60.0, -33.9]  # equator, 39N, 60N, southern hemisphere


@pytest.mark.parametrize("lat", LATITUDES)
@pytest.mark.parametrize("zoom", [12, 18, 21])
def test_pixel_world_round_trip_is_sub_pixel(lat, zoom):
    rng = np.random.default_rng(int(abs(lat) * 10) + zoom)
    lon = rng.uniform(-179, 179, 500)
    la = lat + rng.uniform(-0.01, 0.01, 500)
    px, py = lonlat_to_pixel(lon, la, zoom)
    lon2, la2 = pixel_to_lonlat(px, py, zoom)
    px2, py2 = lonlat_to_pixel(lon2, la2, zoom)
    assert np.max(np.abs(px2 - px)) < 1e-3
    assert np.max(np.abs(py2 - py)) < 1e-3
    # and the world error is far below a pixel on the ground
    err_m = np.hypot((lon2 - lon) * 111320 * np.cos(np.radians(la)), (la2 - la) * 110540)
    assert np.max(err_m) < 0.01 * ground_resolution(lat, zoom)


@pytest.mark.parametrize("lat", LATITUDES)
def test_pixel_coordinates_agree_with_mercantile_tiles(lat):
    lon = 13.3777
    t = mercantile.tile(lon, lat, 18)
    px, py = lonlat_to_pixel(lon, lat, 18)
    assert int(px // 256) == t.x and int(py // 256) == t.y
    # the NW corner of the tile is pixel (x*256, y*256)
    ul = mercantile.ul(t)
    cx, cy = lonlat_to_pixel(ul.lng, ul.lat, 18)
    assert cx == pytest.approx(t.x * 256, abs=1e-6) and cy == pytest.approx(t.y * 256, abs=1e-6)


@pytest.mark.parametrize("lat", LATITUDES)
def test_ground_resolution_matches_measured_distance(lat):
    # 1000 pixels east at zoom 18 measured with pyproj's geodesic distance
    from pyproj import Geod

    px, py = lonlat_to_pixel(10.0, lat, 18)
    lon2, lat2 = pixel_to_lonlat(px + 1000, py, 18)
    _, _, dist = Geod(ellps="WGS84").inv(10.0, lat, float(lon2), float(lat2))
    # spherical Mercator scale vs WGS84 ellipsoid differ by < 0.5 %
    assert dist / 1000 == pytest.approx(ground_resolution(lat, 18), rel=5e-3)
    assert metres_to_pixels(dist, lat, 18) == pytest.approx(1000, rel=5e-3)


def test_window_transform_maps_tile_corner_to_mercator():
    t = Tile(53958, 98114, 18)
    b = mercantile.xy_bounds(t)
    tr = window_transform(tile_window(t), 18)
    assert tr @ (0, 0) == pytest.approx((b.left, b.top), abs=1e-6)
    assert tr @ (256, 256) == pytest.approx((b.right, b.bottom), abs=1e-6)


def test_shards_hold_their_tiles():
    g = Grid(18, 256, 15)
    t = Tile(53958, 98114, 18)
    s = shard_of(t, g)
    assert s == mercantile.parent(t, zoom=15)
    inside = list(tiles_of_shard(s, g))
    assert len(inside) == 64 and t in inside
    w = shard_window(s, g)
    tw = tile_window(t)
    assert w.col <= tw.col < w.col + w.width - 255 and w.row <= tw.row < w.row + w.height - 255
    assert g.shard_size == 2048


def test_parse_tile_and_bad_grids():
    assert parse_tile("18/53958/98114") == Tile(53958, 98114, 18)
    assert parse_tile("15-6744-12264") == Tile(6744, 12264, 15)
    with pytest.raises(ConfigError, match="z/x/y"):
        parse_tile("18/abc/1")
    with pytest.raises(ConfigError, match="0..3"):
        parse_tile("2/4/1")
    with pytest.raises(ConfigError, match="shard_zoom"):
        make_grid(15, 256, 18)
    with pytest.raises(ConfigError, match="power of two"):
        make_grid(18, 250, 15)
    assert math.isclose(make_grid(18, 512, 14).resolution * 2, make_grid(18, 256, 14).resolution)


@pytest.mark.parametrize("lat", LATITUDES)
def test_pixel_area_matches_geodesic_area(lat):
    from pyproj import Geod
    from shapely.geometry import box

    px, py = lonlat_to_pixel(10.0, lat, 18)
    lon2, lat2 = pixel_to_lonlat(px + 500, py + 500, 18)
    square = box(10.0, float(lat2), float(lon2), lat)
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(square)[0])
    assert 500 * 500 * pixel_area_m2(lat - (lat - float(lat2)) / 2, 18) == pytest.approx(geodesic, rel=1e-4)


def test_shards_of_window_and_intersection(small_grid):
    from navml.geo.grid import intersection, shards_of_window

    n = small_grid.shard_size  # 1024 px
    w = Window(3 * n - 10, 5 * n + 1, 20, n)  # crosses a column border and a row border
    assert shards_of_window(w, small_grid) == [Tile(2, 5, 16), Tile(3, 5, 16), Tile(2, 6, 16), Tile(3, 6, 16)]
    assert shards_of_window(Window(0, 0, n, n), small_grid) == [Tile(0, 0, 16)]  # exactly one shard
    assert intersection(w, shard_window(Tile(3, 6, 16), small_grid)) == Window(3 * n, 6 * n, 10, 1)
    assert intersection(Window(0, 0, 10, 10), Window(10, 0, 5, 5)) is None  # touching is not overlapping
