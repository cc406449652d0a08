"""Shard work on Dask: the same bytes as in-process, from the library and from the command line.

One cluster, a ``dask scheduler`` and two worker processes out of the test
process, is shared by the session (the ``cluster`` fixture of conftest.py: it
takes seconds to start); the tests reach it by its tcp:// address, as a real
cluster is reached.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PARKING, navml
from shapely.geometry import Polygon, box
from test_predict import SHARD0, all_tiles, imagery_store, save, tiny_fcn
from test_vectorize import pixel_poly_to_mask, write_mosaic

from navml.config import ClassSpec, PostProcess
from navml.errors import ConfigError, ModelError
from navml.geo.grid import Tile, Window, parse_tile, tile_key
from navml.geo.parallel import (
    ENV,
    Plan,
    SchedulerError,
    WorkerDiedError,
    map_shards,
    resolve_scheduler,
    thread_env,
    worker_cached,
)
from navml.geo.store import Store
from navml.segment.predict import PROBS, predict_store
from navml.segment.vectorize import vectorize_store

LOT = ClassSpec("parking", "segmentation", post=PostProcess(threshold=0.5, open_m=1.5, close_m=2.0, simplify_m=1.0, min_area_m2=20))


def files(store: Store, layer: str) -> dict[str, bytes]:
    return {tile_key(s): store.path(layer, s).read_bytes() for s in store.shards(layer)}


def test_resolve_scheduler(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert resolve_scheduler() == Plan("serial", 1)
    assert resolve_scheduler(None, 1).serial
    assert resolve_scheduler(None, 3) == Plan("local", 3)
    assert resolve_scheduler("local") == Plan("local", os.cpu_count() or 1)
    assert resolve_scheduler("threads", 2) == Plan("threads", 2)
    plan = resolve_scheduler("tcp://10.0.0.5:8786", 4)
    assert plan.mode == "address" and plan.address == "tcp://10.0.0.5:8786" and plan.distributed
    monkeypatch.setenv(ENV, "tcp://sched:8786")
    assert resolve_scheduler().address == "tcp://sched:8786"
    assert resolve_scheduler("threads").mode == "threads"  # the argument wins over the environment
    with pytest.raises(ConfigError, match="not threads, local or a Dask scheduler address"):
        resolve_scheduler("dask")
    with pytest.raises(ConfigError, match="--workers is 0"):
        resolve_scheduler(None, 0)


def test_thread_env_shares_the_cores():
    assert thread_env(2, cores=8)["OMP_NUM_THREADS"] == "4"
    assert thread_env(16, cores=2)["OMP_NUM_THREADS"] == "1"


def test_worker_cached_makes_once_per_key():
    calls = []
    make = lambda: calls.append(1) or object()  # noqa: E731
    a, b = worker_cached(("test", 1), make), worker_cached(("test", 1), make)
    c = worker_cached(("test", 2), make)
    assert a is b and a is not c and len(calls) == 2


@pytest.mark.parametrize("where", ["serial", "threads", "dask"])
def test_map_shards_keeps_input_order_and_raises_task_errors(cluster, where):
    scheduler = {"serial": None, "threads": "threads", "dask": cluster}[where]
    workers = 1 if where == "serial" else 2  # serial: in this process (2 workers and no scheduler would start a cluster)
    texts = [f"18/{x}/{y}" for x, y in [(5, 9), (100, 3), (7, 7), (1, 2), (2, 1), (64, 64), (3, 0)]]
    got = list(map_shards(parse_tile, texts, scheduler=scheduler, workers=workers, in_flight=3, progress=False))
    assert got == [Tile(5, 9, 18), Tile(100, 3, 18), Tile(7, 7, 18), Tile(1, 2, 18), Tile(2, 1, 18), Tile(64, 64, 18), Tile(3, 0, 18)]
    # a NavmlError raised on a worker keeps its class and its one-line message
    with pytest.raises(ConfigError, match="'18/x/1' is not a tile"):
        list(map_shards(parse_tile, ["18/1/1", "18/x/1", "18/2/2"], scheduler=scheduler, workers=workers, progress=False))


def test_shared_argument_reaches_every_task(cluster):
    got = list(map_shards(divmod, [7, 9, 12], scheduler=cluster, shared=4, progress=False))
    assert got == [(1, 3), (2, 1), (3, 0)]


@pytest.mark.parametrize("window, merged", [(512, 3), (1024, 0)])
def test_predict_on_dask_writes_the_same_shards_as_in_process(tmp_path, small_grid, cluster, window, merged):
    store = imagery_store(tmp_path, small_grid)
    folder = save(tmp_path, tiny_fcn(seed=3))
    # an L-shaped AOI (the upper-right shard left out); at window 512, windows of 2 x 2 tiles: 12 windows, 3 shards
    # each put together from 4 windows' pieces; at 1024 one window per shard, written whole by its task
    tiles = [t for t in all_tiles(small_grid) if not (t.x >= SHARD0.x * 4 + 4 and t.y < SHARD0.y * 4 + 4)]
    runs = {}
    for name, kw in {
        "serial": {},
        "dask": {"scheduler": cluster},  # an address, a folder store: the cores travel back, written here
        "dask-local": {"scheduler": Plan("local", 2, cluster)},  # workers on this disk: they write the shards
        "threads": {"scheduler": "threads", "workers": 2},
    }.items():
        out = Store(tmp_path / name, small_grid)
        rep = predict_store(store, tiles, folder, out, ["parking"], window=window, progress=False, **kw)
        assert rep.windows == (12 if window == 512 else 3) and rep.shards == 3
        assert rep.on_workers == (name in ("dask-local", "threads"))
        assert rep.merged == (merged if rep.on_workers else 0)
        runs[name] = files(out, PROBS)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [PROBS]  # no pieces, no staging left
    assert len(runs["serial"]) == 3
    probs = Store(tmp_path / "serial", small_grid).read_shard(PROBS, Tile(SHARD0.x, SHARD0.y, 16))
    assert probs.std() > 5  # the model is not constant: a real comparison
    for name in ("dask", "dask-local", "threads"):
        assert runs[name] == runs["serial"], name  # byte for byte: pixels, mask, tags, layout


def test_a_local_session_runs_several_maps_on_one_cluster():
    from navml.geo.parallel import session

    with session("local", 1) as plan:
        assert plan.mode == "local" and plan.address.startswith("tcp://")
        first = list(map_shards(os.getpid, [], scheduler=plan, progress=False))
        pids = {p for _ in range(2) for p in map_shards(lambda _: os.getpid(), [0, 1], scheduler=plan, progress=False)}
    assert first == [] and len(pids) == 1 and os.getpid() not in pids  # both maps on the one worker process
    with session("threads", 2) as plan:
        assert plan == Plan("threads", 2)


def test_a_model_error_on_a_worker_is_one_line_and_leaves_the_old_layer(tmp_path, small_grid, cluster):
    store = imagery_store(tmp_path, small_grid)
    good = save(tmp_path, tiny_fcn())
    out = Store(tmp_path / "predict", small_grid)
    tiles = all_tiles(small_grid)[:16]
    predict_store(store, tiles, good, out, ["parking"], window=512, progress=False)
    before = files(out, PROBS)
    # meta says 2 classes, the model has 1 (+ background): found on the worker, at its first window
    bad = save(tmp_path, tiny_fcn(), classes=["parking", "building"])
    with pytest.raises(ModelError, match="model output has shape"):
        predict_store(store, tiles, bad, out, ["parking", "building"], window=512, progress=False, scheduler=cluster)
    assert files(out, PROBS) == before


def lots_store(tmp_path, grid) -> tuple[Store, Window]:
    """Probabilities of lots across the shard corner and borders of 2 x 2 shards, plus some inside one shard."""
    n = grid.shard_size
    w = Window(SHARD0.x * n, SHARD0.y * n, 2 * n, 2 * n)
    cx, cy = w.col + n, w.row + n
    polys = [
        Polygon([(cx - 90, cy - 60), (cx + 70, cy - 75), (cx + 85, cy + 50), (cx - 70, cy + 80)]),  # on the corner
        box(cx - 300, w.row + 100, cx + 40, w.row + 180),  # across the vertical border
        box(w.col + 60, cy - 30, w.col + 400, cy + 25),  # across the horizontal border
        box(w.col + 100, w.row + 100, w.col + 220, w.row + 200),  # inside one shard
        box(cx + 300, cy + 300, cx + 420, cy + 390),
    ]
    mask = pixel_poly_to_mask(polys, w)
    rng = np.random.default_rng(1)
    probs = np.where(mask > 0, rng.integers(150, 256, mask.shape), rng.integers(0, 100, mask.shape)).astype("uint8")
    store = Store(tmp_path / "probs-store", grid)
    write_mosaic(store, PROBS, probs[None], w)
    return store, w


def test_vectorize_on_dask_writes_the_same_file(tmp_path, small_grid, cluster):
    store, w = lots_store(tmp_path, small_grid)
    counts = {}
    for name, kw in {"serial": {}, "dask": {"scheduler": cluster}}.items():
        counts[name] = vectorize_store(store, PROBS, [LOT], tmp_path / f"{name}.geojson", progress=False, **kw)
    assert counts["serial"] == counts["dask"] == {"parking": 5}
    assert (tmp_path / "dask.geojson").read_bytes() == (tmp_path / "serial.geojson").read_bytes()
    # the lot on the shard corner came out as one polygon, joined on the client
    feats = json.loads((tmp_path / "dask.geojson").read_text())["features"]
    assert max(f["properties"]["area_m2"] for f in feats) > 4000


def cli_inputs(tmp_path, small_grid) -> list[str]:
    store = imagery_store(tmp_path, small_grid)
    folder = save(tmp_path, tiny_fcn(seed=2))
    tiles = all_tiles(small_grid)
    pd.DataFrame({"z": [t.z for t in tiles], "x": [t.x for t in tiles], "y": [t.y for t in tiles], "shard": "", "block": "",
                  "split": "test"}).to_csv(tmp_path / "tiles.csv", index=False)
    params = {"grid": {"zoom": 18, "tile_size": 256, "shard_zoom": 16}, "classes": {"parking": PARKING},
              "predict": {"window_px": 1024}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return ["predict", "--tiles", "tiles.csv", "--store", str(store.root), "--model", str(folder), "--params", "params.yaml"]


def test_cli_predict_with_scheduler_equals_the_serial_run(tmp_path, small_grid, cluster):
    args = cli_inputs(tmp_path, small_grid)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    serial = navml(*args, "--out", "serial", cwd=tmp_path, env=env)
    assert serial.returncode == 0, serial.stderr
    assert "Dask" not in serial.stderr
    dask = navml(*args, "--out", "dask", "--scheduler", cluster, cwd=tmp_path, env=env)
    assert dask.returncode == 0, dask.stderr
    assert f"Dask on {cluster}" in dask.stderr and "dashboard http" in dask.stderr
    ref = files(Store(tmp_path / "serial", small_grid), PROBS)
    assert len(ref) == 4
    assert files(Store(tmp_path / "dask", small_grid), PROBS) == ref


def test_cli_bad_scheduler_is_one_line(tmp_path, small_grid):
    args = cli_inputs(tmp_path, small_grid)
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    for how in (["--scheduler", "tcp://127.0.0.1:9"], []):  # nothing listens on port 9; the option, then the environment
        proc = navml(*args, *how, cwd=tmp_path, env={**env, ENV: "tcp://127.0.0.1:9"} if not how else env)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith("navml: error: cannot reach the Dask scheduler tcp://127.0.0.1:9")
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "data" / "predict" / PROBS).exists()
    proc = navml(*args, "--scheduler", "yarn", cwd=tmp_path)
    assert proc.returncode == 1 and "is not threads, local or a Dask scheduler address" in proc.stderr


def test_a_worker_that_dies_is_one_line_not_a_traceback_or_a_hang():
    """A worker process that exits or is killed while it runs a task (a crash, the OOM killer): WorkerDiedError."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # Dask's default retries 3 times first
        with pytest.raises(WorkerDiedError, match=r"a Dask worker died running task 1 of 2 \(1 try, the last on tcp://"):
            list(map_shards(os._exit, [3, 4], scheduler="local", workers=1, progress=False))
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL) as c, \
                Client(c) as client:
            pid = next(iter(client.run(os.getpid).values()))
            with pytest.raises(WorkerDiedError, match="killed, out of memory or crashed"):
                list(map_shards(os.kill, [pid, pid], scheduler=c.scheduler_address, shared=signal.SIGKILL, progress=False))


def test_a_cluster_without_workers_fails_in_one_line(monkeypatch):
    from distributed import LocalCluster

    monkeypatch.setenv("NAVML_DASK_NO_WORKERS_S", "1")
    with LocalCluster(n_workers=0, dashboard_address=":0", silence_logs=logging.CRITICAL) as c:
        with pytest.raises(SchedulerError, match=f"the Dask cluster {c.scheduler_address} has no worker"):
            list(map_shards(divmod, [7], scheduler=c.scheduler_address, shared=2, progress=False))  # the model goes nowhere
        with pytest.raises(SchedulerError, match="has had no worker for [0-9]+ s"):
            list(map_shards(abs, [-7], scheduler=c.scheduler_address, progress=False))  # the task waits for no one


DIES = """
import os

from navml.cli._common import exits
from navml.geo.parallel import map_shards


@exits
def command():
    list(map_shards(os._exit, [3], scheduler="local", workers=1, desc="predict", progress=False))


if __name__ == "__main__":
    command()
"""


def test_cli_exits_1_with_one_line_when_a_worker_dies(tmp_path):
    (tmp_path / "dies.py").write_text(DIES)
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    proc = subprocess.run([sys.executable, "dies.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("navml: error: predict: a Dask worker died running task 1 of 1")


# ---------------------------------------------------------------- the other shard work: imagery, rasterize, predict_detect


from test_imagery import server  # noqa: E402,F401 - test_imagery.py's HTTP tile server on 127.0.0.1, one fixture for both files


def test_imagery_geotiff_and_xyz_on_dask_write_the_same_shards(tmp_path, small_grid, cluster, server):  # noqa: F811 - the fixture
    from test_imagery import LAT, LON, UTM, make_geotiff, shard_corner, tiles_around, xyz_tiles

    from navml.data.imagery import build_imagery

    tif = tmp_path / "ortho.tif"
    make_geotiff(tif, UTM, shard_corner(small_grid), (LON, LAT))
    tiles = tiles_around(*shard_corner(small_grid), 0.0012)  # tiles of 4 shards around a shard corner
    runs = {}
    for name, kw in {"serial": {}, "dask": {"scheduler": cluster}}.items():
        store = Store(tmp_path / f"geotiff-{name}", small_grid)
        counts = build_imagery(store, tiles, source="geotiff", geotiff=str(tif), progress=False, **kw)
        assert counts["shards"] == 4
        runs[name] = files(store, "imagery")
    assert len(runs["serial"]) == 4 and runs["dask"] == runs["serial"]

    xyz = xyz_tiles(small_grid, nx=6, ny=2)  # 2 shards
    runs = {}
    for name, kw in {"serial": {}, "dask": {"scheduler": cluster}}.items():
        store = Store(tmp_path / f"xyz-{name}", small_grid)
        counts = build_imagery(store, xyz, source="xyz", url=server.base + "/{z}/{x}/{y}.png", workers=2,
                               cache_dir=tmp_path / f"cache-{name}", timeout_s=5, progress=False, **kw)
        assert counts["fetched"] == len(xyz) and counts["requests"] == len(xyz)  # counted on the workers too
        runs[name] = files(store, "imagery")
    assert len(runs["serial"]) == 2 and runs["dask"] == runs["serial"]
    assert len(list((tmp_path / "cache-dask").rglob("*.png"))) == len(xyz)  # the workers' cache (one machine here)


def test_rasterize_on_dask_writes_the_same_masks(tmp_path, small_grid, cluster):
    from navml.config import parse_classes
    from navml.data.rasterize import rasterize_labels
    from navml.geo.features import write_features
    from navml.geo.grid import tile_polygon, tiles_of_shard

    shards = [Tile(8577 + dx, 6245 + dy, 16) for dy in (0, 1) for dx in (0, 1)]
    tiles = [t for s in shards for t in tiles_of_shard(s, small_grid)]
    w, _, _, n = tile_polygon(shards[0]).bounds
    _, s, e, _ = tile_polygon(shards[3]).bounds
    cx, cy = tile_polygon(shards[3]).bounds[0], tile_polygon(shards[3]).bounds[3]  # where the four shards meet
    lots = [box(cx - 0.0008, cy - 0.0005, cx + 0.0006, cy + 0.0007), box(w + 0.0002, s + 0.0002, w + 0.0009, s + 0.0006)]
    labels = tmp_path / "extract"
    write_features([{"geometry": g, "properties": {}} for g in lots], labels / "parking.geojson")
    write_features([{"geometry": box(w + 0.0003, n - 0.0003, w + 0.00034, n - 0.00028), "properties": {}}],
                   labels / "marks.geojson")
    half = tmp_path / "complete.geojson"  # complete mapping in the west half only: the rest is 255 (unknown)
    write_features([{"geometry": box(w, s, (w + e) / 2, n), "properties": {}}], half)
    classes = parse_classes({"parking": {"task": "segmentation", "tags": {"amenity": "parking"}},
                             "marks": {"task": "detection", "labels": "x.geojson", "names": ["left"]}})
    runs = {}
    for name, kw in {"serial": {}, "dask": {"scheduler": cluster}}.items():
        store = Store(tmp_path / name, small_grid)
        legend = rasterize_labels(labels, tiles, store, classes, complete=str(half), roads=False, progress=False, **kw)
        assert legend["shards"] == 4 and legend["boxes"] >= 1
        runs[name] = {**files(store, "masks"), "boxes": (store.root / "boxes.csv").read_bytes(),
                      "legend": (store.root / "labels.json").read_bytes()}
    mask = np.stack([Store(tmp_path / "serial", small_grid).read_shard("masks", sh) for sh in shards])
    assert (mask == 1).sum() > 1000 and (mask == 255).sum() > 1000 and (mask == 0).sum() > 1000
    assert runs["dask"] == runs["serial"]


def test_predict_detect_on_dask_gives_the_same_table(tmp_path, small_grid, cluster):
    from test_detect_predict import ANCHORS, NAMES, STRIDE, all_tiles, meta, store_with

    from navml.detect.predict import detect_store, detections_table, write_detections
    from navml.models.io import save_model
    from navml.models.yolo import build_yolo, receptive_field

    store = store_with(tmp_path, small_grid, seed=3)
    folder = save_model(build_yolo(3, len(NAMES), len(ANCHORS), STRIDE, base_filters=4),
                        meta(receptive_field=receptive_field(STRIDE)), tmp_path / "det")
    out = {}
    for name, kw in {"serial": {}, "dask": {"scheduler": cluster}, "threads": {"scheduler": "threads", "workers": 2}}.items():
        dets, rep = detect_store(store, all_tiles(small_grid), folder, NAMES, window=1024, score_threshold=0.0005,
                                 progress=False, **kw)
        assert rep.windows == 4 and rep.shards == 4
        out[name] = write_detections(detections_table(dets, NAMES, small_grid), tmp_path / f"{name}.csv").read_bytes()
    assert out["serial"].count(b"\n") > 20  # an untrained detector at a low threshold: many boxes, scores to the last digit
    assert out["dask"] == out["serial"] and out["threads"] == out["serial"]
