"""Hard-negative mining of the detector (navml.mining.detect): false boxes on train tiles, vetoes, sampler, loss weights, cities."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import yaml
from test_detect_train import FAST, GRID, NAMES, make_store

from navml.config import MineDetectParams, RetrainDetectParams
from navml.detect.dataset import EMPTY, batch_stream, noobj_weights, read_boxes
from navml.detect.targets import Detections
from navml.geo.grid import parse_tile
from navml.mining.detect import box_gap, false_boxes, hard_boxes, mine_detection, retrain_detection
from navml.mining.negatives import read_collection, write_collection
from navml.models.io import ModelMeta

#: The fake detector's false box (tile pixels) and its score; a box below the threshold is also returned.
FALSE_BOX, FALSE_SCORE, LOW_SCORE = (40.0, 2.0, 48.0, 10.0), 0.8, 0.05
CLASSES_OF = ["marks", "marks"]


def fake_detector(monkeypatch, tmp_path, threshold: float = 0.3):
    """A detector folder whose "model" finds every bright mark (score 0.9, its class by shape) and adds
    FALSE_BOX (score 0.8, class 0) and a copy of it at score 0.05, on every tile; returns the folder."""
    import cv2

    from navml.io import write_json

    def detect(model, images, anchors, stride, **kw):
        out = []
        for img in images:
            n, _, stats, _ = cv2.connectedComponentsWithStats((img[..., 0] > 200).astype("uint8"), connectivity=4)
            b = [(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:n]]
            cls = [1 if w == h else 0 for _, _, w, h, _ in stats[1:n]]
            boxes = np.array(b + [FALSE_BOX, FALSE_BOX], float).reshape(-1, 4)
            out.append(Detections(boxes, np.array([0.9] * len(b) + [FALSE_SCORE, LOW_SCORE]), np.array(cls + [0, 0], int)))
        return out

    monkeypatch.setattr("navml.detect.evaluate.detect_images", detect)
    monkeypatch.setattr("navml.models.io.load_model", lambda folder: (None, None))
    folder = tmp_path / "fake_det"
    folder.mkdir(exist_ok=True)
    meta = ModelMeta(task="detection", classes=NAMES, zoom=18, tile_size=64, bands=3, stride=8, receptive_field=94,
                     extra={"anchors": [[11, 4], [7, 7]], "score_threshold": threshold, "nms_iou": 0.5})
    from dataclasses import asdict

    write_json(folder / "meta.json", asdict(meta))
    return folder


def clear_of_truth(truth, tile, iou: float | None = None) -> bool:
    """Whether FALSE_BOX is false on ``tile``: IoU below ``iou`` with every truth box, or (None) touching none."""
    from navml.post.score import box_iou_max

    b = truth.get(tile, EMPTY)[0]
    if iou is not None:
        return bool(box_iou_max(np.array([FALSE_BOX]), b)[0] < iou)
    return not len(b) or box_gap(np.array([FALSE_BOX]), b).min() > 0.0


def test_library_defaults_are_the_params_models():
    m, r = MineDetectParams(), RetrainDetectParams()
    sig = inspect.signature(mine_detection).parameters
    for name in ("score_threshold", "iou", "margin_m", "min_size_m2", "max_negatives", "tile_share", "batch_size", "seed"):
        assert sig[name].default == getattr(m, name), name
    sig = inspect.signature(retrain_detection).parameters
    for name, want in r.model_dump().items():
        assert sig[name].default == want, name
    assert m.score_threshold is None  # auto


def test_false_boxes_by_iou_and_margin():
    truths = np.array([[10, 10, 20, 14]], float)
    boxes = np.array([[10, 10, 20, 14], [12, 10, 22, 14], [21, 10, 31, 14], [40, 40, 50, 44]], float)
    assert box_gap(boxes, truths)[:, 0].tolist() == [0.0, 0.0, 1.0, pytest.approx(np.hypot(20, 26))]
    false, near = false_boxes(boxes, truths, iou=0.2, margin_px=0.0)
    assert false.tolist() == [False, False, True, True] and not near.any()  # IoU 1, 0.67: matched
    false, near = false_boxes(boxes, truths, iou=0.2, margin_px=2.0)
    assert false.tolist() == [False, False, False, True] and near.tolist() == [False, False, True, False]
    false, _ = false_boxes(boxes, truths, iou=0.7, margin_px=0.0)
    assert false.tolist() == [False, True, True, True]
    assert false_boxes(boxes, np.zeros((0, 4)), 0.2, 2.0)[0].all()


def test_mining_takes_train_tiles_only_and_boxes_matching_no_truth(monkeypatch, tmp_path):
    store, df = make_store(tmp_path / "store", shards=1)
    model = fake_detector(monkeypatch, tmp_path)
    truth = read_boxes(store.root / "boxes.csv", 2)
    feats, report = mine_detection(model, [store], [df], NAMES, classes_of=CLASSES_OF, margin_m=0.0, iou=0.2)
    train = [parse_tile(f"{r.z}-{r.x}-{r.y}") for r in df.itertuples() if r.split == "train"]
    assert report.candidates == report.scanned == len(train) == 8
    n_truth = sum(len(truth.get(t, EMPTY)[1]) for t in train)
    assert report.detections == n_truth + len(train)  # the 0.05 copies are below the threshold 0.3
    assert report.matched == n_truth
    want = [t for t in train if clear_of_truth(truth, t, 0.2)]
    assert report.kept == len(feats) == len(want) >= 6 and report.near == 0  # val and test tiles have the false box too: never taken
    assert sorted(f["properties"]["tile"] for f in feats) == sorted(f"{t.z}-{t.x}-{t.y}" for t in want)
    p = feats[0]["properties"]
    assert p["class"] == "marks" and p["kind"] == "detection" and p["source"] == "mined" and p["keep"] is True
    assert p["name"] == "through" and p["score"] == FALSE_SCORE and p["city"] is None and len(p["review_id"]) == 16
    # the 8 x 8 px box: 64 px² of ground
    from navml.geo.grid import pixel_area_m2, tile_polygon

    lat = tile_polygon(want[0]).centroid.y
    assert p["area_m2"] == pytest.approx(64 * pixel_area_m2(lat, 18, 64), rel=0.02)
    # the mined polygon lies exactly on the box: back in tile pixels it is FALSE_BOX
    boxes = hard_boxes(feats, GRID, want)
    assert np.allclose(boxes[want[0]], [FALSE_BOX], atol=1e-3)
    # params: a threshold above the false box's score, a size above it, max_negatives
    assert mine_detection(model, [store], [df], NAMES, classes_of=CLASSES_OF, score_threshold=0.85)[1].kept == 0
    assert mine_detection(model, [store], [df], NAMES, classes_of=CLASSES_OF, min_size_m2=1e4)[1].small == len(want)
    assert len(mine_detection(model, [store], [df], NAMES, classes_of=CLASSES_OF, max_negatives=2)[0]) == 2
    assert mine_detection(model, [store], [df], NAMES, classes_of=CLASSES_OF, tile_share=0.25)[1].scanned == 2


def test_sampler_oversamples_mined_tiles_and_weights_their_cells():
    from navml.detect.loss import loss_terms
    from navml.geo.grid import Tile

    class Reader:
        store = type("S", (), {"grid": GRID})()
        bands, error = 3, None

        def image(self, tile):
            return np.full((64, 64, 3), tile.x % 7, np.uint8)

    tiles = [Tile(100 + i, 200, 18) for i in range(5)]
    mined = np.array([[10.0, 10.0, 30.0, 20.0]])
    anchors = np.array([[11.0, 4.0], [7.0, 7.0]])
    gen = batch_stream(Reader(), tiles, {}, anchors=anchors, n_classes=2, mirror=np.arange(2), crop=None, flip=False, rotate=False,
                       hard={tiles[2]: mined}, hard_repeats=3, mined_weight=4.0, batch_size=7)
    assert len(gen.entries) == 5 + 2  # the mined tile 3 times per pass
    drawn = list(zip(*next(gen())))  # a batch of 7: one pass
    assert sum(int(img[0, 0, 0]) == tiles[2].x % 7 for img, _ in drawn) == 3
    for img, target in drawn:
        assert target.shape == (8, 8, 2, 5 + 2 + 1)
        w = target[..., -1]
        if int(img[0, 0, 0]) == tiles[2].x % 7:  # cells 1..3 (x 10..30) x rows 1..2 (y 10..20) weigh 4
            want = np.ones((8, 8, 2))
            want[1:3, 1:4] = 4.0
            assert np.array_equal(w, want)
        else:
            assert (w == 1).all()
    assert np.array_equal(noobj_weights(mined, 64, 64, 8, 2, 4.0)[..., 0], drawn[[int(i[0, 0, 0]) for i, _ in drawn].index(tiles[2].x % 7)][1][..., -1])
    # crops: the extra draws of the mined tile hold the mined box
    gen = batch_stream(Reader(), tiles, {}, anchors=anchors, n_classes=2, mirror=np.arange(2), crop=16, flip=False, rotate=False,
                       hard={tiles[2]: mined}, hard_repeats=3, mined_weight=4.0, batch_size=7)
    weighted = [t for t in next(gen())[1] if (t[..., -1] > 1).any()]
    assert len(weighted) >= 2
    # the loss: the no-object term counts the weighted cells 4 times (no truth: every cell free; sigmoid(0)² = 1/4)
    y_true = np.stack([t for _, t in drawn])
    y_pred = np.zeros((len(drawn), 8, 8, 2 * 7), np.float32)
    noobj = np.asarray(loss_terms(y_true, y_pred, anchors, 8, noobj_weighted=True)["noobj"])
    plain = np.asarray(loss_terms(y_true[..., :-1], y_pred, anchors, 8)["noobj"])
    assert np.allclose(plain, 8 * 8 * 2 * 0.25)
    is_mined = [int(img[0, 0, 0]) == tiles[2].x % 7 for img, _ in drawn]
    assert np.allclose(noobj, [(128 + 3 * 12) * 0.25 if m else 32.0 for m in is_mined])


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A tiny first detector (2 steps) on a one-shard store."""
    from navml.detect.train import train_detection

    root = tmp_path_factory.mktemp("first")
    store, df = make_store(root / "store", shards=1)
    train_detection(store, df, NAMES, root / "model", steps=2, eval_every=2, anchors=2, classes_of=CLASSES_OF, **FAST)
    return store, df, root / "model"


def test_empty_mining_gives_an_empty_file_and_a_copy_of_the_first_model(first, tmp_path):
    store, df, model = first
    path = write_collection(tmp_path / "mining" / "hard_negatives.geojson", [])
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    out = retrain_detection([store], [df], NAMES, model, read_collection(path), tmp_path / "mined", classes_of=CLASSES_OF, train={"refine": FAST["refine"]})
    assert out["copied_first_model"] and out["negatives_used"] == 0 and out["hard_tiles"] == 0
    for name in ("model.keras", "meta.json"):
        assert (tmp_path / "mined" / name).read_bytes() == (model / name).read_bytes()


def test_vetoed_negatives_are_not_used_and_kept_ones_fine_tune(monkeypatch, first, tmp_path):
    from navml.models.io import read_meta

    store, df, model = first
    fake = fake_detector(monkeypatch, tmp_path)
    feats, _ = mine_detection(fake, [store], [df], NAMES, classes_of=CLASSES_OF)
    monkeypatch.undo()
    vetoed = [{**f, "properties": {**f["properties"], "keep": False}} for f in feats]
    out = retrain_detection([store], [df], NAMES, model, vetoed, tmp_path / "none", classes_of=CLASSES_OF, train={"refine": FAST["refine"]})
    assert out["copied_first_model"] and out["vetoed"] == len(feats) and out["negatives_used"] == 0
    mixed = vetoed[:-2] + feats[-2:]
    out = retrain_detection([store], [df], NAMES, model, mixed, tmp_path / "mined", classes_of=CLASSES_OF,
                            train={**FAST, "anchors": 2}, steps=2, eval_every=2, oversample=3, weight=5.0)
    assert not out["copied_first_model"] and out["negatives_used"] == 2 and out["hard_tiles"] == 2 and out["mined_boxes"] == 2
    assert out["vetoed"] == len(feats) - 2 and out["steps_run"] == 2
    extra = read_meta(tmp_path / "mined").extra
    assert extra["hard_tiles"] == 2 and extra["hard_repeats"] == 3 and extra["mined_weight"] == 5.0
    assert extra["init_model"].endswith("model") and extra["anchors"] == read_meta(model).extra["anchors"]


def test_a_fine_tune_that_does_not_beat_the_first_detector_on_val_keeps_it(monkeypatch, first, tmp_path):
    from navml.models.io import load_model

    store, df, model = first
    fake = fake_detector(monkeypatch, tmp_path)
    feats, _ = mine_detection(fake, [store], [df], NAMES, classes_of=CLASSES_OF)
    monkeypatch.undo()
    # Adam steps of 50 per weight: no check of the fine-tune beats (or ties) the first detector on val
    out = retrain_detection([store], [df], NAMES, model, feats, tmp_path / "mined", classes_of=CLASSES_OF,
                            train={**FAST, "anchors": 2, "warmup_steps": 0}, steps=4, eval_every=2, learning_rate=50.0)
    assert not out["copied_first_model"] and out["best_step"] == 0 and out["steps_run"] == 4
    assert out["best_val_map50"] == out["start_val_map50"]
    a, b = load_model(model)[0].get_weights(), load_model(tmp_path / "mined")[0].get_weights()
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_two_cities_give_negatives_their_city_and_retrain_maps_them_back(monkeypatch, first, tmp_path):
    from typer.testing import CliRunner

    import navml.cli as cli

    root = tmp_path / "cities" / "train"
    for name, seed in (("a", 0), ("b", 1)):
        store, df = make_store(root / name / "store", shards=1, seed=seed)
        (root / name / "cover").mkdir(parents=True)
        df.to_csv(root / name / "cover" / "tiles.csv", index=False)
    params = {
        "paths": {"cities": str(tmp_path / "cities")},
        "grid": {"zoom": 18, "tile_size": 64, "shard_zoom": 16},
        "classes": {"marks": {"task": "detection", "labels": "marks.geojson", "names": NAMES}},
        "train": {"crop": None},
        "detect": {"steps": 2, "eval_every": 2, "crop": None, "anchors": 2, "batch_size": 8, "warmup_steps": 1, "prior_steps": 1,
                   "refine": {"steps": 2, "batch_size": 8, "filters": 2}},
        "retrain_detect": {"steps": 2, "eval_every": 2},
        "cities": {"a": {"role": "train", "synthetic": True}, "b": {"role": "train", "synthetic": True}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fake = fake_detector(monkeypatch, tmp_path)
    out = tmp_path / "mining"
    r = CliRunner().invoke(cli.app, ["mine_detect", "--cities", "--model", str(fake), "--out", str(out), "--params", str(tmp_path / "params.yaml"),
                                     "--export-limit", "1"])
    assert r.exit_code == 0, r.output
    feats = read_collection(out / "hard_negatives.geojson")
    summary = json.loads((out / "summary.json").read_text())
    by_city = {c: [f for f in feats if f["properties"]["city"] == c] for c in ("a", "b")}
    assert summary["by_city"] == {"a": len(by_city["a"]), "b": len(by_city["b"])} and min(map(len, by_city.values())) >= 5
    assert len(feats) == len(by_city["a"]) + len(by_city["b"]) == summary["negatives"]
    for c in ("a", "b"):
        truth = read_boxes(root / c / "store" / "boxes.csv", 2)
        assert all(clear_of_truth(truth, parse_tile(f["properties"]["tile"])) for f in by_city[c])
    assert (out / "export" / "a" / "index.html").exists() or list((out / "export" / "a").rglob("*.png"))
    monkeypatch.undo()
    # retrain over both stores (from the one-store first detector: same grid and names): each negative back on its own store
    import pandas as pd

    from navml.errors import InputError
    from navml.geo.store import Store
    from navml.models.io import read_meta

    stores = [Store(root / c / "store", GRID) for c in ("a", "b")]
    dfs = [pd.read_csv(root / c / "cover" / "tiles.csv") for c in ("a", "b")]
    keep = by_city["a"][:1] + by_city["b"][:2]
    tiles_a = {f["properties"]["tile"] for f in by_city["a"][:1]}
    tiles_b = {f["properties"]["tile"] for f in by_city["b"][:2]}
    res = retrain_detection(stores, dfs, NAMES, first[2], keep, tmp_path / "mined", classes_of=CLASSES_OF, cities=["a", "b"],
                            train={**FAST, "anchors": 2}, steps=2, eval_every=2)
    assert res["negatives_used"] == 3 and res["hard_tiles"] == len(tiles_a) + len(tiles_b) == 3 and not res["copied_first_model"]
    assert [c["store"] for c in read_meta(tmp_path / "mined").extra["cities"]] == [str(s.root) for s in stores]
    with pytest.raises(InputError, match="city 'b'"):
        retrain_detection(stores[:1], dfs[:1], NAMES, first[2], keep, tmp_path / "x", classes_of=CLASSES_OF, cities=["a"], train={"refine": FAST["refine"]})


def test_decoy_false_detections_by_kind():
    from shapely.geometry import box

    from navml.detect.evaluate import decoy_detections
    from navml.geo.features import to_lonlat
    from navml.geo.grid import Tile, tile_window

    tile = Tile(54620, 99490, 18)
    w = tile_window(tile, 64)

    def lonlat(x0, y0, x1, y1):  # tile pixels -> WGS84
        return to_lonlat(box(x0, y0, x1, y1), 18, 64, origin=(w.col, w.row))

    decoys = [(lonlat(0, 0, 20, 10), "crosswalk"), (lonlat(30, 30, 40, 40), "word")]
    truth = (np.array([[50.0, 50.0, 60.0, 54.0]]), np.array([0]))
    boxes = np.array([[2, 2, 12, 6], [4, 4, 14, 8], [30, 30, 36, 36], [50, 50, 60, 54], [20, 50, 30, 54], [18, 8, 28, 18]], float)
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.05])
    d = Detections(boxes, scores, np.zeros(6, int))
    out = decoy_detections([tile], [truth], [d], 0.3, decoys, GRID)
    # 5 at the threshold, 1 on the truth: 4 false, 2 on the crosswalk, 1 on the word, 1 on nothing
    assert out == {"false_detections": 4, "on_decoys": 3, "kinds": {"crosswalk": 2, "word": 1}}

