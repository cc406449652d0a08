"""Write store tiles to a slippy-map folder of PNGs a person can look at.

``<out>/<layer>/<z>/<x>/<y>.png`` for ``imagery`` (1 band as grey, 3+ bands as
RGB), ``masks`` (class colours, unknown as a grey hatch, background black),
(with ``negatives``, hard negatives outlined in :data:`NEGATIVE_COLOR` on the overlay),
``probs`` (every class: the most probable class's colour, brightness its
probability) and ``overlay`` (imagery with class fills, outlines and detection
boxes in their class colours), plus ``index.html`` showing them side by side.
Colours come from :mod:`navml.palette`. Everything is written into a temporary
folder beside ``out`` that replaces ``out`` at the end: an interrupted or failed
export leaves the previous one whole.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from navml.io import staging_dir
from navml.errors import ConfigError, InputError
from navml.geo.grid import Tile
from navml.geo.store import Store
from navml.palette import Palette, colorize, paint, palette_from_colors, to_rgb

LAYERS = ("imagery", "masks", "probs", "overlay")
#: Outline colour of hard negatives on the overlay (kept ones; vetoed ones are drawn dashed grey).
NEGATIVE_COLOR = (255, 0, 255)
VETOED_COLOR = (160, 160, 160)


def overlay(image: np.ndarray, mask: np.ndarray, palette: Palette, boxes: pd.DataFrame) -> np.ndarray:
    """Imagery (rows, cols, bands) as RGB with translucent class fills, their outlines and boxes."""
    out = paint(image, mask, palette)
    for v in np.unique(mask):
        if v == 0 or v > len(palette.mask):
            continue
        contours, _ = cv2.findContours((mask == v).astype("uint8"), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in palette.mask[v - 1]), 1)
    for b in boxes.itertuples():
        color = palette.box_color(int(b.class_id), getattr(b, "cls", None))
        cv2.rectangle(out, (int(b.xmin), int(b.ymin)), (int(np.ceil(b.xmax)) - 1, int(np.ceil(b.ymax)) - 1), color, 1)
    return out


def probs_rgb(probs: np.ndarray, palette: Palette) -> np.ndarray:
    """RGB (rows, cols, 3) of a probs tile (bands, rows, cols; uint8 0..255, one band per class).

    Each pixel shows the colour of its most probable class scaled by that
    probability: black where every class is unlikely.
    """
    p = np.asarray(probs)
    if p.ndim == 2:
        p = p[None]
    best = p.argmax(axis=0)
    level = p.max(axis=0).astype("float32") / 255.0
    colors = np.array([palette.mask[i] if i < len(palette.mask) else (255, 255, 255) for i in range(p.shape[0])], dtype="float32")
    return (colors[best] * level[..., None]).astype("uint8")


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise InputError(f"{path}: cannot write the PNG; check the disk space and permissions of the export folder")


def check_out(out: Path) -> None:
    """``out`` may be replaced by an export: absent, empty, or an earlier export (index.html and layer folders only)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another export folder")
    names = {p.name for p in out.iterdir()}
    if names and not (names <= {"index.html", *LAYERS} and "index.html" in names):
        raise InputError(f"{out}: holds files that are not a navml export; choose an empty or new folder (an export replaces the whole folder)")


def export_tiles(
    store: Store,
    tiles: Sequence[Tile],
    out: Path,
    *,
    layers: Sequence[str] = ("imagery", "masks", "overlay"),
    palette: Palette | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    boxes: pd.DataFrame | None = None,
    probs: Store | None = None,
    negatives: Sequence[dict] | None = None,
    progress: bool = True,
) -> int:
    """Write ``tiles`` of the chosen ``layers`` as PNGs under ``out`` (replaced as a whole); returns files written.

    ``palette``: colours of the class registry (:func:`navml.palette.palette_of`);
    ``colors`` (segmentation colours in mask order) is a shortcut when there are no boxes;
    ``negatives``: GeoJSON features (WGS84) of a hard-negatives file, outlined on ``overlay``
    (magenta; vetoed ones, ``keep: false``, grey).
    """
    out = Path(out)
    bad = [layer for layer in layers if layer not in LAYERS]
    if bad:
        raise ConfigError(f"export: unknown layer '{bad[0]}'; choose from {', '.join(LAYERS)}")
    if "probs" in layers and probs is None:
        raise ConfigError("export: layer 'probs' needs --probs (the predict store)")
    if palette is None:
        palette = palette_from_colors(colors or ())
    check_out(out)
    if boxes is None:
        boxes = pd.DataFrame(columns=["z", "x", "y", "class_id", "xmin", "ymin", "xmax", "ymax"])
    boxes = boxes.rename(columns={"class": "cls"})
    by_tile = {k: g for k, g in boxes.groupby(["z", "x", "y"])} if len(boxes) else {}
    written = 0
    with staging_dir(out) as tmp:
        for t in tqdm(tiles, desc="export", unit="tile", disable=not progress):
            image = np.moveaxis(store.read_tile("imagery", t), 0, -1)
            mask = store.read_tile("masks", t)[0]
            name = f"{t.z}/{t.x}/{t.y}.png"
            for layer in layers:
                if layer == "imagery":
                    rgb = to_rgb(image)
                elif layer == "masks":
                    rgb = colorize(mask, palette)
                elif layer == "probs":
                    rgb = probs_rgb(probs.read_tile("probs", t), palette)  # type: ignore[union-attr]
                else:
                    rgb = overlay(image, mask, palette, by_tile.get((t.z, t.x, t.y), boxes.iloc[0:0]))
                    if negatives:
                        outline_negatives(rgb, t, store.grid.tile_size, negatives)
                _write_png(tmp / layer / name, rgb)
                written += 1
        _write_index(tmp, tiles, layers)
    return written


def outline_negatives(rgb: np.ndarray, tile: Tile, size: int, negatives: Sequence[dict]) -> None:
    """Draw the outlines of the ``negatives`` (GeoJSON features, WGS84) touching ``tile`` on its RGB image, in place."""
    from shapely.geometry import shape

    from navml.geo.features import to_pixels
    from navml.geo.grid import tile_polygon, tile_window

    foot = tile_polygon(tile)
    w = tile_window(tile, size)
    for f in negatives:
        g = shape(f["geometry"])
        if not g.intersects(foot):
            continue
        color = VETOED_COLOR if (f.get("properties") or {}).get("keep", True) is False else NEGATIVE_COLOR
        local = to_pixels(g, tile.z, size, origin=(w.col, w.row))
        for part in getattr(local, "geoms", [local]):
            for ring in [part.exterior, *part.interiors]:
                pts = np.round(np.asarray(ring.coords)).astype(np.int32)  # a pixel edge -> the pixel after it: crisp 1-px lines
                cv2.polylines(rgb, [pts], True, color, 1, cv2.LINE_8)


def _write_index(out: Path, tiles: Sequence[Tile], layers: Sequence[str]) -> None:
    rows = []
    for t in tiles:
        cells = "".join(
            f'<td><img src="{layer}/{t.z}/{t.x}/{t.y}.png" width="256" height="256" title="{layer}"></td>' for layer in layers
        )
        rows.append(f"<tr><th>{t.z}/{t.x}/{t.y}</th>{cells}</tr>")
    head = "".join(f"<th>{html.escape(layer)}</th>" for layer in layers)
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>navml export</title>"
        f"<table><tr><th>tile</th>{head}</tr>{''.join(rows)}</table>\n"
    )


def tile_range(text: str) -> list[Tile]:
    """Tiles of ``z/x0/y0:z/x1/y1``, both corners included, row by row."""
    from navml.geo.grid import parse_tile

    try:
        a, b = (parse_tile(s) for s in text.split(":"))
    except ValueError as exc:
        raise ConfigError(f"--range '{text}': write it as z/x0/y0:z/x1/y1") from exc
    if a.z != b.z:
        raise ConfigError(f"--range '{text}': both ends need the same zoom")
    return [Tile(x, y, a.z) for y in range(min(a.y, b.y), max(a.y, b.y) + 1) for x in range(min(a.x, b.x), max(a.x, b.x) + 1)]


def select_tiles(
    zoom: int,
    index: str | Path,
    *,
    tiles: Sequence[str] = (),
    range_: str | None = None,
    bbox: str | None = None,
    split: str | None = None,
) -> list[Tile]:
    """The tiles to export: ``tiles`` (``z/x/y``) and ``range_``, or else the tiles of the ``index``.

    Index tiles can be narrowed to a ``split`` and to a ``bbox``
    (``west,south,east,north`` in degrees). Every tile must be at ``zoom``.
    """
    import shapely

    from navml.data.cover import read_aoi
    from navml.geo.grid import parse_tile, tile_polygon
    from navml.geo.tile_index import read_index, tiles_from_index

    chosen = [parse_tile(t) for t in tiles]
    if range_:
        chosen += tile_range(range_)
    if not chosen:
        chosen = tiles_from_index(read_index(index), split)
        if bbox:
            area = read_aoi(bbox)
            chosen = [t for t in chosen if shapely.intersects(area, tile_polygon(t))]
    if any(t.z != zoom for t in chosen):
        raise ConfigError(f"export: tiles must be at the store zoom {zoom}")
    return chosen


def read_boxes(store_root: str | Path) -> pd.DataFrame | None:
    """``boxes.csv`` of a store written by rasterize, or None when there is none."""
    path = Path(store_root) / "boxes.csv"
    return pd.read_csv(path) if path.exists() else None
