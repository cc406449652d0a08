"""Cities (issue 10): ground resolution per latitude, resampling to the model's, training over several stores,
the `cities` params section and the cross-city gap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from navml.config import Params, validate_params
from navml.data.rasterize import IGNORE
from navml.errors import ConfigError
from navml.geo.grid import (
    Grid,
    Tile,
    Window,
    ground_resolution,
    lonlat_to_pixel,
    tiles_ground_resolution,
    tiles_of_shard,
)
from navml.geo.store import Store
from navml.models.inference import Job, from_model_grid, rescale_plan, scale_factor, to_model_grid
from navml.post.cities import city_metrics, cross_city_gap, write_gap
from navml.segment.dataset import (
    Augment,
    CityReader,
    SourceTile,
    TileReader,
    augment_pair,
    combine_indexes,
    fit_pair,
    rescale_pair,
    select_training_tiles,
    split_tiles,
)

DENVER = (-104.9903, 39.7392)
NORTH = (10.75, 60.0)


def tile_at(lon: float, lat: float, zoom: int = 18) -> Tile:
    px, py = lonlat_to_pixel(lon, lat, zoom)
    return Tile(int(px // 256), int(py // 256), zoom)


# --- ground resolution and resampling ------------------------------------------------------


def test_ground_resolution_at_two_latitudes():
    denver = tiles_ground_resolution([tile_at(*DENVER)], 256)
    north = tiles_ground_resolution([tile_at(*NORTH)], 256)
    # 156543.034 * cos(lat) / 2**18 m per pixel of 256-px tiles
    assert denver == pytest.approx(156543.034 * math.cos(math.radians(39.7392)) / 2**18, rel=1e-4)
    assert denver == pytest.approx(0.4592, abs=1e-4) and north == pytest.approx(0.2986, abs=1e-4)
    assert north / denver == pytest.approx(math.cos(math.radians(60)) / math.cos(math.radians(39.7392)), rel=1e-4)
    # 512-px tiles at the same zoom: half the pixel size; one AOI is one number (its median row)
    assert tiles_ground_resolution([tile_at(*DENVER)], 512) == pytest.approx(denver / 2, rel=1e-9)
    t = tile_at(*NORTH)
    rows = [Tile(t.x, t.y + k, 18) for k in range(5)]
    assert tiles_ground_resolution(rows, 256) == tiles_ground_resolution([rows[2]], 256)
    # zoom 17 at 60 N cannot reach Denver's zoom-18 pixel: 0.60 m against 0.46 m
    assert ground_resolution(60.0, 17) == pytest.approx(0.597, abs=1e-3)


def test_scale_factor_tolerance():
    assert scale_factor(0.4592, 0.2986) == pytest.approx(0.6503, abs=1e-4)
    assert scale_factor(0.4592, 0.4592 * 1.015) == 1.0  # within 2 %: as it is
    assert scale_factor(None, 0.3) == 1.0 and scale_factor(0.0, 0.3) == 1.0  # an old model without gsd_m


@pytest.mark.parametrize("factor", [0.65, 1.5])
def test_resample_round_trip_and_plan(factor):
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (600, 600)).astype("float32"), (0, 0), 6) * 8 - 700
    core = Window(1000 + 64, 2000 + 64, 400, 400)
    job = Job(core, Window(core.col - 64, core.row - 64, 528, 528), 4)
    plan = rescale_plan(job, factor, halo=32, stride=16)
    assert plan.model.col % 16 == 0 and plan.model.row % 16 == 0 and plan.model.width % 16 == 0 and plan.model.height % 16 == 0
    # the model window holds the core and the halo, the read window what it samples
    assert plan.model.col <= factor * core.col - 32 and plan.model.col + plan.model.width >= factor * (core.col + core.width) + 32
    assert plan.read.col <= plan.model.col / factor and plan.read.col + plan.read.width >= (plan.model.col + plan.model.width) / factor
    big = np.pad(img, 400, mode="reflect")  # the store around the read window's origin
    src = big[: plan.read.height, : plan.read.width]
    x = src[None, ..., None]
    m = to_model_grid(x, plan)
    assert m.shape == (1, plan.model.height, plan.model.width, 1)
    back = from_model_grid(m, plan, core)[0, ..., 0]
    r, c = core.row - plan.read.row, core.col - plan.read.col
    want = src[r : r + core.height, c : c + core.width]
    err = np.abs(back - want)
    assert err.mean() < (1.0 if factor > 1 else 3.0) and want.std() > 20
    # a model pixel is the same whichever window computes it: shift the window by a tile, compare the overlap
    job2 = Job(Window(core.col + 256, core.row, 400, 400), Window(core.col + 256 - 64, core.row - 64, 528, 528), 4)
    plan2 = rescale_plan(job2, factor, 32, 16)
    src2 = big[plan2.read.row - plan.read.row : plan2.read.row - plan.read.row + plan2.read.height,
               plan2.read.col - plan.read.col : plan2.read.col - plan.read.col + plan2.read.width]
    m2 = to_model_grid(src2[None, ..., None], plan2)
    lo = max(plan.model.col, plan2.model.col) + 8
    hi = min(plan.model.col + plan.model.width, plan2.model.col + plan2.model.width) - 8
    a = m[0, 8:-8, lo - plan.model.col : hi - plan.model.col, 0]
    b = m2[0, 8:-8, lo - plan2.model.col : hi - plan2.model.col, 0]
    assert hi - lo > 50 and np.abs(a - b).max() < 1e-2


def test_prediction_at_another_resolution_is_resampled_and_seamless(tmp_path, small_grid):
    from test_predict import SHARD0, all_tiles, imagery_store, read_probs, save, tiny_fcn

    from navml.segment.predict import predict_store

    store = imagery_store(tmp_path, small_grid)
    gsd = tiles_ground_resolution(all_tiles(small_grid), 256)
    model = tiny_fcn(seed=2)
    folder = save(tmp_path, model, extra={"gsd_m": gsd / 0.65})  # trained where pixels are 1.5x larger
    small, big, plain = (Store(tmp_path / n, small_grid) for n in ("small", "big", "plain"))
    rep = predict_store(store, all_tiles(small_grid), folder, small, ["parking"], window=256, progress=False)
    assert rep.factor == pytest.approx(0.65, abs=1e-3) and rep.windows == 64
    assert rep.overhead < 1.0  # fewer model pixels than store pixels
    predict_store(store, all_tiles(small_grid), folder, big, ["parking"], window=2048, progress=False)
    off = predict_store(store, all_tiles(small_grid), folder, plain, ["parking"], window=2048, progress=False, resample=False)
    assert off.factor == 1.0
    a, b, c = read_probs(small), read_probs(big), read_probs(plain)
    assert a.std() > 5
    inner = (slice(64, -64), slice(64, -64))  # away from the AOI's outer edge
    d = np.abs(a.astype(int) - b.astype(int))[inner]
    assert d.max() <= 2 and (d > 0).mean() < 1e-2  # one window per tile equals one window for all
    assert np.abs(b.astype(int) - c.astype(int))[inner].mean() > 1  # resampling changes what the model sees
    assert store.grid == small_grid and SHARD0.z == 16


# --- training over several stores -------------------------------------------------------------


GRID = Grid(zoom=18, tile_size=64, shard_zoom=16)


def city_store(root, lon: float, lat: float, seed: int) -> tuple[Store, pd.DataFrame]:
    """One 256-px shard of noise with lots (class 1) and an unknown strip, tiles split train/train/val/test."""
    rng = np.random.default_rng(seed)
    store = Store(root, GRID)
    t = tile_at(lon, lat)
    shard = Tile(t.x // 4, t.y // 4, 16)
    image = rng.integers(0, 256, size=(3, 256, 256), dtype=np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    for _ in range(10):
        h, w = rng.integers(12, 40, size=2)
        r, c = rng.integers(0, 256 - h), rng.integers(0, 256 - w)
        mask[r : r + h, c : c + w] = 1
    image[:, mask == 1] = 110
    mask[-16:][mask[-16:] == 0] = IGNORE
    store.write_shard("imagery", shard, image)
    store.write_shard("masks", shard, mask)
    rows = []
    for i, tile in enumerate(tiles_of_shard(shard, GRID)):
        m = store.read_tile("masks", tile)[0]
        rows.append(dict(z=tile.z, x=tile.x, y=tile.y, shard="s", block="b", split=("train", "train", "val", "test")[i % 4], pos_c1=int((m == 1).any())))
    return store, pd.DataFrame(rows)


def test_the_union_of_two_stores_holds_tiles_of_both(tmp_path):
    a, ia = city_store(tmp_path / "a", *DENVER, seed=1)
    b, ib = city_store(tmp_path / "b", *NORTH, seed=2)
    index = combine_indexes([ia, ib])
    train = select_training_tiles(index, ["c1"], 0.25)
    assert {t.source for t in train.all} == {0, 1}
    assert all(isinstance(t, SourceTile) for t in train.all)
    assert len(split_tiles(index, "val")) == len(split_tiles(ia, "val")) + len(split_tiles(ib, "val"))
    factors = [1.0, 0.65]
    reader = CityReader([TileReader(a, 1, 3), TileReader(b, 1, 3)], factors)
    ta = next(t for t in train.all if t.source == 0)
    tb = next(t for t in train.all if t.source == 1 and t.y % 4 == 3)  # a tile of the unknown strip
    img, msk = reader.pair(ta)
    assert np.array_equal(img, TileReader(a, 1, 3).image(ta.tile)) and np.array_equal(msk, TileReader(a, 1, 3).mask(ta.tile))
    img, msk = reader.pair(tb)
    assert img.shape == (64, 64, 3) and msk.shape == (64, 64)
    inner = round(64 * 0.65)  # the resampled tile, padded with unknown pixels
    assert (msk == IGNORE).sum() >= 64 * 64 - inner * inner
    assert set(np.unique(msk)) <= {0, 1, IGNORE}
    assert reader.mask(tb).shape == (inner, inner)


def test_rescale_and_fit_keep_labels_and_size():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (64, 64, 3)).astype("uint8")
    msk = np.zeros((64, 64), "uint8")
    msk[10:30, 10:50] = 1
    msk[-8:] = IGNORE
    up_i, up_m = rescale_pair(img, msk, 1.5)
    assert up_i.shape == (96, 96, 3) and up_m.shape == (96, 96) and set(np.unique(up_m)) == {0, 1, IGNORE}
    assert (up_m == 1).sum() == pytest.approx((msk == 1).sum() * 2.25, rel=0.05)
    fi, fm = fit_pair(up_i, up_m, 64, np.random.default_rng(0))
    assert fi.shape == (64, 64, 3) and fm.shape == (64, 64)
    si, sm = fit_pair(*rescale_pair(img, msk, 0.5), 64)
    assert si.shape == (64, 64, 3) and (sm[:16] == IGNORE).all() and (si[:16] == 0).all()
    out, m = augment_pair(img, msk, np.random.default_rng(1), Augment(flip=False, rotate=False, brightness=0, contrast=0, hue=0, scale=(0.6, 1.6)))
    assert out.shape == (64, 64, 3) and m.shape == (64, 64) and set(np.unique(m)) <= {0, 1, IGNORE}
    # without scale the stream of random numbers is the one of before
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    a1, _ = augment_pair(img, msk, r1, Augment())
    a2, _ = augment_pair(img, msk, r2, Augment(scale=None))
    assert np.array_equal(a1, a2)


@pytest.mark.slow
def test_training_over_two_cities_records_the_coarsest_resolution(tmp_path):
    from navml.models.io import read_meta
    from navml.segment.train import train_segmentation

    a, ia = city_store(tmp_path / "a", *DENVER, seed=1)
    b, ib = city_store(tmp_path / "b", *NORTH, seed=2)
    out = train_segmentation(
        [a, b], [ia, ib], ["c1"], tmp_path / "model", steps=4, eval_every=2, patience=4, augment=None, negative_share=None,
        depth=2, base_filters=4, batch_size=4, progress=False, crop=None, warmup_steps=0, downsample=1,
    )
    meta = read_meta(tmp_path / "model")
    denver = tiles_ground_resolution([tile_at(*DENVER)], 64)
    assert meta.extra["gsd_m"] == pytest.approx(denver, rel=1e-3)  # 4 x 0.459 m: 64-px tiles at zoom 18
    assert [c["factor"] for c in meta.extra["cities"]] == [1.0, pytest.approx(0.2986 / 0.4592, rel=2e-3)]
    assert out["train_tiles"] > len(split_tiles(ia, "train"))


# --- the cities params section -----------------------------------------------------------------


CITIES = """
cities:
  denver:
    role: train
    synthetic: {seed: 42, center: [-104.9903, 39.7392], size_km: 1.2}
  no:                       # Norway's code, unquoted: YAML reads false
    role: predict
    synthetic: {seed: 7, center: [10.75, 60.0], size_km: 1.0}
  mine:
    role: predict
    geotiff: inputs/imagery/mine.tif
    osm: inputs/osm/mine.osm.pbf
    aoi: inputs/labels/mine_aoi.geojson
    complete: ""
    labels: {turn_markings: inputs/labels/mine_markings.geojson}
"""


def load(text: str) -> Params:
    base = yaml.safe_load(open("params.yaml"))
    base["cities"] = yaml.safe_load(text)["cities"]
    return validate_params(base)


def test_cities_as_people_write_them():
    p = load(CITIES)
    assert list(p.cities) == ["denver", "no", "mine"] and p.train_cities() == ["denver"]
    no = p.city("no")
    assert no.root == "data/cities/predict/no" and no.results == "data/cities/results/no" and no.first == "data/first/predict/no"
    assert no.pbf == "data/cities/predict/no/synth/city.osm.pbf" and no.tiles == "data/cities/predict/no/cover/tiles.csv"
    assert no.labels == {"turn_markings": "data/cities/predict/no/synth/truth/markings.geojson"}  # the synthetic city's own labels
    assert p.cities["no"].synthetic.size_km == 1.0 and p.cities["no"].synthetic.gsd_m == 0.3  # the rest: synth defaults
    mine = p.city("mine")
    assert (mine.imagery, mine.geotiff, mine.complete, mine.truth) == ("geotiff", "inputs/imagery/mine.tif", "", "")
    north = p.for_city("no")
    assert north.synth.center == (10.75, 60.0) and north.cover.aoi == "data/cities/predict/no/synth/aoi.geojson"
    assert north.cover.split == {"train": 0.0, "val": 0.0, "test": 1.0}  # held out: every tile is scored
    assert north.classes["turn_markings"].labels == "data/cities/predict/no/synth/truth/markings.geojson"
    assert p.for_city("denver").cover.split == p.cover.split and p.for_city("denver").train == p.train


@pytest.mark.parametrize(
    "text, expect",
    [
        ("cities: {a: {role: predict, synthetic: true}}", "no city has role: train"),
        ("cities: {a: {role: test, synthetic: true}}", "cities.a.role: 'test' is not one of 'train' or 'predict'"),
        ("cities: {a: {synthetic: true}}", "cities.a.role: is missing"),
        ("cities: {a: {role: train}}", "exactly one of synthetic (the built-in city), geotiff (a file) or xyz"),
        ("cities: {a: {role: train, synthetic: true, geotiff: x.tif}}", "it has synthetic and geotiff"),
        ("cities: {a: {role: train, geotiff: x.tif, osm: x.pbf}}", "aoi: a city with own imagery needs its AOI"),
        ("cities: {a: {role: train, xyz: 'https://t/{z}/{x}.png', aoi: a.geojson, osm: a.pbf}}", "lacks {z}, {x} or {y}"),
        ("cities: {Denver: {role: train, synthetic: true}}", "'Denver' is no city name"),
        ("cities: {'no': {role: train, synthetic: true}, no: {role: predict, synthetic: true}}", "'no' is named twice"),
        ("cities: {a: {role: train, synthetic: {seed: 1, center: [0, 95]}}}", "cities.a.synthetic.center[1]: 95 is out of range"),
        ("cities: {a: {role: train, synthetic: true, labels: {roads: r.geojson}}}", "'roads' is not a class"),
        ("cities: {a: {role: train, synthetic: {sede: 1}}}", "unknown key 'cities.a.synthetic.sede'"),
        ("cities: {a: {role: train, geotiff: inputs/imagery/a.tif, osm: a.pbf, aoi: a.geojson}}",
         "cities.a: class turn_markings takes its labels from the synthetic city (data/synth/truth/markings.geojson)"),
    ],
)
def test_cities_mistakes_are_one_line_errors(text, expect):
    with pytest.raises(ConfigError) as e:
        load(text)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg, msg


def test_city_not_in_params_and_yes_no_names():
    p = load("cities: {yes: {role: train, synthetic: true}, off: {role: predict, synthetic: {seed: 3}}}")
    assert list(p.cities) == ["yes", "no"]  # YAML 1.1: off is false
    with pytest.raises(ConfigError, match="no city 'oslo' \\(cities: yes, no\\)"):
        p.city("oslo")


# --- metrics per city and the gap -----------------------------------------------------------------


def features(f1: float, p: float, r: float, split: str = "test", found: int | None = None, unmapped: int | None = None) -> dict:
    new = {"precision": p, "recall": r, **({"tp": found, "truth": unmapped} if unmapped is not None else {})}
    return {"parking": {"new_features": new, split: {"f1": f1}, "geometry": {}}, "iou_threshold": 0.5, "split": split}


def test_gap_sets_held_out_next_to_in_city(tmp_path):
    cities = {
        "denver": city_metrics(features(0.96, 1.0, 0.93, found=13, unmapped=14), {"map50": 0.12}),
        "paris": city_metrics(features(0.90, 0.9, 1.0, found=8, unmapped=8), {"map50": 0.10}),
        "north": city_metrics(features(0.63, 0.6, 0.5, found=3, unmapped=6), {"map50": 0.05}),
    }
    assert cities["denver"] == {
        "parking": {"polygon_f1": 0.96, "new_precision": 1.0, "new_recall": 0.93, "new_found": 13, "new_unmapped": 14},
        "detector": {"map50": 0.12},
    }
    gap = write_gap(tmp_path / "gap.json", cities, {"denver": "train", "paris": "train", "north": "predict"})
    assert gap["in_city"]["parking"] == {"polygon_f1": 0.93, "new_precision": 0.95, "new_recall": 0.965, "new_found": 21, "new_unmapped": 22}
    assert gap["held_out"]["parking"]["polygon_f1"] == 0.63
    assert gap["held_out"]["parking"]["new_found"] == 3 and gap["held_out"]["parking"]["new_unmapped"] == 6  # counts are summed
    assert gap["gap"]["parking"] == {"polygon_f1": -0.3, "new_precision": -0.35, "new_recall": -0.465}  # and have no gap
    assert gap["gap"]["detector"] == {"map50": -0.06}
    assert gap["worst_gap"] == -0.465 and gap["within"] is False
    assert (tmp_path / "gap.json").read_text().startswith("{")
    close = cross_city_gap({"a": city_metrics(features(0.96, 1.0, 1.0)), "b": city_metrics(features(0.95, 1.0, 0.98))}, {"a": "train", "b": "predict"})
    assert close["within"] is True and close["worst_gap"] == -0.02
    only_train = cross_city_gap({"a": city_metrics(features(0.9, 1, 1))}, {"a": "train"})
    assert only_train["gap"] == {} and only_train["within"] is None
    with pytest.raises(ValueError, match="no role for city 'x'"):
        cross_city_gap({"x": {}}, {})


def test_the_detector_gap_is_over_the_names_both_roles_score():
    def det(m, **aps):
        return {"map50": m, "classes": {**{k: {"ap50": v} for k, v in aps.items()}, "left_right": {"ap50": None}, "other": {"ap50": float("nan")}}}

    cities = {  # denver's test split has no `right`, paris's none of `left`; the held-out city scores all three and `rare`
        "denver": city_metrics(None, det(0.85, left=0.9, through=0.8)),
        "paris": city_metrics(None, det(0.95, right=1.0, through=0.9)),
        "north": city_metrics(None, det(0.6, left=0.8, right=0.8, through=0.8, rare=0.0)),
    }
    assert cities["denver"]["detector"] == {"map50": 0.85, "ap50": {"left": 0.9, "through": 0.8}}  # no AP: left out
    gap = cross_city_gap(cities, {"denver": "train", "paris": "train", "north": "predict"})
    assert gap["in_city"]["detector"]["ap50"] == {"left": 0.9, "right": 1.0, "through": 0.85}  # each over the cities scoring it
    assert gap["in_city"]["detector"]["map50_shared"] == 0.9167 and gap["held_out"]["detector"]["map50_shared"] == 0.8
    assert gap["held_out"]["detector"]["map50"] == 0.6 and gap["in_city"]["detector"]["map50"] == 0.9  # shown, not compared
    assert gap["gap"]["detector"] == {"map50_shared": -0.1167}  # `rare` no training city scores
    assert gap["worst_gap"] == -0.1167


def test_shipped_cities_two_train_one_held_out_at_60_north():
    p = validate_params(yaml.safe_load(open("params.yaml")))
    assert p.train_cities() == ["denver", "paris"]
    held = [n for n, c in p.cities.items() if c.role == "predict"]
    assert held == ["oslo"] and p.cities["oslo"].synthetic.center[1] == 60.0
    seeds = {c.synthetic.seed for c in p.cities.values()}
    lats = {c.synthetic.center[1] for c in p.cities.values()}
    assert len(seeds) == 3 and len(lats) == 3
    assert p.city("paris").store == "data/cities/train/paris/store" and p.city("paris").first == "data/first/train/paris"


def test_gap_command_reads_each_city_results(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from navml.cli import app

    base = yaml.safe_load(open("params.yaml"))
    base["paths"]["cities"] = str(tmp_path / "cities")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(base))
    for name, f1 in (("denver", 0.96), ("paris", 0.94), ("oslo", 0.93)):
        folder = tmp_path / "cities" / "results" / name / "metrics"
        folder.mkdir(parents=True)
        (folder / "features.json").write_text(json.dumps(features(f1, 1.0, 1.0)))
        (folder / "detect.json").write_text(json.dumps({"map50": 0.1}))
    res = CliRunner().invoke(app, ["gap", "--params", str(params), "--out", str(tmp_path / "gap.json")])
    assert res.exit_code == 0, res.output
    gap = json.loads((tmp_path / "gap.json").read_text())
    assert gap["in_city"]["parking"]["polygon_f1"] == 0.95 and gap["gap"]["parking"]["polygon_f1"] == -0.02 and gap["within"] is True
    assert "worst held-out minus in-city -0.020" in res.output
    (tmp_path / "cities/results/oslo/metrics/features.json").unlink()
    (tmp_path / "cities/results/oslo/metrics/detect.json").unlink()
    res = CliRunner().invoke(app, ["gap", "--params", str(params), "--out", str(tmp_path / "gap.json")])
    assert res.exit_code == 1 and "run the score stage of city oslo (dvc repro score@oslo)" in res.output


def test_fit_boxes_moves_boxes_with_the_cut_or_padding():
    from navml.detect.dataset import fit_boxes

    img = np.ones((80, 80, 3), "uint8")
    boxes = np.array([[10.0, 10.0, 20.0, 14.0], [64.0, 64.0, 76.0, 76.0], [70.0, 70.0, 79.0, 79.0]])
    out, (b, ids) = fit_boxes(img, (boxes, np.array([0, 1, 1])), 64)  # cut 8 px each side: the last centre leaves
    assert out.shape == (64, 64, 3) and b.tolist() == [[2.0, 2.0, 12.0, 6.0], [56.0, 56.0, 64.0, 64.0]] and ids.tolist() == [0, 1]
    out, (b, _) = fit_boxes(np.ones((48, 48, 3), "uint8"), (boxes[:1], np.array([0])), 64)  # padded 8 px each side
    assert out[:8].max() == 0 and out[8:56, 8:56].min() == 1 and b.tolist() == [[18.0, 18.0, 28.0, 22.0]]


@pytest.mark.slow
def test_detector_over_two_stores_of_the_same_tiles(tmp_path):
    from test_detect_train import FAST, NAMES, make_store

    from navml.detect.train import train_detection
    from navml.models.io import read_meta

    a, ia = make_store(tmp_path / "a", shards=1, seed=0)
    b, ib = make_store(tmp_path / "b", shards=1, seed=1)  # the same z/x/y tiles, other imagery: told apart by source
    gsd = tiles_ground_resolution(split_tiles(ia, "train"), 64)
    out = train_detection([a, b], [ia, ib], NAMES, tmp_path / "model", steps=4, eval_every=2, patience=4, anchors=2, seed=0,
                          gsd_m=gsd / 1.25, **FAST)
    meta = read_meta(tmp_path / "model")
    assert meta.extra["gsd_m"] == pytest.approx(gsd / 1.25, rel=1e-4)
    assert [c["factor"] for c in meta.extra["cities"]] == [pytest.approx(1.25, rel=1e-3)] * 2
    assert out["train_tiles"] == 2 * len(split_tiles(ia, "train"))
    # boxes were scaled with the tiles: the anchors are 1.25 x the bars' 11 x 4 px and the squares' 7 x 7
    sides = sorted(max(w, h) for w, h in meta.extra["anchors"])
    assert sides[-1] == pytest.approx(11 * 1.25, rel=0.15)


def test_training_sources_from_options_or_cities():
    from pathlib import Path

    from navml.cli._common import city_sources

    p = validate_params(yaml.safe_load(open("params.yaml")))
    tiles, stores = city_sources(p, [Path("x.csv")], [Path("x")], cities=True)
    assert tiles == [Path("data/cities/train/denver/cover/tiles.csv"), Path("data/cities/train/paris/cover/tiles.csv")]
    assert stores == [Path("data/cities/train/denver/store"), Path("data/cities/train/paris/store")]
    assert city_sources(p, [Path("a.csv"), Path("b.csv")], [Path("a"), Path("b")], cities=False)[1] == [Path("a"), Path("b")]
    with pytest.raises(ConfigError, match="--tiles given 2 time\\(s\\) but --store 1"):
        city_sources(p, [Path("a.csv"), Path("b.csv")], [Path("a")], cities=False)
    none = validate_params({k: v for k, v in yaml.safe_load(open("params.yaml")).items() if k != "cities"})
    with pytest.raises(ConfigError, match="--cities: params has no city with role: train"):
        city_sources(none, [], [], cities=True)


def test_city_option_runs_a_command_for_one_city(tmp_path):
    from typer.testing import CliRunner

    from navml.cli import app

    base = yaml.safe_load(open("params.yaml"))
    base["cities"]["mine"] = {"role": "predict", "geotiff": "inputs/imagery/mine.tif", "osm": "x.osm.pbf", "aoi": "0.0,0.0,0.001,0.001",
                              "labels": {"turn_markings": "inputs/labels/m.geojson"}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    run = CliRunner().invoke
    res = run(app, ["synth", "--params", str(params), "--city", "oslo", "--size-km", "0.2", "--out", str(tmp_path / "oslo"), "-q"])
    assert res.exit_code == 0, res.output
    import json

    aoi = json.loads((tmp_path / "oslo" / "aoi.geojson").read_text())
    lats = [pt[1] for pt in aoi["features"][0]["geometry"]["coordinates"][0]]
    assert 59.99 < min(lats) < 60.0 < max(lats) < 60.01  # the city's centre, not the synth section's Denver
    res = run(app, ["synth", "--params", str(params), "--city", "mine", "--out", str(tmp_path / "mine")])
    assert res.exit_code == 0 and "has its own imagery" in res.output
    assert (tmp_path / "mine" / "README.txt").exists()
    res = run(app, ["cover", "--params", str(params), "--city", "lima", "--labels", str(tmp_path), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "no city 'lima' (cities: denver, paris, oslo, mine)" in res.output


def test_own_city_files_must_lie_where_dvc_tracks_them():
    from navml.config import check_tracked_inputs

    p = load(CITIES)
    check_tracked_inputs(p)  # synthetic cities and mine's files under inputs/
    bad = load(CITIES.replace("geotiff: inputs/imagery/mine.tif", "geotiff: /home/me/mine.tif"))
    with pytest.raises(ConfigError, match="cities.mine.geotiff: /home/me/mine.tif lies outside what dvc.yaml tracks"):
        check_tracked_inputs(bad)
    bbox = load(CITIES.replace("aoi: inputs/labels/mine_aoi.geojson", "aoi: '10.0,59.9,10.1,60.0'"))
    check_tracked_inputs(bbox)


def test_a_city_without_truth_is_predicted_not_scored(tmp_path):
    import json

    from typer.testing import CliRunner

    from navml.cli import app

    p = load(CITIES)
    assert p.for_city("mine").score.truth == "" and p.for_city("no").score.truth == "data/cities/predict/no/synth/truth/lots.geojson"
    base = yaml.safe_load(open("params.yaml"))
    base["cities"] = yaml.safe_load(CITIES)["cities"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    out = tmp_path / "features.json"
    res = CliRunner().invoke(app, ["score", "--params", str(params), "--city", "mine", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["scored"] is False
    assert city_metrics(json.loads(out.read_text())) == {}
