"""Benchmark of the predict stage against bare ``model.predict`` on the same tiles.

    python benchmarks/predict.py [--model data/models/seg --store data/store --tiles data/cover/tiles.csv]
                                 [--shards 2] [--window 1024] [--batch-size 8] [--repeats 3]

Without ``--model`` it builds the default U-Net (depth 4, base 16, untrained:
speed does not depend on the weights); without ``--store`` it writes
``--shards`` x ``--shards`` shards of textured imagery (zoom 18, 256-px tiles,
2048-px shards) into a temporary folder and takes all their tiles as the AOI.

Each measure runs in its own process (so peak RSS is its own), bare and
predict alternating ``--repeats`` times (the machine is shared: compare the
medians):

* ``bare``: the AOI tiles already in memory as one float32 array, timed
  ``model.predict(tiles, batch_size)`` after one warm-up batch; no halo, no
  I/O: the model's own speed on tiles.
* ``bare-folded``: the same with the inference copy predict runs
  (:func:`navml.segment.predict.fold_batchnorm`: batch norms folded into the
  convolutions), to separate that speed-up from the halo and I/O cost.
* ``predict``: the whole :func:`navml.segment.predict.predict_store` call with the
  model loaded beforehand (as for bare): planning, reading imagery with its
  halo, compiling the model function, centre-crop, uint8 conversion, writing
  the shards.

Prints tiles/s (wall) and tiles per CPU-second of each, the ratios of the
medians, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from navml.geo.grid import Grid, Tile, tiles_of_shard
from navml.geo.store import Store

GRID = Grid(18, 256, 15)
SHARD0 = Tile(6827, 12405, 15)  # Denver


def make_store(root: Path, shards: int) -> list[Tile]:
    rng = np.random.default_rng(0)
    store = Store(root, GRID)
    n = GRID.shard_size
    tiles = []
    for dy in range(shards):
        for dx in range(shards):
            s = Tile(SHARD0.x + dx, SHARD0.y + dy, GRID.shard_zoom)
            img = rng.integers(60, 120, (3, n, n), dtype="uint8")
            for _ in range(60):
                r, c = rng.integers(0, n - 200, 2)
                img[:, r : r + rng.integers(30, 200), c : c + rng.integers(30, 200)] += 90
            store.write_shard("imagery", s, img)
            tiles += list(tiles_of_shard(s, GRID))
    return tiles


def make_model(folder: Path) -> None:
    from navml.models.io import ModelMeta, save_model
    from navml.models.unet import build_unet, model_stride, receptive_field

    meta = ModelMeta("segmentation", ["parking"], GRID.zoom, GRID.tile_size, 3, model_stride(4), receptive_field(4))
    save_model(build_unet(3, 1, 4, 16), meta, folder)


def _cpu() -> float:
    """CPU seconds of this process, all threads (less sensitive to a shared machine than wall time)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_bare(a) -> dict:
    from navml.geo.tile_index import read_index, tiles_from_index
    from navml.models.io import load_model

    store = Store(a.store, GRID)
    tiles = tiles_from_index(read_index(a.tiles))
    x = np.stack([np.moveaxis(store.read_tile("imagery", t), 0, -1) for t in tiles]).astype("float32")
    model, _ = load_model(a.model)
    if a.mode == "bare-folded":
        from navml.segment.predict import fold_batchnorm

        model = fold_batchnorm(model)
    model.predict(x[: a.batch_size], batch_size=a.batch_size, verbose=0)
    t0, c0 = time.perf_counter(), _cpu()
    model.predict(x, batch_size=a.batch_size, verbose=0)
    return {"tiles": len(tiles), "seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0}


def run_predict(a) -> dict:
    from navml.geo.tile_index import read_index, tiles_from_index
    from navml.models.io import load_model
    from navml.segment.predict import predict_with_model

    tiles = tiles_from_index(read_index(a.tiles))
    loaded = load_model(a.model)  # bare excludes loading too
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), _cpu()
        rep = predict_with_model(Store(a.store, GRID), tiles, *loaded, Store(out, GRID), ["parking"], window=a.window, progress=False)
        dt, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"tiles": len(tiles), "seconds": dt, "cpu_seconds": cpu, "windows": rep.windows, "halo": rep.halo, "overhead": round(rep.overhead, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--tiles", type=Path)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["bare", "bare-folded", "predict"], help="what to measure")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.mode:
        res = run_predict(a) if a.mode == "predict" else run_bare(a)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.model is None:
            a.model = tmp / "model"
            make_model(a.model)
        if a.store is None:
            a.store = tmp / "store"
            tiles = make_store(a.store, a.shards)
            import pandas as pd

            a.tiles = tmp / "tiles.csv"
            pd.DataFrame({"z": [t.z for t in tiles], "x": [t.x for t in tiles], "y": [t.y for t in tiles],
                          "shard": "", "block": "", "split": "test"}).to_csv(a.tiles, index=False)
        results: dict[str, list[dict]] = {m: [] for m in a.modes}
        for r in range(a.repeats):
            for mode in a.modes:
                cmd = [sys.executable, __file__, "--mode", mode, "--model", str(a.model), "--store", str(a.store),
                       "--tiles", str(a.tiles), "--window", str(a.window), "--batch-size", str(a.batch_size)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                res = json.loads(out)
                results[mode].append(res)
                print(f"run {r + 1} {mode:11s} {res['tiles'] / res['seconds']:6.1f} tiles/s  {res['seconds']:6.1f} s  "
                      f"{res['tiles'] / res['cpu_seconds']:6.2f} tiles/cpu-s  "
                      f"peak RSS {res['peak_rss_mb']} MB  {', '.join(f'{k} {v}' for k, v in res.items() if k in ('windows', 'halo', 'overhead'))}"
                      f"  load {os.getloadavg()[0]:.1f}", flush=True)
        for kind, per in (("wall", "seconds"), ("cpu", "cpu_seconds")):
            med = {m: statistics.median(x["tiles"] / x[per] for x in v) for m, v in results.items()}
            line = ", ".join(f"{m} {v:.2f}" for m, v in med.items())
            ratios = ", ".join(f"predict/{m} {med['predict'] / med[m]:.0%}" for m in med if m != "predict" and "predict" in med)
            print(f"median tiles per {'second' if kind == 'wall' else 'CPU-second'}: {line}; {ratios}")
        print(f"window {a.window} px, {os.cpu_count()} cpus; peak RSS " + ", ".join(f"{m} {max(x['peak_rss_mb'] for x in v)} MB" for m, v in results.items()))


if __name__ == "__main__":
    main()
