"""City-wide detection: windows with a halo, keep by centre in the core, class-aware NMS; a border marking comes out once."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.nms import nms
from navml.detect.predict import (
    COLUMNS,
    detect_store,
    detect_with_model,
    detections_table,
    grid_nms,
    read_detections,
    write_detections,
)
from navml.detect.targets import Detections, decode
from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Tile, Window, tiles_of_shard
from navml.geo.store import Store
from navml.models.io import ModelMeta, save_model

SHARD0 = Tile(13000, 24000, 16)  # 2 x 2 shards of 4 x 4 tiles from here, 39.7 N
NAMES = ["left", "right", "through", "through_left", "through_right", "left_right"]
ANCHORS = [[11.0, 4.0], [4.0, 11.0], [10.0, 10.0]]
STRIDE = 8


def meta(**kw) -> ModelMeta:
    m = dict(task="detection", classes=NAMES, zoom=18, tile_size=256, bands=3, stride=STRIDE, receptive_field=94,
             extra={"anchors": ANCHORS, "score_threshold": 0.5})
    m.update(kw)
    return ModelMeta(**m)


def marker_model(cls: int = 2, box=(30.0, 12.0)):
    """A detector of bright red pixels: the 8-px cell holding one fires one box of ``box`` (w, h) px centred in the cell.

    Max-pooling the red channel over each cell: the receptive field is the cell itself.
    """
    import keras
    from keras import layers

    per = 5 + len(NAMES)
    inp = keras.Input((None, None, 3))
    red = layers.Conv2D(1, 1, use_bias=False, kernel_initializer=keras.initializers.Constant([[[[1 / 255], [0.0], [0.0]]]]))(inp)
    m = layers.MaxPooling2D(STRIDE)(red)
    kernel = np.zeros((1, 1, 1, len(ANCHORS) * per), "float32")
    bias = np.zeros(len(ANCHORS) * per, "float32")
    bias[[a * per + 4 for a in range(len(ANCHORS))]] = -20.0
    kernel[0, 0, 0, 4] = 40.0  # anchor 0's objectness: on where the cell holds a bright red pixel
    kernel[0, 0, 0, 5 + cls] = 10.0
    bias[2], bias[3] = np.log(box[0] / ANCHORS[0][0]), np.log(box[1] / ANCHORS[0][1])
    head = layers.Conv2D(len(ANCHORS) * per, 1, kernel_initializer=keras.initializers.Constant(kernel),
                         bias_initializer=keras.initializers.Constant(bias))(m)
    return keras.Model(inp, head)


def store_with(tmp_path, grid, markers=(), seed=0) -> Store:
    """2 x 2 shards of dark noise with bright red pixels at global pixel ``markers`` (col, row)."""
    rng = np.random.default_rng(seed)
    store = Store(tmp_path / "store", grid)
    n = grid.shard_size
    for dy in (0, 1):
        for dx in (0, 1):
            img = rng.integers(0, 60, (3, n, n)).astype("uint8")
            for col, row in markers:
                r, c = row - (SHARD0.y + dy) * n, col - (SHARD0.x + dx) * n
                if 0 <= r < n and 0 <= c < n:
                    img[:, r, c] = (255, 0, 0)
            store.write_shard("imagery", Tile(SHARD0.x + dx, SHARD0.y + dy, 16), img)
    return store


def all_tiles(grid):
    return [t for dy in (0, 1) for dx in (0, 1) for t in tiles_of_shard(Tile(SHARD0.x + dx, SHARD0.y + dy, 16), grid)]


def test_a_box_across_a_tile_and_shard_border_comes_out_once(tmp_path, small_grid):
    n = small_grid.shard_size
    corner = ((SHARD0.x + 1) * n, (SHARD0.y + 1) * n)  # where the four shards meet
    # the cell just up-left of the corner: its 30 x 12 px box straddles the shard (and tile) borders both ways
    store = store_with(tmp_path, small_grid, markers=[(corner[0] - 3, corner[1] - 2)])
    model = marker_model()
    want = np.array([corner[0] - 4 - 15, corner[1] - 4 - 6, corner[0] - 4 + 15, corner[1] - 4 + 6], float)
    for window, margin in ((256, 0.0), (512, 0.0), (2048, 0.0), (256, 8.0)):
        dets, rep = detect_with_model(store, all_tiles(small_grid), model, meta(receptive_field=8), NAMES,
                                      window=window, core_margin_px=margin, progress=False)
        assert len(dets) == 1, (window, margin)
        np.testing.assert_allclose(dets.boxes[0], want, atol=1e-3)
        assert dets.class_ids.tolist() == [2] and dets.scores[0] > 0.99
        assert rep.halo == 8 and rep.detections == 1 and rep.shards == 4
        if margin:
            assert rep.candidates > 1  # kept by several windows, merged by NMS
    assert rep.windows == 64
    table = detections_table(dets, NAMES, small_grid)
    assert list(table.columns) == COLUMNS
    assert table[["z", "x", "y"]].values.tolist() == [[18, corner[0] // 256 - 1, corner[1] // 256 - 1]]
    assert table["class"].tolist() == ["through"]


@pytest.mark.parametrize("stem, halo", [(0, 48), (2, 56)])
def test_detections_equal_one_run_over_the_whole_mosaic_for_any_window(tmp_path, small_grid, stem, halo):
    """An untrained full detector (with and without the stem): whatever it outputs, windows with a halo give what one mosaic call gives."""
    import keras

    from navml.models.yolo import build_yolo, receptive_field

    keras.utils.set_random_seed(3)
    model = build_yolo(3, len(NAMES), len(ANCHORS), STRIDE, base_filters=4, stem_convs=stem, stem_filters=4)
    store = store_with(tmp_path, small_grid, seed=1)
    n = small_grid.shard_size
    x = np.moveaxis(store.read_window("imagery", Window(SHARD0.x * n, SHARD0.y * n, 2 * n, 2 * n)), 0, -1)[None].astype("float32")
    raw = np.asarray(model.predict_on_batch(x))[0]
    every = decode(raw, ANCHORS, STRIDE)
    s = np.sort(every.scores)[::-1]
    k = int(0.004 * len(s))  # a few hundred boxes, overlapping at places
    k += int(np.argmax(s[k:-1] - s[k + 1 :] > 1e-5))  # a threshold in a gap: float rounding cannot move a box across it
    thr = float((s[k] + s[k + 1]) / 2)
    ref = decode(raw, ANCHORS, STRIDE, thr, origin=(SHARD0.x * n, SHARD0.y * n))
    ref = ref.take(nms(ref.boxes, ref.scores, ref.class_ids, 0.3))
    assert 100 < len(ref) < 2000
    m = meta(receptive_field=receptive_field(STRIDE, stem))
    for window in (256, 1024):
        got, rep = detect_with_model(store, all_tiles(small_grid), model, m, NAMES, window=window, nms_iou=0.3,
                                     score_threshold=thr, progress=False)
        assert rep.halo == halo and len(got) == len(ref), window
        a, b = detections_table(got, NAMES, small_grid), detections_table(ref, NAMES, small_grid)
        assert (a["class_id"] == b["class_id"]).all()
        np.testing.assert_allclose(a[["x0", "y0", "x1", "y1"]].values, b[["x0", "y0", "x1", "y1"]].values, atol=0.01)
        np.testing.assert_allclose(a["score"].values, b["score"].values, atol=1e-4)


def test_grid_nms_equals_all_pairs_nms():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 400
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(2, 25, (n, 2))
        boxes = np.hstack([xy, xy + wh])
        scores = rng.choice(np.linspace(0, 1, 50), n)  # ties too
        cls = rng.integers(0, 3, n)
        for thr in (0.1, 0.5, 0.9):
            assert grid_nms(boxes, scores, cls, thr).tolist() == nms(boxes, scores, cls, thr).tolist()
    assert grid_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).tolist() == []
    with pytest.raises(ConfigError, match="nms_iou"):
        grid_nms(boxes, scores, cls, 0.0)


def test_outside_the_aoi_and_without_imagery_nothing_is_detected(tmp_path, small_grid):
    n = small_grid.shard_size
    x0, y0 = SHARD0.x * n, SHARD0.y * n
    markers = [(x0 + 100, y0 + 100), (x0 + 300, y0 + 100), (x0 + 600, y0 + 700)]
    store = store_with(tmp_path, small_grid, markers=markers)
    tiles = [t for t in all_tiles(small_grid) if (t.x, t.y) != ((x0 + 300) // 256, (y0 + 100) // 256)]
    dets, _ = detect_with_model(store, tiles, marker_model(), meta(receptive_field=8), NAMES, window=512, progress=False)
    centres = sorted(((dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2).tolist())
    assert centres == [[x0 + 100 - 100 % 8 + 4, y0 + 100 - 100 % 8 + 4], [x0 + 600 - 600 % 8 + 4, y0 + 700 - 700 % 8 + 4]]
    # no valid imagery at the third marker: dropped
    shard = Tile(SHARD0.x, SHARD0.y, 16)
    img = store.read_shard("imagery", shard)
    valid = np.ones((n, n), bool)
    valid[600:, 500:] = False
    store.write_shard("imagery", shard, img, valid=valid)
    dets, _ = detect_with_model(store, tiles, marker_model(), meta(receptive_field=8), NAMES, window=512, progress=False)
    assert len(dets) == 1


def test_score_threshold_auto_and_model_checks(tmp_path, small_grid):
    store = store_with(tmp_path, small_grid)
    tiles = all_tiles(small_grid)[:4]
    model = marker_model()
    no_thr = meta(extra={"anchors": ANCHORS})
    with pytest.raises(ModelError, match="detect_predict.score_threshold"):
        detect_with_model(store, tiles, model, no_thr, NAMES, progress=False)
    _, rep = detect_with_model(store, tiles, model, no_thr, NAMES, score_threshold=0.25, progress=False)
    assert rep.score_threshold == 0.25
    _, rep = detect_with_model(store, tiles, model, meta(receptive_field=8), NAMES, progress=False)
    assert rep.score_threshold == 0.5
    for bad, match in [
        (meta(task="segmentation"), "detection model"),
        (meta(extra={}), "anchors"),
        (meta(extra={"anchors": [[0, 3]]}), "positive"),
        (meta(zoom=17), "zoom 17"),
        (meta(tile_size=512), "512-px tiles"),
        (meta(classes=NAMES[:3]), "classes"),
    ]:
        with pytest.raises(ModelError, match=match) as err:
            detect_with_model(store, tiles, model, bad, NAMES, progress=False)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="detect_predict.halo_px"):
        detect_with_model(store, tiles, model, meta(), NAMES, halo=8, progress=False)
    with pytest.raises(ConfigError, match="detect_predict.window_px"):
        detect_with_model(store, tiles, model, meta(), NAMES, window=128, progress=False)
    with pytest.raises(InputError, match="detect_predict: the tile list is empty"):
        detect_with_model(store, [], model, meta(), NAMES, progress=False)


def test_saved_detector_loads_and_the_table_round_trips(tmp_path, small_grid):
    from navml.models.yolo import build_yolo, receptive_field

    n = small_grid.shard_size
    store = store_with(tmp_path, small_grid, markers=[(SHARD0.x * n + 50, SHARD0.y * n + 50)])
    folder = save_model(build_yolo(3, len(NAMES), len(ANCHORS), STRIDE, base_filters=4), meta(receptive_field=receptive_field(STRIDE)),
                        tmp_path / "det")
    tiles = list(tiles_of_shard(SHARD0, small_grid))
    dets, rep = detect_store(store, tiles, folder, NAMES, score_threshold=0.0005, progress=False)
    assert rep.windows == 1 and len(dets) > 0
    table = detections_table(dets, NAMES, small_grid)
    path = write_detections(table, tmp_path / "out" / "detections.csv")
    back = read_detections(path, NAMES)
    assert back.shape == table.shape and (back["class"] == table["class"]).all()
    np.testing.assert_allclose(back["score"], table["score"])
    empty = write_detections(detections_table(Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)), NAMES, small_grid),
                             tmp_path / "empty.csv")
    assert list(read_detections(empty).columns) == COLUMNS and len(read_detections(empty)) == 0
    with pytest.raises(InputError, match="predict_detect"):
        read_detections(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="not a detection name"):
        read_detections(path, ["other"])


def test_the_compiled_runner_is_reused_until_the_weights_change(tmp_path, small_grid):
    from navml.models.inference import model_input, model_runner

    model = marker_model()
    run = model_runner(model, 3)
    assert model_runner(model, 3) is run
    x = model_input(np.random.default_rng(0).integers(0, 255, (3, 40, 48)).astype("uint8"))
    assert x.shape == (1, 40, 48, 3) and x.dtype == np.float32 and x.ctypes.data % 64 == 0
    y = run(x)
    w = model.get_weights()
    model.set_weights([v * 2 for v in w])  # trained further: a new runner with the new weights
    assert model_runner(model, 3) is not run and not np.array_equal(model_runner(model, 3)(x), y)
    model.set_weights(w)
    np.testing.assert_array_equal(model_runner(model, 3)(x), y)
    store = store_with(tmp_path, small_grid, markers=[(13000 * 1024 + 300, 24000 * 1024 + 200)])
    first = detect_with_model(store, all_tiles(small_grid), model, meta(), NAMES, progress=False)[0]
    again = detect_with_model(store, all_tiles(small_grid), model, meta(), NAMES, progress=False)[0]
    assert len(first) == 1 and np.array_equal(first.boxes, again.boxes) and np.array_equal(first.scores, again.scores)
