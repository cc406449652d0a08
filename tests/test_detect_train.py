"""Detector training and evaluation on tiny synthetic stores (bars and squares on noise), crops, thresholds, CLI errors."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from navml.config import DetectParams, EvaluateParams, Params, validate_params
from navml.detect.dataset import batch_stream, crop_boxes, read_boxes, sample, sample_batch
from navml.detect.evaluate import best_f1_threshold, evaluate_detection
from navml.detect.metrics import counts_at
from navml.detect.targets import Detections
from navml.detect.train import receptive_halo, train_detection
from navml.errors import ConfigError, InputError
from navml.geo.grid import Grid, Tile, tile_key, tiles_of_shard
from navml.geo.store import Store
from navml.models.yolo import receptive_field

GRID = Grid(zoom=18, tile_size=64, shard_zoom=16)  # 4 x 4 tiles of 64 px per 256-px shard
SHARD0 = Tile(10000, 22500, 16)
#: both names are their own mirror image, so flips and turns keep them: class = shape (bar or square), not orientation
NAMES = ["through", "left_right"]


def make_store(root, shards: int = 2, seed: int = 0) -> tuple[Store, pd.DataFrame]:
    """Dark noise with bright bars (11 x 4 px, lying or standing: class 0) and squares (7 x 7 px: class 1).

    Writes imagery, ``boxes.csv`` (tile pixels) and returns the tile index: tiles cycle train, train, val, test.
    """
    rng = np.random.default_rng(seed)
    store = Store(root, GRID)
    n = GRID.shard_size
    rows, boxes = [], []
    for s in range(shards):
        shard = Tile(SHARD0.x + s, SHARD0.y, GRID.shard_zoom)
        image = rng.integers(60, 100, size=(3, n, n), dtype=np.uint8)
        taken = np.zeros((n, n), bool)
        placed = []
        for _ in range(60):
            k = int(rng.integers(2))
            w, h = ((11, 4) if rng.random() < 0.5 else (4, 11)) if k == 0 else (7, 7)
            x0, y0 = int(rng.integers(1, n - w - 1)), int(rng.integers(1, n - h - 1))
            if taken[max(0, y0 - 3) : y0 + h + 3, max(0, x0 - 3) : x0 + w + 3].any():
                continue
            if (x0 // 64 != (x0 + w - 1) // 64) or (y0 // 64 != (y0 + h - 1) // 64):
                continue  # whole in one tile
            taken[y0 : y0 + h, x0 : x0 + w] = True
            image[:, y0 : y0 + h, x0 : x0 + w] = 230
            placed.append((k, x0, y0, x0 + w, y0 + h))
        store.write_shard("imagery", shard, image)
        tiles = sorted(tiles_of_shard(shard, GRID), key=lambda t: (t.y, t.x))
        origin = tiles[0]  # the north-west tile
        for i, t in enumerate(tiles):
            rows.append(dict(z=t.z, x=t.x, y=t.y, shard=tile_key(shard), block="b0", split=("train", "train", "val", "test")[i % 4]))
        for k, x0, y0, x1, y1 in placed:
            tx, ty = origin.x + x0 // 64, origin.y + y0 // 64
            ox, oy = (tx - origin.x) * 64, (ty - origin.y) * 64
            boxes.append(dict(z=18, x=tx, y=ty, class_id=k, **{"class": "marks"}, name=NAMES[k],
                              xmin=float(x0 - ox), ymin=float(y0 - oy), xmax=float(x1 - ox), ymax=float(y1 - oy)))
    pd.DataFrame(boxes).to_csv(store.root / "boxes.csv", index=False)
    return store, pd.DataFrame(rows)


#: the second stage trained briefly: its plumbing, not its quality (tests/test_detect_refine.py has that)
FAST = dict(base_filters=8, batch_size=8, crop=None, warmup_steps=10, prior_steps=20, learning_rate=0.01, progress=False,
            refine={"steps": 20, "batch_size": 16, "filters": 4})


# --- params -------------------------------------------------------------------------------


def test_library_defaults_are_the_params_model():
    d = DetectParams()
    flat = {**d.model_dump(exclude={"loss", "augment", "refine"}), **d.loss.model_dump(), **d.augment.model_dump()}
    sig = inspect.signature(train_detection).parameters
    for name, want in flat.items():
        assert sig[name].default == want, name
    assert sig["refine"].default == d.refine
    from navml.detect.refine_train import train_refiner

    rsig = inspect.signature(train_refiner).parameters
    for name, want in d.refine.model_dump(exclude={"steps"}).items():
        assert rsig[name].default == want, name
    assert rsig["steps"].default == d.refine.steps
    ev = inspect.signature(evaluate_detection).parameters
    assert ev["batch_size"].default == EvaluateParams().batch_size and ev["overlays"].default == EvaluateParams().overlays
    for model in (DetectParams, type(d.loss), type(d.augment), type(d.refine)):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"stride": 12}, "detect.stride: 12 is not one of"),
        ({"crop": 100}, "detect.crop: 100 px must be a multiple of detect.stride 8"),
        ({"eval_every": 5000}, "detect.eval_every: 5000 is more than detect.steps"),
        ({"score_threshold": 1.5}, "detect.score_threshold: 1.5 is out of range"),
        ({"loss": {"obj": -1}}, "detect.loss.obj: -1 is out of range"),
        ({"augment": {"hue": 0.1}}, "unknown key 'detect.augment.hue'"),
    ],
)
def test_detect_params_errors_are_one_line(change, expect):
    with pytest.raises(ConfigError) as info:
        validate_params({"detect": change})
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_score_threshold_auto_and_augment_false():
    p = validate_params({"detect": {"score_threshold": "auto", "augment": False}})
    assert p.detect.score_threshold is None and p.detect.augment is None
    assert Params().detect.augment.rotate is True and Params().detect.augment.flip is False


# --- crops keep the boxes true ---------------------------------------------------------------


def test_crop_keeps_boxes_whose_centre_is_inside_and_clips_them():
    boxes = np.array([[10, 10, 20, 14], [28, 30, 40, 34], [50, 50, 60, 54], [0, 0, 4, 11]], float)
    ids = np.array([0, 1, 0, 1])
    got, gid = crop_boxes(boxes, ids, row=8, col=8, size=32)  # window x, y in [8, 40)
    # centres (15, 12) in, (34, 32) in, (55, 52) out, (2, 5.5) out
    np.testing.assert_allclose(got, [[2, 2, 12, 6], [20, 22, 32, 26]])
    np.testing.assert_array_equal(gid, [0, 1])
    # a centre exactly on the far border is out (half-open), on the near border in
    got, _ = crop_boxes(np.array([[36, 8, 44, 12], [4, 8, 12, 12]], float), np.array([0, 0]), 0, 8, 32)
    np.testing.assert_allclose(got, [[0, 8, 4, 12]])


@pytest.mark.parametrize("seed", range(5))
def test_random_crops_and_augmentation_keep_the_labels_true(tmp_path, seed):
    """Paint each box's class as a pixel value; after crop, flip and turn, every box still covers its own paint."""
    rng = np.random.default_rng(seed)
    image = np.zeros((64, 64, 3), np.uint8)
    boxes, ids = [], []
    for k, (x0, y0, w, h) in enumerate([(3, 5, 11, 4), (30, 8, 4, 11), (40, 40, 11, 4), (10, 44, 4, 11), (50, 20, 7, 4)]):
        image[y0 : y0 + h, x0 : x0 + w] = 40 * (k + 1)
        boxes.append([x0, y0, x0 + w, y0 + h])
        ids.append(k % 2)
    boxes, ids = np.array(boxes, float), np.array(ids)
    mirror = np.array([1, 0])  # a flip swaps the two classes (as left <-> right)
    for _ in range(40):
        img, b, c = sample(image, (boxes, ids), rng, crop=32, mirror=mirror, flip=True, rotate=True, box_crops=0.75)
        assert img.shape == (32, 32, 3) and img.dtype == np.float32
        assert len(b) == len(c)
        swapped = set()
        for box, cls in zip(b, c):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            value = img[min(cy, 31), min(cx, 31), 0]
            assert value > 0, "a kept box must hold its painted marking at its centre"
            k = int(round(value / 40)) - 1
            paint = img[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1)), 0] == value
            assert paint.all(), "the box lies on its own marking (clipped, never shifted)"
            swapped.add(bool(ids[k] != cls))
        assert len(swapped) <= 1, "one transform per sample: every class swapped, or none"
        whole = [k for k in range(5) if (img[..., 0] == 40 * (k + 1)).sum() == (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])]
        assert len(b) >= len(whole), "a marking wholly in the crop keeps its box"


def _painted(seed: int, n: int = 5, size: int = 64):
    """An image with ``n`` markings, each painted with its own value 40 (k + 1), its boxes and class ids (k % 2)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    boxes, ids = [], []
    for k in range(n):
        w, h = (11, 4) if rng.random() < 0.5 else (4, 11)
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        if image[max(y0 - 1, 0) : y0 + h + 1, max(x0 - 1, 0) : x0 + w + 1].any():
            continue
        image[y0 : y0 + h, x0 : x0 + w] = 40 * (k + 1)
        boxes.append([x0, y0, x0 + w, y0 + h])
        ids.append(k % 2)
    return image, (np.array(boxes, float).reshape(-1, 4), np.array(ids, int))


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_keeps_every_crop_label_true(seed):
    """A batch of crops from tiles of several sizes (one smaller than the crop, as a resampled city tile, one
    without boxes): every kept box lies on its own paint, clipped, its class swapped exactly when the crop was
    mirrored, and a marking wholly inside keeps its box. Same seed, same batch."""
    tiles = [_painted(seed * 10 + i, size=(64, 48, 24, 64)[i % 4]) for i in range(12)]
    tiles[5] = (np.zeros((64, 64, 3), np.uint8), (np.zeros((0, 4)), np.zeros(0, int)))
    mirror = np.array([1, 0])
    kw = dict(crop=32, mirror=mirror, flip=True, rotate=True, box_crops=0.75)
    imgs, boxes, ids = sample_batch([t[0] for t in tiles], [t[1] for t in tiles], np.random.default_rng(seed), **kw)
    assert imgs.shape == (12, 32, 32, 3) and imgs.dtype == np.float32 and len(boxes) == len(ids) == 12
    again = sample_batch([t[0] for t in tiles], [t[1] for t in tiles], np.random.default_rng(seed), **kw)
    np.testing.assert_array_equal(again[0], imgs)
    assert all(np.array_equal(a, b) for a, b in zip(again[1], boxes))
    kept = 0
    for img, b, c in zip(imgs, boxes, ids):
        assert len(b) == len(c)
        swapped = set()
        for box, cls in zip(b, c):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            value = img[min(int((y0 + y1) / 2), 31), min(int((x0 + x1) / 2), 31), 0]
            assert value > 0, "a kept box holds its marking at its centre"
            k = int(round(value / 40)) - 1
            assert (img[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1)), 0] == value).all()
            swapped.add(bool(k % 2 != cls))
            kept += 1
        assert len(swapped) <= 1, "one transform per crop: every class swapped, or none"
        whole = [v for v in range(1, 6) if (img[..., 0] == 40 * v).any() and ((img[..., 0] == 40 * v).sum() == 44)]
        assert len(b) >= len(whole)
    assert kept >= 6 and len(boxes[5]) == 0


def test_a_batch_is_transform_sample_by_sample():
    """With whole (square) tiles, each sample of a batch is the tile after some flips and turn, and its boxes and
    classes are exactly what :func:`navml.detect.augment.transform` gives for that transform (flips swap, turns keep)."""
    from itertools import product

    from navml.detect.augment import transform

    rng = np.random.default_rng(1)
    tiles = []
    for i in range(16):
        image, truth = _painted(i, size=32)
        image[..., 1] = rng.integers(0, 255, (32, 32))  # noise: each transform gives another image
        tiles.append((image, truth))
    mirror = np.array([1, 0])
    imgs, boxes, ids = sample_batch([t[0] for t in tiles], [t[1] for t in tiles], np.random.default_rng(0),
                                    crop=None, mirror=mirror, flip=True, rotate=True, box_crops=1.0)
    seen = set()
    for img, b, c, (image, (tb, tid)) in zip(imgs, boxes, ids, tiles):
        match = [(h, v, k) for h, v, k in product((False, True), (False, True), range(4))
                 if np.array_equal(transform(image, tb, tid, mirror, hflip=h, vflip=v, k=k)[0], img)]
        assert match, "the sample is a flip and turn of its tile"
        _, want_b, want_c = transform(image, tb, tid, mirror, hflip=match[0][0], vflip=match[0][1], k=match[0][2])
        order, want = np.lexsort(b.T), np.lexsort(want_b.T)
        np.testing.assert_allclose(b[order], want_b[want])
        np.testing.assert_array_equal(c[order], want_c[want])
        seen.add(match[0][0] != match[0][1])
    assert seen == {False, True}, "16 samples: some mirrored, some not"


def test_batch_stream_yields_reproducible_batches_with_one_positive_per_box(tmp_path):
    from navml.segment.dataset import TileReader

    store, df = make_store(tmp_path / "store", shards=1)
    truth = read_boxes(store.root / "boxes.csv", 2)
    tiles = [Tile(int(r.x), int(r.y), int(r.z)) for r in df.itertuples() if r.split == "train"]
    anchors = np.array([[11.0, 4.0], [7.0, 7.0]])
    kw = dict(anchors=anchors, n_classes=2, mirror=np.arange(2), batch_size=5, stride=8, crop=32, seed=3)
    first = [b for _, b in zip(range(4), batch_stream(TileReader(store, 0, 3), tiles, truth, **kw)())]
    again = [b for _, b in zip(range(4), batch_stream(TileReader(store, 0, 3), tiles, truth, **kw)())]
    assert len(first) == 4 and len(tiles) == 8  # batches run across passes
    for (im, tg), (im2, tg2) in zip(first, again):
        assert im.shape == (5, 32, 32, 3) and tg.shape == (5, 4, 4, 2, 7)
        np.testing.assert_array_equal(im, im2)
        np.testing.assert_array_equal(tg, tg2)
        assert set(np.unique(tg[..., 4])) <= {0.0, 1.0}
        np.testing.assert_array_equal(tg[..., 5:].sum(-1), tg[..., 4])  # one class per positive
    assert sum(float(tg[..., 4].sum()) for _, tg in first) >= 20  # box_crops 1: every crop holds a box


def test_flip_swaps_the_class_and_turn_keeps_it():
    image = np.zeros((16, 16, 1), np.uint8)
    image[2:6, 1:12] = 255
    boxes, ids = np.array([[1, 2, 12, 6]], float), np.array([0])
    from navml.detect.augment import transform

    img, b, c = transform(image, boxes, ids, np.array([1, 0]), hflip=True)
    assert c.tolist() == [1] and img[2:6, 4:15].min() == 255 and b.tolist() == [[4, 2, 15, 6]]
    img, b, c = transform(image, boxes, ids, np.array([1, 0]), k=1)
    assert c.tolist() == [0] and b.tolist() == [[2, 4, 6, 15]] and img[4:15, 2:6].min() == 255


def test_boxes_csv_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no detection boxes; run `dvc repro rasterize`"):
        read_boxes(tmp_path / "boxes.csv", 2)
    pd.DataFrame([dict(z=18, x=1, y=2, class_id=5, xmin=0, ymin=0, xmax=4, ymax=4)]).to_csv(tmp_path / "boxes.csv", index=False)
    with pytest.raises(InputError, match="class_id 5 but the registry has 2"):
        read_boxes(tmp_path / "boxes.csv", 2)
    got = read_boxes(tmp_path / "boxes.csv", 6)
    assert list(got) == [Tile(1, 2, 18)] and got[Tile(1, 2, 18)][0].tolist() == [[0, 0, 4, 4]]


# --- the score threshold of best F1 -------------------------------------------------------------


def test_best_f1_threshold_on_a_hand_made_case():
    truths = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0])), (np.array([[0, 0, 10, 10]], float), np.array([1]))]
    preds = [
        (np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], float), np.array([0.9, 0.7, 0.4]), np.array([0, 0, 0])),
        (np.array([[0, 0, 10, 10], [40, 40, 50, 50]], float), np.array([0.8, 0.2]), np.array([1, 1])),
    ]
    # by score: 0.9 TP, 0.8 TP, 0.7 FP, 0.4 TP, 0.2 FP; 3 truths. F1 at each cut: 2/4, 4/5, 4/6, 6/7, 6/8
    got = best_f1_threshold(truths, preds, 2)
    assert got["f1"] == pytest.approx(6 / 7) and got["threshold"] == pytest.approx(0.3)
    assert got["precision"] == pytest.approx(3 / 4) and got["recall"] == pytest.approx(1.0)
    c = counts_at(truths, preds, 2, got["threshold"])
    assert 2 * c.tp.sum() / (2 * c.tp.sum() + c.fp.sum() + c.fn.sum()) == pytest.approx(got["f1"])
    assert best_f1_threshold(truths, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))] * 2, 2)["f1"] == 0.0


# --- evaluation on a hand-made case ------------------------------------------------------------


def _fake_model(folder, names, threshold=0.5):
    from navml.models.io import ModelMeta, save_model
    from navml.models.yolo import build_yolo

    meta = ModelMeta(task="detection", classes=list(names), zoom=18, tile_size=64, bands=3, stride=8, receptive_field=94,
                     extra={"anchors": [[11.0, 4.0]], "score_threshold": threshold, "nms_iou": 0.5})
    save_model(build_yolo(3, len(names), 1, 8, 1), meta, folder)


def test_evaluate_writes_metrics_plots_and_overlays_on_a_hand_made_case(tmp_path, monkeypatch):
    import navml.detect.evaluate as ev

    store, df = make_store(tmp_path / "store", shards=1)
    test = [Tile(r.x, r.y, r.z) for r in df[df["split"] == "test"].itertuples()][:2]
    index = df[(df["split"] != "test") | df.apply(lambda r: Tile(r.x, r.y, r.z) in test, axis=1)]
    truth = {
        test[0]: (np.array([[10, 10, 21, 14]], float), np.array([0])),
        test[1]: (np.array([[30, 30, 37, 37], [5, 40, 16, 44]], float), np.array([1, 0])),
    }
    made = {
        test[0]: Detections(np.array([[10, 10, 21, 14]], float), np.array([0.9]), np.array([0])),
        # the square found as a bar (0.8, a confusion), then as a square (0.3, below the threshold); the bar missed
        test[1]: Detections(np.array([[30, 30, 37, 37], [30.5, 30, 37, 37]], float), np.array([0.8, 0.3]), np.array([0, 1])),
    }
    order = sorted(test, key=lambda t: (t.z, t.y, t.x))
    monkeypatch.setattr(ev, "predict_detections", lambda model, images, *a, **k: [made[t] for t in order][: len(images)])
    _fake_model(tmp_path / "model", NAMES)
    m = evaluate_detection(store, index, tmp_path / "model", tmp_path / "out", names=NAMES, boxes=truth, overlays=2, progress=False)
    # class 0: 0.9 TP, 0.8 FP (wrong place for a bar), 2 truths -> AP 0.5; class 1: 0.3 TP of 1 truth -> AP 1
    assert m["classes"]["through"]["ap50"] == pytest.approx(0.5)
    assert m["classes"]["left_right"]["ap50"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx(0.75) and m["classes_scored"] == 2
    assert m["score_threshold"] == 0.5 and m["truths"] == 3 and m["detections"] == 2 and m["tiles"] == 2
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
    c0, c1 = m["classes"]["through"], m["classes"]["left_right"]
    assert (c0["tp"], c0["fp"], c0["fn"], c0["missed"], c0["confused"]) == (1, 1, 1, 1, 0)
    assert (c1["tp"], c1["fp"], c1["fn"], c1["confused"], c1["missed"]) == (0, 0, 1, 1, 0)
    saved = json.loads((tmp_path / "out" / "detect.json").read_text())
    assert saved["map50"] == pytest.approx(0.75)
    assert {"map50", "map50_95", "precision", "recall", "f1", "score_threshold", "tiles", "truths", "detections", "classes"} <= set(saved)
    conf = json.loads((tmp_path / "out" / "detect_plots" / "confusion.json").read_text())
    assert conf["labels"] == [*NAMES, "none"] and conf["counts"] == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]
    rows = pd.read_csv(tmp_path / "out" / "detect_plots" / "confusion.csv")
    assert len(rows) == 3 and ((rows.actual == "left_right") & (rows.predicted == "through")).sum() == 1
    pr = pd.read_csv(tmp_path / "out" / "detect_plots" / "pr" / "through.csv")
    assert list(pr.columns) == ["recall", "precision", "score"] and pr["precision"].tolist() == [1.0, 0.5]
    pngs = sorted(p.name for p in (tmp_path / "out" / "detect_plots" / "overlays").iterdir())
    assert pngs == sorted(f"{tile_key(t)}.png" for t in test)
    import cv2

    img = cv2.imread(str(tmp_path / "out" / "detect_plots" / "overlays" / pngs[0]))
    assert img.shape == (64 * 3, 2 * 64 * 3 + 4, 3)


def test_evaluate_refuses_a_segmentation_model_and_other_names(tmp_path):
    from navml.errors import ModelError

    store, df = make_store(tmp_path / "store", shards=1)
    _fake_model(tmp_path / "model", NAMES)
    with pytest.raises(ModelError, match="model classes"):
        evaluate_detection(store, df, tmp_path / "model", tmp_path / "out", names=["left", "right", "through"], progress=False)
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    (tmp_path / "model" / "meta.json").write_text(json.dumps({**meta, "task": "segmentation"}))
    with pytest.raises(ModelError, match="not a detection one"):
        evaluate_detection(store, df, tmp_path / "model", tmp_path / "out", names=NAMES, progress=False)
    assert not (tmp_path / "out").exists()


# --- training reaches a floor ------------------------------------------------------------------


@pytest.mark.slow
def test_training_learns_bars_and_squares(tmp_path):
    store, df = make_store(tmp_path / "store", shards=2)
    out = train_detection(store, df, NAMES, tmp_path / "model", steps=160, eval_every=40, patience=4, anchors=2, seed=0,
                          live_dir=tmp_path / "live", classes_of=["marks", "marks"],
                          **{**FAST, "refine": {"steps": 600, "batch_size": 32, "filters": 8, "patch": 16}})
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    d = DetectParams()
    assert meta["task"] == "detection" and meta["classes"] == NAMES and meta["stride"] == 8
    assert meta["receptive_field"] == receptive_field(8, d.stem_convs) == 94 + 2 * d.stem_convs
    ex = meta["extra"]
    assert ex["stem_convs"] == d.stem_convs and ex["stem_filters"] == d.stem_filters
    assert len(ex["anchors"]) == 2 and ex["receptive_halo"] == receptive_halo(8, d.stem_convs)
    assert ex["names"] == [["marks", "through"], ["marks", "left_right"]]
    assert 0 < ex["score_threshold"] < 1 and ex["nms_iou"] == 0.5
    assert out["best_val_map50"] > 0.6
    assert (tmp_path / "live" / "metrics.json").exists()
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["best_val_map50"] == out["best_val_map50"]
    m = evaluate_detection(store, df, tmp_path / "model", tmp_path / "eval", names=NAMES, overlays=1, progress=False)
    assert m["map50"] > 0.95 and m["classes_scored"] == 2  # through both stages (0.91 with the first alone)
    assert ex["refine"]["steps"] == 600 and ex["refine"]["patch"] == 16 and (tmp_path / "model" / "refine.keras").exists()
    assert ex["refine_val_map50"] == ex["refine"]["val_map50"] > 0.95
    assert not list(tmp_path.glob(".model.train-*"))


def test_second_stage_flips_need_names_with_mirror_images(tmp_path):
    store, df = make_store(tmp_path / "store", shards=1)
    small = {"steps": 2, "batch_size": 8, "filters": 2}
    with pytest.raises(ConfigError, match=r"'bar'.*detect.refine.flip: false"):
        train_detection(store, df, ["bar", "square"], tmp_path / "model", steps=1, eval_every=1, anchors=2, **{**FAST, "refine": small})
    assert not (tmp_path / "model").exists()
    out = train_detection(store, df, ["bar", "square"], tmp_path / "model", steps=1, eval_every=1, anchors=2,
                          **{**FAST, "refine": {**small, "flip": False}})
    assert out["model_dir"] == str(tmp_path / "model")


def test_no_val_box_is_a_one_line_error(tmp_path):
    store, df = make_store(tmp_path / "store", shards=1)
    df = df.assign(split=df["split"].replace({"val": "test"}))
    with pytest.raises(InputError, match="split 'val' has no tile"):
        train_detection(store, df, NAMES, tmp_path / "model", steps=1, eval_every=1, **FAST)
    assert not (tmp_path / "model").exists()


# --- the command line ------------------------------------------------------------------------------


def test_cli_errors_are_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from navml.cli.evaluate_detect import command as evaluate
    from navml.cli.train_detect import command as train

    store, df = make_store(tmp_path / "store", shards=1)
    df.to_csv(tmp_path / "tiles.csv", index=False)
    (store.root / "boxes.csv").unlink()
    params = {
        "grid": {"zoom": 18, "tile_size": 64, "shard_zoom": 16},
        "classes": {"marks": {"task": "detection", "labels": "marks.geojson", "names": NAMES}},
        "train": {"crop": None},
        "detect": {"steps": 1, "eval_every": 1, "crop": None, "refine": {"steps": 2, "batch_size": 8, "filters": 2}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    base = ["--params", str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "tiles.csv"), "--store", str(tmp_path / "store")]
    for command, args, expect in [
        (train, ["--out", str(tmp_path / "model"), "--live", str(tmp_path / "live")], "boxes.csv: no detection boxes; run `dvc repro rasterize`"),
        (evaluate, ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")], "no model metadata; train a model first"),
    ]:
        app = typer.Typer()
        app.command()(command)
        result = CliRunner().invoke(app, base + args)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("navml: error:") and expect in lines[0], result.output
    params["detect"]["crop"] = 60
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    app = typer.Typer()
    app.command()(train)
    result = CliRunner().invoke(app, base + ["--out", str(tmp_path / "model")])
    assert result.exit_code == 1 and "detect.crop: 60 px must be a multiple of detect.stride 8" in result.output
    assert not (tmp_path / "model").exists()
