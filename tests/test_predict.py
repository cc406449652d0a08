import json

import numpy as np
import pytest

from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Grid, Tile, Window, tiles_of_shard
from navml.geo.store import Store
from navml.models.io import ModelMeta, save_model
from navml.segment.predict import PROBS, plan_windows, predict_store, prediction_halo, to_uint8

SHARD0 = Tile(13000, 24000, 16)  # 2 x 2 shards from here, 39.7 N


def tiny_fcn(bands: int = 3, n_classes: int = 1, fixed: int | None = None, seed: int = 0):
    """A little U-Net-ish FCN: receptive field 16 px, stride 2."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((fixed, fixed, bands))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    a = layers.Conv2D(6, 3, padding="same", activation="tanh")(x)
    b = layers.MaxPooling2D()(a)
    b = layers.Conv2D(8, 3, padding="same", activation="tanh")(b)
    b = layers.Conv2D(8, 3, padding="same", activation="tanh")(b)
    b = layers.UpSampling2D()(b)
    x = layers.Concatenate()([a, b])
    x = layers.Conv2D(6, 3, padding="same", activation="tanh")(x)
    out = layers.Conv2D(n_classes + 1, 1, activation="softmax", bias_initializer=keras.initializers.Constant(0.0))(x)
    return keras.Model(inp, out)


def save(tmp_path, model, **kw):
    meta = dict(task="segmentation", classes=["parking"], zoom=18, tile_size=256, bands=3, stride=2, receptive_field=16)
    meta.update(kw)
    folder = tmp_path / ("model-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items())).replace("'", "").replace(" ", ""))
    save_model(model, ModelMeta(**meta), folder)
    return folder


def imagery_store(tmp_path, grid: Grid, bands: int = 3) -> Store:
    """2 x 2 shards of textured imagery (blobs bright enough to be 'lots')."""
    rng = np.random.default_rng(5)
    store = Store(tmp_path / "store", grid)
    n = grid.shard_size
    for dy in (0, 1):
        for dx in (0, 1):
            img = rng.integers(0, 80, (bands, n, n)).astype("uint8")
            for _ in range(12):
                r, c = rng.integers(0, n - 150, 2)
                img[:, r : r + rng.integers(40, 150), c : c + rng.integers(40, 150)] += 150
            store.write_shard("imagery", Tile(SHARD0.x + dx, SHARD0.y + dy, 16), img)
    return store


def mosaic_reference(model, store: Store) -> np.ndarray:
    """The model over the whole 2 x 2 shard mosaic in one call, uint8 class-1 band."""
    n = store.grid.shard_size
    w = Window(SHARD0.x * n, SHARD0.y * n, 2 * n, 2 * n)
    x = np.moveaxis(store.read_window("imagery", w), 0, -1)[None].astype("float32")
    return to_uint8(np.asarray(model.predict_on_batch(x))[0, :, :, 1])


def read_probs(out: Store) -> np.ndarray:
    n = out.grid.shard_size
    return out.read_window(PROBS, Window(SHARD0.x * n, SHARD0.y * n, 2 * n, 2 * n), bands=1)[0]


def all_tiles(grid):
    return [t for dy in (0, 1) for dx in (0, 1) for t in tiles_of_shard(Tile(SHARD0.x + dx, SHARD0.y + dy, 16), grid)]


def test_to_uint8_keeps_one_and_rounds():
    v = to_uint8(np.array([0.0, 0.5, 0.998, 0.999, 1.0, np.float32(1.0000001), 1.2, -0.1]))
    assert v.tolist() == [0, 128, 254, 255, 255, 255, 255, 0]


def test_prediction_is_seamless_across_tiles_and_shards(tmp_path, small_grid):
    store = imagery_store(tmp_path, small_grid)
    model = tiny_fcn()
    folder = save(tmp_path, model)
    out = Store(tmp_path / "predict", small_grid)
    # One tile per window: every tile and shard border is a window border.
    rep = predict_store(store, all_tiles(small_grid), folder, out, ["parking"], window=256, progress=False)
    assert rep.halo == 8 and rep.windows == 64 and rep.shards == 4
    got = read_probs(out)
    ref = mosaic_reference(model, store)
    assert got.std() > 5  # the model is not constant: context matters
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3

    # The same model with a lying (too small) receptive field shows seams at tile borders.
    lying = save(tmp_path, model, receptive_field=2)
    predict_store(store, all_tiles(small_grid), lying, out, ["parking"], window=256, progress=False)
    seams = np.abs(read_probs(out).astype(int) - ref.astype(int))
    assert seams.max() > 3


def test_big_windows_equal_small_windows_and_aoi_is_masked(tmp_path, small_grid):
    store = imagery_store(tmp_path, small_grid)
    model = tiny_fcn(seed=1)
    folder = save(tmp_path, model)
    # An L-shaped AOI: the lower-right shard only partly, the upper-right one not at all.
    tiles = [t for t in all_tiles(small_grid) if not (t.x >= SHARD0.x * 4 + 4 and t.y < SHARD0.y * 4 + 4)]
    tiles = [t for t in tiles if not (t.x >= SHARD0.x * 4 + 6 and t.y >= SHARD0.y * 4 + 6)]
    big = Store(tmp_path / "big", small_grid)
    small = Store(tmp_path / "small", small_grid)
    predict_store(store, tiles, folder, big, ["parking"], window=2048, progress=False)
    predict_store(store, tiles, folder, small, ["parking"], window=512, progress=False)
    a, b = read_probs(big), read_probs(small)
    # Pixels of AOI tiles whose eight neighbours are AOI tiles too do not depend on the
    # window size; nearer the AOI's outer edge the context is what lies outside it.
    inner = np.zeros((8, 8), bool)
    aoi = {(t.x - SHARD0.x * 4, t.y - SHARD0.y * 4) for t in tiles}
    for x, y in aoi:
        inner[y, x] = all((x + i, y + j) in aoi for i in (-1, 0, 1) for j in (-1, 0, 1))
    inner_px = np.repeat(np.repeat(inner, 256, 0), 256, 1)
    assert inner.sum() >= 12
    assert np.abs(a.astype(int) - b.astype(int))[inner_px].max() <= 1
    assert big.shards(PROBS) == [Tile(SHARD0.x, SHARD0.y, 16), Tile(SHARD0.x, SHARD0.y + 1, 16), Tile(SHARD0.x + 1, SHARD0.y + 1, 16)]
    n = small_grid.shard_size
    assert not a[:n, n:].any()  # shard outside the AOI: no file, reads as 0
    assert not a[n + 512 :, n + 512 :].any()  # tiles outside the AOI in an AOI shard stay 0
    assert a[n : n + 512, n : n + 512].any()
    # Away from the AOI's outer edge the L-shaped run equals the full-mosaic model.
    ref = mosaic_reference(model, store)
    assert np.abs(a[100:900, 100:900].astype(int) - ref[100:900, 100:900].astype(int)).max() <= 1


def test_plan_uses_halo_only_where_the_aoi_continues(small_grid):
    tiles = list(tiles_of_shard(SHARD0, small_grid))
    jobs = plan_windows(tiles, small_grid, window=512, halo=96, stride=16)
    assert len(jobs) == 4
    top_left = jobs[0]
    assert top_left.core == Window(SHARD0.x * 1024, SHARD0.y * 1024, 512, 512)
    # halo on the right and bottom (other windows), none on the outer AOI edge
    assert top_left.input == Window(top_left.core.col, top_left.core.row, 608, 608)
    assert sum(j.tiles for j in jobs) == 16
    assert prediction_halo(215, 16) == 112
    assert prediction_halo(215, 16, 120) == 128
    with pytest.raises(ConfigError, match="receptive field"):
        prediction_halo(215, 16, 50)


@pytest.mark.parametrize(
    "meta,match",
    [
        (dict(zoom=17), "zoom 17"),
        (dict(tile_size=512), "512-px tiles"),
        (dict(bands=4), "4 bands"),
        (dict(classes=["building"]), "classes"),
        (dict(task="detection"), "segmentation model"),
    ],
)
def test_model_that_does_not_fit_the_store_is_refused(tmp_path, small_grid, meta, match):
    store = imagery_store(tmp_path, small_grid)
    folder = save(tmp_path, tiny_fcn(), **meta)
    out = Store(tmp_path / "predict", small_grid)
    with pytest.raises(ModelError, match=match) as err:
        predict_store(store, all_tiles(small_grid)[:4], folder, out, ["parking"], progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "predict").exists()


def test_bad_inputs_leave_the_old_layer(tmp_path, small_grid):
    store = imagery_store(tmp_path, small_grid)
    folder = save(tmp_path, tiny_fcn())
    out = Store(tmp_path / "predict", small_grid)
    tiles = list(tiles_of_shard(SHARD0, small_grid))
    predict_store(store, tiles, folder, out, ["parking"], progress=False)
    before = (out.path(PROBS, SHARD0)).read_bytes()
    with pytest.raises(InputError, match="imagery shard"):
        predict_store(store, [Tile(1, 1, 18)], folder, out, ["parking"], progress=False)
    with pytest.raises(InputError, match="empty"):
        predict_store(store, [], folder, out, ["parking"], progress=False)
    with pytest.raises(ModelError, match="meta.json"):
        predict_store(store, tiles, tmp_path / "nomodel", out, ["parking"], progress=False)
    assert out.path(PROBS, SHARD0).read_bytes() == before
    assert [p.name for p in (tmp_path / "predict").iterdir()] == [PROBS]


def test_fixed_size_model_is_widened_and_certain_pixels_stay_255(tmp_path, small_grid):
    import keras
    from keras import layers

    inp = keras.Input((256, 256, 3))
    x = layers.Conv2D(2, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([-60.0, 60.0]))(inp)
    out = layers.Softmax()(x)
    folder = save(tmp_path, keras.Model(inp, out), receptive_field=1, stride=1)
    store = imagery_store(tmp_path, small_grid)
    dst = Store(tmp_path / "predict", small_grid)
    tiles = list(tiles_of_shard(SHARD0, small_grid))
    predict_store(store, tiles, folder, dst, ["parking"], window=1024, progress=False)
    probs = dst.read_shard(PROBS, SHARD0)
    assert probs.shape == (1, 1024, 1024) and (probs == 255).all()


def test_fold_batchnorm_is_exact_and_removes_every_batchnorm():
    import keras

    from navml.models.unet import build_unet
    from navml.segment.predict import fold_batchnorm

    model = build_unet(3, 2, depth=2, base_filters=4, encoder="residual")
    rng = np.random.default_rng(0)
    bns = [ly for ly in model.layers if isinstance(ly, keras.layers.BatchNormalization)]
    assert len(bns) >= 10
    for layer in bns:
        c = layer.gamma.shape[0]
        layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.3, 3, c)])
    folded = fold_batchnorm(model)
    assert not any(isinstance(ly, keras.layers.BatchNormalization) for ly in folded.layers)
    x = rng.integers(0, 256, (2, 96, 128, 3)).astype("float32")
    a, b = np.asarray(model.predict_on_batch(x)), np.asarray(folded.predict_on_batch(x))
    assert a.shape == b.shape == (2, 96, 128, 3)
    assert np.abs(a - b).max() < 1e-4
    assert np.abs(a - 1 / 3).max() > 0.05  # the BN statistics matter


def dark_is_parking(seed: int = 0):
    """A 1x1-conv model that calls dark pixels parking: p = 0.88 on black (like a U-Net on the black
    frame outside an orthophoto), 0.82 on an asphalt-dark 30, 0.24 on a bright 200."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    x = layers.Rescaling(1 / 255)(inp)
    conv = layers.Conv2D(2, 1, activation="softmax")
    model = keras.Model(inp, conv(x))
    kernel = np.zeros((1, 1, 3, 2), "float32")
    kernel[0, 0, :, 0] = 4 / 3  # background logit: 4 x mean brightness
    conv.set_weights([kernel, np.array([0.0, 2.0], "float32")])
    return model


def test_no_prediction_and_no_polygon_where_there_is_no_imagery(tmp_path, small_grid):
    """A GeoTIFF covering the west half of the AOI; the model says 0.88 on black. The east half
    gets probability 0 and vectorize at threshold 0.5 draws only the real lot, in the west half."""
    import rasterio
    import shapely
    from pyproj import Transformer
    from rasterio.transform import from_origin
    from shapely.geometry import box, shape

    from navml.config import ClassSpec, PostProcess
    from navml.data.imagery import build_imagery
    from navml.geo.grid import pixel_to_lonlat, shard_window
    from navml.segment.vectorize import vectorize_store

    grid = small_grid
    shards = [Tile(SHARD0.x, SHARD0.y, 16), Tile(SHARD0.x + 1, SHARD0.y, 16)]
    tiles = [t for s in shards for t in tiles_of_shard(s, grid)]
    west, east = shard_window(shards[0], grid), shard_window(shards[1], grid)
    # The orthophoto: UTM 13N, 0.5 m, covering the west shard (and a little margin north, west, south).
    lon_w, lat_n = pixel_to_lonlat(west.col - 40, west.row - 40, grid.zoom)
    lon_e, lat_s = pixel_to_lonlat(west.col + west.width, west.row + west.height + 40, grid.zoom)
    lon_c, lat_c = pixel_to_lonlat(west.col + west.width / 2, west.row + west.height / 2, grid.zoom)
    to_utm = Transformer.from_crs(4326, 32613, always_xy=True)
    x0, y1 = to_utm.transform(float(lon_w), float(lat_n))
    x1, y0 = to_utm.transform(float(lon_e), float(lat_s))
    xc, yc = to_utm.transform(float(lon_c), float(lat_c))
    w, h = int((x1 - x0) / 0.5), int((y1 - y0) / 0.5)
    img = np.full((3, h, w), 200, "uint8")
    r, c = int((y1 - yc) / 0.5), int((xc - x0) / 0.5)
    img[:, r - 40 : r + 40, c - 40 : c + 40] = 30  # a dark 40 m x 40 m lot
    with rasterio.open(tmp_path / "west.tif", "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32613", transform=from_origin(x0, y1, 0.5, 0.5)) as dst:
        dst.write(img)
    store = Store(tmp_path / "store", grid)
    build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "west.tif", progress=False)
    assert not store.read_valid("imagery", east).any()  # the east shard has no imagery at all
    folder = save(tmp_path, dark_is_parking(), stride=1, receptive_field=1)
    out = Store(tmp_path / "pred", grid)

    predict_store(store, tiles, folder, out, ["parking"], window=1024, progress=False)

    assert not out.read_window(PROBS, east, bands=1).any()
    both = Window(west.col, west.row, 2 * west.width, west.height)
    np.testing.assert_array_equal(out.read_valid(PROBS, both), store.read_valid("imagery", both))
    pw = out.read_window(PROBS, west, bands=1)[0]
    assert (pw[store.read_valid("imagery", west)] > 0).all()  # the imagery half is predicted
    spec = ClassSpec("parking", "segmentation", post=PostProcess(threshold=0.5, open_m=1.5, close_m=2.0, simplify_m=1.0, min_area_m2=20))
    counts = vectorize_store(out, PROBS, [spec], tmp_path / "pred.geojson", progress=False)
    feats = json.loads((tmp_path / "pred.geojson").read_text())["features"]
    assert counts == {"parking": 1} and len(feats) == 1
    lot = shape(feats[0]["geometry"])
    assert feats[0]["properties"]["area_m2"] == pytest.approx(1600, rel=0.1)
    assert lot.centroid.distance(shapely.Point(float(lon_c), float(lat_c))) < 2e-5  # ~2 m
    lon_mid, _ = pixel_to_lonlat(east.col, east.row, grid.zoom)
    assert lot.bounds[2] < float(lon_mid)
    assert not lot.intersects(box(float(lon_mid), float(lat_s) - 1, float(lon_mid) + 1, float(lat_n) + 1))
