"""Road surfaces from OSM centre lines: widths from tags, buffers in ground metres."""

import math

import pytest
from pyproj import Geod
from shapely.geometry import LineString

from navml.data.roads import road_surfaces, road_width_m

GEOD = Geod(ellps="WGS84")


@pytest.mark.parametrize(
    ("tags", "width"),
    [
        ({"width": "9.5"}, 9.5),
        ({"width": "12 m", "lanes": "2"}, 12.0),  # width wins over lanes
        ({"width": "wide", "lanes": "3"}, 10.5),  # unparseable width falls through
        ({"lanes": "4"}, 14.0),
        ({"lanes:forward": "2", "lanes:backward": "1"}, 10.5),
        ({"oneway": "yes"}, 3.5),
        ({}, 7.0),
    ],
)
def test_road_width_from_tags(tags, width):
    assert road_width_m(tags) == pytest.approx(width)


def test_lane_width_scales_lane_counts_only():
    assert road_width_m({"lanes": "2"}, lane_width_m=3.0) == 6.0
    assert road_width_m({"width": "5"}, lane_width_m=3.0) == 5.0


@pytest.mark.parametrize("lat", [0.0, 39.74, 60.0, -33.9])
def test_surface_is_length_times_width_on_the_ground(lat):
    # a 200 m east-west road, 10.5 m wide (3 lanes), at several latitudes
    dlon = 200 / (111_320 * math.cos(math.radians(lat)))
    line = LineString([(10.0, lat), (10.0 + dlon, lat)])
    (surface,) = road_surfaces([{"geometry": line, "properties": {"width_m": 10.5}}])
    length = GEOD.line_length(*line.xy)
    area = abs(GEOD.geometry_area_perimeter(surface)[0])
    assert area == pytest.approx(length * 10.5, rel=0.01)
    # flat ends: the surface stops at the line's ends
    assert surface.bounds[0] == pytest.approx(10.0, abs=1e-9)


def test_roads_without_width_or_geometry_are_skipped():
    line = LineString([(0, 0), (0.001, 0)])
    assert road_surfaces([{"geometry": line, "properties": {"width_m": 0}}, {"geometry": None, "properties": {"width_m": 7}}]) == []
