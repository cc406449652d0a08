"""Benchmark of predict and vectorize in-process and on a local Dask cluster of 1 and 2 workers.

    python benchmarks/parallel.py [--store /work/main/data/store --tiles /work/main/data/cover/tiles.csv]
                                  [--workers 1 2] [--repeats 2] [--window 2048] [--vectorize-shards 4]
                                  [--tf-threads N]

* ``predict``: :func:`navml.segment.predict.predict_store` of the default U-Net
  (depth 4, base 8, downsample 2; untrained: speed does not depend on the
  weights) over the tiles of ``--tiles`` from the ``imagery`` layer of
  ``--store`` (read-only; the output goes to a temporary folder). Without
  ``--store`` it writes 3 x 3 shards of textured imagery itself.
* ``vectorize``: :func:`navml.segment.vectorize.vectorize_store` over
  ``--vectorize-shards`` squared probability shards of 2048 px with lots
  across their borders (benchmarks/vectorize.py's mosaic).

Each is run in-process (``serial``), then on a LocalCluster of each
``--workers`` count (one thread per worker), started before the clock and
warmed with one untimed run (the model loads once per worker). Prints
tiles/s and megapixels/s (median of ``--repeats``), the speed-up over 1
worker, the peak RSS of each worker process and of this process, and the
load average. TensorFlow gives each op ``--tf-threads`` threads everywhere
(default: the machine's cores, as in-process; the outputs are the same bytes
only with the same count).
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
    ap.add_argument("--vectorize-shards", type=int, default=4)
    ap.add_argument("--tf-threads", type=int, default=None, help="TensorFlow threads per op, here and on every worker")
    ap.add_argument("--skip", nargs="*", default=[], choices=["predict", "vectorize", "serial"])
    a = ap.parse_args()
    if a.tf_threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(a.tf_threads)

    from distributed import Client, LocalCluster

    sys.path.insert(0, str(Path(__file__).parent))
    from vectorize import make_lots, write_mosaic  # benchmarks/vectorize.py

    from navml.config import ClassSpec, PostProcess
    from navml.geo.grid import Grid
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
        model = tmp / "model"
        make_model(model, grid)
        if a.store:
            store, tiles = Store(a.store, grid), tiles_from_index(read_index(a.tiles))
        else:
            store, tiles = make_imagery(tmp / "store", grid)
        vec_root = tmp / "vec"
        write_mosaic(vec_root, make_lots(a.vectorize_shards, 120), a.vectorize_shards)
        vec = Store(vec_root, grid)
        mpx = len(vec.shards("probs")) * grid.shard_size**2 / 1e6
        print(f"{len(tiles)} tiles to predict (window {a.window} px); vectorize {mpx:.0f} Mpx in {len(vec.shards('probs'))} shards; "
              f"TensorFlow {tf_threads()} threads per op; {os.cpu_count()} cpus; load {os.getloadavg()[0]:.2f}", flush=True)

        def predict(scheduler=None):
            predict_store(store, tiles, model, Store(tmp / "out", grid), ["parking"], window=a.window, progress=False, scheduler=scheduler)

        def vectorize(scheduler=None):
            vectorize_store(vec, "probs", [lot], tmp / "out.geojson", progress=False, scheduler=scheduler)

        work = {"predict": (predict, len(tiles), "tiles"), "vectorize": (vectorize, mpx, "Mpx")}
        work = {k: v for k, v in work.items() if k not in a.skip}
        rates: dict[tuple[str, str], float] = {}

        def report(name: str, where: str, secs: list[float], rss: str) -> None:
            _, amount, unit = work[name]
            rate = statistics.median(amount / s for s in secs)
            rates[(name, where)] = rate
            base = rates.get((name, "1 worker"))
            up = f"  x{rate / base:.2f} vs 1 worker" if base and where != "1 worker" and where != "serial" else ""
            print(f"{name:9s} {where:10s} {rate:7.2f} {unit}/s  ({', '.join(f'{s:.1f}' for s in secs)} s){up}  peak RSS {rss}  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)

        if "serial" not in a.skip:
            for name, (fn, _, _) in work.items():
                fn()  # warm: imports, model compiled once
                report(name, "serial", timed(fn, a.repeats), f"{peak_rss_mb()} MB (this process)")
        for n in a.workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=thread_env(n), dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                for name, (fn, _, _) in work.items():
                    t0 = time.perf_counter()
                    fn(cluster.scheduler_address)  # warm: each worker loads the model once
                    cold = time.perf_counter() - t0
                    secs = timed(lambda fn=fn: fn(cluster.scheduler_address), a.repeats)
                    rss = ", ".join(f"{v} MB" for v in client.run(peak_rss_mb).values())
                    report(name, f"{n} worker{'s' if n > 1 else ''}", secs, f"per worker {rss}; client {peak_rss_mb()} MB; cold run {cold:.1f} s")


if __name__ == "__main__":
    main()
