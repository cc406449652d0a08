"""The ``extract`` stage: OSM file + class registry -> one WGS84 GeoJSON per class, roads, summary.

Writes into ``out``:

* ``<class>.geojson`` for every class: OSM areas (:func:`navml.data.osm.read_osm`)
  or the class's own labels file (:func:`navml.data.labels.read_labels`; a class
  with both uses the file);
* ``roads.geojson``: carriageways and ``highway`` ways with ``turn:lanes*``
  tags (LineStrings), with their width ``width_m``;
* ``summary.json``: per class ``source``, ``kept``, ``excluded``,
  ``skipped_broken``; the same for roads; ``totals`` over the classes;
  ``input`` and ``index``. Identical runs write identical bytes, so DVC sees
  no change downstream (the run time is in the returned summary only).

All inputs are read before anything is written; the files are then written
into a temporary folder inside ``out`` and renamed into place, so a bad input
leaves earlier outputs untouched and never leaves partial files. Features are
sorted (ways before relations, then by id; own labels in file order) and
written with sorted keys, so the same input gives byte-identical GeoJSON.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from navml.config import ClassSpec
from navml.errors import ConfigError
from navml.data.labels import Layer, read_labels
from navml.data.osm import TURN_KEYS, check_index, check_osm_file, read_osm
from navml.data.roads import LANE_WIDTH_M
from navml.geo.features import write_features

log = logging.getLogger(__name__)

#: Output names a class may not take.
RESERVED = ("roads", "summary")
COUNTS = ("kept", "excluded", "skipped_broken")


def check_class_names(classes: Sequence[ClassSpec]) -> None:
    """Every class can be written as ``<name>.geojson`` without clashing with ``roads``/``summary``."""
    for c in classes:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", c.name) or c.name in RESERVED:
            raise ConfigError(
                f"params: class name 'classes.{c.name}' cannot be a file name here; use letters, digits, '_', '-' and not {RESERVED}"
            )
        if not c.tags and not c.labels:
            raise ConfigError(f"params: 'classes.{c.name}' needs 'tags' (an OSM tag filter) or 'labels' (a vector file)")


def extract(
    pbf: str | os.PathLike,
    classes: Sequence[ClassSpec],
    out: str | os.PathLike,
    index: str = "flex_mem",
    progress: bool | None = None,
    lane_width_m: float = LANE_WIDTH_M,
) -> dict[str, Any]:
    """Write ``<class>.geojson``, ``roads.geojson`` and ``summary.json`` into ``out``; return the summary.

    ``pbf``: any file pyosmium reads (.osm.pbf, .osm, .osm.bz2). ``index``:
    pyosmium node-location index (``flex_mem``; ``sparse_file_array`` for
    country-sized files). ``lane_width_m``: metres per lane for roads without
    a ``width`` tag (roads.geojson ``width_m``). Own labels files are read first so that a bad one
    fails before the long OSM pass.
    """
    start = time.perf_counter()
    out = Path(out)
    check_class_names(classes)
    check_index(index)
    check_osm_file(Path(pbf))
    own = {c.name: read_labels(c) for c in classes if c.labels}
    if not 0.0 < float(lane_width_m) <= 10.0:
        raise ConfigError(f"params: 'extract.lane_width_m' is {lane_width_m}; use metres, e.g. 3.5")
    osm = read_osm(pbf, classes, index=index, progress=progress, lane_width_m=float(lane_width_m))
    layers = [own[c.name] if c.name in own else osm.classes[c.name] for c in classes]
    summary: dict[str, Any] = {
        "input": {"path": str(pbf), "bytes": osm.bytes},
        "index": index,
        "classes": {layer.name: layer.counts() for layer in layers},
        "roads": {**osm.roads.counts(), "with_turn_lanes": sum(1 for _, _, p in osm.roads.features if any(p.get(k) for k in TURN_KEYS))},
        "totals": {k: sum(getattr(layer, k) for layer in layers) for k in COUNTS},
    }
    write_outputs(out, [*layers, osm.roads], summary)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    log.info(format_summary(summary, out))
    return summary


def write_outputs(out: Path, layers: Sequence[Layer], summary: dict[str, Any]) -> list[Path]:
    """Write ``<layer>.geojson`` per layer and ``summary.json`` into a temp folder in ``out``, then rename each into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out))
    try:
        for layer in layers:
            write_features(layer.sorted_features(), tmp / f"{layer.name}.geojson")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        written = []
        for name in [f"{layer.name}.geojson" for layer in layers] + ["summary.json"]:
            os.replace(tmp / name, out / name)
            written.append(out / name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_summary(summary: dict[str, Any], out: str | os.PathLike) -> str:
    """The one-line report of an extract run."""
    parts = []
    for name, c in summary["classes"].items():
        src = "" if c["source"] == "osm" else " (own labels)"
        parts.append(f"{name} {c['kept']} kept, {c['excluded']} excluded, {c['skipped_broken']} broken{src}")
    r = summary["roads"]
    parts.append(f"roads {r['kept']} ({r['with_turn_lanes']} with turn lanes), {r['skipped_broken']} broken")
    return f"extract: {'; '.join(parts)}; {summary['seconds']:.1f} s -> {out}"
