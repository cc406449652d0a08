"""Lane-order logic on a hand-made two-way road (2 lanes each way) and a one-way street; turn:lanes strings."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.lanes import BACKWARD, FORWARD, LaneMarking, lane_index, station, travel_direction, turn_lanes
from navml.errors import InputError

# A way drawn eastwards then bending north-east (metres, local frame): forward = drawn direction.
WAY = np.array([[0.0, 0.0], [100.0, 0.0], [170.0, 70.0]])
LANE_W, GAP = 3.5, 0.3
# Right-hand traffic: eastbound (forward) lanes south of the centre line, westbound (backward) north of it.
# Lane centres at 0.15 + 1.75 = 1.9 m and 0.15 + 3.5 + 1.75 = 5.4 m from the centre line.
MARKINGS = {  # centre (x, y), arrow heading, expected (direction, lane)
    "fwd_lane1": ((60.0, -1.9), (1.0, 0.0), (FORWARD, 1)),
    "fwd_lane2": ((60.3, -5.4), (1.0, 0.02), (FORWARD, 2)),
    "bwd_lane1": ((40.0, 1.9), (-1.0, 0.0), (BACKWARD, 1)),
    "bwd_lane2": ((39.8, 5.4), (-1.0, -0.01), (BACKWARD, 2)),
}


def test_station_by_hand():
    st = station(WAY, (60.0, -1.9))
    assert st.s == pytest.approx(60.0) and st.tangent == pytest.approx((1.0, 0.0)) and st.offset == pytest.approx(-1.9)
    # on the diagonal leg, 2 m to its left: arc length 100 + 20 sqrt(2)
    p = np.array([120.0, 20.0]) + 2.0 * np.array([-1.0, 1.0]) / np.sqrt(2)
    st2 = station(WAY, p)
    assert st2.s == pytest.approx(100 + 20 * np.sqrt(2)) and st2.offset == pytest.approx(2.0)
    with pytest.raises(InputError):
        station(np.array([[1.0, 1.0]]), (0.0, 0.0))


@pytest.mark.parametrize("use_heading", [True, False])
def test_four_markings_get_direction_and_lane(use_heading):
    got = {}
    for key, (centre, heading, _) in MARKINGS.items():
        st = station(WAY, centre)
        d = travel_direction(st, heading if use_heading else None)
        got[key] = (d, lane_index(st, d, lanes=2, lane_width_m=LANE_W, centre_gap_m=GAP))
    assert got == {k: v[2] for k, v in MARKINGS.items()}


def test_heading_wins_over_the_side_and_left_hand_traffic_mirrors():
    st = station(WAY, (60.0, -1.9))
    assert travel_direction(st, (-1.0, 0.0)) == BACKWARD  # an arrow pointing west is westbound wherever it is
    assert travel_direction(st, None, right_hand=False) == BACKWARD
    assert travel_direction(st, None, oneway="-1") == BACKWARD and travel_direction(st, None, oneway="yes") == FORWARD
    # left-hand traffic: westbound on the south side; heading west the centre line is on the driver's right,
    # so the lane next to it (1.9 m out) is the rightmost, lane 2 of 2, and the kerb lane (5.4 m) is lane 1
    assert lane_index(st, BACKWARD, 2, LANE_W, centre_gap_m=GAP, right_hand=False) == 2
    kerb = station(WAY, (60.0, -5.4))
    assert lane_index(kerb, BACKWARD, 2, LANE_W, centre_gap_m=GAP, right_hand=False) == 1


def test_one_way_street_lanes_count_from_the_left_edge():
    way = np.array([[0.0, 0.0], [0.0, 100.0]])  # drawn north, oneway=yes, 3 lanes spanning 10.5 m centred on the way
    lanes = []
    for x in (-3.5, 0.0, 3.4, 6.0):  # west is the driver's left; 6 m is outside the last lane: clipped to 3
        st = station(way, (x, 50.0))
        d = travel_direction(st, None, oneway="yes")
        lanes.append(lane_index(st, d, 3, LANE_W, one_way=True))
    assert lanes == [1, 2, 3, 3]


def test_turn_lanes_strings_per_way_and_direction():
    marks = [
        LaneMarking(7, FORWARD, 1, "through_left", 0.9),
        LaneMarking(7, FORWARD, 2, "right", 0.8),
        LaneMarking(7, FORWARD, 2, "through", 0.3),  # a second row of arrows, less sure: the 0.8 one wins
        LaneMarking(7, BACKWARD, 1, "left", 0.9),
        LaneMarking(7, BACKWARD, 2, "through_right", 0.7),
        LaneMarking(9, FORWARD, 1, "left", 0.9),  # one-way, 3 lanes, middle lane unseen
        LaneMarking(9, FORWARD, 3, "left_right", 0.6),
    ]
    tags = turn_lanes(marks, {(7, FORWARD): 2, (7, BACKWARD): 2, (9, FORWARD): 3}, one_way={9: True})
    assert tags == {
        7: {"turn:lanes:forward": "left;through|right", "turn:lanes:backward": "left|through;right"},
        9: {"turn:lanes": "left|none|left;right"},
    }
    with pytest.raises(InputError, match="no lane count"):
        turn_lanes(marks[:1], {})
