"""Flips and quarter turns: boxes move exactly, arrow kinds swap on mirrors, four turns are the identity."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.augment import hflip_boxes, mirror_table, random_transform, rot90_boxes, transform, vflip_boxes
from navml.detect.classes import mirror_names, turn_parts, turn_value
from navml.errors import ConfigError

NAMES = ("left", "right", "through", "through_left", "through_right", "left_right")


def test_mirror_table_from_the_six_names():
    assert mirror_names(NAMES) == {
        "left": "right", "right": "left", "through": "through",
        "through_left": "through_right", "through_right": "through_left", "left_right": "left_right",
    }
    assert mirror_table(NAMES).tolist() == [1, 0, 2, 4, 3, 5]
    assert turn_parts("through_left") == ("left", "through")
    assert [turn_value(n) for n in NAMES] == ["left", "right", "through", "left;through", "through;right", "left;right"]
    assert turn_value("slight_left_through") == "slight_left;through"


def test_mirror_table_override_and_errors():
    # a registry may name a mirror explicitly (e.g. a class the derivation cannot read)
    assert mirror_table(["u_turn_l", "u_turn_r", "through"], {"u_turn_l": "u_turn_r"}).tolist() == [1, 0, 2]
    with pytest.raises(ConfigError, match="not among the names"):
        mirror_names(["left", "through"])  # the mirror of left (right) is missing
    with pytest.raises(ConfigError, match="OSM turn values"):
        mirror_names(["zigzag"])
    with pytest.raises(ConfigError, match="own inverse"):
        mirror_names(["a_x", "b_x", "c_x"], {"a_x": "b_x", "b_x": "c_x"})


def test_boxes_by_hand():
    # image 10 rows x 20 cols; box x 2..5, y 1..4
    b = np.array([[2.0, 1.0, 5.0, 4.0]])
    np.testing.assert_allclose(hflip_boxes(b, 20), [[15.0, 1.0, 18.0, 4.0]])
    np.testing.assert_allclose(vflip_boxes(b, 10), [[2.0, 6.0, 5.0, 9.0]])
    # a quarter turn counter-clockwise: (x, y) -> (y, cols - x); the image becomes 20 rows x 10 cols
    np.testing.assert_allclose(rot90_boxes(b, 10, 20, 1), [[1.0, 15.0, 4.0, 18.0]])
    np.testing.assert_allclose(rot90_boxes(b, 10, 20, 2), [[15.0, 6.0, 18.0, 9.0]])
    np.testing.assert_allclose(rot90_boxes(b, 10, 20, 4), b)


def _image_with_box_pixels(rows: int, cols: int, box) -> np.ndarray:
    img = np.zeros((rows, cols, 3), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    img[y0:y1, x0:x1] = 200
    img[y0, x0] = 255  # mark one corner so flips are visible in the pixels
    return img


@pytest.mark.parametrize("hflip,vflip,k", [(False, False, 1), (True, False, 0), (False, True, 0), (True, True, 3), (True, False, 1)])
def test_pixels_and_boxes_move_together(hflip, vflip, k):
    box = [3, 2, 14, 6]
    img = _image_with_box_pixels(16, 24, box)
    out, boxes, _ = transform(img, np.array([box], float), np.array([0]), mirror_table(NAMES), hflip=hflip, vflip=vflip, k=k)
    ys, xs = np.nonzero(out[..., 0])
    assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert out.flags["C_CONTIGUOUS"]


def test_classes_swap_on_each_flip_and_stay_on_rotation():
    table = mirror_table(NAMES)
    img = np.zeros((32, 32, 3), np.uint8)
    boxes = np.tile([[4.0, 4.0, 15.0, 8.0]], (6, 1))
    ids = np.arange(6)
    for k in range(4):
        assert transform(img, boxes, ids, table, k=k)[2].tolist() == ids.tolist()
    left_right = [1, 0, 2, 4, 3, 5]
    assert transform(img, boxes, ids, table, hflip=True)[2].tolist() == left_right
    assert transform(img, boxes, ids, table, vflip=True, k=1)[2].tolist() == left_right
    assert transform(img, boxes, ids, table, hflip=True, vflip=True)[2].tolist() == ids.tolist()


def test_four_quarter_turns_are_the_identity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 24, 3)).astype(np.uint8)
    boxes = np.array([[1.5, 2.0, 7.25, 9.0], [10.0, 0.0, 24.0, 16.0]])
    ids = np.array([0, 3])
    out, b, c = img, boxes, ids
    for _ in range(4):
        out, b, c = transform(out, b, c, mirror_table(NAMES), k=1)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_allclose(b, boxes)
    assert c.tolist() == [0, 3]
    # a random transform keeps the box count and the image size (square) and is seeded
    r1 = random_transform(img[:16, :16], boxes[:1] / 2, ids[:1], mirror_table(NAMES), np.random.default_rng(5))
    r2 = random_transform(img[:16, :16], boxes[:1] / 2, ids[:1], mirror_table(NAMES), np.random.default_rng(5))
    np.testing.assert_array_equal(r1[0], r2[0])
    np.testing.assert_allclose(r1[1], r2[1])
