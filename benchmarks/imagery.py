"""Throughput and memory of the imagery stage (not a test).

    python benchmarks/imagery.py                 # both cases, each in its own process
    python benchmarks/imagery.py --case geotiff --size 4096 --workers 2
    python benchmarks/imagery.py --case xyz --tiles 256 --workers 8

``geotiff``: a generated ``size`` x ``size`` px, 0.3 m, 3-band UTM (EPSG:32613)
GeoTIFF near Denver is warped into every z18 tile it touches (default grid:
zoom 18, 256 px tiles, zoom-15 shards). ``xyz``: a local HTTP server on
127.0.0.1 serves ``tiles`` pre-encoded 256 px PNG tiles; a cold run fetches
them all, a warm run reads them back from the tile cache. Each case runs in a
fresh process so the peak RSS (ru_maxrss) is that case's own.
"""

from __future__ import annotations

import argparse
import http.server
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_geotiff(path: Path, size: int) -> None:
    """A ``size`` x ``size`` 3-band, 0.3 m UTM GeoTIFF near Denver, written in strips."""
    import numpy as np
    import rasterio
    from pyproj import Transformer
    from rasterio.transform import from_origin

    gsd = 0.3
    e0, n0 = Transformer.from_crs(4326, 32613, always_xy=True).transform(-104.99, 39.74)
    transform = from_origin(e0 - size * gsd / 2, n0 + size * gsd / 2, gsd, gsd)
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32613",
                   transform=transform, tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            rr, cc = np.mgrid[r0 : r0 + h, 0:size]
            block = np.stack([(rr // 7 + cc // 5) % 256, (cc * 3) % 256, rng.integers(0, 256, (h, size))]).astype("uint8")
            dst.write(block, window=rasterio.windows.Window(0, r0, size, h))


def bench_geotiff(size: int, workers: int) -> dict:
    import mercantile
    import rasterio
    from pyproj import Transformer

    from navml.data.imagery import build_imagery
    from navml.geo.grid import Grid, Tile
    from navml.geo.store import Store

    base = rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="navml-bench-"))
    src = tmp / "ortho_utm.tif"
    # Made by another process, so this one's peak RSS is the stage's alone.
    subprocess.run([sys.executable, __file__, "--make-geotiff", str(src), "--size", str(size)], check=True)
    with rasterio.open(src) as ds:
        left, bottom, right, top = ds.bounds
    to_ll = Transformer.from_crs(32613, 4326, always_xy=True)
    lon0, lat0 = to_ll.transform(left, top)
    lon1, lat1 = to_ll.transform(right, bottom)
    tiles = [Tile(t.x, t.y, t.z) for t in mercantile.tiles(lon0, lat1, lon1, lat0, 18)]
    grid = Grid(18, 256, 15)
    before = rss_mb()
    t0 = time.perf_counter()
    counts = build_imagery(Store(tmp / "store", grid), tiles, source="geotiff", geotiff=src, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    mb = src.stat().st_size / 1e6
    shutil.rmtree(tmp)
    return {
        "case": "geotiff",
        "source_px": f"{size}x{size}x3 uint8 UTM 0.3 m ({mb:.0f} MB)",
        "workers": workers,
        "tiles": counts["tiles"],
        "shards": counts["shards"],
        "seconds": round(dt, 2),
        "tiles_per_s": round(counts["tiles"] / dt, 1),
        "rss_after_imports_mb": round(base, 0),
        "rss_before_run_mb": round(before, 0),
        "peak_rss_mb": round(rss_mb(), 0),
    }


def bench_xyz(n_tiles: int, workers: int) -> dict:
    import cv2
    import mercantile
    import numpy as np

    from navml.data.imagery import build_imagery
    from navml.geo.grid import Grid, Tile
    from navml.geo.store import Store

    base = rss_mb()
    side = int(round(n_tiles**0.5))
    t0 = mercantile.tile(-104.99, 39.74, 18)
    tiles = [Tile(t0.x + i, t0.y + j, 18) for j in range(side) for i in range(side)]
    rng = np.random.default_rng(0)
    bodies = {}
    for t in tiles:  # pre-encoded so the server costs little CPU during the run
        img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) // 4 * 4
        bodies[f"/18/{t.x}/{t.y}.png"] = cv2.imencode(".png", img)[1].tobytes()
    hits = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real tile server

        def log_message(self, *a):
            pass

        def do_GET(self):
            body = bodies.get(self.path.split("?")[0])
            hits[0] += 1
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
    tmp = Path(tempfile.mkdtemp(prefix="navml-bench-"))
    grid = Grid(18, 256, 15)
    kw = dict(source="xyz", url=url, workers=workers, cache_dir=tmp / "cache", progress=False)
    before = rss_mb()
    t = time.perf_counter()
    cold = build_imagery(Store(tmp / "store", grid), tiles, **kw)
    dt_cold = time.perf_counter() - t
    t = time.perf_counter()
    warm = build_imagery(Store(tmp / "store2", grid), tiles, **kw)
    dt_warm = time.perf_counter() - t
    httpd.shutdown()
    shutil.rmtree(tmp)
    assert cold["fetched"] == len(tiles) and warm["cached"] == len(tiles) and hits[0] == len(tiles)
    return {
        "case": "xyz",
        "tiles": len(tiles),
        "shards": cold["shards"],
        "workers": workers,
        "cold_seconds": round(dt_cold, 2),
        "cold_tiles_per_s": round(len(tiles) / dt_cold, 1),
        "warm_seconds": round(dt_warm, 2),
        "warm_tiles_per_s": round(len(tiles) / dt_warm, 1),
        "rss_after_imports_mb": round(base, 0),
        "rss_before_run_mb": round(before, 0),
        "peak_rss_mb": round(rss_mb(), 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["geotiff", "xyz"])
    ap.add_argument("--make-geotiff", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=4096, help="GeoTIFF side, pixels")
    ap.add_argument("--tiles", type=int, default=256, help="XYZ tiles (a square number)")
    ap.add_argument("--workers", type=int, default=None, help="threads (default: 2 for geotiff, 8 for xyz)")
    a = ap.parse_args()
    if a.make_geotiff:
        make_geotiff(a.make_geotiff, a.size)
    elif a.case == "geotiff":
        print(json.dumps(bench_geotiff(a.size, a.workers or 2)))
    elif a.case == "xyz":
        print(json.dumps(bench_xyz(a.tiles, a.workers or 8)))
    else:
        for case in ("geotiff", "xyz"):
            cmd = [sys.executable, __file__, "--case", case, "--size", str(a.size), "--tiles", str(a.tiles)]
            if a.workers:
                cmd += ["--workers", str(a.workers)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            for k, v in json.loads(out.strip().splitlines()[-1]).items():
                print(f"{case:8s} {k:22s} {v}")
            print()


if __name__ == "__main__":
    main()
