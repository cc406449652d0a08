"""YOLOv2 targets: encode -> decode round trip, anchor choice, shared cells, errors."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.targets import (
    TO,
    TX,
    TY,
    assign_boxes,
    check_offset,
    decode,
    encode_targets,
    grid_shape,
    neighbour_cells,
    split_head,
    target_logits,
)
from navml.errors import ConfigError, InputError

ANCHORS = np.array([[4.0, 11.0], [11.0, 4.0], [8.0, 8.0]])  # (w, h) px


def test_grid_shape_needs_multiples_of_the_stride():
    assert grid_shape(256, 320, 8) == (32, 40)
    with pytest.raises(ConfigError, match="multiple"):
        grid_shape(250, 256, 8)


def test_encode_values_by_hand():
    # an 11 x 4 box centred at (21.5, 10.0): cell column 2 (16..24), row 1 (8..16); offsets 0.6875, 0.25
    t = encode_targets(np.array([[16.0, 8.0, 27.0, 12.0]]), np.array([4]), 32, 32, ANCHORS, n_classes=6, stride=8)
    assert t.shape == (4, 4, 3, 11) and t.dtype == np.float32
    assert t[..., 4].sum() == 1 and t[1, 2, 1, 4] == 1  # anchor 1 (11 x 4) fits exactly
    np.testing.assert_allclose(t[1, 2, 1, :4], [5.5 / 8, 0.25, 0.0, 0.0], atol=1e-7)
    assert t[1, 2, 1, 5:].tolist() == [0, 0, 0, 0, 1, 0]


def test_round_trip_gives_the_boxes_back():
    rng = np.random.default_rng(0)
    rows, cols, stride = 64, 96, 8
    wh = rng.uniform(3, 14, size=(12, 2))
    centres = rng.uniform([0.5, 0.5], [cols - 0.5, rows - 0.5], size=(12, 2))
    boxes = np.column_stack([centres - wh / 2, centres + wh / 2])
    classes = rng.integers(0, 6, 12)
    where = assign_boxes(boxes, ANCHORS, rows, cols, stride)
    assert (where[:, 2] >= 0).all()
    target = encode_targets(boxes, classes, rows, cols, ANCHORS, 6, stride)
    raw = target_logits(target).reshape(rows // stride, cols // stride, -1)  # as the head gives it
    det = decode(raw, ANCHORS, stride, score_threshold=0.5)
    assert len(det) == 12
    order = np.lexsort((det.boxes[:, 1], det.boxes[:, 0]))
    truth = np.lexsort((boxes[:, 1], boxes[:, 0]))
    np.testing.assert_allclose(det.boxes[order], boxes[truth], atol=1e-4)
    assert det.class_ids[order].tolist() == classes[truth].tolist()
    assert (det.scores > 0.999).all()


def test_two_boxes_in_one_cell_take_different_anchors_and_both_survive():
    # one tall and one wide arrow with centres in cell (0, 0) of stride 8
    boxes = np.array([[1.0, -1.5, 5.0, 9.5], [-2.0, 2.0, 9.0, 6.0]])
    boxes[:, [0, 2]] += 0.5  # centres (3.5, 4.0) and (4.0, 4.0)
    classes = np.array([0, 1])
    where = assign_boxes(boxes, ANCHORS, 16, 16, 8)
    assert where.tolist() == [[0, 0, 0], [0, 0, 1]]
    det = decode(target_logits(encode_targets(boxes, classes, 16, 16, ANCHORS, 2, 8)), ANCHORS, 8, score_threshold=0.5)
    assert len(det) == 2
    np.testing.assert_allclose(det.boxes[np.argsort(det.class_ids)], boxes, atol=1e-4)


def test_same_anchor_wanted_twice_falls_back_then_drops():
    # a 7 x 7 box: IoU 49/64 with the 8 x 8 anchor, 28/65 with 4 x 11 and with 11 x 4 (tie: the first)
    box = [1.0, 1.0, 8.0, 8.0]
    where = assign_boxes(np.array([box] * 4), ANCHORS, 8, 8, 8)
    assert where[:3].tolist() == [[0, 0, 2], [0, 0, 0], [0, 0, 1]]
    assert where[3].tolist() == [-1, -1, -1]  # the fourth finds every anchor of the cell taken


def test_decode_origin_threshold_and_errors():
    target = encode_targets(np.array([[8.0, 8.0, 16.0, 16.0]]), np.array([0]), 16, 16, ANCHORS, 1, 8)
    det = decode(target_logits(target), ANCHORS, 8, score_threshold=0.5, origin=(100.0, 200.0))
    np.testing.assert_allclose(det.boxes, [[108.0, 208.0, 116.0, 216.0]], atol=1e-4)
    assert len(decode(target_logits(target), ANCHORS, 8, score_threshold=0.0)) == 2 * 2 * 3
    with pytest.raises(InputError):
        split_head(np.zeros((2, 2, 7)), 3)
    with pytest.raises(InputError, match="x1 > x0"):
        encode_targets(np.array([[5.0, 5.0, 5.0, 9.0]]), np.array([0]), 16, 16, ANCHORS, 1, 8)
    with pytest.raises(InputError, match="class ids"):
        encode_targets(np.array([[1.0, 1.0, 5.0, 9.0]]), np.array([3]), 16, 16, ANCHORS, 2, 8)


def test_neighbour_positives_decode_to_the_box_three_times():
    """YOLOv5 assignment: the centre's cell and the nearest neighbour across each cell border, offsets in -0.5..1.5."""
    anchors = np.array([[4.0, 11.0], [11.0, 4.0]])
    boxes = np.array([[10.0, 3.0, 14.0, 14.0], [20.0, 17.0, 31.0, 21.0]])  # centres (12, 8.5) and (25.5, 19)
    assert neighbour_cells(boxes, 32, 32, 8) == [[(1, 2), (0, 1)], [(2, 2), (1, 3)]]
    t = encode_targets(boxes, np.array([0, 1]), 32, 32, anchors, 2, 8, neighbours=True)
    assert t[..., TO].sum() == 6
    assert t[0, 1, 0, TX] == pytest.approx(0.5) and t[0, 1, 0, TY] == pytest.approx(1.0625)
    assert t[1, 2, 0, TX] == pytest.approx(-0.5)
    det = decode(target_logits(t, offset_scale=2.0), anchors, 8, score_threshold=0.5, offset_scale=2.0)
    assert len(det) == 6
    np.testing.assert_allclose(np.sort(det.boxes, axis=0), np.sort(np.repeat(boxes, 3, axis=0), axis=0), atol=1e-6)
    assert sorted(det.class_ids.tolist()) == [0, 0, 0, 1, 1, 1]
    # without neighbours: one positive each, and the same boxes at either offset scale
    one = encode_targets(boxes, np.array([0, 1]), 32, 32, anchors, 2, 8)
    assert one[..., TO].sum() == 2
    for s in (1.0, 2.0):
        np.testing.assert_allclose(decode(target_logits(one, offset_scale=s), anchors, 8, 0.5, offset_scale=s).boxes[:, 0], [10.0, 20.0], atol=1e-6)


def test_neighbours_need_the_wide_offset():
    check_offset(1.0)
    check_offset(2.0, neighbours=True)
    with pytest.raises(ConfigError, match="offset_scale"):
        check_offset(1.0, neighbours=True)
    with pytest.raises(ConfigError, match="offset_scale"):
        check_offset(0.5)


@pytest.mark.parametrize("offset_scale", [1.0, 2.0])
def test_decode_cells_equals_decode_bit_for_bit_at_those_cells(offset_scale):
    from navml.detect.targets import decode_cells, sigmoid

    rng = np.random.default_rng(3)
    anchors = np.array([[11.0, 4.0], [4.0, 11.0], [10.0, 10.0]])
    raw = rng.normal(0, 3, (9, 7, 3, 5 + 4)).astype("float32")
    raw[2:4, :, :, 4] = 40.0  # saturated objectness and classes: equal scores, ties kept in cell order
    raw[2:4, :, :, 5:] = [40.0, 0.0, 0.0, 0.0]
    raw[5, 3, 1, 2] = 30.0  # a width beyond the clip
    thr = 0.3
    want = decode(raw, anchors, 8, thr, origin=(16.0, 24.0), offset_scale=offset_scale)
    hit = sigmoid(raw[..., 4]) >= thr
    ii, jj, aa = np.nonzero(hit)
    boxes, scores, ids = decode_cells(raw[ii, jj, aa], ii, jj, aa, anchors, 8, offset_scale)
    ok = np.flatnonzero(scores >= thr)
    order = ok[np.argsort(-scores[ok], kind="stable")]
    assert len(order) == len(want) > 20 and len(ok) < hit.sum() + 1
    np.testing.assert_array_equal(boxes[order] + [16.0, 24.0, 16.0, 24.0], want.boxes)
    np.testing.assert_array_equal(scores[order], want.scores)
    np.testing.assert_array_equal(ids[order], want.class_ids)
