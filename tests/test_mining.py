"""Hard-negative mining on a tiny synthetic store: where it mines, vetoes, the sampler, weighted pixels, an empty result."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely

from navml.data.rasterize import IGNORE
from navml.geo.grid import Grid, Tile, pixel_area_m2, tile_key, tile_polygon, tiles_of_shard
from navml.geo.store import Store
from navml.mining.mine import mine_segmentation, tile_regions
from navml.mining.negatives import kept, merge_previous, negative_feature, read_collection, tile_masks, write_collection
from navml.mining.retrain import retrain_segmentation
from navml.segment.dataset import MINED, MinedReader, TrainingTiles, make_dataset

GRID = Grid(zoom=18, tile_size=64, shard_zoom=16)  # 4 x 4 tiles of 64 px per 256-px shard
SHARD = Tile(10000, 22500, 16)
TILES = list(tiles_of_shard(SHARD, GRID))  # row-major: TILES[4 * row + col]
#: column 0..1 train, column 2 val, column 3 test
SPLIT = {0: "train", 1: "train", 2: "val", 3: "test"}
N = GRID.shard_size


def _tile_rc(t: Tile) -> tuple[int, int]:
    side = 2 ** (GRID.zoom - GRID.shard_zoom)
    return t.y % side, t.x % side


def blob(arr: np.ndarray, tile: Tile, r0: int, c0: int, h: int, w: int, value: int) -> None:
    """Set a rectangle of a shard array, in pixels of ``tile``."""
    r, c = _tile_rc(tile)
    arr[r * 64 + r0 : r * 64 + r0 + h, c * 64 + c0 : c * 64 + c0 + w] = value


def make_city(store_dir, probs_dir, shard: Tile = SHARD, score: int = 230, seed: int = 0):
    """A store with one labelled lot, a complete area over the top two tile rows (unknown below),
    and a probability layer with false blobs in every place mining must or must not take:
    ``(store, probs store, tile index, complete areas, {k: tile k of the shard})``; the hard negative has ``score``/255."""
    tiles = list(tiles_of_shard(shard, GRID))
    store = Store(store_dir, GRID)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(3, N, N), dtype=np.uint8)
    mask = np.zeros((N, N), np.uint8)
    mask[128:] = IGNORE  # tile rows 2..3: outside the complete area, class unknown
    probs = np.zeros((N, N), np.uint8)
    t = {k: tiles[k] for k in range(16)}
    blob(mask, t[0], 10, 10, 30, 30, 1)  # the labelled lot on train tile 0
    blob(probs, t[0], 10, 10, 30, 30, 240)  # predicted right: not a negative
    blob(probs, t[0], 40, 10, 2, 30, 240)  # a sliver along the lot's edge: label shift, left out (edge_m)
    for k in (6, 7):  # lots on a val and a test tile, predicted right
        blob(mask, t[k], 5, 5, 20, 20, 1)
        blob(probs, t[k], 5, 5, 20, 20, 240)
    blob(probs, t[1], 20, 20, 24, 24, score)  # THE hard negative: train tile, complete area, background
    blob(probs, t[5], 30, 30, 3, 3, 250)  # train tile, too small (min_area_m2)
    blob(probs, t[2], 20, 20, 24, 24, 250)  # val tile: never mined
    blob(probs, t[3], 20, 20, 24, 24, 250)  # test tile: never mined
    blob(probs, t[8], 20, 20, 24, 24, 250)  # train tile outside the complete area (unknown): never mined
    blob(mask, t[9], 0, 0, 64, 64, 0)  # a mapped road outside the complete area: background in the mask ...
    blob(probs, t[9], 20, 20, 24, 24, 250)  # ... but not known complete for lots: never mined
    store.write_shard("imagery", shard, image)
    store.write_shard("masks", shard, mask)
    pstore = Store(probs_dir, GRID)
    pstore.write_shard("probs", shard, probs[None])
    rows = []
    for k, tile in enumerate(tiles):
        m = store.read_tile("masks", tile)[0]
        rows.append(dict(z=tile.z, x=tile.x, y=tile.y, shard=tile_key(shard), block="b", split=SPLIT[k % 4], pos_parking=int((m == 1).any())))
    complete = shapely.union_all([tile_polygon(tiles[k]) for k in range(8)])  # tile rows 0..1
    return store, pstore, pd.DataFrame(rows), [[complete]], t


@pytest.fixture
def city(tmp_path):
    return make_city(tmp_path / "store", tmp_path / "predict")


def mine(city, **kw):
    store, pstore, index, complete, _ = city
    args = dict(min_area_m2=100.0, max_negatives=50, tile_share=1.0, edge_m=6.0, seed=0) | kw
    return mine_segmentation(pstore, store, index, ["parking"], complete, {"parking": 0.5}, **args)


def test_mines_only_train_tiles_inside_complete_areas(city):
    feats, report = mine(city)
    *_, t = city
    assert [f["properties"]["tile"] for f in feats] == [tile_key(t[1])]
    p = feats[0]["properties"]
    assert p["class"] == "parking" and p["kind"] == "segmentation" and p["source"] == "mined" and p["keep"] is True
    assert p["score"] == pytest.approx(230 / 255, abs=1e-3)
    px = pixel_area_m2(tile_polygon(t[1]).centroid.y, GRID.zoom, GRID.tile_size)
    assert p["area_m2"] == pytest.approx(24 * 24 * px, rel=1e-3)
    # the polygon lies on tile 1, inside the complete area, nowhere near val/test tiles
    g = shapely.geometry.shape(feats[0]["geometry"])
    assert tile_polygon(t[1]).buffer(1e-9).contains(g)
    assert report.candidates == 4 and report.scanned == 4  # train tiles of rows 0..1: columns 0, 1
    assert report.small == 1 and report.edge_px == 60  # the 3 x 3 px blob; the 2 x 30 px sliver


def test_edge_and_size_and_threshold_params(city):
    assert len(mine(city, edge_m=0.0)[0]) == 2  # the sliver along the lot now counts
    assert mine(city, min_area_m2=1e6)[0] == []
    assert mine(city, max_negatives=0)[0] == []
    store, pstore, index, complete, _ = city
    above = mine_segmentation(pstore, store, index, ["parking"], complete, {"parking": 0.95}, min_area_m2=100.0, edge_m=6.0)[0]
    assert above == []  # 230/255 = 0.90 < 0.95


def test_a_region_is_clipped_to_the_complete_area(city):
    store, pstore, index, _, t = city
    b = tile_polygon(t[1]).bounds
    half = shapely.geometry.box(b[0], b[1], (b[0] + b[2]) / 2, b[3])  # the west half of tile 1: pixel columns 0..31
    feats, report = mine_segmentation(pstore, store, index, ["parking"], [[half]], {"parking": 0.5}, min_area_m2=100.0, edge_m=6.0)
    assert [f["properties"]["tile"] for f in feats] == [tile_key(t[1])] and report.candidates == 1
    px = pixel_area_m2(half.centroid.y, GRID.zoom, GRID.tile_size)
    assert feats[0]["properties"]["area_m2"] == pytest.approx(24 * 12 * px, rel=1e-3)  # columns 20..31 of 20..43
    assert half.buffer(1e-9).contains(shapely.geometry.shape(feats[0]["geometry"]))


def test_region_components_and_scores():
    probs = np.zeros((8, 8), np.uint8)
    probs[0:2, 0:2] = 255
    probs[5:8, 5:8] = 128
    mask = np.zeros((8, 8), np.uint8)
    regions, small, edge = tile_regions(probs, mask, np.zeros((8, 8), bool), 0.5, min_px=5)
    assert small == 1 and edge == 0 and len(regions) == 1
    m, score = regions[0]
    assert m.sum() == 9 and score == pytest.approx(128 / 255)


def test_vetoed_negatives_are_not_used_and_stay_vetoed(city):
    feats, _ = mine(city)
    vetoed = [{**f, "properties": {**f["properties"], "keep": False}} for f in feats]
    assert kept(vetoed, "segmentation", ["parking"]) == []
    assert tile_masks(kept(vetoed, "segmentation", ["parking"]), GRID, TILES) == {}
    *_, t = city
    # re-mining keeps the veto: the same region is not added again
    merged, counts = merge_previous(feats, vetoed)
    assert merged == vetoed and counts == {"reviewed": 0, "vetoed": 1, "still_vetoed": 1}
    # a reviewer's negative is kept as it is
    review = negative_feature(tile_polygon(t[4]).buffer(-1e-5), cls="parking", kind="segmentation", tile=tile_key(t[4]), score=None, source="review")
    merged, counts = merge_previous(feats, [review])
    assert merged == [review, *feats] and counts["reviewed"] == 1


def test_negative_masks_cover_train_tiles_only(city):
    *_, t = city
    g = shapely.union_all([tile_polygon(t[1]), tile_polygon(t[2])]).buffer(-1e-6)  # over a train and a val tile
    f = negative_feature(g, cls="parking", kind="segmentation", tile=tile_key(t[1]), score=0.9)
    train = [x for k, x in enumerate(TILES) if SPLIT[k % 4] == "train"]
    masks = tile_masks([f], GRID, train)
    assert list(masks) == [t[1]] and masks[t[1]].mean() > 0.95


def test_sampler_draws_hard_tiles_repeats_times():
    pos = [Tile(i, 0, 18) for i in range(4)]
    neg = [Tile(i, 1, 18) for i in range(10)]
    base = TrainingTiles(pos, neg, 2)
    hard = base.with_hard([pos[0], neg[3]], 3)
    assert hard.per_epoch == 3 + 2 + 2 * 3
    seen: dict[Tile, int] = {}
    rng = np.random.default_rng(0)
    epochs = 300
    for _ in range(epochs):
        e = hard.epoch(rng)
        assert len(e) == hard.per_epoch
        assert e.count(pos[0]) == 3 and e.count(neg[3]) == 3
        for x in e:
            seen[x] = seen.get(x, 0) + 1
    assert all(seen[p] == epochs for p in pos[1:])
    # the 9 other negatives share 2 draws per epoch evenly
    draws = np.array([seen.get(n, 0) for n in neg if n != neg[3]]) / epochs
    assert draws.sum() == pytest.approx(2.0) and np.all(np.abs(draws - 2 / 9) < 0.07)
    with pytest.raises(Exception, match="oversample"):
        base.with_hard([pos[0]], 0)


def test_mined_pixels_weigh_in_the_labels_and_the_loss(city):
    import tensorflow as tf

    from navml.segment.losses import MaskedIoU, weighted_crossentropy

    store, _, _, _, t = city
    hard = {t[1]: np.zeros((64, 64), bool)}
    hard[t[1]][20:44, 20:44] = True
    reader = MinedReader(store, 1, 3, hard)
    assert (reader.mask(t[1]) == MINED).sum() == 24 * 24
    assert (reader.mask(t[0]) == MINED).sum() == 0
    ds = make_dataset(reader, [t[1], t[0]], batch_size=2, mined_weight=5.0)
    _, y = next(iter(ds))
    w = y.numpy().sum(-1)
    assert (w[0][20:44, 20:44] == 5.0).all() and (w[0][:20] == 1.0).all() and (y.numpy()[0][20:44, 20:44, 1] == 0).all()
    # a row of weight 5 counts five times in the pixel mean, which stays over labelled pixels
    y_true = tf.constant([[[[5.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]])
    y_pred = tf.constant([[[[0.2, 0.8], [0.4, 0.6], [0.5, 0.5]]]])
    want = (5 * -np.log(0.2) - np.log(0.6)) / 2
    assert float(weighted_crossentropy(y_true, y_pred)) == pytest.approx(want, rel=1e-5)
    iou = MaskedIoU(2, [1])
    iou.update_state(y_true, y_pred)
    assert float(iou.result()) == pytest.approx(0.5)  # pixel 0 counts once (not 5 times) in the metric


def test_empty_mining_gives_an_empty_file_and_the_first_model(city, tmp_path):
    from navml.segment.evaluate import evaluate_segmentation
    from navml.segment.train import train_segmentation

    store, pstore, index, complete, _ = city
    pstore.write_shard("probs", SHARD, np.zeros((1, N, N), np.uint8))  # a model that predicts nothing
    feats, report = mine(city)
    assert feats == [] and report.kept == 0
    path = write_collection(tmp_path / "mining" / "hard_negatives.geojson", feats)
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    assert read_collection(path) == []
    first = tmp_path / "first"
    train_segmentation(store, index, ["parking"], first, depth=2, base_filters=4, steps=2, eval_every=2, batch_size=2, downsample=1,
                       warmup_steps=0, augment=None, progress=False)
    out = retrain_segmentation(store, index, ["parking"], first, read_collection(path), tmp_path / "mined", train={})
    assert out["copied_first_model"] and out["negatives_used"] == 0
    for name in ("model.keras", "meta.json", "thresholds.json"):
        assert (tmp_path / "mined" / name).read_bytes() == (first / name).read_bytes()
    a = evaluate_segmentation(store, index, first, tmp_path / "ev1", classes=["parking"], colors=[(250, 200, 40)], overlays=0, progress=False)
    b = evaluate_segmentation(store, index, tmp_path / "mined", tmp_path / "ev2", classes=["parking"], colors=[(250, 200, 40)], overlays=0,
                              progress=False)
    assert a == b


def test_retrain_fine_tunes_with_the_negatives(city, tmp_path):
    from navml.models.io import read_meta
    from navml.segment.train import train_segmentation

    store, _, index, _, t = city
    feats, _ = mine(city)
    first = tmp_path / "first"
    fast = dict(depth=2, base_filters=4, batch_size=2, downsample=1, warmup_steps=0, augment=None, progress=False)
    train_segmentation(store, index, ["parking"], first, steps=2, eval_every=2, **fast)
    out = retrain_segmentation(store, index, ["parking"], first, feats, tmp_path / "mined", train=fast, steps=2, eval_every=2, oversample=3, weight=4.0)
    assert not out["copied_first_model"] and out["negatives_used"] == 1 and out["hard_tiles"] == 1
    assert out["mined_pixels"] == 24 * 24 and out["steps_run"] == 2
    extra = read_meta(tmp_path / "mined").extra
    assert extra["hard_tiles"] == 1 and extra["hard_repeats"] == 3 and extra["mined_weight"] == 4.0
    assert extra["init_model"].endswith("first")


def test_a_fine_tune_that_does_not_beat_the_first_model_on_val_keeps_it(city, tmp_path):
    from navml.segment.evaluate import evaluate_segmentation
    from navml.segment.train import train_segmentation

    store, _, index, _, _ = city
    image, mask = store.read_shard("imagery", SHARD), store.read_shard("masks", SHARD)[0]
    image[:, mask == 1] = 255  # lots a model can see
    image[:, mask != 1] //= 2
    store.write_shard("imagery", SHARD, image)
    feats, _ = mine(city)
    first = tmp_path / "first"
    fast = dict(depth=2, base_filters=4, batch_size=2, downsample=1, warmup_steps=0, augment=None, progress=False)
    made = train_segmentation(store, index, ["parking"], first, steps=24, eval_every=8, learning_rate=0.01, **fast)
    assert made["best_val_iou"] > 0.2  # the first model finds the val lot (all-lot would score 400 / 8192 px)
    # an Adam step of 50 per weight wrecks the model: no fine-tuned step can beat the first one on val
    out = retrain_segmentation(store, index, ["parking"], first, feats, tmp_path / "mined", train=fast, steps=4, eval_every=2,
                               learning_rate=50.0)
    assert not out["copied_first_model"] and out["negatives_used"] == 1
    assert out["best_step"] == 0 and out["steps_run"] == 4
    assert out["best_val_iou"] == pytest.approx(made["best_val_iou"], abs=1e-6) == pytest.approx(out["start_val_iou"], abs=1e-6)
    kw = dict(classes=["parking"], colors=[(250, 200, 40)], overlays=0, progress=False)
    a = evaluate_segmentation(store, index, first, tmp_path / "ev1", **kw)
    b = evaluate_segmentation(store, index, tmp_path / "mined", tmp_path / "ev2", **kw)
    assert a == b


# --- over several cities ------------------------------------------------------------------------------------------------

SHARD_B = Tile(10001, 22500, 16)  # the next shard east: city b's tiles are not city a's


@pytest.fixture
def two_cities(tmp_path):
    """Cities a (hard negative scored 230/255) and b (245/255), each with its own store, probabilities and complete areas."""
    from navml.mining.mine import MineSource

    out = []
    for name, shard, score, seed in (("a", SHARD, 230, 0), ("b", SHARD_B, 245, 1)):
        store, pstore, index, complete, t = make_city(tmp_path / name / "store", tmp_path / name / "predict", shard, score, seed)
        out.append((MineSource(name, pstore, store, index, complete, f"{name}/tiles.csv"), t))
    return out


def mine_two(two_cities, **kw):
    from navml.mining.mine import mine_cities

    args = dict(min_area_m2=100.0, max_negatives=50, tile_share=1.0, edge_m=6.0, seed=0) | kw
    return mine_cities([s for s, _ in two_cities], ["parking"], {"parking": 0.5}, **args)


def test_mining_over_two_cities_keeps_to_train_tiles_in_each_complete_area(two_cities):
    (_, ta), (_, tb) = two_cities
    feats, report = mine_two(two_cities)
    assert [(f["properties"]["city"], f["properties"]["tile"]) for f in feats] == [("a", tile_key(ta[1])), ("b", tile_key(tb[1]))]
    assert [f["properties"]["score"] for f in feats] == [pytest.approx(230 / 255, abs=1e-3), pytest.approx(245 / 255, abs=1e-3)]
    for f, t in zip(feats, (ta, tb)):  # each lies on its own city's train tile 1, inside that city's complete area
        assert tile_polygon(t[1]).buffer(1e-9).contains(shapely.geometry.shape(f["geometry"]))
    assert report.candidates == 8 and report.scanned == 8 and report.found == 2 and report.kept == 2
    assert report.small == 2 and report.edge_px == 120  # a 3 x 3 px blob and a 2 x 30 px sliver in each city
    d = report.as_dict()
    assert d["negatives"] == 2 and d["tiles_with_negatives"] == 2
    assert {n: (c["train_tiles_in_complete_areas"], c["tiles_scanned"], c["negatives"]) for n, c in d["cities"].items()} == {
        "a": (4, 4, 1), "b": (4, 4, 1)}


def test_max_negatives_over_cities_keeps_the_top_scores(two_cities):
    (_, ta), (_, tb) = two_cities
    feats, report = mine_two(two_cities, max_negatives=1)
    assert [(f["properties"]["city"], f["properties"]["tile"]) for f in feats] == [("b", tile_key(tb[1]))]  # 245 beats 230
    assert report.found == 2 and report.kept == 1
    assert (report.cities["a"].found, report.cities["a"].kept, report.cities["b"].kept) == (1, 0, 1)
    # a tile_share draw per city, with the seed: the same twice, half of each city's 4 candidates
    a1, r1 = mine_two(two_cities, tile_share=0.5, seed=3)
    a2, r2 = mine_two(two_cities, tile_share=0.5, seed=3)
    assert a1 == a2 and r1.cities["a"].scanned == 2 and r1.cities["b"].scanned == 2 and r1.scanned == 4


def test_negatives_find_their_city_by_property_or_tile(two_cities):
    from navml.geo.tile_index import tiles_from_index
    from navml.mining.negatives import feature_cities

    (sa, ta), (sb, tb) = two_cities
    cities = {"a": tiles_from_index(sa.index), "b": tiles_from_index(sb.index)}
    feats, _ = mine_two(two_cities)
    review = negative_feature(tile_polygon(tb[4]).buffer(-1e-5), cls="parking", kind="segmentation", tile=tile_key(tb[4]), score=None,
                              source="review")  # no city: found by its tile
    gone = {**feats[0], "properties": {**feats[0]["properties"], "city": "lima"}}  # a city no longer mined over
    nowhere = negative_feature(tile_polygon(Tile(1, 1, 18)), cls="parking", kind="segmentation", tile="18-1-1", score=None)
    assert feature_cities([*feats, review, gone, nowhere], cities) == ["a", "b", "b", None, None]
    from navml.errors import InputError

    with pytest.raises(InputError, match="has no city and that tile lies in cities a and b"):
        feature_cities([review], {"a": cities["b"], "b": cities["b"]})


def test_retrain_over_two_cities_uses_the_negatives_of_both_and_mines_again(two_cities, tmp_path, monkeypatch):
    import navml.segment.train as train_mod
    from navml.config import MineParams
    from navml.mining.retrain import retrain_rounds
    from navml.models.io import read_meta
    from navml.segment.dataset import SourceTile

    (sa, ta), (sb, tb) = two_cities
    feats, _ = mine_two(two_cities)
    review = negative_feature(tile_polygon(tb[4]).buffer(-1e-5), cls="parking", kind="segmentation", tile=tile_key(tb[4]), score=None,
                              source="review")  # a reviewer's negative without a city: city b's by its tile
    fast = dict(depth=2, base_filters=4, batch_size=2, downsample=1, warmup_steps=0, augment=None, progress=False, steps=2, eval_every=2)
    seen = []
    real = train_mod.train_segmentation

    def spy(*args, hard=None, **kw):  # round 1 trains for real (from scratch, over both stores); round 2 keeps its model
        seen.append(dict(hard))
        if len(seen) == 1:
            return real(*args, hard=hard, **kw)
        return {"thresholds": {"parking": {"threshold": 0.5}}, "best_val_iou": 0.0, "steps_run": 0, "best_step": 0}

    monkeypatch.setattr(train_mod, "train_segmentation", spy)
    out = tmp_path / "mined"
    # round 2 mines at threshold 0: every background pixel of the 4 train tiles in each complete area, one region a tile
    result = retrain_rounds([sa, sb], ["parking"], tmp_path / "unused", [*feats, review], out, train=fast, rounds=2, mode="scratch",
                            mine=MineParams(threshold=0.0, edge_m=6.0), oversample=3, weight=4.0, progress=False)
    src = lambda t, i: SourceTile(t.x, t.y, t.z, i)  # noqa: E731
    assert set(seen[0]) == {src(ta[1], 0), src(tb[1], 1), src(tb[4], 1)}
    assert seen[0][src(ta[1], 0)].sum() == 24 * 24 and seen[0][src(tb[4], 1)].mean() > 0.95
    r1, r2 = result["rounds"]
    assert r1["negatives_used"] == 3 and r1["hard_tiles"] == 3 and not r1["copied_first_model"]
    assert read_meta(out).extra["hard_tiles"] == 3 and len(read_meta(out).extra["cities"]) == 2
    assert r1["by_city"] == {"a": {"negatives": 1, "negatives_used": 1, "hard_tiles": 1, "mined_pixels": 576},
                            "b": {"negatives": 2, "negatives_used": 2, "hard_tiles": 2, "mined_pixels": 576 + int(seen[0][src(tb[4], 1)].sum())}}
    train_keys = {src(t[k], i) for i, t in ((0, ta), (1, tb)) for k in (0, 1, 4, 5)}
    assert set(seen[1]) == train_keys  # round 2: the 4 train tiles in the complete area of both cities
    assert r2["hard_tiles"] == 8 and r2["negatives_used"] == 11
    assert {n: c["negatives"] for n, c in r2["by_city"].items()} == {"a": 5, "b": 6}
    saved = read_collection(out / "hard_negatives.geojson")
    assert len(saved) == 11 and sorted(str(f["properties"].get("city")) for f in saved).count("a") == 5
    assert result["negatives_of_no_city"] == 0


def test_mine_and_retrain_cities_options(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from navml.cli import app

    base = yaml.safe_load(open("params.yaml"))
    base["grid"] = {**base["grid"], "zoom": 18, "tile_size": 64, "shard_zoom": 16}
    base["paths"] = {**base["paths"], "cities": str(tmp_path / "cities"), "first": str(tmp_path / "first")}
    cities = {}
    for name, shard, score in (("a", SHARD, 230), ("b", SHARD_B, 245)):
        root = tmp_path / "cities" / "train" / name
        store, _, index, complete, _ = make_city(root / "store", tmp_path / "first" / "train" / name / "predict", shard, score)
        (root / "cover").mkdir(parents=True)
        index.to_csv(root / "cover" / "tiles.csv", index=False)
        area = tmp_path / f"{name}_complete.geojson"
        write_collection(area, [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(complete[0][0])}])
        cities[name] = {"role": "train", "synthetic": {"seed": 1}, "complete": str(area)}
    base["cities"] = {**cities, "c": {"role": "predict", "synthetic": {"seed": 2}}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    out = tmp_path / "mining"
    res = CliRunner().invoke(app, ["mine", "--cities", "--params", str(params), "--threshold", "0.5", "--min-area-m2", "100", "--edge-m", "6",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    feats = read_collection(out / "hard_negatives.geojson")
    assert [f["properties"]["city"] for f in feats] == ["a", "b"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["negatives"] == 2 and {n: c["negatives"] for n, c in summary["cities"].items()} == {"a": 1, "b": 1}
    assert sorted(p.relative_to(out / "export").parts[:2] for p in (out / "export").rglob("*.png")) == [
        ("a", "imagery"), ("a", "overlay"), ("b", "imagery"), ("b", "overlay")]
    # retrain --cities: the union of both stores, each negative on its city's (the training itself is stubbed here)
    import navml.segment.train as train_mod
    from navml.segment.dataset import SourceTile

    seen = {}

    def fake(store, index, classes, out_dir, *, hard=None, **kw):
        seen.update(stores=[str(s.root) for s in store], hard=sorted(hard))
        return {"thresholds": {"parking": {"threshold": 0.5}}, "best_val_iou": 0.5, "steps_run": 2, "best_step": 2}

    monkeypatch.setattr(train_mod, "train_segmentation", fake)
    res = CliRunner().invoke(app, ["retrain", "--cities", "--params", str(params), "--negatives", str(out / "hard_negatives.geojson"),
                                   "--summary", str(tmp_path / "retrain.json")])
    assert res.exit_code == 0, res.output
    ta, tb = (list(tiles_of_shard(s, GRID))[1] for s in (SHARD, SHARD_B))
    assert seen == {"stores": [str(tmp_path / "cities" / "train" / n / "store") for n in "ab"],
                    "hard": [SourceTile(ta.x, ta.y, ta.z, 0), SourceTile(tb.x, tb.y, tb.z, 1)]}
    summary = json.loads((tmp_path / "retrain.json").read_text())
    assert {n: c["hard_tiles"] for n, c in summary["by_city"].items()} == {"a": 1, "b": 1} and summary["mined_pixels"] == 2 * 24 * 24
    assert "[a 1 on 1 tiles; b 1 on 1 tiles]" in res.output
    # without a train city: one line, exit 1
    del base["cities"]
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    res = CliRunner().invoke(app, ["mine", "--cities", "--params", str(params), "--out", str(out)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["navml: error: --cities: params has no city with role: train; add a `cities:` section or drop --cities"]
    res = CliRunner().invoke(app, ["retrain", "--cities", "--params", str(params), "--negatives", str(out / "hard_negatives.geojson")])
    assert res.exit_code == 1 and "--cities: params has no city with role: train" in res.output
