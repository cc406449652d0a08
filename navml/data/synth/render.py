"""Draw the scene as an RGB orthophoto (numpy + OpenCV) and write it as a GeoTIFF.

Everything is drawn with anti-aliased sub-pixel polygons (``cv2.fillPoly`` with
``shift=4``), in this order: textured ground, parcels, sidewalks, streets,
driveways, parking lots (asphalt, stall lines, oil stains, cars), road paint and
turn arrows, cars on the road, cast shadows (buildings and trees, one sun),
roofs, tree canopies; then a low-frequency illumination and texture field,
per-pixel noise and a slight blur. Memory: the image (3 bytes/px) plus a
shadow mask and a couple of temporaries of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from navml.data.synth.geometry import polygons, rect, thick
from navml.data.synth.scene import Car, Color, Lot, Scene

AA = cv2.LINE_AA
SHIFT = 4
ONE = 1 << SHIFT
#: Darkening of each channel in full shadow (a bluish shadow).
SHADOW_K = (0.62, 0.58, 0.5)
#: The fixed TIFF date/time (byte-identical outputs for a seed).
TIFF_DATETIME = "2024:06:01 12:00:00"


class Canvas:
    """An RGB image of the city with drawing helpers in local metres."""

    def __init__(self, scene: Scene):
        self.n = scene.n_px
        self.gsd = scene.gsd
        self.size = scene.size_m
        self.img = np.zeros((self.n, self.n, 3), dtype=np.uint8)
        k = ONE / self.gsd
        # fixed-point column = (x / gsd - 0.5) * ONE, row = ((size - y) / gsd - 0.5) * ONE
        self._scale = np.array([k, -k])
        self._offset = np.array([-ONE / 2, self.size * k - ONE / 2])

    def px(self, xy) -> np.ndarray:
        """Local metres (k, 2) to OpenCV fixed-point pixel coordinates (pixel centres at .5)."""
        return np.rint(np.asarray(xy, dtype="float64").reshape(-1, 2) * self._scale + self._offset).astype(np.int32)

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        return (int(round(x * self._scale[0] + self._offset[0])), int(round(y * self._scale[1] + self._offset[1])))

    def rings(self, rings: Iterable, color: Color, dst: np.ndarray | None = None) -> None:
        """Fill polygon rings together (even-odd: inner rings are holes)."""
        pts = [self.px(r) for r in rings]
        if pts:
            cv2.fillPoly(self.img if dst is None else dst, pts, _c(color), AA, SHIFT)

    def geom(self, g: BaseGeometry | None, color: Color, dst: np.ndarray | None = None) -> None:
        """Fill every polygon of ``g`` (with its holes)."""
        for p in polygons(g):
            self.rings([np.asarray(p.exterior.coords)] + [np.asarray(i.coords) for i in p.interiors], color, dst)

    def convex(self, pts, color: Color, dst: np.ndarray | None = None) -> None:
        cv2.fillConvexPoly(self.img if dst is None else dst, self.px(pts), _c(color), AA, SHIFT)

    def lines(self, lines: list[np.ndarray], color: Color, width_m: float) -> None:
        """Polylines ``width_m`` wide; thinner than a pixel they are drawn 1 px wide with less contrast."""
        if not lines:
            return
        t = max(1, int(round(width_m / self.gsd)))
        if width_m < self.gsd:
            f = min(1.0, 0.35 + width_m / self.gsd)
            color = tuple(int(100 + f * (c - 100)) for c in color)  # type: ignore[assignment]
        cv2.polylines(self.img, [self.px(p) for p in lines], False, _c(color), t, AA, SHIFT)

    def disc(self, x: float, y: float, r: float, color, dst: np.ndarray | None = None) -> None:
        cv2.circle(self.img if dst is None else dst, self._pt(x, y), max(1, int(round(r / self.gsd * ONE))), _c(color), -1, AA, SHIFT)

    def ellipse(self, x: float, y: float, a: float, b: float, ang: float, color: Color) -> None:
        axes = (max(1, int(round(a / self.gsd * ONE))), max(1, int(round(b / self.gsd * ONE))))
        cv2.ellipse(self.img, self._pt(x, y), axes, -math.degrees(ang), 0, 360, _c(color), -1, AA, SHIFT)


def _c(color) -> tuple[int, int, int]:
    if np.isscalar(color):
        return (int(color), int(color), int(color))
    return (int(color[0]), int(color[1]), int(color[2]))


def _mul(c: Color, f: float) -> Color:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)  # type: ignore[return-value]


# ---------------------------------------------------------------- layers


def _ground(cv: Canvas, rng: np.random.Generator) -> None:
    """Grass and bare earth varying over tens of metres, mottled at metre scale."""
    n = cv.n
    m = max(8, n // 4)
    low = cv2.resize(rng.random((n // 100 + 3, n // 100 + 3)).astype(np.float32), (m, m), interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.random((n // 8 + 2, n // 8 + 2)).astype(np.float32), (m, m), interpolation=cv2.INTER_LINEAR)
    grass = np.array([92, 118, 64], np.float32)
    earth = np.array([140, 128, 100], np.float32)
    t = np.clip(low - 0.25, 0, 1)[..., None] * 0.7
    small = grass * (1 - t) + earth * t + (mid[..., None] - 0.5) * 22
    cv.img[:] = cv2.resize(np.clip(small, 0, 255).astype(np.uint8), (n, n), interpolation=cv2.INTER_LINEAR)


def _car(cv: Canvas, car: Car, under: Color, shadow: tuple[float, float]) -> None:
    """A car with its shadow, windows and a roof highlight."""
    body = rect(car.x, car.y, car.length, car.width, car.ang)
    cv.convex(body + np.asarray(shadow) * 1.3, _mul(under, 0.45))
    cv.convex(body, car.color)
    u = np.array([math.cos(car.ang), math.sin(car.ang)])
    L, W = car.length, car.width
    glass = (38, 44, 52)
    cv.convex(rect(car.x + u[0] * L * 0.17, car.y + u[1] * L * 0.17, L * 0.15, W * 0.84, car.ang), glass)
    cv.convex(rect(car.x - u[0] * L * 0.3, car.y - u[1] * L * 0.3, L * 0.1, W * 0.8, car.ang), glass)
    cv.convex(rect(car.x - u[0] * L * 0.06, car.y - u[1] * L * 0.06, L * 0.3, W * 0.74, car.ang), _mul(car.color, 1.08))


def _lot(cv: Canvas, lot: Lot, shadow: tuple[float, float]) -> None:
    cv.geom(lot.poly, lot.tone)
    for g, c in lot.patches:
        cv.geom(g, c)
    stain = _mul(lot.tone, 0.72)
    for x, y, a, ra, rb in lot.stains:
        cv.ellipse(x, y, ra, rb, a, stain)
    cv.lines(lot.lines, lot.line_color, 0.12)
    dark = _mul(lot.tone, 0.5)
    v = np.asarray(shadow) * 9.0
    for x, y in lot.poles:
        p = np.array([x, y])
        cv.convex(thick(p, p + v, 0.12), dark)
        cv.convex(rect(*(p + v), 1.2, 0.5, math.atan2(v[1], v[0]) + math.pi / 2), dark)
    for car in lot.cars:
        _car(cv, car, lot.tone, shadow)
    for x, y in lot.poles:
        cv.convex(rect(x, y, 1.2, 0.45, 0.0), (178, 178, 176))


def _streets(cv: Canvas, scene: Scene) -> None:
    cv.geom(scene.sidewalk, (180, 178, 172))
    if scene.verge is not None:
        cv.geom(scene.verge, (96, 122, 66))
    tones = [s.tone for s in scene.streets] or [90]
    g = int(np.median(tones))
    cv.geom(scene.carriageway, (g, g, g + 3))
    for s in scene.streets:
        cv.geom(LineString(s.ext).buffer(s.width / 2, cap_style="flat"), (s.tone, s.tone + 1, s.tone + 4))
    for g_, c in scene.road_patches:
        cv.geom(g_.intersection(scene.carriageway), c)


def _shadows(cv: Canvas, scene: Scene) -> None:
    """Cast shadows of buildings (footprint swept along the sun vector) and trees, then darken."""
    mask = np.zeros((cv.n, cv.n), dtype=np.uint8)
    sx, sy = scene.shadow
    for b in scene.buildings:
        v = np.array([sx, sy]) * b.height
        for p in polygons(b.poly):
            ring = np.asarray(p.exterior.coords)
            cv.rings([ring + v], 255, mask)
            for a, c in zip(ring[:-1], ring[1:]):
                cv.convex(np.array([a, c, c + v, a + v]), 255, mask)
    for x, y, r, h, _ in scene.trees:
        for f in (0.45, 0.75):
            cv.disc(x + sx * h * f, y + sy * h * f, r * 0.95, 255, mask)
    for k, ch in zip(SHADOW_K, range(3)):
        f = cv2.convertScaleAbs(mask, alpha=-k, beta=255)
        cv.img[..., ch] = cv2.multiply(np.ascontiguousarray(cv.img[..., ch]), f, scale=1 / 255)


def _roofs(cv: Canvas, scene: Scene) -> None:
    for b in sorted(scene.buildings, key=lambda b: b.height):
        cv.geom(b.poly, b.color)
        if b.deck is not None:
            _lot(cv, b.deck, (scene.shadow[0] * 0.5, scene.shadow[1] * 0.5))
        for g, c in b.details:
            cv.geom(g, c)


def _trees(cv: Canvas, scene: Scene, rng: np.random.Generator) -> None:
    sun = -np.asarray(scene.shadow) / (np.hypot(*scene.shadow) or 1.0)
    dark, light = np.array([34, 58, 30]), np.array([78, 104, 52])
    k = len(scene.trees)
    ang = rng.uniform(0, 2 * np.pi, (k, 5))
    dist = rng.uniform(0, 0.45, (k, 5))
    size = rng.uniform(0.3, 0.55, (k, 5))
    shade = rng.uniform(0.85, 1.15, (k, 5))
    for i, (x, y, r, h, tone) in enumerate(scene.trees):
        base = dark + (light - dark) * tone
        cv.disc(x, y, r, base * 0.8)
        for j in range(5):
            d = dist[i, j] * r
            cv.disc(x + d * math.cos(ang[i, j]), y + d * math.sin(ang[i, j]), r * size[i, j], np.clip(base * shade[i, j], 0, 255))
        cv.disc(x + sun[0] * r * 0.3, y + sun[1] * r * 0.3, r * 0.45, np.clip(base * 1.25, 0, 255))


def _finish(cv: Canvas, rng: np.random.Generator) -> None:
    """Illumination and texture field, per-pixel noise, slight blur (a camera's look)."""
    n = cv.n
    m = max(8, n // 2)
    low = cv2.resize(rng.random((n // 120 + 3, n // 120 + 3)).astype(np.float32), (m, m), interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.random((n // 6 + 2, n // 6 + 2)).astype(np.float32), (m, m), interpolation=cv2.INTER_LINEAR)
    fine = rng.random((m, m), dtype=np.float32)
    field = (1.0 + 0.10 * (low - 0.5) + 0.09 * (mid - 0.5) + 0.07 * (fine - 0.5)) * 200.0
    f = cv2.resize(np.clip(field, 0, 255).astype(np.uint8), (n, n), interpolation=cv2.INTER_LINEAR)
    cv.img = cv2.multiply(cv.img, cv2.merge([f, f, f]), scale=1 / 200)
    del f
    noise = rng.integers(0, 13, size=(n, n), dtype=np.uint8)
    cv.img = cv2.add(cv.img, cv2.merge([noise, noise, noise]))
    del noise
    cv.img = cv2.subtract(cv.img, (6, 6, 6, 0))
    cv.img = cv2.GaussianBlur(cv.img, (3, 3), 0.55)


def render(scene: Scene, rng: np.random.Generator, step=lambda name: None) -> np.ndarray:
    """The orthophoto of ``scene``: (rows, cols, 3) uint8 RGB, north up, ``scene.gsd`` metres per pixel."""
    cv = Canvas(scene)
    step("ground")
    _ground(cv, rng)
    for g, c in scene.grounds:
        cv.geom(g, c)
    for line, c, w in scene.ground_lines:
        cv.lines([line], c, w)
    step("streets")
    _streets(cv, scene)
    for g, c in scene.driveways:
        cv.geom(g, c)
    step("lots")
    for lot in scene.lots:
        if lot.visible:
            _lot(cv, lot, scene.shadow)
    step("paint")
    for line, c, w in scene.paint_lines:
        cv.lines([line], c, w)
    for poly, c in scene.paint_polys:
        cv.convex(poly, c)
    for m in scene.markings:
        cv.geom(m.shape, (238, 238, 234))
    for car in scene.road_cars:
        _car(cv, car, (92, 92, 95), scene.shadow)
    step("shadows")
    _shadows(cv, scene)
    step("roofs and trees")
    _roofs(cv, scene)
    _trees(cv, scene, rng)
    step("texture")
    _finish(cv, rng)
    return cv.img


def write_geotiff(img: np.ndarray, path: Path, epsg: int, west: float, north: float, gsd: float) -> None:
    """Write an RGB image as a tiled, deflate-compressed GeoTIFF (byte-identical for the same pixels)."""
    import rasterio
    from affine import Affine
    from rasterio.enums import ColorInterp

    n_rows, n_cols = img.shape[:2]
    profile = {
        "driver": "GTiff", "width": n_cols, "height": n_rows, "count": 3, "dtype": "uint8",
        "crs": f"EPSG:{epsg}", "transform": Affine(gsd, 0.0, west, 0.0, -gsd, north),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2,
        "zlevel": 4, "photometric": "RGB", "interleave": "pixel", "num_threads": "2",
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            for b in range(3):
                dst.write(np.ascontiguousarray(img[..., b]), b + 1)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            dst.update_tags(TIFFTAG_DATETIME=TIFF_DATETIME, TIFFTAG_SOFTWARE="navml synth")
