"""Benchmark of the shard work (predict, vectorize, rasterize, predict_detect) in-process and on a local Dask
cluster of 1 and 2 workers.

    python benchmarks/parallel.py [--store /work/main/data/store --tiles /work/main/data/cover/tiles.csv]
                                  [--workers 1 2] [--repeats 2] [--window 2048] [--vectorize-shards 6]
                                  [--tf-threads N] [--worker-threads N] [--only predict vectorize ...]

* ``predict``: :func:`navml.segment.predict.predict_store` of the default U-Net
  (depth 4, base 8, downsample 2; untrained: speed does not depend on the
  weights) over the tiles of ``--tiles`` from the ``imagery`` layer of
  ``--store`` (read-only; the output goes to a temporary folder). Without
  ``--store`` it writes ``--imagery-shards`` squared (2 x 2) shards of textured imagery itself.
* ``vectorize``: :func:`navml.segment.vectorize.vectorize_store` over
  ``--vectorize-shards`` squared probability shards of 2048 px with lots
  across their borders (benchmarks/vectorize.py's mosaic; 6 x 6 = 151 Mpx by
  default: with 16 shards the fixed start and the edge-joining tail weigh more).
* ``rasterize``: :func:`navml.data.rasterize.write_masks` of the same lots
  (as WGS84 polygons, complete mapping in the west half: 255 elsewhere) over
  those shards' tiles.
* ``predict_detect``: :func:`navml.detect.predict.detect_store` of the
  default detector (benchmarks/predict_detect.py's: stride 8, base 8, 5
  anchors, untrained, score threshold 0.5) over the predict tiles,
  ``detect_predict.window_px`` 1024.

Each is run in-process (``serial``), then on a LocalCluster of each
``--workers`` count (one task at a time per worker), started before the clock and
warmed with one untimed run (the model loads once per worker), reached as ``navml
--scheduler local`` reaches its own: workers on this machine's disk, which write their
shards themselves. Prints
tiles/s and megapixels/s (median of ``--repeats``), the speed-up over 1
worker, the CPU seconds per run of each worker and of this process (the client,
with the local scheduler), the peak RSS of each worker process during that stage's runs
(TensorFlow and the models stay resident, so this is mostly a worker's floor) and of
this process, and the load average before and after (the machine may be shared: CPU
seconds, unlike the wall clock, hardly depend on the other jobs). TensorFlow gives each op
``--tf-threads`` threads everywhere (default 1, the setting for throughput;
the outputs are the same bytes only with the same count). ``--worker-threads``
(default 1: a worker is one core) is the OpenMP / BLAS / OpenCV threads of each
worker; 0 shares the cores among the workers, as ``navml --scheduler local`` does.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_mb() -> int:
    """Peak resident memory of the calling process, MB (run on each worker by ``client.run``).

    ``VmHWM`` of /proc, not ``ru_maxrss``: Linux keeps the latter across exec, so a
    spawned worker would report the peak of the process that started it.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def make_model(folder: Path, grid) -> None:
    from navml.models.io import ModelMeta, save_model
    from navml.models.unet import build_unet, model_stride, receptive_field

    meta = ModelMeta("segmentation", ["parking"], grid.zoom, grid.tile_size, 3, model_stride(4, 2), receptive_field(4, downsample=2))
    save_model(build_unet(3, 1, 4, 8, downsample=2), meta, folder)


def make_detector(folder: Path, grid) -> None:
    from navml.models.io import ModelMeta, save_model
    from navml.models.yolo import build_yolo, receptive_field

    names = ["left", "right", "through", "through_left", "through_right", "left_right"]
    anchors = [[11.0, 4.0], [4.0, 11.0], [10.0, 10.0], [12.0, 5.0], [5.0, 12.0]]
    meta = ModelMeta("detection", names, grid.zoom, grid.tile_size, 3, 8, receptive_field(8),
                     extra={"anchors": anchors, "score_threshold": 0.5})
    save_model(build_yolo(3, len(names), len(anchors), 8, 8), meta, folder)
    return names


def lots_lonlat(lots, grid):
    """The benchmark's lots (global pixel polygons) in WGS84."""
    from navml.geo.features import to_lonlat

    return [to_lonlat(g, grid.zoom, grid.tile_size) for g in lots]


def cpu_seconds() -> float:
    """User + system CPU seconds of the calling process so far (run on each worker by ``client.run``)."""
    t = os.times()
    return t.user + t.system


def reset_peak_rss() -> None:
    """Start a new ``VmHWM`` of the calling process (Linux: ``clear_refs`` 5), so the next peak is one stage's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def make_imagery(root: Path, grid, shards: int = 3):
    import numpy as np

    from navml.geo.grid import Tile, tiles_of_shard
    from navml.geo.store import Store

    rng = np.random.default_rng(0)
    store, tiles, n = Store(root, grid), [], grid.shard_size
    for dy in range(shards):
        for dx in range(shards):
            s = Tile(6826 + dx, 12435 + dy, grid.shard_zoom)
            img = rng.integers(60, 120, (3, n, n), dtype="uint8")
            store.write_shard("imagery", s, img)
            tiles += list(tiles_of_shard(s, grid))
    return store, tiles


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--tiles", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--detect-window", type=int, default=1024)
    ap.add_argument("--vectorize-shards", type=int, default=6)  # 36 shards: a city, not a toy (the tail counts less)
    ap.add_argument("--imagery-shards", type=int, default=2, help="without --store: this many squared shards of imagery")
    ap.add_argument("--tf-threads", type=int, default=1, help="TensorFlow threads per op, here and on every worker")
    ap.add_argument("--worker-threads", type=int, default=1, help="OpenMP/BLAS/OpenCV threads per worker (0: share the cores)")
    ap.add_argument("--only", nargs="*", default=["predict", "vectorize", "rasterize", "predict_detect"],
                    choices=["predict", "vectorize", "rasterize", "predict_detect"])
    ap.add_argument("--skip-serial", action="store_true")
    a = ap.parse_args()
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(a.tf_threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

    from distributed import Client, LocalCluster

    from navml.geo.parallel import Plan

    sys.path.insert(0, str(Path(__file__).parent))
    from vectorize import make_lots, write_mosaic  # benchmarks/vectorize.py

    from navml.config import ClassSpec, PostProcess
    from navml.data.rasterize import write_masks
    from navml.detect.predict import detect_store
    from navml.geo.features import write_features
    from navml.geo.grid import Grid, Tile, tiles_of_shard
    from navml.geo.parallel import thread_env
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index, tiles_from_index
    from navml.models.inference import tf_threads
    from navml.segment.predict import predict_store
    from navml.segment.vectorize import vectorize_store

    grid = Grid(18, 256, 15)
    lot = ClassSpec("parking", "segmentation", post=PostProcess(threshold=0.5, open_m=1.5, close_m=2.0, simplify_m=1.0, min_area_m2=150))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, detector = tmp / "model", tmp / "det"
        make_model(model, grid)
        names = make_detector(detector, grid)
        if a.store:
            store, tiles = Store(a.store, grid), tiles_from_index(read_index(a.tiles))
        else:
            store, tiles = make_imagery(tmp / "store", grid, a.imagery_shards)
        vec_root = tmp / "vec"
        lots = make_lots(a.vectorize_shards, 120)
        write_mosaic(vec_root, lots, a.vectorize_shards)
        vec = Store(vec_root, grid)
        vec_shards = vec.shards("probs")
        mpx = len(vec_shards) * grid.shard_size**2 / 1e6
        lots_ll = lots_lonlat(lots, grid)
        mask_tiles = [t for s in vec_shards for t in tiles_of_shard(Tile(s.x, s.y, s.z), grid)]
        x0, _, x1, _ = (min(g.bounds[0] for g in lots_ll), 0, max(g.bounds[2] for g in lots_ll), 0)
        from shapely.geometry import box

        west = [box(x0 - 1, -85, (x0 + x1) / 2, 85)]
        write_features([{"geometry": g, "properties": {}} for g in lots_ll], tmp / "lots.geojson")
        print(f"{len(tiles)} tiles to predict (window {a.window} px, detector {a.detect_window} px); vectorize and rasterize "
              f"{mpx:.0f} Mpx in {len(vec_shards)} shards ({len(lots)} lots); TensorFlow {tf_threads()} threads per op; "
              f"worker threads {a.worker_threads or 'shared'}; {os.cpu_count()} cpus; load {os.getloadavg()[0]:.2f}", flush=True)

        def predict(scheduler=None):
            predict_store(store, tiles, model, Store(tmp / "out", grid), ["parking"], window=a.window, progress=False, scheduler=scheduler)

        def vectorize(scheduler=None):
            vectorize_store(vec, "probs", [lot], tmp / "out.geojson", progress=False, scheduler=scheduler)

        def rasterize(scheduler=None):
            write_masks(Store(tmp / "masks", grid), mask_tiles, [lots_ll], class_complete=[west], progress=False, scheduler=scheduler)

        def predict_detect(scheduler=None):
            detect_store(store, tiles, detector, names, window=a.detect_window, progress=False, scheduler=scheduler)

        work = {"predict": (predict, len(tiles), "tiles"), "vectorize": (vectorize, mpx, "Mpx"),
                "rasterize": (rasterize, mpx, "Mpx"), "predict_detect": (predict_detect, len(tiles), "tiles")}
        work = {k: v for k, v in work.items() if k in a.only}
        rates: dict[tuple[str, str], float] = {}

        def report(name: str, where: str, secs: list[float], rss: str, load0: float, cpu: str) -> None:
            _, amount, unit = work[name]
            rate = statistics.median(amount / s for s in secs)
            rates[(name, where)] = rate
            base = rates.get((name, "1 worker"))
            up = f"  x{rate / base:.2f} vs 1 worker" if base and where not in ("1 worker", "serial") else ""
            print(f"{name:14s} {where:10s} {rate:7.2f} {unit}/s  ({', '.join(f'{s:.1f}' for s in secs)} s){up}  CPU s per run {cpu}  "
                  f"peak RSS {rss}  load {load0:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)

        if not a.skip_serial:
            for name, (fn, _, _) in work.items():
                fn()  # warm: imports, model compiled once
                load0 = os.getloadavg()[0]
                reset_peak_rss()
                c0 = cpu_seconds()
                secs = timed(fn, a.repeats)
                report(name, "serial", secs, f"{peak_rss_mb()} MB (this process)", load0, f"{(cpu_seconds() - c0) / a.repeats:.1f}")
        for n in a.workers:
            env = thread_env(n, cores=n if a.worker_threads else None)
            if a.worker_threads:
                env.update({k: str(a.worker_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                "OPENCV_FOR_THREADS_NUM")})
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                here = Plan("local", n, cluster.scheduler_address)  # workers on this machine: they write their shards
                for name, (fn, _, _) in work.items():
                    t0 = time.perf_counter()
                    fn(here)  # warm: each worker loads the model once
                    cold = time.perf_counter() - t0
                    load0 = os.getloadavg()[0]
                    client.run(reset_peak_rss)
                    reset_peak_rss()
                    w0, c0 = client.run(cpu_seconds), cpu_seconds()
                    secs = timed(lambda fn=fn, here=here: fn(here), a.repeats)
                    w1, c1 = client.run(cpu_seconds), cpu_seconds()
                    rss = ", ".join(f"{v} MB" for v in client.run(peak_rss_mb).values())
                    cpu = ", ".join(f"{(w1[k] - w0[k]) / a.repeats:.1f}" for k in w1)
                    report(name, f"{n} worker{'s' if n > 1 else ''}", secs,
                           f"per worker {rss}; client {peak_rss_mb()} MB; cold run {cold:.1f} s", load0,
                           f"workers {cpu}, client {(c1 - c0) / a.repeats:.1f}")


if __name__ == "__main__":
    main()
