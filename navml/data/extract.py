"""The ``extract`` stage: OSM file + class registry -> one WGS84 GeoJSON per class, roads, summary.

Writes into ``out``:

* ``<class>.geojson`` for every class: OSM areas (:func:`navml.data.osm.read_osm`)
  or the class's own labels file (:func:`navml.data.labels.read_labels`; a class
  with both uses the file);
* ``roads.geojson``: carriageways and ``highway`` ways with ``turn:lanes*``
  tags (LineStrings), with their width ``width_m``;
* ``summary.json``: per class ``source``, ``kept``, ``excluded``,
  ``skipped_broken`` (and, when not zero, ``nodes_skipped``, ``unnamed``,
  ``outside``; ``skipped`` with the reason for a class skipped); the same for
  roads (with ``partial``); ``totals`` over the classes; ``input`` (path,
  bytes, extent) and ``index``; ``notes``. Identical runs write identical
  bytes, so DVC sees no change downstream (the run time is in the returned
  summary only).

Real inputs (see docs/classes.md):

* no OSM file is needed when every class to extract has its own labels;
* a class whose labels file is missing, or whose labels all lie outside the
  OSM file's extent, is an error when it was asked for (``required``, the CLI's
  ``--class``), otherwise a one-line note and the class is *skipped*: an empty
  ``<class>.geojson`` and ``skipped`` in the summary, so later stages still see
  the whole registry;
* own labels outside the OSM file's extent (its header box, else the bounding
  box of what was read) are dropped and counted (``outside``): a default labels
  file of another city never lands in yours.

All inputs are read before anything is written; the files are then written
into a temporary folder inside ``out`` and renamed into place, so a bad input
leaves earlier outputs untouched and never leaves partial files. Features are
sorted (ways before relations, then by id; own labels in file order) and
written with sorted keys, so the same input gives byte-identical GeoJSON.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from navml.config import ExtractParams
from navml.io import write_json
from navml.config import ClassSpec
from navml.data.labels import Layer, read_labels
from navml.data.osm import TURN_KEYS, OsmLayers, check_index, check_osm_file, read_osm
from navml.data.roads import LANE_WIDTH_M
from navml.errors import ConfigError, InputError
from navml.geo.features import write_features

log = logging.getLogger(__name__)

#: Defaults of the keyword arguments below: the params model's, written once there.
_EXTRACT = ExtractParams()


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
    pbf: str | os.PathLike | None,
    classes: Sequence[ClassSpec],
    out: str | os.PathLike,
    index: str = _EXTRACT.index,
    progress: bool | None = None,
    lane_width_m: float = _EXTRACT.lane_width_m,
    required: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``<class>.geojson``, ``roads.geojson`` and ``summary.json`` into ``out``; return the summary.

    ``pbf``: any file pyosmium reads (.osm.pbf, .osm, .osm.bz2), or None when
    every class to extract has its own labels. ``index``: pyosmium
    node-location index (``flex_mem``; ``sparse_file_array`` for
    country-sized files). ``lane_width_m``: metres per lane for roads without
    a ``width`` tag (roads.geojson ``width_m``). ``required``: names of
    classes that must be extracted (a missing labels file or OSM file is an
    error for them, a note and a skipped class for the others; with none
    given, classes taken from OSM still need the OSM file). Own labels files
    are read first so that a bad one fails before the long OSM pass.
    """
    start = time.perf_counter()
    out = Path(out)
    check_class_names(classes)
    check_index(index)
    names = [c.name for c in classes]
    unknown = [r for r in required if r not in names]
    if unknown:
        raise ConfigError(f"--class '{unknown[0]}' is not a class of the registry (classes: {', '.join(names)})")
    required = set(required)
    if not 0.0 < float(lane_width_m) <= 10.0:
        raise ConfigError(f"params: 'extract.lane_width_m' is {lane_width_m}; use metres, e.g. 3.5")
    if pbf is not None and str(pbf) != "":
        check_osm_file(Path(pbf))
    else:
        pbf = None
    skipped: dict[str, str] = {}
    notes: list[str] = []
    own: dict[str, Layer] = {}
    for c in classes:
        if not c.labels:
            continue
        if not Path(c.labels).is_file() and c.name not in required:
            skipped[c.name] = f"labels file {c.labels} not found"
            notes.append(f"class '{c.name}' skipped: its labels file {c.labels} (classes.{c.name}.labels) is not there; --class {c.name} makes this an error")
            continue
        own[c.name] = read_labels(c)
    from_osm = [c for c in classes if not c.labels]
    if pbf is None:
        for c in from_osm:
            if c.name in required or not required:
                raise ConfigError(
                    f"class '{c.name}' takes its features from OSM: pass an OSM file (navml extract city.osm.pbf, or extract.pbf) "
                    f"or give it own labels (classes.{c.name}.labels)"
                )
            skipped[c.name] = "no OSM file"
            notes.append(f"class '{c.name}' skipped: it takes its features from OSM and no OSM file was given")
        osm = OsmLayers(classes={}, roads=Layer("roads", "none"), bytes=0, bounds=None, bounds_source="none")
    else:
        osm = read_osm(pbf, classes, index=index, progress=progress, lane_width_m=float(lane_width_m))
        for name, layer in own.items():
            why = clip_to_bounds(layer, osm.bounds)
            if why is None:
                continue
            if not layer.kept and not layer.excluded:
                if name in required:
                    raise InputError(f"{layer.source}: none of the labels of class '{name}' lies in {pbf} ({why}); use labels of this city or another OSM file")
                skipped[name] = f"no label inside the OSM file ({why})"
                notes.append(f"class '{name}' skipped: none of its {layer.outside} labels in {layer.source} lies in {pbf} ({why}); --class {name} makes this an error")
            else:
                notes.append(f"class '{name}': {layer.outside} labels of {layer.source} lie outside {pbf} ({why}) and were dropped")
    for c in classes:
        layer = osm.classes.get(c.name)
        if layer is not None and layer.unnamed:
            vals = ", ".join(f"{k} ({v})" for k, v in sorted(layer.unnamed_values.items())) or "no value"
            notes.append(f"class '{c.name}': {layer.unnamed} OSM features name none of classes.{c.name}.names with {c.name_tag}: {vals}; written as label: false (map them in classes.{c.name}.name_map)")
        if layer is not None and layer.nodes_skipped:
            notes.append(f"class '{c.name}': {layer.nodes_skipped} OSM features are mapped as points (nodes), not areas; they are not labels")
    if len(skipped) == len(classes):
        raise InputError(f"nothing to extract: every class was skipped ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    layers = [own[c.name] if c.name in own else Layer(c.name, c.labels or "osm") if c.name in skipped else osm.classes[c.name] for c in classes]
    counts = {layer.name: layer.counts() for layer in layers}
    for name, why in skipped.items():
        counts[name]["skipped"] = why
    summary: dict[str, Any] = {
        "input": {
            "path": None if pbf is None else str(pbf),
            "bytes": osm.bytes,
            "bounds": None if osm.bounds is None else [round(v, 7) for v in osm.bounds],
            "bounds_source": osm.bounds_source,
        },
        "index": index,
        "classes": counts,
        "roads": {
            **osm.roads.counts(),
            "partial": osm.roads.partial,
            "with_turn_lanes": sum(1 for _, _, p in osm.roads.features if any(p.get(k) for k in TURN_KEYS)),
        },
        "totals": {k: sum(getattr(layer, k) for layer in layers) for k in COUNTS},
        "notes": notes,
    }
    write_outputs(out, [*layers, osm.roads], summary)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    log.info(format_summary(summary, out))
    return summary


def clip_to_bounds(layer: Layer, bounds: tuple[float, float, float, float] | None) -> str | None:
    """Drop the features of ``layer`` that do not touch ``bounds`` (degrees), counted in ``outside``; the extent in words, or None when none was dropped."""
    if bounds is None or not layer.features:
        return None
    area = shapely.box(*bounds)
    geoms = np.asarray([g for _, g, _ in layer.features], dtype=object)
    inside = shapely.intersects(geoms, area)
    if inside.all():
        return None
    layer.outside += int((~inside).sum())
    keep = [f for f, ok in zip(layer.features, inside, strict=True) if ok]
    layer.features = keep
    layer.kept = sum(1 for _, _, p in keep if p.get("label", True))
    layer.excluded = len(keep) - layer.kept
    w, s, e, n = bounds
    return f"extent {w:.5f},{s:.5f},{e:.5f},{n:.5f}"


def write_outputs(out: Path, layers: Sequence[Layer], summary: dict[str, Any]) -> list[Path]:
    """Write ``<layer>.geojson`` per layer and ``summary.json`` into a temp folder in ``out``, then rename each into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out))
    try:
        for layer in layers:
            write_features(layer.sorted_features(), tmp / f"{layer.name}.geojson")
        write_json(tmp / "summary.json", summary)
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
        if c.get("skipped"):
            parts.append(f"{name} skipped")
            continue
        src = "" if c["source"] == "osm" else " (own labels)"
        extra = "".join(f", {c[k]} {k.replace('_', ' ')}" for k in ("nodes_skipped", "unnamed", "outside") if c.get(k))
        parts.append(f"{name} {c['kept']} kept, {c['excluded']} excluded, {c['skipped_broken']} broken{extra}{src}")
    r = summary["roads"]
    cut = f", {r['partial']} cut at the file's edge" if r.get("partial") else ""
    parts.append(f"roads {r['kept']} ({r['with_turn_lanes']} with turn lanes), {r['skipped_broken']} broken{cut}")
    return f"extract: {'; '.join(parts)}; {summary['seconds']:.1f} s -> {out}"
