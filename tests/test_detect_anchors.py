"""k-means anchors (1 - IoU distance): known clusters come back; too many anchors is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.anchors import box_shapes, kmeans_anchors, shape_iou
from navml.errors import ConfigError, NavmlError

CENTRES = np.array([[4.0, 11.0], [11.0, 4.0], [20.0, 20.0]])  # arrows across, arrows along, a big box


def _boxes_around(centres: np.ndarray, per: int, spread: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wh = np.concatenate([c * rng.uniform(1 - spread, 1 + spread, size=(per, 2)) for c in centres])
    xy = rng.uniform(0, 200, size=(len(wh), 2))
    return np.column_stack([xy, xy + wh])  # (x0, y0, x1, y1) pixels


def test_shape_iou_by_hand():
    # 4x11 vs 11x4 aligned at a centre: overlap 4x4 = 16, union 44 + 44 - 16 = 72
    assert shape_iou([[4, 11]], [[11, 4]])[0, 0] == pytest.approx(16 / 72)
    assert shape_iou([[5, 5]], [[10, 10]])[0, 0] == pytest.approx(25 / 100)
    np.testing.assert_allclose(box_shapes([[1, 2, 5, 13]]), [[4, 11]])


def test_three_known_clusters_are_recovered_within_5_percent():
    wh = box_shapes(_boxes_around(CENTRES, per=80, spread=0.06))
    result = kmeans_anchors(wh, 3, seed=0)
    # sorted by area: 4x11 and 11x4 both 44 px², then 20x20; the first two in either order
    got = result.wh
    assert got[2] == pytest.approx(CENTRES[2], rel=0.05)
    firsts = sorted(map(tuple, got[:2]))
    assert firsts[0] == pytest.approx((4.0, 11.0), rel=0.05)
    assert firsts[1] == pytest.approx((11.0, 4.0), rel=0.05)
    assert (np.diff(got[:, 0] * got[:, 1]) >= 0).all()
    # the reported mean IoU is the mean best IoU, and high for tight clusters
    assert result.mean_iou == pytest.approx(shape_iou(wh, got).max(axis=1).mean())
    assert 0.85 < result.mean_iou < 1.0
    assert result.counts.sum() == 240 and (result.counts == 80).all()


def test_same_seed_same_anchors_and_more_anchors_fit_better():
    wh = box_shapes(_boxes_around(CENTRES, per=40, spread=0.2, seed=3))
    a, b = kmeans_anchors(wh, 5, seed=7), kmeans_anchors(wh, 5, seed=7)
    np.testing.assert_array_equal(a.wh, b.wh)
    assert kmeans_anchors(wh, 5, seed=0).mean_iou > kmeans_anchors(wh, 2, seed=0).mean_iou


def test_more_anchors_than_distinct_boxes_is_a_config_error():
    wh = np.array([[4, 11], [4, 11], [11, 4], [20, 20]], float)
    assert len(kmeans_anchors(wh, 3).wh) == 3
    with pytest.raises(ConfigError, match=r"'detect.anchors' is 4 .* only 3 distinct"):
        kmeans_anchors(wh, 4)
    with pytest.raises(NavmlError):
        kmeans_anchors(wh, 0)
    with pytest.raises(NavmlError, match="positive width"):
        kmeans_anchors(np.array([[4.0, 0.0], [3.0, 3.0]]), 1)
