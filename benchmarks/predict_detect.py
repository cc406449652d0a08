"""Benchmark of the predict_detect stage against bare ``model.predict`` of the detector on the same tiles.

    python benchmarks/predict_detect.py [--model data/models/det --store data/store --tiles data/cover/tiles.csv]
                                        [--shards 2] [--window 1024] [--batch-size 8] [--repeats 3]
                                        [--in-process] [--silent]

Without ``--model`` it builds the default detector (``build_yolo``: stride 8,
base 8, 5 anchors, 6 classes; untrained: the model's speed does not depend on the
weights) with a score threshold of 0.5, its head rescaled (:data:`FIRE`) so that it
finds about as many boxes per tile as the synthetic city holds markings (3 per
tile, calibrated on the store; ``--silent``: the plain untrained head, no box); without ``--store`` it writes
``--shards`` x ``--shards`` shards of textured imagery (zoom 18, 256-px
tiles, 2048-px shards) into a temporary folder and takes all their tiles.

Each measure runs in its own process, bare and predict alternating
``--repeats`` times (the machine is shared: compare the medians):

* ``bare``: the AOI tiles already in memory as one float32 array, timed
  ``model.predict(tiles, batch_size)`` after one warm-up batch: the raw head
  output only, no decoding, no halo, no I/O.
* ``predict``: the whole :func:`navml.detect.predict.detect_with_model` call
  with the model loaded beforehand (as for bare): planning, reading imagery
  with its halo, folding batch norms, compiling, decoding the core cells,
  keep-by-centre, the second stage on the proposals when ``--model`` has one
  (:mod:`navml.detect.refine`), NMS over the AOI, and the detections table.
  With a second stage, bare also times its bare ``predict_on_batch`` on as many
  (random) patches as the first stage proposes above its floor after NMS, counted
  untimed; ``first_stage_*`` keeps the first stage's own time.

``--in-process``: both in ONE process instead, warmed (one call of each first),
alternating ``--repeats`` times: the steady state of a long city-wide run, where
loading TensorFlow, folding and tracing are paid once (a fresh process pays them
for every measure: about 0.3 CPU-s, which is 10-15 % of the 256 tiles here).

Prints tiles/s (wall) and tiles per CPU-second, the ratios of the medians, peak RSS, and the load
average at the end of each measure (the machine is shared: report it next to the ratios).
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
NAMES = ["left", "right", "through", "through_left", "through_right", "left_right"]
#: Head of the untrained detector rescaled so that it fires: objectness and class kernels multiplied by these, then
#: the objectness bias shifted so that about 3 boxes per tile (the synthetic city's markings) score 0.5 or more.
FIRE = (100.0, 3000.0)


def make_store(root: Path, shards: int) -> list[Tile]:
    rng = np.random.default_rng(0)
    store = Store(root, GRID)
    n = GRID.shard_size
    tiles = []
    for dy in range(shards):
        for dx in range(shards):
            s = Tile(SHARD0.x + dx, SHARD0.y + dy, GRID.shard_zoom)
            img = rng.integers(60, 120, (3, n, n), dtype="uint8")
            for _ in range(400):  # bright bars of arrow size
                r, c = rng.integers(0, n - 20, 2)
                h, w = (4, 11) if rng.random() < 0.5 else (11, 4)
                img[:, r : r + h, c : c + w] = 230
            store.write_shard("imagery", s, img)
            tiles += list(tiles_of_shard(s, GRID))
    return tiles


def make_model(folder: Path, store: Path | None = None, tiles: list[Tile] | None = None, per_tile: float = 3.0) -> None:
    """The default detector, seeded; with ``store`` and ``tiles``, its head rescaled so that it fires (:data:`FIRE`)."""
    import keras

    from navml.detect.targets import sigmoid
    from navml.models.io import ModelMeta, save_model
    from navml.models.yolo import build_yolo, receptive_field

    anchors = [[11.0, 4.0], [4.0, 11.0], [10.0, 10.0], [12.0, 5.0], [5.0, 12.0]]
    meta = ModelMeta("detection", NAMES, GRID.zoom, GRID.tile_size, 3, 8, receptive_field(8),
                     extra={"anchors": anchors, "score_threshold": 0.5})
    keras.utils.set_random_seed(0)
    model = build_yolo(3, len(NAMES), len(anchors), 8, 8)
    if store is not None:
        head = model.get_layer("head")
        kernel, bias = head.get_weights()
        per = 5 + len(NAMES)
        obj = [a * per + 4 for a in range(len(anchors))]
        cls = [a * per + 5 + c for a in range(len(anchors)) for c in range(len(NAMES))]
        kernel[..., obj] *= FIRE[0]
        kernel[..., cls] *= FIRE[1]
        head.set_weights([kernel, bias])
        sample = tiles[:: max(1, len(tiles) // 64)]
        x = np.stack([np.moveaxis(Store(store, GRID).read_tile("imagery", t), 0, -1) for t in sample]).astype("float32")
        y = model.predict(x, batch_size=8, verbose=0).reshape(-1, len(anchors), per)
        c = y[..., 5:] - y[..., 5:].max(-1, keepdims=True)
        best = 1.0 / np.exp(c).sum(-1)  # the best class's probability
        lo, hi = -20.0, 20.0  # the objectness shift at which ``per_tile`` boxes per tile score 0.5 or more
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (sigmoid(y[..., 4] + mid) * best >= 0.5).sum() < per_tile * len(sample) else (lo, mid)
        bias[obj] += hi
        head.set_weights([kernel, bias])
    save_model(model, meta, folder)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load(a):
    """``(model, meta, refiner)``: the detector and its second stage (None without one)."""
    from navml.detect.refine import load_refiner
    from navml.models.io import load_model

    model, meta = load_model(a.model)
    return model, meta, load_refiner(a.model, meta)


def run_bare(a, loaded=None) -> dict:
    from navml.geo.tile_index import read_index, tiles_from_index

    store = Store(a.store, GRID)
    tiles = tiles_from_index(read_index(a.tiles))
    x = np.stack([np.moveaxis(store.read_tile("imagery", t), 0, -1) for t in tiles]).astype("float32")
    model, meta, refiner = loaded or _load(a)
    model.predict(x[: a.batch_size], batch_size=a.batch_size, verbose=0)
    t0, c0 = time.perf_counter(), _cpu()
    y = model.predict(x, batch_size=a.batch_size, verbose=0)
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    out = {"tiles": len(tiles), "seconds": dt, "cpu_seconds": cpu, "load": os.getloadavg()[0]}
    if refiner is not None:  # and the second model on as many patches as the first stage proposes (found untimed)
        from navml.detect.nms import nms
        from navml.detect.refine import CHUNK
        from navml.detect.targets import decode

        anchors = np.asarray(meta.extra["anchors"], float).reshape(-1, 2)
        n = 0
        for r in y:
            d = decode(r, anchors, meta.stride, refiner.floor, offset_scale=float(meta.extra.get("offset_scale", 1.0)))
            n += len(nms(d.boxes, d.scores, d.class_ids, float(meta.extra.get("nms_iou", 0.5))))
        patches = np.random.default_rng(0).uniform(0, 255, (max(n, 1), refiner.patch, refiner.patch, x.shape[-1])).astype("float32")
        refiner.model.predict_on_batch(patches[:8])
        t0, c0 = time.perf_counter(), _cpu()
        for s in range(0, len(patches), CHUNK):
            for k in range(refiner.turns):
                refiner.model.predict_on_batch(np.ascontiguousarray(np.rot90(patches[s : s + CHUNK], k, axes=(1, 2))))
        out.update(seconds=dt + time.perf_counter() - t0, cpu_seconds=cpu + _cpu() - c0, proposals=n, first_stage_seconds=dt,
                   first_stage_cpu_seconds=cpu)
    return out


def run_predict(a, loaded=None) -> dict:
    from navml.detect.predict import detect_with_model, detections_table
    from navml.geo.tile_index import read_index, tiles_from_index

    tiles = tiles_from_index(read_index(a.tiles))
    model, meta, refiner = loaded or _load(a)
    t0, c0 = time.perf_counter(), _cpu()
    dets, rep = detect_with_model(Store(a.store, GRID), tiles, model, meta, meta.classes, window=a.window, progress=False,
                                  refiner=refiner)
    detections_table(dets, meta.classes, GRID)
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"tiles": len(tiles), "seconds": dt, "cpu_seconds": cpu, "windows": rep.windows, "halo": rep.halo,
            "overhead": round(rep.overhead, 3), "detections": rep.detections, "load": os.getloadavg()[0]}


def run_in_process(a) -> dict:
    """Bare and predict alternating in this process, both warmed first: the lists of their measures."""
    loaded = _load(a)  # one model for every measure, as one long run has
    run_bare(a, loaded), run_predict(a, loaded)  # warm-up: keras' predict function, the stage's folded and traced runner
    out = {"bare": [], "predict": []}
    for _ in range(a.repeats):
        out["bare"].append(run_bare(a, loaded))
        out["predict"].append(run_predict(a, loaded))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--tiles", type=Path)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="bare and predict alternating in one warmed process")
    ap.add_argument("--silent", action="store_true", help="the plain untrained head: no detections")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.mode:
        res = run_in_process(a) if a.mode == "both" else run_predict(a) if a.mode == "predict" else run_bare(a)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        for r in res.values() if a.mode == "both" else [res]:
            for x in r if a.mode == "both" else [r]:
                x["peak_rss_mb"] = peak
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.store is None:
            a.store = tmp / "store"
            tiles = make_store(a.store, a.shards)
            import pandas as pd

            a.tiles = tmp / "tiles.csv"
            pd.DataFrame({"z": [t.z for t in tiles], "x": [t.x for t in tiles], "y": [t.y for t in tiles],
                          "shard": "", "block": "", "split": "test"}).to_csv(a.tiles, index=False)
        if a.model is None:
            from navml.geo.tile_index import read_index, tiles_from_index

            a.model = tmp / "model"
            make_model(a.model, None if a.silent else a.store, tiles_from_index(read_index(a.tiles)))
        results: dict[str, list[dict]] = {"bare": [], "predict": []}
        base = [sys.executable, __file__, "--model", str(a.model), "--store", str(a.store), "--tiles", str(a.tiles),
                "--window", str(a.window), "--batch-size", str(a.batch_size), "--repeats", str(a.repeats)]

        def show(r: int, mode: str, res: dict) -> None:
            extra = ", ".join(f"{k} {v}" for k, v in res.items() if k in ("windows", "halo", "overhead", "detections"))
            print(f"run {r + 1} {mode:8s} {res['tiles'] / res['seconds']:6.1f} tiles/s  {res['seconds']:6.2f} s  "
                  f"{res['tiles'] / res['cpu_seconds']:6.2f} tiles/cpu-s  peak RSS {res['peak_rss_mb']} MB  {extra}"
                  f"  load {res['load']:.1f}", flush=True)

        if a.in_process:
            out = subprocess.run([*base, "--mode", "both"], capture_output=True, text=True, check=True)
            results = json.loads(out.stdout.strip().splitlines()[-1])
            for r in range(a.repeats):
                for mode in results:
                    show(r, mode, results[mode][r])
        for r in range(0 if a.in_process else a.repeats):
            for mode in results:
                out = subprocess.run([*base, "--mode", mode], capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[mode].append(res)
                show(r, mode, res)
        for kind, per in (("second", "seconds"), ("CPU-second", "cpu_seconds")):
            med = {m: statistics.median(x["tiles"] / x[per] for x in v) for m, v in results.items()}
            print(f"median tiles per {kind}: bare {med['bare']:.2f}, predict {med['predict']:.2f}; "
                  f"predict/bare {med['predict'] / med['bare']:.2f}")
        where = "one warmed process" if a.in_process else "a fresh process each"
        print(f"window {a.window} px, {os.cpu_count()} cpus, {where}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
