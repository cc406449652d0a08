"""The viewer app (navml.viewer) on a tiny two-shard store built here, through Starlette's TestClient."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mercantile
import numpy as np
import pytest
from shapely.geometry import shape
from starlette.testclient import TestClient

from navml.errors import InputError
from navml.geo.grid import Tile, pixel_area_m2, tile_window
from navml.geo.store import Store
from navml.palette import palette_from_colors
from navml.viewer import StorePaths, create_app
from navml.viewer.live import input_window
from navml.viewer.render import decode_png, heat_rgba
from navml.viewer.review import ReviewLog, add_review, read_collection, review_feature, review_id

SHARDS = (Tile(8577, 6245, 16), Tile(8578, 6245, 16))
#: the last tile column of the west shard: its halo lies in the east shard
EDGE = Tile(8577 * 4 + 3, 6245 * 4 + 1, 18)
GREEN = (0, 255, 0)


def lot_polygon(tile: Tile = EDGE) -> dict:
    """A small square (about 30 m) inside ``tile``, WGS84."""
    b = mercantile.bounds(tile)
    w, s = b.west + (b.east - b.west) * 0.3, b.south + (b.north - b.south) * 0.3
    e, n = b.west + (b.east - b.west) * 0.6, b.south + (b.north - b.south) * 0.6
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def make_city(tmp_path, small_grid):
    """Two shards of random imagery, a mask with a lot in the EDGE tile, probs, outputs and a tile index."""
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "store", small_grid)
    pred = Store(tmp_path / "predict", small_grid)
    for s in SHARDS:
        store.write_shard("imagery", s, rng.integers(0, 256, (3, 1024, 1024), dtype="uint8"))
        mask = np.zeros((1, 1024, 1024), "uint8")
        probs = np.zeros((1, 1024, 1024), "uint8")
        if s == SHARDS[0]:
            mask[0, 300:360, 800:900] = 1
            probs[0, 300:360, 800:900] = 200
        store.write_shard("masks", s, mask)
        pred.write_shard("probs", s, probs)
    out = tmp_path / "output"
    out.mkdir()
    lot = {"type": "Feature", "geometry": lot_polygon(), "properties": {"class": "parking", "score": 0.9, "area_m2": 900.0}}
    (out / "new_features.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [lot]}))
    (out / "predictions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [lot]}))
    (tmp_path / "tiles.csv").write_text(f"z,x,y,split\n18,{EDGE.x},{EDGE.y},val\n")
    (store.root / "boxes.csv").write_text(f"z,x,y,class_id,class,name,xmin,ymin,xmax,ymax\n18,{EDGE.x},{EDGE.y},0,turn_markings,left,10,20,14,32\n")
    gx, gy = EDGE.x * 256, EDGE.y * 256
    (pred.root / "detections.csv").write_text(
        f"z,x,y,x0,y0,x1,y1,class_id,class,score\n18,{EDGE.x},{EDGE.y},{gx + 100},{gy + 50},{gx + 104.5},{gy + 62},2,through,0.87\n"
    )
    paths = StorePaths(
        store=store.root, grid=small_grid, palette=palette_from_colors([GREEN]), classes=("parking",),
        predict=pred.root, output=out, tiles=tmp_path / "tiles.csv", models=(tmp_path / "models",),
    )
    return paths, store, pred


@pytest.fixture
def city(tmp_path, small_grid):
    return make_city(tmp_path, small_grid)


@pytest.fixture
def client(city, tmp_path):
    paths, _, _ = city
    app = create_app({"test": paths}, tmp_path / "mining" / "hard_negatives.geojson", tmp_path / "review" / "review.geojson")
    with TestClient(app) as c:
        yield c


def url(layer: str, t: Tile = EDGE, city: str = "test") -> str:
    return f"/tiles/{city}/{layer}/{t.z}/{t.x}/{t.y}.png"


def test_imagery_tile_is_the_store_window(client, city):
    _, store, _ = city
    r = client.get(url("imagery"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    rgba = decode_png(r.content)
    assert rgba.shape == (256, 256, 4)
    want = np.moveaxis(store.read_tile("imagery", EDGE), 0, -1)
    np.testing.assert_array_equal(rgba[..., :3], want)
    assert (rgba[..., 3] == 255).all()


def test_mask_tile_in_class_colour_and_probs_threshold(client):
    m = decode_png(client.get(url("masks")).content)
    # the lot: rows 300:360, cols 800:900 of the west shard; EDGE is tile column 3, row 1 (cols 768.., rows 256..)
    assert tuple(m[60, 50, :3]) == GREEN and m[60, 50, 3] > 0
    assert m[0, 0, 3] == 0 and m[200, 200, 3] == 0
    p0 = decode_png(client.get(url("probs")).content)
    assert p0[60, 50, 3] > 0 and p0[0, 0, 3] == 0
    hidden = decode_png(client.get(url("probs") + "?threshold=0.9").content)
    assert hidden[60, 50, 3] == 0  # 200/255 = 0.78 < 0.9
    assert client.get(url("probs") + "?threshold=2").status_code == 400
    assert client.get(url("probs") + "?threshold=abc").status_code == 400


def test_outside_the_store_and_other_zooms_are_404(client):
    assert client.get(url("imagery", Tile(EDGE.x + 20, EDGE.y, 18))).status_code == 404
    assert client.get(url("imagery", Tile(EDGE.x // 2, EDGE.y // 2, 17))).status_code == 404
    assert client.get(url("elevation")).status_code == 404
    assert client.get(url("imagery", city="paris")).status_code == 404
    assert client.get("/tiles/test/imagery/18/1.5/2.png").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/tiles/test/../../../etc/passwd/18/1/2.png",
        "/tiles/test/%2e%2e%2f%2e%2e%2fetc/18/1/2.png",
        "/tiles/test/..%2fimagery/18/1/2.png",
        "/tiles/..%2f..%2f/imagery/18/1/2.png",
        "/api/vector/test/..%2f..%2fetc%2fpasswd",
        "/api/vector/test/%2e%2e%2fpredictions",
        "/api/vector/test/../output/new_features.geojson",
        "/predict/test/..%2fseg/18/1/2.png",
        "/static/..%2fapp.py",
        "/static/%2e%2e/app.py",
        "/static/%2e%2e%2fapp.py",
    ],
)
def test_path_traversal_is_refused(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404)
    assert b"create_app" not in r.content and b"root:" not in r.content


def test_cities_vectors_and_tile_info(client):
    info = client.get("/api/cities").json()["test"]
    assert info["zoom"] == 18 and info["layers"] == ["imagery", "masks", "probs"]
    w, s, e, n = info["bounds"]
    assert w < e and s < n
    assert "predictions" in info["vectors"] and "polygons" in info["vectors"]
    feats = client.get("/api/vector/test/polygons").json()["features"]
    assert [f["properties"]["status"] for f in feats] == ["new"]
    assert client.get("/api/vector/test/markings").status_code == 404  # not written: not allow-listed
    t = client.get(f"/api/tile/test/18/{EDGE.x}/{EDGE.y}").json()
    assert t["split"] == "val" and t["shard"] == "16-8577-6245"
    assert t["max_prob"]["parking"] == pytest.approx(200 / 255, abs=1e-3)


def test_truth_boxes_and_detections_as_wgs84_boxes_with_labels(client):
    from navml.geo.grid import pixel_to_lonlat

    (box,) = client.get("/api/vector/test/boxes").json()["features"]
    assert box["properties"] == {"class": "left", "tile": f"18-{EDGE.x}-{EDGE.y}"}
    ring = np.array(box["geometry"]["coordinates"][0])
    w, n = pixel_to_lonlat(EDGE.x * 256 + 10, EDGE.y * 256 + 20, 18)
    e, s = pixel_to_lonlat(EDGE.x * 256 + 14, EDGE.y * 256 + 32, 18)
    assert ring.min(axis=0) == pytest.approx([w, s], abs=1e-9) and ring.max(axis=0) == pytest.approx([e, n], abs=1e-9)
    (det,) = client.get("/api/vector/test/detections").json()["features"]
    assert det["properties"]["class"] == "through" and det["properties"]["score"] == 0.87
    ring = np.array(det["geometry"]["coordinates"][0])
    e, _ = pixel_to_lonlat(EDGE.x * 256 + 104.5, 0, 18)
    assert ring[:, 0].max() == pytest.approx(float(e), abs=1e-9)


def test_review_false_goes_to_hard_negatives_with_keep(client, tmp_path):
    body = {"feature": {"type": "Feature", "geometry": lot_polygon(), "properties": {"score": 0.9}},
            "verdict": "false", "kind": "segmentation", "class": "parking"}
    r = client.post("/api/review", json=body)
    assert r.status_code == 200, r.text
    neg = read_collection(tmp_path / "mining" / "hard_negatives.geojson")
    assert len(neg) == 1
    p = neg[0]["properties"]
    assert p == {"class": "parking", "kind": "segmentation", "tile": f"18-{EDGE.x}-{EDGE.y}",
                 "area_m2": p["area_m2"], "score": 0.9, "source": "review", "keep": True, "review_id": review_id(shape(lot_polygon()))}
    # the square is 0.3 of the tile on each side (in degrees: about 76.8 px), at the tile's latitude
    lat = lot_polygon()["coordinates"][0][0][1] + 0.15 * (mercantile.bounds(EDGE).north - mercantile.bounds(EDGE).south)
    assert p["area_m2"] == pytest.approx(76.8**2 * pixel_area_m2(lat, 18), rel=0.02)
    assert neg[0]["geometry"]["type"] == "Polygon"
    assert [f["properties"]["verdict"] for f in read_collection(tmp_path / "review" / "review.geojson")] == ["false"]
    # the negatives layer serves it
    assert len(client.get("/api/vector/test/negatives").json()["features"]) == 1
    # a second verdict on the same lot replaces the first: "correct" takes it out of the negatives again
    assert client.post("/api/review", json={**body, "verdict": "correct"}).status_code == 200
    ok = read_collection(tmp_path / "review" / "review.geojson")
    assert len(ok) == 1 and ok[0]["properties"]["verdict"] == "correct" and ok[0]["properties"]["keep"] is False
    assert read_collection(tmp_path / "mining" / "hard_negatives.geojson") == []
    exported = client.get("/api/review/export").json()
    assert [f["properties"]["verdict"] for f in exported["features"]] == ["correct"]


def test_negatives_per_kind_and_veto_of_a_mined_negative(tmp_path):
    """``{model}`` in the path: lots to seg/, markings to det/; "correct" on a mined negative sets keep false, "false" back to true."""
    log = ReviewLog(tmp_path / "mining" / "{model}" / "hard_negatives.geojson", tmp_path / "review.geojson")
    seg, det = tmp_path / "mining" / "seg" / "hard_negatives.geojson", tmp_path / "mining" / "det" / "hard_negatives.geojson"
    mined = {"type": "Feature", "geometry": lot_polygon(),
             "properties": {"class": "parking", "kind": "segmentation", "tile": "18-1-2", "area_m2": 900.0, "score": 0.8,
                            "source": "mined", "keep": True}}
    add_review(seg, mined)  # as mining would have written it
    other = lot_polygon(Tile(EDGE.x - 1, EDGE.y, 18))
    log.add({"feature": other, "verdict": "false", "kind": "detection", "class": "left"}, 18)
    assert [f["properties"]["class"] for f in read_collection(det)] == ["left"]
    log.add({"feature": lot_polygon(), "verdict": "correct", "kind": "segmentation", "class": "parking"}, 18)
    (f,) = read_collection(seg)
    assert f["properties"]["source"] == "mined" and f["properties"]["keep"] is False and f["properties"]["score"] == 0.8
    log.add({"feature": lot_polygon(), "verdict": "false", "kind": "segmentation", "class": "parking"}, 18)
    (f,) = read_collection(seg)
    assert f["properties"]["source"] == "mined" and f["properties"]["keep"] is True and f["properties"]["tile"] == "18-1-2"
    assert len(read_collection(tmp_path / "review.geojson")) == 2  # one verdict per feature: the latest


def test_cross_origin_post_is_refused(client, tmp_path):
    body = {"feature": lot_polygon(), "verdict": "false", "class": "parking"}
    r = client.post("/api/review", json=body, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert not (tmp_path / "mining" / "hard_negatives.geojson").exists()
    assert client.post("/api/review", json=body, headers={"Origin": "http://testserver"}).status_code == 200
    assert client.post("/api/review", json={**body, "verdict": "maybe"}).status_code == 400
    assert client.post("/api/review", content=b"not json").status_code == 400


def test_review_feature_rejects_bad_input():
    with pytest.raises(InputError, match="Polygon"):
        review_feature({"feature": {"type": "Point", "coordinates": [1, 2]}, "verdict": "false", "class": "parking"}, 18)
    with pytest.raises(InputError, match="class"):
        review_feature({"feature": lot_polygon(), "verdict": "false"}, 18)
    with pytest.raises(InputError, match="WGS84"):
        review_feature({"feature": {"type": "Polygon", "coordinates": [[[0, 0], [1e6, 0], [1e6, 1e6], [0, 0]]]},
                        "verdict": "false", "class": "parking"}, 18)


def test_review_log_concurrent_writers_lose_nothing(tmp_path):
    log = ReviewLog(tmp_path / "neg.geojson", tmp_path / "rev.geojson")
    tiles = [Tile(EDGE.x + i % 6, EDGE.y + i // 6, 18) for i in range(24)]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda t: log.add({"feature": lot_polygon(t), "verdict": "false", "class": "parking"}, 18), tiles))
    assert len(read_collection(tmp_path / "neg.geojson")) == 24
    assert len(read_collection(tmp_path / "rev.geojson")) == 24
    assert not list(tmp_path.glob(".*part*"))  # no temporary file left


def test_concurrent_tile_requests_all_succeed(client, city):
    _, store, _ = city
    tiles = [Tile(8577 * 4 + i % 8, 6245 * 4 + i // 8, 18) for i in range(32)]
    with ThreadPoolExecutor(8) as ex:
        res = list(ex.map(lambda t: client.get(url("imagery", t)), tiles))
    assert [r.status_code for r in res] == [200] * 32
    for t, r in zip(tiles[::7], res[::7]):
        np.testing.assert_array_equal(decode_png(r.content)[..., :3], np.moveaxis(store.read_tile("imagery", t), 0, -1))


def test_input_window_is_clipped_and_on_the_stride_grid():
    from navml.geo.grid import Window

    t = Tile(10, 10, 18)
    w = tile_window(t, 256)
    assert input_window(t, 256, 64, 32, None) == Window(w.col - 64, w.row - 64, 384, 384)
    extent = Window(w.col, w.row - 1024, 2048, 2048)
    assert input_window(t, 256, 64, 32, extent) == Window(w.col, w.row - 64, 320, 384)
    assert input_window(t, 256, 40, 32, None).width == 352  # 336 rounded up to the stride


def test_live_predict_equals_the_full_mosaic_in_the_tile(client, city):
    """A tiny U-Net on the tile + halo across the shard border gives the probs of one run over both shards."""
    import keras

    from navml.models.io import ModelMeta
    from navml.models.unet import build_unet, model_stride, receptive_field
    from navml.segment.predict import to_uint8
    from navml.viewer.live import Predictor

    paths, store, _ = city
    keras.utils.set_random_seed(1)
    model = build_unet(3, 1, depth=2, base_filters=4)
    logits = model.get_layer("logits")
    k, b = logits.get_weights()
    logits.set_weights([k * 40, b])  # confident outputs: probabilities spread over 0..1
    meta = ModelMeta("segmentation", ["parking"], 18, 256, 3, model_stride(2), receptive_field(2))
    pred = Predictor.of(model, meta, "tiny")
    client.app.state.cities["test"].set_live("tiny", pred)

    r = client.get(f"/predict/test/tiny/{EDGE.z}/{EDGE.x}/{EDGE.y}.png")
    assert r.status_code == 200 and float(r.headers["X-Predict-Ms"]) > 0
    got = decode_png(r.content)
    assert got.shape == (256, 256, 4)
    r2 = client.get(f"/predict/test/tiny/{EDGE.z}/{EDGE.x}/{EDGE.y}.png")
    assert r2.headers["X-Cache"] == "hit" and r2.content == r.content

    from navml.geo.grid import Window

    mosaic = store.read_window("imagery", Window(8577 * 1024, 6245 * 1024, 2048, 1024))
    full = np.asarray(model.predict_on_batch(np.moveaxis(mosaic, 0, -1)[None].astype("float32")))
    w = tile_window(EDGE, 256)
    r0, c0 = w.row - 6245 * 1024, w.col - 8577 * 1024
    want = np.moveaxis(to_uint8(full[0, r0 : r0 + 256, c0 : c0 + 256, 1:]), -1, 0)
    live, _, _ = client.app.state.cities["test"].live("tiny").probs(EDGE)
    assert np.abs(live.astype(int) - want.astype(int)).max() <= 1
    assert want.std() > 8  # the model's output varies: the comparison means something
    alone = np.asarray(model.predict_on_batch(np.moveaxis(store.read_tile("imagery", EDGE), 0, -1)[None].astype("float32")))
    assert np.abs(to_uint8(alone[0, :, -8:, 1]).astype(int) - want[0, :, -8:].astype(int)).max() > 10  # the halo matters
    diff = np.abs(got.astype(int) - heat_rgba(want).astype(int))
    assert np.median(diff) == 0 and diff.max() <= 16  # a level of rounding moves the colour a little
    # tiles without a model or outside the store
    assert client.get(f"/predict/test/nope/{EDGE.z}/{EDGE.x}/{EDGE.y}.png").status_code == 404
    assert client.get(f"/predict/test/tiny/18/{EDGE.x + 50}/{EDGE.y}.png").status_code == 404
    assert client.get(f"/predict/test/tiny/{EDGE.z}/{EDGE.x}/{EDGE.y}.json").status_code == 404  # not a detector


def test_foreign_host_header_is_refused(city, tmp_path):
    """Against DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    paths, _, _ = city
    app = create_app({"test": paths}, tmp_path / "n.geojson", tmp_path / "r.geojson", allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/cities").status_code == 200
        assert c.get("/api/cities", headers={"Host": "evil.example:8765"}).status_code == 400
        body = {"feature": lot_polygon(), "verdict": "false", "class": "parking"}
        r = c.post("/api/review", json=body, headers={"Host": "evil.example:8765", "Origin": "http://evil.example:8765"})
        assert r.status_code == 400 and not (tmp_path / "n.geojson").exists()


def test_city_paths_follow_the_pipeline_layout():
    from navml.cli._common import load_params
    from navml.errors import ConfigError
    from navml.viewer import city_paths

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    paths = city_paths(p)
    assert list(paths) == list(p.cities)
    oslo = paths["oslo"]
    assert oslo.store == Path("data/cities/predict/oslo/store") and oslo.tiles == Path("data/cities/predict/oslo/cover/tiles.csv")
    assert oslo.predict == Path("data/cities/results/oslo/predict") and oslo.output == Path("data/cities/results/oslo/output")
    assert oslo.aoi == Path("data/cities/predict/oslo/synth/aoi.geojson")
    assert Path("data/first/models") in oslo.models and Path("data/models") in oslo.models
    assert list(city_paths(p, ["denver"])) == ["denver"]
    with pytest.raises(ConfigError, match="no city 'rome'"):
        city_paths(p, ["rome"])
