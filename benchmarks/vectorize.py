"""Benchmark of vectorize + dedupe on a large probability mosaic: megapixels/s and peak RSS.

    python benchmarks/vectorize.py [--shards 5] [--lots-per-shard 120] [--keep DIR]

Writes ``--shards`` x ``--shards`` probability shards (2048 px each: 5 x 5 is
105 megapixels) at 39.7 N: rotated rectangular lots, L-shapes and lots with
courtyards, many of them across shard borders, with soft edges, speckle noise
and weak blobs below the threshold; and an OSM extract holding two thirds of
the lots (shifted by up to 2 m). Then, each in its own process so that peak
RSS is its own:

* ``vectorize``: :func:`navml.segment.vectorize.vectorize_store` over all shards
  (threshold 0.5, open 1.5 m, close 2 m, simplify 1 m, min area 150 m²);
* ``dedupe``: :func:`navml.post.dedupe.dedupe` of its output against the extract.

Prints seconds, megapixels/s, features and peak RSS of each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from navml.config import ClassSpec, PostProcess
from navml.geo.grid import Grid, Tile, shard_window

GRID = Grid(18, 256, 15)
SHARD0 = Tile(6826, 12435, 15)  # Denver, 39.7 N
SPEC = ClassSpec("parking", "segmentation", tags={"amenity": ["parking"]}, osm_tags={"amenity": "parking"},
                 post=PostProcess(threshold=0.5, open_m=1.5, close_m=2.0, simplify_m=1.0, min_area_m2=150))


def make_lots(shards: int, per_shard: int, seed: int = 0):
    """Lots as polygons in global pixel coordinates over the mosaic."""
    import shapely
    from shapely import affinity
    from shapely.geometry import box

    rng = np.random.default_rng(seed)
    n = GRID.shard_size
    x0, y0 = SHARD0.x * n, SHARD0.y * n
    lots = []
    for _ in range(shards * shards * per_shard):
        cx, cy = x0 + rng.uniform(40, shards * n - 40), y0 + rng.uniform(40, shards * n - 40)
        w, h = rng.uniform(30, 160), rng.uniform(25, 110)
        g = box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        kind = rng.random()
        if kind < 0.15:
            g = g.union(box(cx - w / 2, cy, cx - w / 2 + w / 3, cy + h))
        elif kind < 0.25 and w > 60 and h > 50:
            g = g.difference(box(cx - w / 6, cy - h / 6, cx + w / 6, cy + h / 6))
        lots.append(affinity.rotate(g, rng.uniform(0, 90), origin="centroid"))
    tree = shapely.STRtree(lots)
    keep = []
    for i, g in enumerate(lots):  # drop lots overlapping an earlier one
        if all(j >= i or not g.intersects(lots[j]) for j in tree.query(g)):
            keep.append(g)
    return keep


def write_mosaic(root: Path, lots, shards: int, seed: int = 0) -> None:
    import cv2
    from affine import Affine
    from rasterio.features import rasterize
    from shapely import affinity
    from shapely.geometry import box

    from navml.geo.store import Store

    store = Store(root, GRID)
    rng = np.random.default_rng(seed)
    n = GRID.shard_size
    for dy in range(shards):
        for dx in range(shards):
            s = Tile(SHARD0.x + dx, SHARD0.y + dy, GRID.shard_zoom)
            w = shard_window(s, GRID)
            frame = box(w.col - 8, w.row - 8, w.col + n + 8, w.row + n + 8)
            shapes = [(affinity.translate(g, -w.col, -w.row), 1) for g in lots if g.intersects(frame)]
            mask = rasterize(shapes, out_shape=(n, n), transform=Affine.identity(), dtype="uint8") if shapes else np.zeros((n, n), "uint8")
            p = mask.astype("float32") * rng.uniform(0.75, 0.98)
            p = cv2.GaussianBlur(p, (0, 0), 1.2)
            blobs = cv2.GaussianBlur((rng.random((n // 16, n // 16)) < 0.05).astype("float32"), (0, 0), 1.0)
            p += 0.45 * cv2.resize(blobs, (n, n), interpolation=cv2.INTER_LINEAR)
            p += rng.normal(0, 0.06, (n, n)).astype("float32")
            p[rng.random((n, n)) < 0.002] = 0.95  # speckles
            store.write_shard("probs", s, np.clip(np.rint(p * 255), 0, 255).astype("uint8")[None])


def write_extract(path: Path, lots, seed: int = 0) -> None:
    from shapely import affinity

    from navml.geo.features import to_lonlat, write_features
    from navml.geo.grid import metres_to_pixels

    rng = np.random.default_rng(seed + 1)
    px = metres_to_pixels(2.0, 39.7, GRID.zoom)
    feats = []
    for i, g in enumerate(lots):
        if rng.random() < 2 / 3:
            g = affinity.translate(g, rng.uniform(-px, px) / math.sqrt(2), rng.uniform(-px, px) / math.sqrt(2))
            props = {"osm_id": i + 1, "osm_type": "way", "tags": {"amenity": "parking"}, "label": True}
            feats.append({"geometry": to_lonlat(g, GRID.zoom), "properties": props})
    write_features(feats, path)


def run(mode: str, work: Path) -> dict:
    from navml.geo.store import Store

    t0 = time.perf_counter()
    if mode == "vectorize":
        from navml.segment.vectorize import vectorize_store

        counts = vectorize_store(Store(work / "predict", GRID), "probs", [SPEC], work / "output" / "predictions.geojson", progress=False)
        out = {"features": counts["parking"]}
    else:
        from navml.post.dedupe import dedupe

        s = dedupe(work / "output" / "predictions.geojson", work / "extract", [SPEC], work / "output", match="share", min_overlap=0.5)
        out = {"features": s["new"], "matched": s["matched_existing"]}
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--lots-per-shard", type=int, default=120)
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(run(a.mode, a.work)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = a.keep or Path(tmp)
        t0 = time.perf_counter()
        lots = make_lots(a.shards, a.lots_per_shard)
        write_mosaic(work / "predict", lots, a.shards)
        write_extract(work / "extract" / "parking.geojson", lots)
        mpx = a.shards**2 * GRID.shard_size**2 / 1e6
        print(f"mosaic: {a.shards}x{a.shards} shards, {mpx:.1f} megapixels, {len(lots)} lots; written in {time.perf_counter() - t0:.0f} s", flush=True)
        for mode in ("vectorize", "dedupe"):
            res = json.loads(subprocess.run([sys.executable, __file__, "--mode", mode, "--work", str(work)],
                                            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            print(f"{mode:9s} {res['seconds']:6.1f} s  {mpx / res['seconds']:5.2f} megapixels/s  "
                  f"{res['features']} features  peak RSS {res['peak_rss_mb']} MB  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
