"""The shard store on S3 (moto's S3 server on 127.0.0.1, in its own process): the same shards as on disk, read by GDAL,
written whole; Dask workers that read and write S3 themselves."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import S3_ENV
from test_parallel import LOT, files, lots_store
from test_predict import all_tiles, imagery_store, save, tiny_fcn

from navml.geo.grid import Tile, Window, tile_key
from navml.geo.store import Store, gdal_s3_options, is_remote
from navml.segment.predict import PROBS, predict_store
from navml.segment.vectorize import vectorize_store

BUCKET = "navml-test"


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket on the moto server (conftest.py: its own process); AWS_* set as for a real S3-compatible endpoint."""
    import boto3

    for key in ("AWS_PROFILE", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_gdal_options_follow_the_aws_endpoint():
    assert gdal_s3_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    opts = gdal_s3_options({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio.example.com"})
    assert opts["AWS_S3_ENDPOINT"] == "minio.example.com" and opts["AWS_HTTPS"] == "YES"
    assert gdal_s3_options({}) == {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}  # AWS itself: nothing to change
    assert "AWS_S3_ENDPOINT" not in gdal_s3_options({"AWS_ENDPOINT_URL": "http://a:1", "AWS_S3_ENDPOINT": "b:2"})
    assert is_remote("s3://bucket/x") and not is_remote("data/store")


def test_shards_round_trip_and_a_staged_layer_replaces_the_old_one(s3, small_grid):
    store = Store(f"s3://{BUCKET}/city/store/", small_grid)
    assert store.remote and str(store.root / "imagery") == f"s3://{BUCKET}/city/store/imagery"
    assert store.shards("imagery") == [] and store.count("imagery") == 0
    n = small_grid.shard_size
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, n, n)).astype("uint8")
    valid = np.ones((n, n), bool)
    valid[:, : n // 4] = False
    s0, s1 = Tile(13000, 24000, 16), Tile(13001, 24000, 16)
    with store.staged_layer("imagery") as layer:
        store.write_shard(layer, s0, a, tags={"source": "test"}, valid=valid)
        store.write_shard(layer, s1, a[:, ::-1].copy())
        assert keys(s3, "city/store/imagery/") == []  # nothing in the layer until the end
    assert keys(s3, "city/store/") == ["city/store/imagery/16-13000-24000.tif", "city/store/imagery/16-13001-24000.tif"]
    assert store.shards("imagery") == [s0, s1] and store.has("imagery", s0) and not store.has("imagery", Tile(0, 0, 16))
    assert np.array_equal(store.read_shard("imagery", s0), a)
    assert store.tags("imagery", s0)["source"] == "test" and store.count("imagery") == 3
    # a window across both shards and beyond them
    w = Window(13000 * n + n - 10, 24000 * n - 5, 20, 10)
    got = store.read_window("imagery", w)
    assert np.array_equal(got[:, 5:, :10], a[:, :5, -10:]) and np.array_equal(got[:, 5:, 10:], a[:, ::-1][:, :5, :10])
    assert not got[:, :5].any()
    assert store.read_valid("imagery", Window(13000 * n, 24000 * n, n, n)).sum() == valid.sum()

    # the same object rewritten in this process reads back new (no stale GDAL cache); shards the new layer lacks go
    with store.staged_layer("imagery") as layer:
        store.write_shard(layer, s0, 255 - a)
    assert store.shards("imagery") == [s0]
    assert np.array_equal(store.read_shard("imagery", s0), 255 - a)
    assert store.read_valid("imagery", Window(13000 * n, 24000 * n, n, n)).all()

    # a failed run leaves the old layer and no staging objects
    with pytest.raises(RuntimeError), store.staged_layer("imagery") as layer:
        store.write_shard(layer, s1, a)
        raise RuntimeError("killed")
    assert keys(s3, "city/store/") == ["city/store/imagery/16-13000-24000.tif"]


def test_predict_and_vectorize_on_s3_equal_the_local_runs(tmp_path, s3, small_grid, cluster):
    local = imagery_store(tmp_path, small_grid)
    remote = Store(f"s3://{BUCKET}/in", small_grid)
    for s in local.shards("imagery"):
        remote.write_shard("imagery", s, local.read_shard("imagery", s))
    folder = save(tmp_path, tiny_fcn(seed=4))
    tiles = all_tiles(small_grid)
    ref = Store(tmp_path / "ref", small_grid)
    predict_store(local, tiles, folder, ref, ["parking"], window=1024, progress=False)
    want = files(ref, PROBS)
    assert len(want) == 4

    out = Store(f"s3://{BUCKET}/out", small_grid)
    predict_store(remote, tiles, folder, out, ["parking"], window=1024, progress=False)
    got = {tile_key(s): s3.get_object(Bucket=BUCKET, Key=f"out/{PROBS}/{tile_key(s)}.tif")["Body"].read() for s in out.shards(PROBS)}
    assert got == want
    # workers that share no disk with the client: Dask workers read the imagery from S3
    s3.delete_object(Bucket=BUCKET, Key=f"out/{PROBS}/{tile_key(out.shards(PROBS)[0])}.tif")
    predict_store(remote, tiles, folder, out, ["parking"], window=1024, progress=False, scheduler=cluster)
    assert {tile_key(s): out.path(PROBS, s).read_bytes() for s in out.shards(PROBS)} == want

    lots, _ = lots_store(tmp_path, small_grid)
    lots_s3 = Store(f"s3://{BUCKET}/lots", small_grid)
    for s in lots.shards(PROBS):
        lots_s3.write_shard(PROBS, s, lots.read_shard(PROBS, s))
    vectorize_store(lots, PROBS, [LOT], tmp_path / "local.geojson", progress=False)
    counts = vectorize_store(lots_s3, PROBS, [LOT], tmp_path / "s3.geojson", progress=False, scheduler="threads", workers=2)
    assert counts == {"parking": 5}
    assert (tmp_path / "s3.geojson").read_bytes() == (tmp_path / "local.geojson").read_bytes()
    vectorize_store(lots_s3, PROBS, [LOT], tmp_path / "s3-dask.geojson", progress=False, scheduler=cluster)
    assert (tmp_path / "s3-dask.geojson").read_bytes() == (tmp_path / "local.geojson").read_bytes()


def test_imagery_written_to_s3_by_dask_workers_equals_the_local_layer(tmp_path, s3, small_grid, cluster):
    """Workers that share no disk with the client: each warps its shard and uploads it itself, into the staged layer."""
    from test_imagery import LAT, LON, UTM, make_geotiff, shard_corner, tiles_around

    from navml.data.imagery import build_imagery

    tif = tmp_path / "ortho.tif"
    make_geotiff(tif, UTM, shard_corner(small_grid), (LON, LAT))
    s3.upload_file(str(tif), BUCKET, "src/ortho.tif")
    tiles = tiles_around(*shard_corner(small_grid), 0.0012)
    local = Store(tmp_path / "local", small_grid)
    build_imagery(local, tiles, source="geotiff", geotiff=str(tif), progress=False)
    remote = Store(f"s3://{BUCKET}/city/store", small_grid)
    # the workers read the source from S3 too (GDAL /vsis3/)
    counts = build_imagery(remote, tiles, source="geotiff", geotiff=f"/vsis3/{BUCKET}/src/ortho.tif", progress=False, scheduler=cluster)
    assert counts["shards"] == 4
    assert keys(s3, "city/") == sorted(f"city/store/imagery/{tile_key(s)}.tif" for s in local.shards("imagery"))
    for s in local.shards("imagery"):
        a, b = local.read_shard("imagery", s), remote.read_shard("imagery", s)
        assert np.array_equal(a, b) and a.any()
