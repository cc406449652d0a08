"""The viewer's web app (Starlette): store tiles, vector layers, live prediction and review, for a local browser.

Nothing from a URL reaches the filesystem: cities, layers, vector names and
models are looked up in allow-lists built at start-up, tile coordinates are
integers checked against the store's zoom and extent; anything else is a 404.
POST requests whose ``Origin`` header is present and not the server's own are
refused (403), so another web page open in the same browser cannot write
reviews. Imagery is served from the store itself: no imagery URL or token is
ever sent to the browser.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mercantile
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from navml.errors import NavmlError
from navml.geo.grid import Grid, Tile, shard_of, tile_key, tile_window
from navml.geo.store import Store
from navml.palette import Palette
from navml.viewer import render
from navml.viewer.live import LiveTiles, Predictor, store_extent
from navml.viewer.review import NEGATIVES, REVIEWS, ReviewLog, read_collection

if TYPE_CHECKING:
    from navml.config import Params

STATIC = Path(__file__).parent / "static"
#: Raster layers a tile URL may name, and the store they live in.
RASTER_LAYERS = ("imagery", "masks", "probs")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Content-Security-Policy of every response: the page loads only from this server.
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"


@dataclass(frozen=True)
class StorePaths:
    """Where one city's outputs lie (the ``navml serve`` defaults are the pipeline's paths); missing files are skipped.

    ``store``: shard store (imagery, masks, boxes.csv); ``predict``: store with
    the ``probs`` layer and ``detections.csv``; ``output``: new_features,
    predictions, markings GeoJSON; ``extract``: OSM extract GeoJSON per class;
    ``aoi``: AOI GeoJSON; ``tiles``: tile index CSV (z,x,y,split); ``models``:
    folders holding model folders (``<name>/meta.json``).
    """

    store: Path
    grid: Grid
    palette: Palette = field(default_factory=Palette)
    classes: tuple[str, ...] = ()
    predict: Path | None = None
    output: Path | None = None
    extract: Path | None = None
    aoi: Path | None = None
    tiles: Path | None = None
    models: tuple[Path, ...] = ()


def city_paths(params: Params, names: Sequence[str] | None = None) -> dict[str, StorePaths]:
    """:class:`StorePaths` of the cities of ``params`` (all, or ``names``), as the pipeline lays them out (docs/cities.md):
    each city's store, extract and tiles, its final results, and the models of ``paths.models`` and ``paths.first``."""
    from navml.config import segmentation_classes
    from navml.errors import ConfigError
    from navml.palette import palette_of

    unknown = [n for n in names or () if n not in params.cities]
    if unknown:
        raise ConfigError(f"params: cities: no city '{unknown[0]}' (cities: {', '.join(params.cities) or 'none'})")
    specs = params.class_specs()
    common = dict(grid=params.grid.grid(), palette=palette_of(specs), classes=tuple(c.name for c in segmentation_classes(specs)),
                  models=(Path(params.paths.models), Path(params.paths.first) / "models"))
    out = {}
    for name in names or list(params.cities):
        c = params.city(name)
        aoi = Path(c.aoi) if c.aoi and c.aoi.count(",") != 3 else None  # a bbox AOI has no file to outline
        out[name] = StorePaths(
            store=Path(c.store), predict=Path(c.results) / "predict", output=Path(c.results) / "output",
            extract=Path(c.root) / "extract", aoi=aoi, tiles=Path(c.tiles), **common,
        )
    return out


def model_folders(roots: tuple[Path, ...]) -> dict[str, Path]:
    """Model name -> folder: each ``<root>/<name>/meta.json``; folders of a later root are named ``<root's parent name>-<name>``."""
    out: dict[str, Path] = {}
    for i, root in enumerate(roots):
        root = Path(root)
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / "meta.json").is_file()):
            name = folder.name if i == 0 else f"{root.parent.name}-{folder.name}"
            if NAME.match(name):
                out.setdefault(name, folder)
    return out


def vector_files(p: StorePaths, negatives: Sequence[Path], reviews: Path) -> dict[str, list[Path]]:
    """Allow-listed vector layer name -> its files (only names whose files exist): GeoJSON, or the CSV tables of :data:`TABLES`."""
    cand: dict[str, list[Path]] = {}
    cand["boxes"] = [p.store / "boxes.csv"]
    if p.predict:
        cand["detections"] = [p.predict / "detections.csv"]
    if p.tiles:
        cand["splits"] = [p.tiles.with_suffix(".geojson")]
    if p.output:
        cand["predictions"] = [p.output / "new_features.geojson"]
        cand["polygons"] = [p.output / "predictions.geojson"]
        cand["markings"] = [p.output / "markings.geojson"]
    if p.extract:
        cand["osm"] = [p.extract / f"{c}.geojson" for c in p.classes]
    if p.aoi:
        cand["aoi"] = [p.aoi]
    cand["negatives"] = list(negatives)
    cand["reviews"] = [reviews]
    always = ("negatives", "reviews")  # written while the viewer runs
    return {k: v if k in always else [f for f in v if f.is_file()] for k, v in cand.items() if k in always or any(f.is_file() for f in v)}


#: Vector layers read from a CSV table (boxes in pixels), drawn as WGS84 boxes.
TABLES = ("boxes", "detections")


def box_features(df, grid: Grid, table: str) -> list[dict]:
    """GeoJSON boxes (WGS84) of ``boxes.csv`` (tile pixels: ``xmin..ymax`` in tile ``z/x/y``) or ``detections.csv``
    (global pixels ``x0..y1`` at zoom ``z``), with ``class`` (the sub-class name), ``tile`` and ``score`` when given."""
    from navml.geo.grid import pixel_to_lonlat

    size = grid.tile_size
    if table == "boxes":
        x0, y0 = df["x"] * size + df["xmin"], df["y"] * size + df["ymin"]
        x1, y1 = df["x"] * size + df["xmax"], df["y"] * size + df["ymax"]
        names = df["name"] if "name" in df else df["class"]
    else:
        x0, y0, x1, y1 = df["x0"], df["y0"], df["x1"], df["y1"]
        names = df["class"]
    out = []
    for i in range(len(df)):
        z = int(df["z"].iloc[i])
        w, n = pixel_to_lonlat(x0.iloc[i], y0.iloc[i], z, size)
        e, s_ = pixel_to_lonlat(x1.iloc[i], y1.iloc[i], z, size)
        w, n, e, s_ = float(w), float(n), float(e), float(s_)
        props = {"class": str(names.iloc[i]), "tile": f"{z}-{int(df['x'].iloc[i])}-{int(df['y'].iloc[i])}"}
        if "score" in df:
            props["score"] = round(float(df["score"].iloc[i]), 4)
        out.append({"type": "Feature", "properties": props,
                    "geometry": {"type": "Polygon", "coordinates": [[[w, s_], [e, s_], [e, n], [w, n], [w, s_]]]}})
    return out


def polygon_status(polygons: list[dict], new: list[dict], osm: list[dict]) -> list[dict]:
    """The vectorized polygons with ``status``: ``new`` (kept by dedupe), ``in OSM`` (touching a mapped feature) or ``on road`` (dropped otherwise).

    A polygon is new when its geometry equals a new feature's; dedupe drops the
    others either for their OSM overlap or for lying on roads.
    """
    from shapely import STRtree
    from shapely.geometry import shape

    new_wkb = {shape(f["geometry"]).normalize().wkb for f in new}
    osm_geoms = [shape(f["geometry"]) for f in osm]
    tree = STRtree(osm_geoms) if osm_geoms else None
    out = []
    for f in polygons:
        g = shape(f["geometry"])
        if g.normalize().wkb in new_wkb:
            status = "new"
        elif tree is not None and len(tree.query(g, predicate="intersects")):
            status = "in OSM"
        else:
            status = "on road"
        out.append({**f, "properties": {**f.get("properties", {}), "status": status}})
    return out


def read_split(path: Path | None) -> dict[tuple[int, int, int], str]:
    """(z, x, y) -> split of a tile index CSV; ``{}`` without one."""
    if not path or not Path(path).is_file():
        return {}
    import pandas as pd

    df = pd.read_csv(path, usecols=lambda c: c in ("z", "x", "y", "split"))
    if "split" not in df:
        df["split"] = ""
    return {(int(z), int(x), int(y)): str(s) for z, x, y, s in zip(df.z, df.x, df.y, df.split)}


class City:
    """One city's stores, vector files and lazily loaded live predictors."""

    def __init__(self, name: str, paths: StorePaths, negatives: Sequence[Path], reviews: Path):
        self.name = name
        self.paths = paths
        self.grid = paths.grid
        self.store = Store(paths.store, paths.grid)
        self.pred = Store(paths.predict, paths.grid) if paths.predict else None
        self.vectors = vector_files(paths, negatives, reviews)
        self.models = model_folders(paths.models)
        self.split = read_split(paths.tiles)
        self.extent = store_extent(self.store)
        self._live: dict[str, LiveTiles] = {}
        self._tasks: dict[str, str] = {}
        self._load_lock = threading.Lock()
        self.detections = self._detection_counts()

    def _detection_counts(self) -> dict[tuple[int, int, int], int]:
        f = self.paths.predict / "detections.csv" if self.paths.predict else None
        if not f or not f.is_file():
            return {}
        import pandas as pd

        df = pd.read_csv(f, usecols=["z", "x", "y"])
        return {k: int(v) for k, v in df.groupby(["z", "x", "y"]).size().items()}

    def layer_store(self, layer: str) -> Store | None:
        """The store holding raster ``layer`` (None when it has no shard)."""
        s = self.pred if layer == "probs" else self.store
        return s if s is not None and s.shards(layer) else None

    def tasks(self) -> dict[str, str]:
        """Model name -> task (from meta.json)."""
        from navml.models.io import read_meta

        for name, folder in self.models.items():
            if name not in self._tasks:
                try:
                    self._tasks[name] = read_meta(folder).task
                except NavmlError:
                    self._tasks[name] = "unknown"
        return dict(self._tasks)

    def live(self, model: str) -> LiveTiles:
        """The live predictor of ``model`` (loaded on first use)."""
        with self._load_lock:
            if model not in self._live:
                self._live[model] = LiveTiles(self.store, Predictor.load(self.models[model], model))
            return self._live[model]

    def set_live(self, model: str, predictor: Predictor) -> None:
        """Use an in-memory predictor under ``model`` (tests, notebooks)."""
        with self._load_lock:
            self._live[model] = LiveTiles(self.store, predictor)
            self._tasks[model] = predictor.task
            self.models.setdefault(model, Path("."))

    def info(self) -> dict[str, Any]:
        lon_lat = None
        if self.extent is not None:
            e, g = self.extent, self.grid
            ul = mercantile.ul(e.col // g.tile_size, e.row // g.tile_size, g.zoom)
            lr = mercantile.ul((e.col + e.width) // g.tile_size, (e.row + e.height) // g.tile_size, g.zoom)
            lon_lat = [ul.lng, lr.lat, lr.lng, ul.lat]
        return {
            "name": self.name,
            "zoom": self.grid.zoom,
            "tile_size": self.grid.tile_size,
            "bounds": lon_lat,
            "layers": [lyr for lyr in RASTER_LAYERS if self.layer_store(lyr) is not None],
            "vectors": sorted(self.vectors),
            "classes": list(self.paths.classes),
            "colors": {c: list(self.paths.palette.mask[i]) for i, c in enumerate(self.paths.classes) if i < len(self.paths.palette.mask)},
            "models": [{"name": n, "task": t} for n, t in self.tasks().items()],
        }


def _tile(city: City, z: int, x: int, y: int) -> Tile:
    """The tile, or a 404 when it is not at the store zoom or not inside the store's extent."""
    g = city.grid
    if z != g.zoom or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise HTTPException(404, f"tiles exist at zoom {g.zoom} only")
    t = Tile(x, y, z)
    e = city.extent
    w = tile_window(t, g.tile_size)
    if e is None or not (e.col <= w.col < e.col + e.width and e.row <= w.row < e.row + e.height):
        raise HTTPException(404, "tile outside the store")
    return t


def _origin_ok(request: Request) -> bool:
    """True unless an ``Origin`` header is present and differs from this server's scheme://host:port."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return origin.rstrip("/") == own


def create_app(
    stores: Mapping[str, StorePaths],
    negatives_path: str | Path = NEGATIVES,
    review_path: str | Path = REVIEWS,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The viewer app for ``stores`` (city name -> :class:`StorePaths`); reviews go to ``negatives_path`` / ``review_path``.

    ``negatives_path`` may hold ``{model}``: ``seg`` for segmentation features, ``det`` for detections
    (:class:`navml.viewer.review.ReviewLog`).

    ``allowed_hosts``: accepted ``Host`` header names (others get 400), against DNS
    rebinding; ``None`` accepts any (``navml serve`` passes its address and localhost).
    """
    log = ReviewLog(negatives_path, review_path)
    cities = {name: City(name, p, log.negatives_paths(), log.reviews) for name, p in stores.items() if NAME.match(name)}

    def city_of(request: Request) -> City:
        c = cities.get(request.path_params["city"])
        if c is None:
            raise HTTPException(404, "unknown city")
        return c

    def xyz(request: Request, c: City) -> Tile:
        p = request.path_params
        return _tile(c, p["z"], p["x"], p["y"])

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def api_cities(request: Request) -> Response:
        return JSONResponse({name: c.info() for name, c in cities.items()})

    def tiles(request: Request) -> Response:
        c = city_of(request)
        layer = request.path_params["layer"]
        if layer not in RASTER_LAYERS:
            raise HTTPException(404, "unknown layer")
        s = c.layer_store(layer)
        t = xyz(request, c)
        if s is None or not s.has(layer, shard_of(t, c.grid)):
            raise HTTPException(404, "no such tile in the store")
        arr = s.read_tile(layer, t)
        if layer == "imagery":
            img = render.imagery_rgba(arr, s.read_valid_tile(layer, t))
        elif layer == "masks":
            img = render.mask_rgba(arr, c.paths.palette)
        else:
            img = render.heat_rgba(arr, _threshold(request))
        return Response(render.png(img), media_type="image/png", headers={"Cache-Control": "no-cache"})

    def vector(request: Request) -> Response:
        c = city_of(request)
        name = request.path_params["name"]
        if name not in c.vectors:
            raise HTTPException(404, "unknown vector layer")
        if name in TABLES:
            import pandas as pd

            feats = [f for path in c.vectors[name] for f in box_features(pd.read_csv(path, dtype={"class": str, "name": str}), c.grid, name)]
        else:
            feats = [f for path in c.vectors[name] for f in read_collection(path)]
        if name == "polygons":
            new = read_collection(c.vectors["predictions"][0]) if "predictions" in c.vectors else []
            osm = [f for path in c.vectors.get("osm", []) for f in read_collection(path)]
            feats = polygon_status(feats, new, osm)
        elif name == "predictions":
            feats = [{**f, "properties": {**f.get("properties", {}), "status": "new"}} for f in feats]
        return JSONResponse({"type": "FeatureCollection", "features": feats})

    def tile_info(request: Request) -> Response:
        c = city_of(request)
        t = xyz(request, c)
        key = (t.z, t.x, t.y)
        out: dict[str, Any] = {"tile": tile_key(t), "split": c.split.get(key), "shard": tile_key(shard_of(t, c.grid))}
        ps = c.layer_store("probs")
        if ps is not None and ps.has("probs", shard_of(t, c.grid)):
            p = ps.read_tile("probs", t)
            out["max_prob"] = {cls: round(float(p[i].max()) / 255, 3) for i, cls in enumerate(c.paths.classes) if i < len(p)}
        out["detections"] = c.detections.get(key, 0) if c.detections else None
        return JSONResponse(out)

    def live_model(request: Request, task: str):
        """The city and the live runner of the request's model, which must be a ``task`` model."""
        c = city_of(request)
        model = request.path_params["model"]
        if model not in c.models or c.tasks().get(model) != task:
            raise HTTPException(404, f"unknown {task} model")
        return c, c.live(model)

    def timing(ms: float, hit: bool) -> dict[str, str]:
        return {"X-Predict-Ms": f"{ms:.1f}", "X-Cache": "hit" if hit else "miss", "Cache-Control": "no-cache",
                "Access-Control-Expose-Headers": "X-Predict-Ms, X-Cache"}

    def predict_png(request: Request) -> Response:
        c, live = live_model(request, "segmentation")
        probs, ms, hit = live.probs(xyz(request, c))
        img = render.heat_rgba(probs, _threshold(request))
        return Response(render.png(img), media_type="image/png", headers=timing(ms, hit))

    def predict_json(request: Request) -> Response:
        c, live = live_model(request, "detection")
        feats, ms, hit = live.detections(xyz(request, c))
        return JSONResponse({"type": "FeatureCollection", "features": feats}, headers=timing(ms, hit))

    async def review(request: Request) -> Response:
        if not _origin_ok(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        zoom = next(iter(cities.values())).grid.zoom if cities else 18
        from starlette.concurrency import run_in_threadpool

        try:
            out = await run_in_threadpool(log.add, body, zoom)
        except NavmlError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(out)

    def review_export(request: Request) -> Response:
        return JSONResponse(log.export(), headers={"Content-Disposition": 'attachment; filename="reviews.geojson"'})

    routes = [
        Route("/", index),
        Route("/api/cities", api_cities),
        Route("/tiles/{city}/{layer}/{z:int}/{x:int}/{y:int}.png", tiles),
        Route("/api/vector/{city}/{name}", vector),
        Route("/api/tile/{city}/{z:int}/{x:int}/{y:int}", tile_info),
        Route("/predict/{city}/{model}/{z:int}/{x:int}/{y:int}.png", predict_png),
        Route("/predict/{city}/{model}/{z:int}/{x:int}/{y:int}.json", predict_json),
        Route("/api/review", review, methods=["POST"]),
        Route("/api/review/export", review_export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def navml_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def security_headers(request: Request, call_next):
        if request.method not in ("GET", "HEAD") and not _origin_ok(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app = Starlette(
        routes=routes,
        exception_handlers={NavmlError: navml_error},
        middleware=[
            *([Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts is not None else []),
            Middleware(BaseHTTPMiddleware, dispatch=security_headers),
        ],
    )
    app.state.cities = cities
    app.state.review = log
    return app


def _threshold(request: Request) -> float:
    """The ``?threshold=`` query (probability 0..1; 0 when absent); 400 when not a number in 0..1."""
    text = request.query_params.get("threshold")
    if text is None:
        return 0.0
    try:
        v = float(text)
    except ValueError:
        raise HTTPException(400, "threshold must be a number in 0..1") from None
    if not 0.0 <= v <= 1.0 or np.isnan(v):
        raise HTTPException(400, "threshold must be a number in 0..1")
    return v
