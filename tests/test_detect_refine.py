"""The detector's second stage: patches, label-true sampling, decoding, training on toy arrows, city-wide use."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.refine import (
    REFINE_FILE,
    Refiner,
    centres,
    cut_patches,
    decode_outputs,
    load_refiner,
    match_centres,
    pad_images,
    patch_origins,
    refine,
    save_refiner,
)
from navml.detect.refine_train import patch_pool, sample_patches, train_refiner
from navml.detect.targets import Detections
from navml.errors import ConfigError, ModelError
from navml.models.io import ModelMeta, read_meta, save_model
from navml.models.refiner import BOX_SCALE, build_refiner


def test_patches_are_the_image_around_the_origin_and_mirrored_outside():
    img = np.arange(2 * 10 * 12 * 1, dtype=float).reshape(2, 10, 12, 1)
    padded = pad_images(img, 4)
    p = cut_patches(padded, np.array([1, 0]), np.array([3, -2]), np.array([2, 7]), 4)
    np.testing.assert_array_equal(p[0], img[1, 2:6, 3:7])
    # rows 7..10 and cols -2..1: row 10 mirrors row 8, col -2 col 2, col -1 col 1
    want = img[0][np.ix_([7, 8, 9, 8], [2, 1, 0, 1])]
    np.testing.assert_array_equal(p[1], want)
    assert p.dtype == np.float32


def test_patch_origins_put_the_rounded_centre_in_the_middle_and_centres_match_within_a_radius():
    ox, oy = patch_origins(np.array([10.4, 10.6]), np.array([5.0, 0.2]), 8)
    assert ox.tolist() == [6, 7] and oy.tolist() == [1, -4]
    cx, cy = centres(np.array([[0.0, 0.0, 10.0, 4.0]]))
    assert (cx[0], cy[0]) == (5.0, 2.0)
    truth = np.array([[0.0, 0.0, 10.0, 4.0], [20.0, 0.0, 30.0, 4.0]])
    got = match_centres(truth, np.array([6.0, 24.0, 15.0]), np.array([2.0, 4.0, 2.0]), 3.0)
    assert got.tolist() == [0, 1, -1]  # 1 px, 2.2 px, then 10 px from either
    assert match_centres(np.zeros((0, 4)), np.array([1.0]), np.array([1.0]), 3.0).tolist() == [-1]


def _bars(n_images: int = 12, size: int = 48, seed: int = 0):
    """Images with red (class 0) and blue (class 1) bars of 11 x 4 px, lying or standing, on grey noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 100, (n_images, size, size, 3)).astype(np.float32)
    truths = []
    for i in range(n_images):
        boxes, cls = [], []
        for _ in range(2):
            w, h = (11, 4) if rng.random() < 0.5 else (4, 11)
            x0, y0 = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
            if boxes and x0 < boxes[-1][2] + 2 and boxes[-1][0] < x0 + w + 2 and y0 < boxes[-1][3] + 2 and boxes[-1][1] < y0 + h + 2:
                continue  # keep the bars apart
            c = int(rng.integers(2))
            images[i, y0 : y0 + h, x0 : x0 + w] = (230, 40, 40) if c == 0 else (40, 40, 230)
            boxes.append([x0, y0, x0 + w, y0 + h])
            cls.append(c)
        truths.append((np.array(boxes, float), np.array(cls)))
    return images, truths


def test_sampled_patches_keep_boxes_on_their_bars_under_turns_and_flips():
    images, truths = _bars(6)
    props = [Detections(t[0] + 1.0, np.full(len(t[0]), 0.5), np.zeros(len(t[0]), int)) for t in truths]
    pool = patch_pool(images, truths, props, 16, 3.0)
    assert len(pool.truths) == sum(len(t[0]) for t in truths) and len(pool.proposals) == len(pool.truths)
    assert (pool.proposals[:, 3] >= 0).all()  # 1.4 px off: each proposal is its truth
    rng = np.random.default_rng(1)
    mirror = np.array([1, 0])  # a flip swaps the two kinds here, as left and right arrows
    x, y = sample_patches(pool, rng, 400, patch=16, n_classes=2, mirror=mirror, jitter_px=3.0, proposal_share=0.3)
    pos = y[:, 0] == 1
    assert pos.all()  # every patch is centred on a bar
    flipped = 0
    for patch, (_, c, x0, y0, x1, y1) in zip(x, y):
        b = np.array([x0, y0, x1, y1]) + 8.0  # patch pixels
        assert {round(b[2] - b[0]), round(b[3] - b[1])} == {11, 4}
        inside = patch[int(round(b[1])) : int(round(b[3])), int(round(b[0])) : int(round(b[2]))]
        colour = 0 if inside[..., 0].mean() > inside[..., 2].mean() else 1
        assert inside.max(axis=-1).min() > 200  # the box holds the bar, whatever the turn
        flipped += colour != c  # a flipped patch swapped its class: the colour no longer says it
    assert 120 < flipped < 280
    x, y = sample_patches(pool, rng, 50, patch=16, n_classes=2, mirror=None, proposal_share=1.0, rotate=False)
    for patch, (_, c, *_) in zip(x, y):
        colour = 0 if patch[..., 0].max() > patch[..., 2].max() else 1
        assert colour == c  # no flip, no swap


def test_balance_draws_rare_kinds_as_often_as_common_ones():
    images = np.zeros((1, 40, 40, 3), np.float32)
    boxes = np.array([[2.0 + 3 * k, 2.0, 6.0 + 3 * k, 6.0] for k in range(10)])
    truths = [(boxes, np.array([0] * 9 + [1]))]
    pool = patch_pool(images, truths, [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))], 8, 3.0)
    rng = np.random.default_rng(0)
    _, y = sample_patches(pool, rng, 2000, patch=8, n_classes=2, mirror=None, balance=True, rotate=False)
    assert 0.45 < (y[:, 1] == 1).mean() < 0.55
    _, y = sample_patches(pool, rng, 2000, patch=8, n_classes=2, mirror=None, balance=False, rotate=False)
    assert 0.06 < (y[:, 1] == 1).mean() < 0.14


def test_decoded_outputs_are_boxes_from_the_patch_centre_and_scores_objectness_times_class():
    y = np.array([[0.0, 2.0, 0.0, -5.5 / BOX_SCALE, -2 / BOX_SCALE, 5.5 / BOX_SCALE, 2 / BOX_SCALE],
                  [20.0, -1.0, 1.0, 1 / BOX_SCALE, 0.0, -1 / BOX_SCALE, 3 / BOX_SCALE]])
    d = decode_outputs(y, 2, np.array([100, 0]), np.array([50, 0]), 24)
    np.testing.assert_allclose(d.boxes[0], [106.5, 60.0, 117.5, 64.0])
    p = np.exp(2.0) / (np.exp(2.0) + 1.0)
    assert d.class_ids.tolist() == [0, 1] and d.scores[0] == pytest.approx(0.5 * p)
    b = d.boxes[1]
    assert b[2] - b[0] == pytest.approx(1.0) and (b[0] + b[2]) / 2 == pytest.approx(12.0)  # inside out: a 1-px box at its centre


def test_boxes_turned_back_are_the_boxes_before_the_turn():
    from navml.detect.augment import rot90_boxes
    from navml.detect.refine import average_turns, turned_back

    box = np.array([[3.0, 9.0, 14.0, 13.0]])  # patch pixels of a 24-px patch: an 11 x 4 box off the centre
    for k in range(4):
        turned = rot90_boxes(box, 24, 24, k) - 12.0  # relative to the patch centre after np.rot90(patch, k)
        np.testing.assert_allclose(turned_back(turned, k), box - 12.0)
    # four views that agree (each the same box seen turned) average to it, and class probabilities to theirs
    views = []
    for k in range(4):
        y = np.zeros((1, 1 + 2 + 4))
        y[0, 0], y[0, 1:3] = 2.0, (1.0, 0.0)
        y[0, 3:] = (rot90_boxes(box, 24, 24, k) - 12.0) / BOX_SCALE
        views.append(y)
    obj, probs, avg = average_turns(views, 2)
    np.testing.assert_allclose(avg[0] * BOX_SCALE, box[0] - 12.0, atol=1e-9)
    assert obj[0] == pytest.approx(1 / (1 + np.exp(-2.0))) and probs[0, 0] == pytest.approx(np.exp(1) / (np.exp(1) + 1))


def test_build_refiner_checks_its_sizes():
    m = build_refiner(3, 6, 24, 4, 8)
    assert m.output_shape == (None, 1 + 6 + 4)
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_refiner(3, 6, 22)


def test_a_trained_second_stage_fixes_the_kind_and_the_box_of_coarse_proposals(tmp_path):
    """Toy arrows: proposals 2 px off with the wrong kind; after 400 steps the second stage gives kind and box back."""
    from navml.detect.nms import box_iou
    from navml.segment.train import set_determinism

    set_determinism(0)
    images, truths = _bars(24, seed=0)
    wrong = [Detections(t[0] + np.array([2.0, -2.0, 2.0, -2.0]), np.full(len(t[0]), 0.3), 1 - t[1]) for t in truths]
    noise = [Detections(np.array([[30.0, 30.0, 34.0, 34.0]]), np.array([0.3]), np.array([0])) for _ in truths]  # grey: no bar
    props = [Detections(np.concatenate([a.boxes, b.boxes]), np.concatenate([a.scores, b.scores]), np.concatenate([a.class_ids, b.class_ids]))
             for a, b in zip(wrong, noise)]
    ref = train_refiner(images[:16], truths[:16], props[:16], 2, patch=16, filters=8, steps=400, batch_size=32, learning_rate=0.003,
                        floor=0.1, turns=1, flip=False, progress=False)
    right = ious = before = total = 0
    for img, (tb, tc), d in zip(images[16:], truths[16:], wrong[16:]):
        r = ref(img, d)
        right += int((r.class_ids == tc).sum())
        ious += float(np.diag(box_iou(r.boxes, tb)).sum())
        before += float(np.diag(box_iou(d.boxes, tb)).sum())
        total += len(tc)
        assert (r.scores > 0.5).all()
    assert right / total > 0.9  # every kind was wrong before
    import dataclasses

    four = dataclasses.replace(ref, turns=4)  # the same model, its outputs averaged over the four quarter turns of each patch
    r4 = [four(img, d) for img, d in zip(images[16:], wrong[16:])]
    assert sum(int((r.class_ids == tc).sum()) for r, (_, tc) in zip(r4, truths[16:])) / total > 0.9
    assert sum(float(np.diag(box_iou(r.boxes, tb)).sum()) for r, (tb, _) in zip(r4, truths[16:])) / total > 0.6
    assert before / total < 0.3 and ious / total > 0.6  # 2 px off both ways: IoU 0.26 before
    bg = [ref(img, Detections(np.array([[2.0, 40.0, 6.0, 44.0]]), np.array([0.3]), np.array([0]))) for img in images[16:]]
    # a patch of grey noise: low objectness (a bar may reach into a corner of some of them)
    assert np.median([b.scores[0] for b in bg]) < 0.2
    assert len(ref(images[16], Detections(np.zeros((1, 4)) + [0, 0, 4, 4], np.array([0.05]), np.array([0])))) == 0  # under the floor

    # saved beside a detector, read back with the same outputs
    meta = ModelMeta(task="detection", classes=["a", "b"], zoom=18, tile_size=48, bands=3, stride=8, receptive_field=8, extra={})
    folder = tmp_path / "det"
    meta.extra["refine"] = save_refiner(ref, folder)
    save_model(build_refiner(3, 2, 16, 2, 2), meta, folder)  # any model as the detector
    assert (folder / REFINE_FILE).exists()
    back = load_refiner(folder, read_meta(folder))
    a, b = ref(images[16], wrong[16]), back(images[16], wrong[16])
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert load_refiner(folder, ModelMeta(**{**read_meta(folder).__dict__, "extra": {}})) is None
    with pytest.raises(ModelError, match="patch or floor"):
        load_refiner(folder, ModelMeta(**{**read_meta(folder).__dict__, "extra": {"refine": {"file": REFINE_FILE}}}))


def constant_refiner(n_classes: int, cls: int, half=(6.0, 2.0), patch: int = 16, floor: float = 0.1) -> Refiner:
    """A second stage that ignores its patch: class ``cls`` with score ~1, a box of 2 * ``half`` px at the patch centre."""
    import keras

    model = build_refiner(3, n_classes, patch, 2, 2)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias[:] = 0.0
    bias[0], bias[1 + cls] = 20.0, 20.0
    bias[1 + n_classes :] = np.array([-half[0], -half[1], half[0], half[1]]) / BOX_SCALE
    head.set_weights([np.zeros_like(kernel), bias])
    assert isinstance(model, keras.Model)
    return Refiner(model, patch, floor, n_classes)


def test_refine_keeps_the_frame_of_the_boxes_given():
    ref = constant_refiner(2, 1)
    image = np.zeros((40, 40, 3), np.float32)
    d = Detections(np.array([[1010.0, 2010.0, 1020.0, 2014.0], [1000.0, 2000.0, 1002.0, 2002.0]]), np.array([0.5, 0.05]), np.array([0, 0]))
    r = refine(ref, image, d, origin=(1000.0, 2000.0))
    assert len(r) == 1 and r.class_ids.tolist() == [1]  # the second one is under the floor
    np.testing.assert_allclose(r.boxes[0], [1009.0, 2010.0, 1021.0, 2014.0], atol=1e-4)  # centre (1015, 2012): 12 x 4 around it


def test_city_wide_detection_with_a_second_stage_is_seamless(tmp_path, small_grid):
    from test_detect_predict import NAMES, SHARD0, all_tiles, marker_model, meta, store_with

    from navml.detect.predict import detect_store, detect_with_model

    n = small_grid.shard_size
    corner = ((SHARD0.x + 1) * n, (SHARD0.y + 1) * n)
    store = store_with(tmp_path, small_grid, markers=[(corner[0] - 3, corner[1] - 2), (SHARD0.x * n + 100, SHARD0.y * n + 37)])
    ref = constant_refiner(len(NAMES), 4)
    # the marker cell's centre (corner - 4): the refined 12 x 4 box around it, class through_right
    want = np.array([[corner[0] - 4 - 6, corner[1] - 4 - 2, corner[0] - 4 + 6, corner[1] - 4 + 2],
                     [SHARD0.x * n + 100 - 6, SHARD0.y * n + 36 - 2, SHARD0.x * n + 100 + 6, SHARD0.y * n + 36 + 2]], float)
    for window, margin in ((256, 0.0), (512, 0.0), (2048, 0.0), (256, 8.0)):
        dets, _ = detect_with_model(store, all_tiles(small_grid), marker_model(), meta(receptive_field=8), NAMES, window=window,
                                    core_margin_px=margin, progress=False, refiner=ref)
        assert len(dets) == 2, (window, margin)
        order = np.argsort(-dets.boxes[:, 0])
        np.testing.assert_allclose(dets.boxes[order], want, atol=1e-3)
        assert dets.class_ids.tolist() == [4, 4] and (dets.scores > 0.99).all()
    # from a saved folder, in this process and on threads: the same boxes
    m = meta(receptive_field=8)
    folder = tmp_path / "det"
    m.extra["refine"] = save_refiner(ref, folder)
    save_model(marker_model(), m, folder)
    serial, _ = detect_store(store, all_tiles(small_grid), folder, NAMES, progress=False)
    threads, _ = detect_store(store, all_tiles(small_grid), folder, NAMES, progress=False, scheduler="threads", workers=2)
    for got in (serial, threads):
        np.testing.assert_allclose(got.boxes[np.argsort(-got.boxes[:, 0])], want, atol=1e-3)


def test_the_viewer_s_live_detections_go_through_the_second_stage(tmp_path, small_grid):
    from test_detect_predict import NAMES, SHARD0, marker_model, meta, store_with

    from navml.geo.grid import Tile
    from navml.viewer.live import LiveTiles, Predictor

    n = small_grid.shard_size
    col, row = SHARD0.x * n + 100, SHARD0.y * n + 37  # a red pixel in tile (x0 + 0, y0 + 0): its cell's centre (100, 36)
    store = store_with(tmp_path, small_grid, markers=[(col, row)])
    tile = Tile(col // 256, row // 256, 18)
    one = LiveTiles(store, Predictor.of(marker_model(), meta(receptive_field=8), "det"))
    two = LiveTiles(store, Predictor.of(marker_model(), meta(receptive_field=8), "det", refiner=constant_refiner(len(NAMES), 4)))
    (f1,), _, _ = one.detections(tile)
    (f2,), _, _ = two.detections(tile)
    assert f1["properties"]["class"] == "through" and f2["properties"]["class"] == "through_right"  # the second stage's kind
    assert f2["properties"]["score"] > 0.99
    lon = [p[0] for p in f2["geometry"]["coordinates"][0]]
    lon1 = [p[0] for p in f1["geometry"]["coordinates"][0]]
    assert (max(lon) - min(lon)) / (max(lon1) - min(lon1)) == pytest.approx(12 / 30, rel=1e-3)  # its 12-px box, not the 30-px one
    assert (max(lon) + min(lon)) / 2 == pytest.approx((max(lon1) + min(lon1)) / 2, abs=1e-9)  # centred where the proposal was
