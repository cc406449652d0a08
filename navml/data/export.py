"""Write store tiles to a slippy-map folder of PNGs a person can look at.

``<out>/<layer>/<z>/<x>/<y>.png`` for ``imagery``, ``masks`` (class colours),
``probs`` (grey levels) and ``overlay`` (imagery with mask outlines and
detection boxes), plus ``index.html`` showing them side by side.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from navml.errors import ConfigError
from navml.geo.grid import Tile
from navml.geo.store import Store

LAYERS = ("imagery", "masks", "probs", "overlay")


def colorize(mask: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """RGB image (rows, cols, 3) of a class-index mask; value ``i + 1`` gets ``colors[i]``."""
    lut = np.zeros((256, 3), dtype="uint8")
    for i, c in enumerate(colors):
        lut[i + 1] = c
    return lut[mask]


def overlay(image: np.ndarray, mask: np.ndarray, colors: Sequence[tuple[int, int, int]], boxes: pd.DataFrame, box_colors: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """Imagery (rows, cols, 3) with translucent class fills, their outlines and boxes."""
    out = image.copy()
    col = colorize(mask, colors)
    inside = mask > 0
    out[inside] = (0.6 * out[inside] + 0.4 * col[inside]).astype("uint8")
    for v in np.unique(mask):
        if v == 0:
            continue
        contours, _ = cv2.findContours((mask == v).astype("uint8"), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[v - 1]), 1)
    for b in boxes.itertuples():
        color = box_colors.get(int(b.class_id), (255, 0, 255))
        cv2.rectangle(out, (int(b.xmin), int(b.ymin)), (int(np.ceil(b.xmax)) - 1, int(np.ceil(b.ymax)) - 1), color, 1)
    return out


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), img)


def export_tiles(
    store: Store,
    tiles: Sequence[Tile],
    out: Path,
    *,
    layers: Sequence[str] = ("imagery", "masks", "overlay"),
    colors: Sequence[tuple[int, int, int]] = ((250, 200, 40),),
    boxes: pd.DataFrame | None = None,
    probs: Store | None = None,
    progress: bool = True,
) -> int:
    """Write ``tiles`` of the chosen ``layers`` as PNGs under ``out``; returns files written."""
    bad = [layer for layer in layers if layer not in LAYERS]
    if bad:
        raise ConfigError(f"export: unknown layer '{bad[0]}'; choose from {', '.join(LAYERS)}")
    if boxes is None:
        boxes = pd.DataFrame(columns=["z", "x", "y", "class_id", "xmin", "ymin", "xmax", "ymax"])
    palette = [(255, 64, 64), (64, 160, 255), (64, 255, 64), (255, 255, 64), (255, 64, 255), (64, 255, 255)]
    box_colors = {i: palette[i % len(palette)] for i in range(64)}
    by_tile = {k: g for k, g in boxes.groupby(["z", "x", "y"])} if len(boxes) else {}
    written = 0
    for t in tqdm(tiles, desc="export", unit="tile", disable=not progress):
        image = np.moveaxis(store.read_tile("imagery", t)[:3], 0, -1)
        mask = store.read_tile("masks", t)[0]
        name = f"{t.z}/{t.x}/{t.y}.png"
        for layer in layers:
            if layer == "imagery":
                rgb = image
            elif layer == "masks":
                rgb = colorize(mask, colors)
            elif layer == "probs":
                if probs is None:
                    raise ConfigError("export: layer 'probs' needs --probs (the predict store)")
                rgb = probs.read_tile("probs", t)[0]
            else:
                rgb = overlay(image, mask, colors, by_tile.get((t.z, t.x, t.y), boxes.iloc[0:0]), box_colors)
            _write_png(out / layer / name, rgb)
            written += 1
    _write_index(out, tiles, layers)
    return written


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
