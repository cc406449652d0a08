"""The imagery stage: GeoTIFF in any CRS and XYZ/TMS tiles into the shard store.

GeoTIFFs are built here with a known pattern (east/north gradients and a
bright square at a known lon/lat); the XYZ tests run a real HTTP server on
127.0.0.1 that draws tiles on the fly and injects faults tile by tile.
"""

from __future__ import annotations

import http.server
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cv2
import mercantile
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from typer.testing import CliRunner

from navml.data.imagery import build_imagery
from navml.data.imagery.xyz import TileUrl, _retry_after, decode_tile
from navml.errors import ConfigError, FetchError, InputError
from navml.geo.grid import Grid, Tile, Window, lonlat_to_pixel, pixel_to_lonlat, shard_window, tile_window
from navml.geo.store import Store

LON, LAT = -104.99, 39.74  # Denver, UTM zone 13N
UTM = 32613
TOKEN = "s3cr3t-t0ken-value"


# --------------------------------------------------------------------------- GeoTIFF


def shard_corner(grid: Grid) -> tuple[float, float]:
    """Lon/lat of the NW corner of the shard holding (LON, LAT): tiles around it span 4 shards."""
    ul = mercantile.ul(mercantile.tile(LON, LAT, grid.shard_zoom))
    return ul.lng, ul.lat


def make_geotiff(path: Path, crs: int | None, center: tuple[float, float], square: tuple[float, float],
                 size_m: float = 360.0, gsd_m: float = 0.3, square_m: float = 12.0) -> dict:
    """A 3-band GeoTIFF around ``center``: R grows east, G grows south (0..255 across),
    B is 255 in a ``square_m`` square centred on ``square`` (lon, lat), else 0.
    ``crs`` 32613 (UTM, metres) or 4326 (degrees); ``None`` writes no CRS."""
    work_crs = crs or UTM
    if work_crs == 4326:
        kx = 111320.0 * np.cos(np.radians(center[1]))
        ky = 110540.0
        cx, cy = center
        sx, sy = square
    else:
        kx = ky = 1.0
        fwd = Transformer.from_crs(4326, work_crs, always_xy=True)
        cx, cy = fwd.transform(*center)
        sx, sy = fwd.transform(*square)
    n = int(round(size_m / gsd_m))
    dx, dy = gsd_m / kx, gsd_m / ky
    transform = from_origin(cx - n * dx / 2, cy + n * dy / 2, dx, dy)
    col = np.arange(n)
    data = np.zeros((3, n, n), dtype="uint8")
    data[0] = np.round(255 * (col + 0.5) / n).astype("uint8")[None, :]
    data[1] = np.round(255 * (col + 0.5) / n).astype("uint8")[:, None]
    sc, sr = ~transform @ (sx, sy)
    hx, hy = square_m / 2 / gsd_m, square_m / 2 / gsd_m
    data[2, int(round(sr - hy)) : int(round(sr + hy)), int(round(sc - hx)) : int(round(sc + hx))] = 255
    # The square's true centre after rounding to source pixels:
    c_mid = (int(round(sc - hx)) + int(round(sc + hx))) / 2
    r_mid = (int(round(sr - hy)) + int(round(sr + hy))) / 2
    mx, my = transform @ (c_mid, r_mid)
    if work_crs != 4326:
        mx, my = Transformer.from_crs(work_crs, 4326, always_xy=True).transform(mx, my)
    profile = dict(driver="GTiff", width=n, height=n, count=3, dtype="uint8", transform=transform, tiled=True,
                   blockxsize=256, blockysize=256)
    if crs is not None:
        profile["crs"] = f"EPSG:{crs}"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return {"square": (mx, my), "transform": transform, "crs": work_crs, "n": n, "square_m": square_m}


def tiles_around(lon: float, lat: float, half_deg: float, zoom: int = 18) -> list[Tile]:
    return [Tile(t.x, t.y, t.z) for t in mercantile.tiles(lon - half_deg, lat - half_deg, lon + half_deg, lat + half_deg, zoom)]


def weighted_centroid(img: np.ndarray, win: Window) -> tuple[float, float]:
    """Intensity-weighted centre of ``img`` in global pixel coordinates (pixel centres at +0.5)."""
    w = img.astype("float64")
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return (w * xx).sum() / w.sum() + win.col + 0.5, (w * yy).sum() / w.sum() + win.row + 0.5


@pytest.mark.parametrize(
    "crs, gsd_m",
    [(UTM, 0.3), (4326, 0.3), (UTM, 0.1)],  # 0.1 m: source 4.6x finer than z18, read decimated
    ids=["utm", "epsg4326", "utm-fine"],
)
def test_geotiff_pixels_land_where_expected(tmp_path, small_grid, crs, gsd_m):
    lon0, lat0 = shard_corner(small_grid)
    square = (lon0 + 0.00006, lat0 - 0.00004)  # straddles the shard corner (a few metres off)
    info = make_geotiff(tmp_path / "src.tif", crs, (lon0, lat0), square, size_m=480.0, gsd_m=gsd_m)
    tiles = tiles_around(lon0, lat0, 0.004)
    home = tiles_around(*square, 0.0)[0]  # the tile holding the square's centre (SE of the shard corner)
    # Leave out a tile that the source covers fully (117..234 m from the corner): it must stay 0.
    skip = Tile(home.x + 1, home.y + 1, 18)
    listed = [t for t in tiles if t != skip]
    store = Store(tmp_path / "store", small_grid)

    counts = build_imagery(store, listed, source="geotiff", geotiff=tmp_path / "src.tif", progress=False)

    assert counts["tiles"] == len(listed)
    assert counts["shards"] == 4 == len(store.shards("imagery"))
    assert 0 < counts["tiles_in_footprint"] < len(listed)
    assert counts["tiles_empty"] == len(listed) - counts["tiles_in_footprint"]
    assert store.count("imagery") == 3
    # 1. The bright square: its weighted centre where lonlat_to_pixel puts it (well within 1 px).
    px, py = lonlat_to_pixel(*info["square"], small_grid.zoom)
    win = Window(int(px) - 40, int(py) - 40, 80, 80)
    blue = store.read_window("imagery", win)[2]
    cx, cy = weighted_centroid(blue, win)
    assert abs(cx - px) < 0.25 and abs(cy - py) < 0.25, (cx - px, cy - py)
    # Its area in pixels matches 12 m x 12 m at the ground resolution (within 10 %).
    res = 2 * 20037508.342789244 / (256 * 2**18) * np.cos(np.radians(info["square"][1]))
    assert blue.sum() / 255 == pytest.approx((info["square_m"] / res) ** 2, rel=0.1)
    # 2. The gradients: every pixel well inside the footprint has the value of its source position.
    t_in = Tile(home.x - 1, home.y, 18)
    img = store.read_tile("imagery", t_in).astype("float64")
    w = tile_window(t_in)
    rows, cols = np.mgrid[0:256:15, 0:256:15]
    lon, lat = pixel_to_lonlat(w.col + cols + 0.5, w.row + rows + 0.5, 18)
    if info["crs"] == 4326:
        x, y = lon, lat
    else:
        x, y = Transformer.from_crs(4326, info["crs"], always_xy=True).transform(lon, lat)
    sc, sr = ~info["transform"] @ (x, y)
    n = info["n"]
    assert np.abs(img[0][rows, cols] - 255 * sc / n).max() < 1.5
    assert np.abs(img[1][rows, cols] - 255 * sr / n).max() < 1.5
    # 3. The tile left out of the list stays 0 although the source covers it.
    assert not store.read_tile("imagery", skip).any()
    assert store.read_tile("imagery", Tile(skip.x, skip.y + 1, 18)).any()  # its neighbour is filled
    # 4. Listed tiles outside the footprint are 0; the shards hold only what was listed.
    far = min(listed, key=lambda t: (t.x, t.y))
    assert not store.read_tile("imagery", far).any()


def test_geotiff_is_deterministic(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    make_geotiff(tmp_path / "src.tif", UTM, (lon0, lat0), (lon0, lat0))
    tiles = tiles_around(lon0, lat0, 0.001)
    for name in ("a", "b"):
        build_imagery(Store(tmp_path / name, small_grid), tiles, source="geotiff", geotiff=tmp_path / "src.tif",
                      resampling="cubic", progress=False, workers=2)
    files = sorted(p.name for p in (tmp_path / "a" / "imagery").glob("*.tif"))
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "a" / "imagery" / f).read_bytes() == (tmp_path / "b" / "imagery" / f).read_bytes()
    assert not list(tmp_path.rglob("*.part"))


def test_geotiff_without_crs_is_refused_before_writing(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    make_geotiff(tmp_path / "nocrs.tif", None, (lon0, lat0), (lon0, lat0))
    store = Store(tmp_path / "store", small_grid)
    with pytest.raises(InputError, match=r"nocrs\.tif: GeoTIFF has no CRS; its coordinates look projected .* gdal_edit\.py -a_srs EPSG:32613 nocrs\.tif"):
        build_imagery(store, tiles_around(lon0, lat0, 0.001), source="geotiff", geotiff=tmp_path / "nocrs.tif", progress=False)
    assert not (tmp_path / "store").exists()
    # degrees without a CRS: the advice is WGS84
    with rasterio.open(tmp_path / "deg.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       transform=from_origin(lon0, lat0, 1e-5, 1e-5)) as dst:
        dst.write(np.zeros((3, 8, 8), "uint8"))
    with pytest.raises(InputError, match=r"deg\.tif: GeoTIFF has no CRS; its coordinates look like degrees: gdal_edit\.py -a_srs EPSG:4326 deg\.tif"):
        build_imagery(store, tiles_around(lon0, lat0, 0.001), source="geotiff", geotiff=tmp_path / "deg.tif", progress=False)
    assert not (tmp_path / "store").exists()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_16_bit_and_unplaced_geotiffs_get_concrete_advice(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    store = Store(tmp_path / "store", small_grid)
    data = (np.arange(3 * 64 * 64).reshape(3, 64, 64) % 4001).astype("uint16")  # values 0..4000
    with rasterio.open(tmp_path / "u16.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16",
                       crs="EPSG:4326", transform=from_origin(lon0, lat0, 1e-5, 1e-5)) as dst:
        dst.write(data)
    with pytest.raises(InputError) as err:
        build_imagery(store, tiles_around(lon0, lat0, 0.001), source="geotiff", geotiff=tmp_path / "u16.tif", progress=False)
    msg = str(err.value)
    assert "pixels are uint16, imagery is 8-bit; set imagery.stretch: percentile" in msg and "gdal" not in msg
    for b in range(3):  # the numbers the stretch would use, per band
        lo, hi = np.percentile(data[b], [2, 98])
        assert f"band {b + 1}: {lo:g}..{hi:g}" in msg
    with rasterio.open(tmp_path / "raw.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), "uint8"))
    with pytest.raises(InputError, match=r"raw\.tif: GeoTIFF has no geotransform .* world file \(raw\.tfw\)"):
        build_imagery(store, tiles_around(lon0, lat0, 0.001), source="geotiff", geotiff=tmp_path / "raw.tif", progress=False)
    assert not (tmp_path / "store").exists()


def test_geotiff_aoi_outside_footprint(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    make_geotiff(tmp_path / "src.tif", UTM, (lon0, lat0), (lon0, lat0))
    away = tiles_around(lon0 + 0.05, lat0, 0.001)  # ~4 km east
    with pytest.raises(InputError) as exc:
        build_imagery(Store(tmp_path / "store", small_grid), away, source="geotiff", geotiff=tmp_path / "src.tif", progress=False)
    msg = str(exc.value)
    assert "src.tif" in msg and "does not overlap" in msg and "\n" not in msg
    assert f"lon {lon0 - 0.003:.2f}"[:10] in msg  # the footprint bounds
    assert f"{lon0 + 0.05 - 0.001:.3f}" in msg  # the tile list bounds
    assert not (tmp_path / "store").exists()


def test_geotiff_bad_inputs(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    tiles = tiles_around(lon0, lat0, 0.001)
    store = Store(tmp_path / "store", small_grid)
    with pytest.raises(InputError, match="missing.tif: GeoTIFF not found"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "missing.tif", progress=False)
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(InputError, match="junk.tif: cannot read as GeoTIFF"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "junk.tif", progress=False)
    with rasterio.open(tmp_path / "u16.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint16",
                       crs="EPSG:32613", transform=from_origin(500000, 4400000, 1, 1)) as dst:
        dst.write(np.ones((3, 8, 8), "uint16"))
    with pytest.raises(InputError, match="u16.tif: pixels are uint16.*set imagery.stretch: percentile"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "u16.tif", progress=False)
    make_geotiff(tmp_path / "rgb.tif", UTM, (lon0, lat0), (lon0, lat0))
    with pytest.raises(InputError, match="has 3 band"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "rgb.tif", bands=4, progress=False)
    with pytest.raises(ConfigError, match="imagery.resampling"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "rgb.tif", resampling="bicubic", progress=False)
    with pytest.raises(InputError, match="zoom 17"):
        build_imagery(store, [Tile(1, 1, 17)], source="geotiff", geotiff=tmp_path / "rgb.tif", progress=False)
    assert not (tmp_path / "store").exists()


def test_geotiff_single_band_when_asked(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    make_geotiff(tmp_path / "src.tif", UTM, (lon0, lat0), (lon0, lat0))
    store = Store(tmp_path / "store", small_grid)
    build_imagery(store, tiles_around(lon0, lat0, 0.0005), source="geotiff", geotiff=tmp_path / "src.tif", bands=1, progress=False)
    assert store.count("imagery") == 1


def write_tiles_csv(path: Path, tiles: list[Tile], grid: Grid) -> None:
    from navml.geo.grid import shard_of, tile_key

    rows = ["z,x,y,shard,block,split"] + [f"{t.z},{t.x},{t.y},{tile_key(shard_of(t, grid))},0,train" for t in tiles]
    path.write_text("\n".join(rows) + "\n")


def test_cli_geotiff_and_error_exit(tmp_path, small_grid):
    import typer

    from navml.cli.imagery import command

    lon0, lat0 = shard_corner(small_grid)
    make_geotiff(tmp_path / "src.tif", UTM, (lon0, lat0), (lon0, lat0))
    make_geotiff(tmp_path / "nocrs.tif", None, (lon0, lat0), (lon0, lat0))
    tiles = tiles_around(lon0, lat0, 0.0007)
    write_tiles_csv(tmp_path / "tiles.csv", tiles, small_grid)
    grid_yaml = "grid: {zoom: 18, tile_size: 256, shard_zoom: 16}\n"
    (tmp_path / "params.yaml").write_text(grid_yaml + f"imagery: {{source: geotiff, geotiff: {tmp_path / 'src.tif'}, workers: 2}}\n")
    app = typer.Typer()
    app.command()(command)
    runner = CliRunner()
    args = ["--params", str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "tiles.csv"), "--store", str(tmp_path / "store")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"{len(tiles)} tiles in 4 shards" in res.output
    assert len(list((tmp_path / "store" / "imagery").glob("*.tif"))) == 4
    (tmp_path / "params.yaml").write_text(grid_yaml + f"imagery: {{source: geotiff, geotiff: {tmp_path / 'nocrs.tif'}}}\n")
    res = runner.invoke(app, args[:4] + ["--store", str(tmp_path / "store2")])
    assert res.exit_code == 1
    assert "navml: error:" in res.output and "has no CRS" in res.output
    assert not (tmp_path / "store2").exists()
    (tmp_path / "params.yaml").write_text(grid_yaml + "imagery: {source: geotiff, geotif: x.tif}\n")
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "unknown key 'imagery.geotif'" in res.output


# --------------------------------------------------------------------------- XYZ


def tile_rgb(z: int, x: int, y: int, size: int = 256) -> np.ndarray:
    """The tile the test server draws, RGB (3, size, size): R, G encode x, y; B the pixel position."""
    rr, cc = np.mgrid[0:size, 0:size]
    out = np.empty((3, size, size), dtype="uint8")
    out[0] = (x * 37 + cc) % 256
    out[1] = (y * 53 + rr) % 256
    out[2] = (rr * 3 + cc * 5 + z) % 256
    return out


class TileServer:
    """A real HTTP tile server on 127.0.0.1 with per-tile fault injection.

    ``faults[(z, x, y)]`` is a list of actions used one per request (then normal
    service): ``"500"``, ``"429"`` (Retry-After: 0), ``"slow"`` (answers after
    ``slow_s``, or when ``release`` is set: the fixture sets it at teardown), ``"garbage"`` (200 with bytes that are not an image),
    ``"interrupt"`` (sends SIGINT to this process, like Ctrl-C, then serves).
    ``missing`` tiles always get 404, ``broken`` tiles always 503, ``truncated``
    tiles always a PNG cut to a third of its bytes. With
    ``token`` set, a request without ``?access_token=<token>`` gets 403.
    Paths: ``/{z}/{x}/{y}.png`` and ``/tms/{z}/{x}/{y}.png`` (y counted from the south).
    """

    def __init__(self, token: str | None = None, slow_s: float = 0.6):
        self.hits: Counter = Counter()
        self.faults: dict[tuple, list[str]] = {}
        self.missing: set[tuple] = set()
        self.broken: set[tuple] = set()
        self.truncated: set[tuple] = set()
        self.token = token
        self.slow_s = slow_s
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, h, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h) -> None:
        parts = urlsplit(h.path)
        segs = parts.path.strip("/").split("/")
        tms = segs[0] == "tms"
        if tms:
            segs = segs[1:]
        z, x, y = int(segs[0]), int(segs[1]), int(segs[2].split(".")[0])
        if tms:
            y = (1 << z) - 1 - y
        key = (z, x, y)
        with self.lock:
            self.hits[key] += 1
            action = self.faults[key].pop(0) if self.faults.get(key) else None
        if self.token is not None and parse_qs(parts.query).get("access_token") != [self.token]:
            return self.send(h, 403, b"forbidden")
        if key in self.missing:
            return self.send(h, 404, b"no such tile")
        if key in self.broken:
            return self.send(h, 503, b"down")
        if action == "500":
            return self.send(h, 500, b"oops")
        if action == "429":
            return self.send(h, 429, b"slow down", {"Retry-After": "0"})
        if action == "garbage":
            return self.send(h, 200, b"\x89PNG garbage, not an image", {"Content-Type": "image/png"})
        if action == "slow":
            self.release.wait(self.slow_s)
        if action == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        ok, png = cv2.imencode(".png", tile_rgb(z, x, y).transpose(1, 2, 0)[:, :, ::-1])
        body = png.tobytes()
        if key in self.truncated:
            body = body[: len(body) // 3]
        self.send(h, 200, body, {"Content-Type": "image/png"})


@pytest.fixture
def server():
    srv = TileServer()
    srv.thread.start()
    yield srv
    srv.release.set()  # requests still hanging in a "slow" fault answer now
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


FAST = dict(timeout_s=0.25, backoff_s=0.01, progress=False)


def xyz_tiles(small_grid: Grid, nx: int = 3, ny: int = 2) -> list[Tile]:
    """``nx`` x ``ny`` z18 tiles straddling a shard border (x), sorted."""
    x0 = mercantile.tile(LON, LAT, 18).x // 4 * 4 + 2  # tiles x0, x0+1 in one shard, x0+2 in the next
    y0 = mercantile.tile(LON, LAT, 18).y // 4 * 4
    return [Tile(x, y, 18) for y in range(y0, y0 + ny) for x in range(x0, x0 + nx)]


def check_store(store: Store, tiles: list[Tile]) -> None:
    for t in tiles:
        np.testing.assert_array_equal(store.read_tile("imagery", t), tile_rgb(t.z, t.x, t.y))


def test_xyz_retries_then_succeeds(tmp_path, small_grid, server, monkeypatch, caplog):
    import logging

    server.token = TOKEN
    monkeypatch.setenv("NAVML_TEST_TOKEN", TOKEN)
    tiles = xyz_tiles(small_grid)
    a, b, c, d = ((t.z, t.x, t.y) for t in tiles[:4])
    server.faults = {a: ["500", "500"], b: ["429"], c: ["slow"], d: ["garbage"]}
    store = Store(tmp_path / "store", small_grid)
    url = server.base + "/{z}/{x}/{y}.png?access_token={token}"
    caplog.set_level(logging.DEBUG, logger="urllib3")

    counts = build_imagery(store, tiles, source="xyz", url=url, token_env="NAVML_TEST_TOKEN", workers=3, retries=3,
                           cache_dir=tmp_path / "cache", **FAST)

    assert counts["fetched"] == 6 and counts["cached"] == 0
    assert counts["retries"] == 5 and counts["requests"] == 11
    assert server.hits[a] == 3 and server.hits[b] == 2 and server.hits[c] == 2 and server.hits[d] == 2
    assert sum(server.hits.values()) == 11
    assert counts["shards"] == 2 == len(store.shards("imagery"))
    check_store(store, tiles)
    # Tiles of the shards not in the list stay 0.
    assert not store.read_tile("imagery", Tile(tiles[0].x - 1, tiles[0].y, 18)).any()
    assert not store.read_tile("imagery", Tile(tiles[0].x, tiles[0].y + 2, 18)).any()
    # The cache holds one PNG per tile, under the template's hash; no temp files anywhere.
    cached = sorted((tmp_path / "cache").rglob("*.png"))
    assert len(cached) == 6 and all(p.parent.parent.parent.name == TileUrl(url, TOKEN, "x").key for p in cached)
    assert not list(tmp_path.rglob("*.part"))
    # The token never shows in logs (urllib3 logs request lines at DEBUG) or in the shards.
    assert "access_token=***" in caplog.text and TOKEN not in caplog.text
    assert all(TOKEN.encode() not in p.read_bytes() for p in (tmp_path / "store").rglob("*.tif"))

    # Same source -> byte-identical shards; a second run takes every tile from the cache.
    store2 = Store(tmp_path / "store2", small_grid)
    counts2 = build_imagery(store2, tiles, source="xyz", url=url, token_env="NAVML_TEST_TOKEN", cache_dir=tmp_path / "cache", **FAST)
    assert counts2["cached"] == 6 and counts2["fetched"] == 0 and sum(server.hits.values()) == 11
    for s in store.shards("imagery"):
        assert store.path("imagery", s).read_bytes() == store2.path("imagery", s).read_bytes()


def test_xyz_404_is_a_clear_error_not_retried(tmp_path, small_grid, server, monkeypatch):
    server.token = TOKEN
    monkeypatch.setenv("NAVML_TEST_TOKEN", TOKEN)
    tiles = xyz_tiles(small_grid, 2, 1)
    gone = tiles[1]
    server.missing.add((gone.z, gone.x, gone.y))
    url = server.base + "/{z}/{x}/{y}.png?access_token={token}"
    with pytest.raises(FetchError) as exc:
        build_imagery(Store(tmp_path / "store", small_grid), tiles, source="xyz", url=url, token_env="NAVML_TEST_TOKEN",
                      retries=4, cache_dir=tmp_path / "cache", **FAST)
    msg = str(exc.value)
    assert f"{server.base}/18/{gone.x}/{gone.y}.png?access_token=***" in msg
    assert "missing on the server (HTTP 404)" in msg and TOKEN not in msg
    assert server.hits[(gone.z, gone.x, gone.y)] == 1


def test_xyz_gives_up_after_retries(tmp_path, small_grid, server):
    tiles = xyz_tiles(small_grid, 1, 1)
    t = tiles[0]
    server.broken.add((t.z, t.x, t.y))
    with pytest.raises(FetchError, match=rf"/18/{t.x}/{t.y}\.png: gave up after 3 attempt\(s\), last: HTTP 503"):
        build_imagery(Store(tmp_path / "store", small_grid), tiles, source="xyz", url=server.base + "/{z}/{x}/{y}.png",
                      retries=2, cache_dir=tmp_path / "cache", **FAST)
    assert server.hits[(t.z, t.x, t.y)] == 3
    assert not (tmp_path / "store" / "imagery").exists()


def test_xyz_token_errors(tmp_path, small_grid, server, monkeypatch):
    server.token = TOKEN
    tiles = xyz_tiles(small_grid, 1, 1)
    store = Store(tmp_path / "store", small_grid)
    monkeypatch.delenv("NAVML_TEST_TOKEN", raising=False)
    url = server.base + "/{z}/{x}/{y}.png?access_token={token}"
    # Variable not set: refused before any request.
    with pytest.raises(ConfigError, match="environment variable NAVML_TEST_TOKEN is not set"):
        build_imagery(store, tiles, source="xyz", url=url, token_env="NAVML_TEST_TOKEN", cache_dir=tmp_path / "cache", **FAST)
    assert sum(server.hits.values()) == 0
    # Wrong token: 403, not retried, token hidden.
    monkeypatch.setenv("NAVML_TEST_TOKEN", "wrong-token-123")
    with pytest.raises(FetchError, match=r"access_token=\*\*\*: HTTP 403 \(not authorised\); check the token in \$NAVML_TEST_TOKEN") as exc:
        build_imagery(store, tiles, source="xyz", url=url, token_env="NAVML_TEST_TOKEN", cache_dir=tmp_path / "cache", **FAST)
    assert "wrong-token-123" not in str(exc.value) and sum(server.hits.values()) == 1
    # No token in the template at all.
    with pytest.raises(FetchError, match="HTTP 403.*wants a token"):
        build_imagery(store, tiles, source="xyz", url=server.base + "/{z}/{x}/{y}.png", cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \{s\}"):
        build_imagery(store, tiles, source="xyz", url="https://{s}.host/{z}/{x}/{y}.png", **FAST)
    with pytest.raises(ConfigError, match="needs"):
        build_imagery(store, tiles, source="xyz", url="https://host/{z}/{x}.png", **FAST)
    assert not (tmp_path / "store").exists()


def test_xyz_resume_after_failure_fetches_only_missing(tmp_path, small_grid, server):
    tiles = xyz_tiles(small_grid, 3, 2)
    last = tiles[-1]  # in the second shard
    server.broken.add((last.z, last.x, last.y))
    store = Store(tmp_path / "store", small_grid)
    url = server.base + "/{z}/{x}/{y}.png"
    kw = dict(source="xyz", url=url, retries=1, workers=2, cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(FetchError):
        build_imagery(store, tiles, **kw)
    # No layer is written unless every shard is (the first shard's tiles are cached all the same).
    assert store.shards("imagery") == [] and not any((tmp_path / "store").glob(".imagery*"))
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 5
    assert not list(tmp_path.rglob("*.part"))
    server.broken.clear()
    server.hits.clear()
    counts = build_imagery(store, tiles, **kw)
    assert dict(server.hits) == {(last.z, last.x, last.y): 1}
    assert counts["fetched"] == 1 and counts["cached"] == 5
    check_store(store, tiles)


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt for the test's duration, however pytest was started
    (a script that starts it in the background leaves SIGINT ignored); restored afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_xyz_resume_after_ctrl_c(tmp_path, small_grid, server, ctrl_c):
    tiles = xyz_tiles(small_grid, 4, 2)
    stop_at = tiles[2]
    server.faults[(stop_at.z, stop_at.x, stop_at.y)] = ["interrupt"]
    store = Store(tmp_path / "store", small_grid)
    kw = dict(source="xyz", url=server.base + "/{z}/{x}/{y}.png", workers=1, cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(KeyboardInterrupt):
        build_imagery(store, tiles, **kw)
    got = {tuple(int(v) for v in (p.parent.parent.name, p.parent.name, p.stem)) for p in (tmp_path / "cache").rglob("*.png")}
    assert 0 < len(got) < len(tiles)
    assert not list(tmp_path.rglob("*.part"))
    assert store.shards("imagery") == [] and not list(tmp_path.rglob(".imagery*"))  # no half-written layer
    server.hits.clear()
    counts = build_imagery(store, tiles, **kw)
    assert set(server.hits) == {(t.z, t.x, t.y) for t in tiles} - got
    assert all(v == 1 for v in server.hits.values())
    assert counts["cached"] == len(got) and counts["fetched"] == len(tiles) - len(got)
    check_store(store, tiles)


def test_xyz_corrupt_cache_is_refetched_and_tms(tmp_path, small_grid, server):
    tiles = xyz_tiles(small_grid, 2, 2)
    store = Store(tmp_path / "store", small_grid)
    kw = dict(source="xyz", url=server.base + "/tms/{z}/{x}/{-y}.png", cache_dir=tmp_path / "cache", **FAST)
    build_imagery(store, tiles, **kw)
    check_store(store, tiles)  # TMS rows flipped back to XYZ
    victim = tiles[1]
    path = next((tmp_path / "cache").rglob(f"{victim.z}/{victim.x}/{victim.y}.png"))
    path.write_bytes(path.read_bytes()[:100])  # truncated PNG
    server.hits.clear()
    counts = build_imagery(store, tiles, **kw)
    assert dict(server.hits) == {(victim.z, victim.x, victim.y): 1}
    assert counts["cache_corrupt"] == 1 and counts["cached"] == 3
    check_store(store, tiles)
    # {tms_y} is the same as {-y}
    assert TileUrl("http://h/{z}/{x}/{tms_y}.png").url(Tile(1, 0, 2)) == "http://h/2/1/3.png"


def test_decode_tile_variants():
    rgb = tile_rgb(18, 5, 7)
    bgr = rgb.transpose(1, 2, 0)[:, :, ::-1]
    png = cv2.imencode(".png", bgr)[1].tobytes()
    np.testing.assert_array_equal(decode_tile(png, 256), rgb)
    bgra = np.dstack([bgr, np.where(np.arange(256)[None, :] < 128, 0, 255).repeat(256, 0).astype("uint8")])
    out = decode_tile(cv2.imencode(".png", bgra)[1].tobytes(), 256)
    assert not out[:, :, :128].any() and np.array_equal(out[:, :, 128:], rgb[:, :, 128:])
    gray = decode_tile(cv2.imencode(".png", bgr[:, :, 0])[1].tobytes(), 256)
    assert gray.shape == (3, 256, 256) and np.array_equal(gray[0], gray[2])
    big = decode_tile(cv2.imencode(".png", np.full((512, 512, 3), 77, "uint8"))[1].tobytes(), 256)
    assert big.shape == (3, 256, 256) and (big == 77).all()
    jpg = decode_tile(cv2.imencode(".jpg", bgr)[1].tobytes(), 256)
    assert jpg.shape == (3, 256, 256)
    for cut in (png, cv2.imencode(".jpg", bgr)[1].tobytes()):  # truncated bodies are not images, silently
        assert decode_tile(cut[: len(cut) // 2], 256) is None and decode_tile(cut[:-2], 256) is None
    assert decode_tile(b"<html>rate limited</html>", 256) is None
    assert decode_tile(b"", 256) is None
    assert _retry_after("3") == 3.0 and _retry_after(None) is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# --------------------------------------------------------------------------- GeoTIFFs as users have them


def write_tif(path: Path, data: np.ndarray, crs: int, transform, nodata=None) -> None:
    """A tiled GeoTIFF of ``data`` (bands, rows, cols) in EPSG ``crs``."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=str(data.dtype),
                   crs=f"EPSG:{crs}", transform=transform, tiled=True, blockxsize=256, blockysize=256, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def utm_frame(center: tuple[float, float], size_m: float, gsd_m: float):
    """Transform and pixel count of a square UTM 13N raster of ``size_m`` centred on ``center`` (lon, lat)."""
    cx, cy = Transformer.from_crs(4326, UTM, always_xy=True).transform(*center)
    n = int(round(size_m / gsd_m))
    return from_origin(cx - n * gsd_m / 2, cy + n * gsd_m / 2, gsd_m, gsd_m), n


def source_position(tile: Tile, transform, step: int = 15):
    """Sample pixels of ``tile`` (rows, cols in the tile) and their source (col, row) in the UTM raster."""
    w = tile_window(tile)
    rows, cols = np.mgrid[0:256:step, 0:256:step]
    lon, lat = pixel_to_lonlat(w.col + cols + 0.5, w.row + rows + 0.5, 18)
    x, y = Transformer.from_crs(4326, UTM, always_xy=True).transform(lon, lat)
    sc, sr = ~transform @ (x, y)
    return rows, cols, sc, sr


def shard_pixels(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel of layer imagery (bands, N) and its valid-data mask (N,), all shards."""
    arrs, masks = [], []
    for s in store.shards("imagery"):
        arrs.append(store.read_shard("imagery", s).reshape(store.count("imagery"), -1))
        masks.append(store.read_valid("imagery", shard_window(s, store.grid)).ravel())
    return np.concatenate(arrs, axis=1), np.concatenate(masks)


def test_rgb_with_nodata_255_gives_0_and_no_imagery_outside_its_footprint(tmp_path, small_grid):
    """A real orthophoto in UTM: its footprint (a rotated square in Web Mercator) inside a nodata
    frame of 255, and an AOI larger than the file. The store holds 0 outside the footprint and
    the valid-data mask says where the imagery is."""
    lon0, lat0 = shard_corner(small_grid)
    transform, n = utm_frame((lon0, lat0), 300.0, 0.3)
    rr, cc = np.mgrid[0:n, 0:n]
    data = np.empty((3, n, n), dtype="uint8")
    data[0] = 20 + (200 * cc // n)  # 20..219: never 255 inside the footprint
    data[1] = 20 + (200 * rr // n)
    data[2] = 90
    frame = (cc < n // 5) | (rr > n - n // 6)  # west and south strips: nodata
    data[:, frame] = 255
    write_tif(tmp_path / "ortho.tif", data, UTM, transform, nodata=255)
    tiles = tiles_around(lon0, lat0, 0.003)  # ~500 m across: the file covers the middle
    store = Store(tmp_path / "store", small_grid)

    counts = build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "ortho.tif", progress=False)

    values, valid = shard_pixels(store)
    assert (values < 255).all()  # not one pixel of the nodata value
    assert not values[:, ~valid].any()  # no imagery -> 0
    assert (values[:, valid] >= 19).all() and (values[2, valid] == 90).all()
    # The valid share is the footprint's share of the listed tiles, within 1 %.
    px_m = 2 * 20037508.342789244 / (256 * 2**18) * np.cos(np.radians(lat0))
    footprint_px = (~frame).sum() * (0.3 / px_m) ** 2
    assert valid.sum() == pytest.approx(footprint_px, rel=0.01)
    assert 0 < counts["tiles_empty"] < len(tiles)
    # Pixel by pixel: valid exactly where the source position is inside the footprint (1.5 px of slack at the edges).
    for t in (tiles[0], tiles[len(tiles) // 2], tiles[-1]):
        rows, cols, sc, sr = source_position(t, transform)
        ok = store.read_valid_tile("imagery", t)[rows, cols]
        inside = (sc >= n // 5 + 1.5) & (sc < n - 1.5) & (sr >= 1.5) & (sr < n - n // 6 - 1.5)
        outside = (sc < n // 5 - 1.5) | (sc >= n + 1.5) | (sr < -1.5) | (sr >= n - n // 6 + 1.5)
        assert ok[inside].all() and not ok[outside].any()


def test_rgba_alpha_band_is_the_mask_and_band_indexes_pick_rgb(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    transform, n = utm_frame((lon0, lat0), 240.0, 0.3)
    data = np.full((4, n, n), 120, dtype="uint8")
    data[3] = 255
    data[3, :, : n // 2] = 0  # west half transparent
    write_tif(tmp_path / "rgba.tif", data, UTM, transform)
    with rasterio.open(tmp_path / "rgba.tif", "r+") as dst:
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    store = Store(tmp_path / "store", small_grid)
    build_imagery(store, tiles_around(lon0, lat0, 0.0015), source="geotiff", geotiff=tmp_path / "rgba.tif",
                  band_indexes=[1, 2, 3], progress=False)
    values, valid = shard_pixels(store)
    assert store.count("imagery") == 3
    assert (values[:, valid] == 120).all() and not values[:, ~valid].any()
    px_m = 2 * 20037508.342789244 / (256 * 2**18) * np.cos(np.radians(lat0))
    assert valid.sum() == pytest.approx(n * n / 2 * (0.3 / px_m) ** 2, rel=0.02)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_4_band_16_bit_geotiff_works_with_stretch_and_band_indexes(tmp_path, small_grid, dtype):
    """A 4-band (NIR, R, G, B) 12-bit-in-uint16 orthophoto in UTM with nodata 0: band_indexes [2, 3, 4]
    and a 2..98 percentile stretch, the same for every shard."""
    lon0, lat0 = shard_corner(small_grid)
    transform, n = utm_frame((lon0, lat0), 300.0, 0.5)
    rr, cc = np.mgrid[0:n, 0:n].astype("float64")
    data = np.empty((4, n, n), dtype=dtype)
    data[0] = 3000  # NIR, not asked for
    data[1] = 400 + 3000 * cc / n  # R grows east
    data[2] = 900 + 1500 * rr / n  # G grows south
    data[3] = 100 + 2000 * (cc + rr) / (2 * n)
    data[:, :10, :] = 0  # a nodata strip on the north edge
    write_tif(tmp_path / "nrgb.tif", data, UTM, transform, nodata=0)
    tiles = tiles_around(lon0, lat0, 0.0012)
    store = Store(tmp_path / "store", small_grid)

    counts = build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "nrgb.tif", band_indexes=[2, 3, 4],
                           stretch="percentile", percentiles=[2, 98], workers=2, progress=False)

    assert store.count("imagery") == 3 and counts["shards"] == 4
    valid_src = data[1] != 0
    scale = [np.percentile(data[b][valid_src].astype("float64"), [2, 98]) for b in (1, 2, 3)]
    tags = set()
    for s in store.shards("imagery"):
        with rasterio.open(store.path("imagery", s)) as src:
            tags.add(src.tags()["navml_scale"])
    assert len(tags) == 1  # one stretch for all shards
    got = [tuple(map(float, p.split(","))) for p in tags.pop().split(";")]
    np.testing.assert_allclose(got, scale, rtol=1e-4)
    home = tiles_around(lon0 + 1e-6, lat0 - 1e-6, 0.0)[0]  # SE of the shard corner
    for t in (Tile(home.x - 1, home.y - 1, 18), home):  # tiles in two different shards
        rows, cols, sc, sr = source_position(t, transform)
        img = store.read_tile("imagery", t).astype("float64")[:, rows, cols]
        ok = (sr > 12) & (sr < n - 2) & (sc > 2) & (sc < n - 2)
        assert ok.sum() > 100
        raw = [400 + 3000 * (sc - 0.5) / n, 900 + 1500 * (sr - 0.5) / n, 100 + 2000 * (sc + sr - 1) / (2 * n)]
        for b in range(3):
            lo, hi = scale[b]
            want = np.clip((raw[b] - lo) / (hi - lo) * 255, 0, 255)
            assert np.abs(img[b][ok] - want[ok]).max() < 1.6, b
    values, valid = shard_pixels(store)
    assert not values[:, ~valid].any() and values[:, valid].max() == 255 and values[:, valid].min() == 0


def test_16_bit_problems_are_reported_together_before_writing(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    transform, n = utm_frame((lon0, lat0), 60.0, 0.5)
    write_tif(tmp_path / "nrgb.tif", np.full((4, n, n), 1000, "uint16"), UTM, transform)
    tiles = tiles_around(lon0, lat0, 0.0005)
    store = Store(tmp_path / "store", small_grid)
    with pytest.raises(InputError) as err:
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "nrgb.tif", band_indexes=[2, 3, 5], progress=False)
    msg = str(err.value)
    assert "imagery.band_indexes [2, 3, 5] asks for band(s) [5] but the file has 4 band(s)" in msg
    assert "pixels are uint16, imagery is 8-bit; set imagery.stretch: percentile" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"imagery.bands: 3 but imagery.band_indexes \[1\] picks 1 band"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "nrgb.tif", bands=3, band_indexes=[1], progress=False)
    for bad, match in [([0, 1, 2], "numbered from 1"), ([1, 1, 2], "twice"), (["r", "g", "b"], "1-based band numbers")]:
        with pytest.raises(ConfigError, match=match):
            build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "nrgb.tif", band_indexes=bad, progress=False)
    for bad in ([98, 2], [2], "2,98", [-1, 50]):
        with pytest.raises(ConfigError, match="imagery.percentiles"):
            build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "nrgb.tif", stretch="percentile", percentiles=bad, progress=False)
    with pytest.raises(ConfigError, match="imagery.stretch: 'minmax' is not one of none, percentile"):
        build_imagery(store, tiles, source="geotiff", geotiff=tmp_path / "nrgb.tif", stretch="minmax", progress=False)
    assert not (tmp_path / "store").exists()


def test_single_band_16_bit_orthophoto(tmp_path, small_grid):
    lon0, lat0 = shard_corner(small_grid)
    transform, n = utm_frame((lon0, lat0), 120.0, 0.3)
    data = (500 + 5000 * np.mgrid[0:n, 0:n][1][None] / n).astype("uint16")  # grows east
    write_tif(tmp_path / "gray16.tif", data, UTM, transform)
    store = Store(tmp_path / "store", small_grid)
    with pytest.raises(InputError, match="has 1 band.*set imagery.bands: 1 and train.bands: 1.*imagery.stretch: percentile"):
        build_imagery(store, tiles_around(lon0, lat0, 0.0008), source="geotiff", geotiff=tmp_path / "gray16.tif", progress=False)
    build_imagery(store, tiles_around(lon0, lat0, 0.0008), source="geotiff", geotiff=tmp_path / "gray16.tif", bands=1,
                  stretch="percentile", progress=False)
    values, valid = shard_pixels(store)
    assert store.count("imagery") == 1 and valid.any()
    assert values[0, valid].min() == 0 and values[0, valid].max() == 255


def test_outputs_follow_the_umask(tmp_path, small_grid, server):
    from navml.io import write_text
    from navml.post.josm import osm_xml

    lon0, lat0 = shard_corner(small_grid)
    make_geotiff(tmp_path / "src.tif", UTM, (lon0, lat0), (lon0, lat0))
    old = os.umask(0o027)
    try:
        store = Store(tmp_path / "store", small_grid)
        build_imagery(store, tiles_around(lon0, lat0, 0.0005), source="geotiff", geotiff=tmp_path / "src.tif", progress=False)
        build_imagery(Store(tmp_path / "xyz", small_grid), xyz_tiles(small_grid, 1, 1), source="xyz",
                      url=server.base + "/{z}/{x}/{y}.png", cache_dir=tmp_path / "cache", **FAST)
        write_text(tmp_path / "josm" / "new.osm", osm_xml([], {}))
    finally:
        os.umask(old)
    files = [*(tmp_path / "store").rglob("*.tif"), *(tmp_path / "xyz").rglob("*.tif"), *(tmp_path / "cache").rglob("*.png"),
             tmp_path / "josm" / "new.osm"]
    assert len(files) >= 4
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}
    assert oct((tmp_path / "store" / "imagery").stat().st_mode & 0o777) == oct(0o750)


def test_xyz_layer_switches_as_a_whole(tmp_path, small_grid, server):
    """A new source that fails on one shard's tiles leaves the old layer byte for byte."""
    tiles = xyz_tiles(small_grid, 3, 2)  # two shards
    store = Store(tmp_path / "store", small_grid)
    build_imagery(store, tiles, source="xyz", url=server.base + "/{z}/{x}/{y}.png", cache_dir=tmp_path / "cache", **FAST)
    before = {p.name: p.read_bytes() for p in (tmp_path / "store" / "imagery").glob("*.tif")}
    assert len(before) == 2
    last = tiles[-1]  # in the second shard; the first shard is done before it fails
    server.broken.add((last.z, last.x, last.y))
    new = dict(source="xyz", url=server.base + "/tms/{z}/{x}/{-y}.png", retries=1, workers=1, cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(FetchError):
        build_imagery(store, tiles, **new)
    assert {p.name: p.read_bytes() for p in (tmp_path / "store" / "imagery").glob("*.tif")} == before
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["imagery"]
    server.broken.clear()
    build_imagery(store, tiles, **new)
    for s in store.shards("imagery"):
        with rasterio.open(store.path("imagery", s)) as src:
            assert src.tags()["navml_url"].endswith("/tms/{z}/{x}/{-y}.png")
    check_store(store, tiles)


KILLED_RUN = """
import sys
from navml.geo.grid import Grid, Tile
from navml.geo.store import Store
from navml.data.imagery import build_imagery
tiles = [Tile(int(x), int(y), 18) for x, y in (t.split(",") for t in sys.argv[3].split(";"))]
build_imagery(Store(sys.argv[1], Grid(18, 256, 16)), tiles, source="xyz", url=sys.argv[2], workers=2,
              cache_dir=sys.argv[4], progress=False, timeout_s=600)
"""


def test_xyz_kill_9_mid_fetch_leaves_the_old_layer(tmp_path, small_grid, server):
    import subprocess
    import sys
    import time

    tiles = xyz_tiles(small_grid, 3, 2)
    store = Store(tmp_path / "store", small_grid)
    build_imagery(store, tiles, source="xyz", url=server.base + "/{z}/{x}/{y}.png", cache_dir=tmp_path / "cache", **FAST)
    before = {p.name: p.read_bytes() for p in (tmp_path / "store" / "imagery").glob("*.tif")}
    last = tiles[-1]
    # The new source hangs on the second shard's last tile until the test ends (the fixture releases it): the run
    # can never finish by itself, however slow the machine. Two download threads, so that the hang holds one and the
    # other fetches the remaining tiles whichever shard task queues its tiles first.
    server.slow_s = 600.0
    server.faults[(last.z, last.x, last.y)] = ["slow"]
    arg = ";".join(f"{t.x},{t.y}" for t in tiles)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "store"), server.base + "/tms/{z}/{x}/{-y}.png", arg,
                             str(tmp_path / "cache2")], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    staging = tmp_path / "store" / ".imagery.partial"
    want = {(t.x, t.y) for t in tiles[:-1]}

    def mid_fetch() -> bool:
        """The first shard is in the staging layer, the other 5 tiles are cached and the 6th is being requested."""
        cached = {(int(p.parent.name), int(p.stem)) for p in (tmp_path / "cache2").rglob("*.png")}
        with server.lock:
            hanging = server.hits[(last.z, last.x, last.y)] >= 1
        return hanging and cached == want and bool(list(staging.glob("*.tif")))

    deadline = time.monotonic() + 120  # generous: a loaded CI machine; normally well under a second
    try:
        while not mid_fetch() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"the new run ended by itself (exit code {proc.returncode}) before it could be killed"
        assert mid_fetch(), "the new run did not reach the hanging tile with one shard staged and 5 tiles cached in 120 s"
    finally:
        proc.kill()  # kill -9 while the second shard's last tile is being fetched
        proc.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in (tmp_path / "store" / "imagery").glob("*.tif")} == before
    # The next run cleans the staging folder up and resumes from the cache.
    server.faults.clear()
    server.hits.clear()
    counts = build_imagery(store, tiles, source="xyz", url=server.base + "/tms/{z}/{x}/{-y}.png", cache_dir=tmp_path / "cache2", **FAST)
    assert counts["cached"] == 5 and counts["fetched"] == 1
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["imagery"]
    check_store(store, tiles)


def test_truncated_png_tile_is_one_line_on_stderr(tmp_path, small_grid, server):
    """The CLI on a server that sends a truncated PNG for one tile: navml's one-line error, no OpenCV [ WARN] lines."""
    import subprocess
    import sys

    tiles = xyz_tiles(small_grid, 2, 1)
    bad = tiles[1]
    server.truncated.add((bad.z, bad.x, bad.y))
    write_tiles_csv(tmp_path / "tiles.csv", tiles, small_grid)
    (tmp_path / "params.yaml").write_text(
        "grid: {zoom: 18, tile_size: 256, shard_zoom: 16}\n"
        f"imagery: {{source: xyz, url: '{server.base}/{{z}}/{{x}}/{{y}}.png', retries: 3, timeout_s: 2, cache_dir: {tmp_path / 'cache'}}}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "navml", "imagery", "--params", str(tmp_path / "params.yaml"), "--tiles",
                           str(tmp_path / "tiles.csv"), "--store", str(tmp_path / "store")], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, timeout=120)
    assert proc.returncode == 1
    assert server.hits[(bad.z, bad.x, bad.y)] == 4  # the first attempt and 3 retries
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("navml: error: ") and f"/18/{bad.x}/{bad.y}.png: gave up after 4 attempt(s)" in lines[0]
    assert "not an image" in lines[0]


def test_cli_reads_the_new_imagery_keys(tmp_path, small_grid):
    import typer

    from navml.cli.imagery import command

    lon0, lat0 = shard_corner(small_grid)
    transform, n = utm_frame((lon0, lat0), 120.0, 0.5)
    data = np.stack([np.full((n, n), v, "uint16") for v in (3000, 1000, 2000, 4000)])
    data[1, :, : n // 2] = 1200  # R has two values: the stretch maps them to 0 and 255
    write_tif(tmp_path / "nrgb.tif", data, UTM, transform)
    tiles = tiles_around(lon0, lat0, 0.0004)
    write_tiles_csv(tmp_path / "tiles.csv", tiles, small_grid)
    (tmp_path / "params.yaml").write_text(
        "grid: {zoom: 18, tile_size: 256, shard_zoom: 16}\n"
        f"imagery: {{source: geotiff, geotiff: {tmp_path / 'nrgb.tif'}, band_indexes: [2, 3, 4], stretch: percentile, "
        "percentiles: [1, 99], resampling: nearest, workers: 2}\n"
    )
    app = typer.Typer()
    app.command()(command)
    res = CliRunner().invoke(app, ["--params", str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "tiles.csv"),
                                   "--store", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output
    store = Store(tmp_path / "store", small_grid)
    values, valid = shard_pixels(store)
    assert store.count("imagery") == 3 and valid.any()
    assert set(np.unique(values[0, valid])) <= {0, 255} and {0, 255} <= set(np.unique(values[0, valid]))
    with rasterio.open(store.path("imagery", store.shards("imagery")[0])) as src:
        assert src.tags()["navml_band_indexes"] == "2,3,4" and src.tags()["navml_percentiles"] == "1,99"


def test_staged_layer_repairs_a_swap_killed_between_its_renames(tmp_path, small_grid):
    store = Store(tmp_path / "store", small_grid)
    shard = Tile(13654, 24871, 16)
    store.write_shard("imagery", shard, np.full((3, 1024, 1024), 7, "uint8"))
    old_bytes = store.path("imagery", shard).read_bytes()
    os.replace(tmp_path / "store" / "imagery", tmp_path / "store" / ".imagery.old")  # killed after the first rename
    (tmp_path / "store" / ".imagery.partial").mkdir()  # and its staging folder left behind
    with pytest.raises(RuntimeError):
        with store.staged_layer("imagery") as staging:
            store.write_shard(staging, shard, np.zeros((3, 1024, 1024), "uint8"))
            raise RuntimeError("the new run fails too")
    assert store.path("imagery", shard).read_bytes() == old_bytes
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["imagery"]
    with store.staged_layer("imagery") as staging:
        store.write_shard(staging, shard, np.zeros((3, 1024, 1024), "uint8"))
    assert not store.read_shard("imagery", shard).any()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["imagery"]
