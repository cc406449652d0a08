"""Benchmark of the viewer (``navml serve``) on the real store: tile latency and live prediction ms per tile.

    python benchmarks/serve.py [--data data] [--tiles 60] [--live 12] [--screenshot docs/img/viewer.png]

Serves ``<data>`` (store, predict, output, models, cover, extract, synth) with
uvicorn on a free 127.0.0.1 port in this process and requests, over HTTP:

* ``--tiles`` distinct tiles of the tile index for each of imagery, masks and
  probs, one at a time (each a fresh window read of its shard GeoTIFF, PNG
  encoded): median and 90th percentile milliseconds, client side;
* ``--live`` distinct tiles of live segmentation (``/predict/<city>/seg/...``):
  the median of the server's ``X-Predict-Ms`` (model call with its halo;
  the first call, which loads and compiles the model, is reported apart).

``--screenshot`` also saves a headless-Chromium picture of the page (needs chromium
and chromedriver). Timings depend on the machine's load: say it with the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--tiles", type=int, default=60)
    ap.add_argument("--live", type=int, default=12)
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()

    import httpx
    import pandas as pd
    import uvicorn

    from navml.cli._common import load_params
    from navml.config import segmentation_classes
    from navml.palette import palette_of
    from navml.viewer import StorePaths, create_app
    from tests.test_viewer_browser import free_port

    p = load_params(args.params)
    d = args.data
    specs = p.class_specs()
    paths = StorePaths(
        store=d / "store", grid=p.grid.grid(), palette=palette_of(specs), classes=tuple(c.name for c in segmentation_classes(specs)),
        predict=d / "predict", output=d / "output", extract=d / "extract", aoi=d / "synth" / "aoi.geojson",
        tiles=d / "cover" / "tiles.csv", models=(d / "models",),
    )
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    app = create_app({"city": paths}, tmp / "bench-neg.geojson", tmp / "bench-rev.geojson")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    index = pd.read_csv(d / "cover" / "tiles.csv")
    tiles = list(zip(index.z, index.x, index.y))
    print(f"serve benchmark: {len(tiles)} tiles in the index; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with httpx.Client(base_url=base, timeout=120) as client:
        for layer in ("imagery", "masks", "probs"):
            ms = []
            for z, x, y in tiles[: args.tiles]:
                t = time.perf_counter()
                r = client.get(f"/tiles/city/{layer}/{z}/{x}/{y}.png")
                ms.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (layer, r.status_code)
            q = statistics.quantiles(ms, n=10)
            print(f"  {layer:8s} {len(ms)} tiles: median {statistics.median(ms):.1f} ms, p90 {q[-1]:.1f} ms")
        # concurrency: the same tiles by 8 clients at once; every answer must be the one served alone
        from concurrent.futures import ThreadPoolExecutor

        want = {t: client.get(f"/tiles/city/imagery/{t[0]}/{t[1]}/{t[2]}.png").content for t in tiles[: args.tiles]}

        def fetch(t):
            with httpx.Client(base_url=base, timeout=120) as c:
                t0 = time.perf_counter()
                r = c.get(f"/tiles/city/imagery/{t[0]}/{t[1]}/{t[2]}.png")
                return (time.perf_counter() - t0) * 1000, r.status_code == 200 and r.content == want[t]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            res = list(ex.map(fetch, tiles[: args.tiles] * 4))
        wall = time.perf_counter() - t0
        print(f"  imagery, 8 clients at once, {len(res)} requests: {len(res) / wall:.0f} tiles/s, median {statistics.median(r[0] for r in res):.1f} ms, "
              f"{sum(ok for _, ok in res)}/{len(res)} identical to the answer served alone")
        live = []
        for i, (z, x, y) in enumerate(tiles[: args.live + 1]):
            r = client.get(f"/predict/city/seg/{z}/{x}/{y}.png")
            assert r.status_code == 200, r.text
            if i == 0:
                print(f"  live seg first tile (load + compile): {float(r.headers['X-Predict-Ms']):.0f} ms")
            else:
                live.append(float(r.headers["X-Predict-Ms"]))
        if live:
            print(f"  live seg {len(live)} tiles: median {statistics.median(live):.0f} ms per tile (model call with halo)")
    if args.screenshot:
        screenshot(base, args.screenshot)
    server.should_exit = True


def screenshot(base: str, out: Path) -> None:
    """A headless-Chromium picture of the page with predictions and probabilities on, as a small PNG."""
    import cv2
    import numpy as np

    from tests.test_viewer_browser import chrome, wait

    driver = chrome(1200, 720)
    try:
        driver.get(base + "/")
        wait(driver, "window.navml && window.navml.ready")
        driver.execute_script("navml.map.setZoom(17)")
        wait(driver, "document.querySelectorAll('img.leaflet-tile-loaded[src*=\"/imagery/\"]').length >= 4")
        driver.execute_script("navml.layers().rasters.probabilities.addTo(navml.map); navml.layers().vectors.polygons.addTo(navml.map).load();")
        time.sleep(4)
        # a new lot selected: its properties and the two review buttons in the panel
        wait(driver, "navml.layers().vectors.polygons.getLayers().length > 0")
        driver.execute_script(
            "const fs = navml.layers().vectors.polygons.toGeoJSON().features.filter(f => f.properties.status === 'new');"
            "const b = navml.map.getBounds(); const f = fs.find(f => b.contains(L.geoJSON(f).getBounds().getCenter())) || fs[0];"
            "navml.select('polygons', f);")
        wait(driver, "document.getElementById('mark-false') !== null")
        img = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), "uint8"), cv2.IMREAD_COLOR)
    finally:
        driver.quit()
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    img = cv2.resize(img, (img.shape[1] * 3 // 4, img.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
    Image.fromarray(img[..., ::-1]).quantize(96).save(out, optimize=True)  # a small PNG for the docs
    print(f"  screenshot: {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
