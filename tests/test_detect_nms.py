"""Class-aware NMS and keep-by-centre in window cores: a marking on a tile border comes out once."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.nms import box_iou, centre_in_core, merge_windows, nms
from navml.detect.targets import Detections
from navml.errors import ConfigError


def _det(boxes, scores, classes) -> Detections:
    return Detections(np.asarray(boxes, float), np.asarray(scores, float), np.asarray(classes, int))


def test_box_iou_by_hand():
    a = [[0, 0, 10, 4]]
    b = [[5, 0, 15, 4], [20, 20, 30, 30], [0, 0, 10, 4]]
    # overlap 5 x 4 = 20, union 40 + 40 - 20 = 60
    np.testing.assert_allclose(box_iou(a, b), [[20 / 60, 0.0, 1.0]])


def test_nms_keeps_the_best_of_a_class_and_never_suppresses_across_classes():
    boxes = [[0, 0, 11, 4], [0.5, 0, 11.5, 4], [0, 0.2, 11, 4.2], [40, 40, 51, 44]]
    scores = [0.7, 0.9, 0.8, 0.6]
    classes = [0, 0, 3, 0]  # box 2 overlaps 0 and 1 heavily but is another class
    keep = nms(boxes, scores, classes, iou_threshold=0.5)
    assert keep.tolist() == [1, 2, 3]  # by decreasing score: 0.9 (class 0), 0.8 (class 3), 0.6 (far away)
    assert nms(boxes, scores, [0, 0, 0, 0], 0.5).tolist() == [1, 3]
    with pytest.raises(ConfigError):
        nms(boxes, scores, classes, 0.0)


def test_centre_on_the_core_line_belongs_to_exactly_one_core():
    box = np.array([[250.0, 10.0, 262.0, 14.0]])  # centre x = 256.0, on the border
    left, right = (0, 0, 256, 256), (256, 0, 512, 256)
    assert centre_in_core(box, left).tolist() == [False]
    assert centre_in_core(box, right).tolist() == [True]
    assert centre_in_core(box, left, margin_px=1.0).tolist() == [True]


def test_a_marking_across_a_tile_border_seen_by_two_windows_comes_out_once():
    # tiles 0..256 and 256..512 along x; windows with a 64 px halo: [0, 320) and [192, 512)
    cores = [(0, 0, 256, 256), (256, 0, 512, 256)]
    # marking A (left arrow, class 0) straddles the border, centre 257.4; both windows see it with slightly
    # different boxes (global pixels). Marking B (class 2) centre exactly on the border, predicted identically.
    # Marking C (class 1) overlaps A heavily, another class: it must survive beside A.
    win_left = _det([[251.9, 100.0, 262.9, 104.0], [250.0, 40.0, 262.0, 44.0], [252.0, 100.5, 263.0, 104.5]],
                    [0.90, 0.80, 0.70], [0, 2, 1])
    win_right = _det([[252.0, 100.1, 263.0, 104.1], [250.0, 40.0, 262.0, 44.0], [252.1, 100.4, 263.1, 104.4]],
                     [0.85, 0.75, 0.65], [0, 2, 1])
    out = merge_windows([(win_left, cores[0]), (win_right, cores[1])], iou_threshold=0.5)
    assert sorted(out.class_ids.tolist()) == [0, 1, 2]  # each marking once, A and C both
    centres = (out.boxes[:, 0] + out.boxes[:, 2]) / 2
    assert ((centres >= 256) & (centres < 512)).all()  # all kept by the right window, whose core holds them
    # windows disagree across the line, left says 255.9, right says 256.2: both cores keep it, NMS leaves one
    a = _det([[250.4, 10, 261.4, 14]], [0.9], [0])
    b = _det([[250.7, 10, 261.7, 14]], [0.8], [0])
    both = merge_windows([(a, cores[0]), (b, cores[1])])
    assert len(both) == 1 and both.scores.tolist() == [0.9]
    a2 = _det([[250.7, 10, 261.7, 14]], [0.9], [0])  # left says 256.2 (outside its core)
    b2 = _det([[250.4, 10, 261.4, 14]], [0.8], [0])  # right says 255.9 (outside its core)
    assert len(merge_windows([(a2, cores[0]), (b2, cores[1])])) == 0  # the failure a margin prevents
    saved = merge_windows([(a2, cores[0]), (b2, cores[1])], margin_px=2.0)
    assert len(saved) == 1 and saved.scores.tolist() == [0.9]
