"""Stream an OSM file (.osm.pbf, .osm, .osm.bz2) into per-class area layers and turn-lane roads.

pyosmium reads the file twice (relations first, then everything) and
assembles areas from closed ways and multipolygon relations in C++. Node
coordinates live in pyosmium's node-location index (``index``: ``flex_mem``
in memory, ``sparse_file_array`` on disk for big files), never in Python; C++
filters drop every object whose keys no class asks for, so Python only sees
candidate ways, relations and areas. Memory in Python grows with the features
kept, not with the file.

A way or multipolygon relation that matches a class's tag filter but yields no
valid polygon (unclosed way, relation with a missing member or an open ring,
invalid geometry) is skipped and counted as ``skipped_broken``.

Detection classes take OSM features of every kind: nodes as Points, ways as
LineStrings (their bounding box is the box; a way with a missing node is
broken), multipolygon relations as areas. Their sub-class name comes from
``name_tag`` (through ``name_map``); a feature naming none of ``names`` is
written with ``label: false`` and counted as ``unnamed``. A segmentation class
feature mapped as a node (e.g. a parking lot as a point) has no outline: it is
counted as ``nodes_skipped``, not written.

Extracts are cut at their edges: a road whose nodes are partly outside the
file keeps the runs of consecutive nodes inside it (counted as ``partial``).
The file's extent (:attr:`OsmLayers.bounds`) is its header box when it has
one, else the bounding box of everything read grown by :data:`DATA_MARGIN_DEG`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import osmium
import shapely
from tqdm import tqdm

from navml.config import ClassSpec
from navml.data.labels import Layer, add_checked
from navml.data.roads import LANE_WIDTH_M, road_width_m
from navml.errors import ConfigError, InputError

#: Turn-lane tags: a ``highway`` way carrying one goes to roads.geojson whatever its type.
TURN_KEYS = ("turn:lanes", "turn:lanes:forward", "turn:lanes:backward")
#: ``highway`` values of carriageways (roads.geojson): the surfaces cars drive on.
ROAD_TYPES = frozenset(
    {"motorway", "trunk", "primary", "secondary", "tertiary", "unclassified", "residential", "service", "living_street", "road"}
    | {f"{t}_link" for t in ("motorway", "trunk", "primary", "secondary", "tertiary")}
)
#: Properties of a road feature (null when the way lacks the tag), besides ``osm_id``/``osm_type``/``width_m``.
ROAD_KEYS = ("highway", "lanes", "lanes:forward", "lanes:backward", "oneway", "width", *TURN_KEYS)
#: Relation types libosmium assembles into areas.
AREA_RELATION_TYPES = ("multipolygon", "boundary")
#: Output order of OSM types (features are sorted by type rank, then id).
TYPE_RANK = {"way": 0, "relation": 1, "node": 2}
TYPE_NAME = {v: k for k, v in TYPE_RANK.items()}
#: Margin (degrees, ~1 km) around the features read when a file has no header box: its extent is a guess.
DATA_MARGIN_DEG = 0.01
#: Geometries are parsed and checked (vectorized) in batches of this many features.
BATCH = 10_000


@dataclass
class OsmLayers:
    """What :func:`read_osm` found: one area layer per OSM class, the roads, bytes read."""

    classes: dict[str, Layer]
    roads: Layer
    bytes: int
    #: (west, south, east, north) degrees of the file's extent, or None when nothing was read.
    bounds: tuple[float, float, float, float] | None = None
    #: "header" (the file's own box) or "data" (bounding box of the features read).
    bounds_source: str = "data"


def check_index(index: str) -> str:
    """``index`` if pyosmium knows this node-location index type (``flex_mem``, ``sparse_file_array[,path]`` ...)."""
    kinds = osmium.index.map_types()
    if index.split(",", 1)[0] not in kinds:
        raise ConfigError(f"node-location index '{index}' (extract.index) is unknown; use one of {', '.join(sorted(kinds))}")
    return index


def check_osm_file(path: Path) -> int:
    """Size in bytes of an OSM file that exists and is not empty (content is checked while reading)."""
    if not path.exists():
        raise InputError(f"{path}: OSM file not found; check the path or download the extract (e.g. from download.geofabrik.de)")
    if not path.is_file():
        raise InputError(f"{path}: is not a file; pass an .osm.pbf, .osm or .osm.bz2 file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: OSM file is empty; re-download it")
    return size


def header_bounds(path: str | os.PathLike) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) of the OSM file's header box (PBF bbox, XML ``<bounds>``), or None."""
    try:
        reader = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING)
    except RuntimeError:
        return None
    try:
        b = reader.header().box()
        if not b.valid():
            return None
        return (b.bottom_left.lon, b.bottom_left.lat, b.top_right.lon, b.top_right.lat)
    finally:
        reader.close()


def osm_classes(classes: Sequence[ClassSpec]) -> list[ClassSpec]:
    """Classes whose labels come from OSM: an OSM tag filter and no own labels file (the file wins)."""
    return [c for c in classes if c.tags and not c.labels]


def read_osm(
    path: str | os.PathLike,
    classes: Sequence[ClassSpec],
    index: str = "flex_mem",
    progress: bool | None = None,
    lane_width_m: float = LANE_WIDTH_M,
) -> OsmLayers:
    """Areas of every OSM class and the roads (carriageways and ways with turn lanes), from OSM file ``path`` (WGS84).

    Area properties: ``osm_id``, ``osm_type`` (``way``/``relation``), ``tags``
    (all tags) and ``label`` (false when the class ``excluded`` the tags).
    Road properties: ``osm_id``, ``osm_type``, :data:`ROAD_KEYS` and ``width_m``
    (carriageway width in metres, :func:`navml.data.roads.road_width_m` with ``lane_width_m``).
    ``progress``: ``None`` shows a bar only on a terminal, ``False`` never.
    """
    path = Path(path)
    size = check_osm_file(path)
    check_index(index)
    specs = osm_classes(classes)
    seg_specs = [c for c in specs if c.task != "detection"]
    det_specs = [c for c in specs if c.task == "detection"]
    keys = sorted({k for c in specs for k in c.tags})
    layers = {c.name: Layer(c.name, "osm") for c in specs}
    roads = Layer("roads", "osm")
    # ids of matched ways [0] and multipolygon relations [1], and of those that became an area
    candidates: dict[str, tuple[set[int], set[int]]] = {c.name: (set(), set()) for c in specs}
    assembled: dict[str, tuple[set[int], set[int]]] = {c.name: (set(), set()) for c in specs}
    wkb = osmium.geom.WKBFactory()
    extent = _Extent()

    proc = osmium.FileProcessor(str(path)).with_locations(index)
    if keys:  # first pass: only relations with a class key become area candidates
        proc.with_areas(osmium.filter.KeyFilter(*keys))
    others = osmium.osm.WAY | osmium.osm.RELATION | osmium.osm.AREA
    proc.with_filter(osmium.filter.EntityFilter(others | osmium.osm.NODE if keys else others))
    proc.with_filter(osmium.filter.KeyFilter(*keys, "highway", *TURN_KEYS).enable_for(others))
    if keys:  # nodes: only those with a class key reach Python
        proc.with_filter(osmium.filter.KeyFilter(*keys).enable_for(osmium.osm.NODE))

    # (key, hex WKB, properties) per layer; parsed and checked in batches (vectorized shapely)
    raw: dict[str, list[tuple[tuple[int, int], str, dict[str, Any]]]] = {c.name: [] for c in specs}
    raw_roads: list[tuple[tuple[int, int], str, dict[str, Any]]] = []
    found = 0
    bar = _ReadProgress(path, size, passes=2 if keys else 1, disable=None if progress is None else not progress)
    try:
        for obj in _read(proc, path):
            if bar.due():
                bar.show(found)
            kind = obj.type_str()
            tags = obj.tags
            if kind == "a":
                # detection classes take ways as lines (below), areas only from relations
                matched = [c for c in (specs if not obj.from_way() else seg_specs) if c.matches(tags)]
                if not matched:
                    continue
                key = (0 if obj.from_way() else 1, obj.orig_id())
                try:
                    geom = wkb.create_multipolygon(obj)
                except (RuntimeError, osmium.InvalidLocationError):  # e.g. an open ring: "invalid area"
                    geom = None
                props_tags = {sys.intern(t.k): sys.intern(t.v) for t in tags}  # tag strings repeat a lot
                for spec in matched:
                    assembled[spec.name][key[0]].add(key[1])
                    if geom is None:
                        layers[spec.name].skipped_broken += 1
                        continue
                    props = {"osm_id": key[1], "osm_type": TYPE_NAME[key[0]], "tags": props_tags, "label": not spec.excluded(tags)}
                    if spec.task == "detection":
                        _name(props, spec, tags, layers[spec.name])
                    raw[spec.name].append((key, geom, props))
                    found += 1
                    if len(raw[spec.name]) >= BATCH:
                        _add_wkb(layers[spec.name], raw[spec.name])
            elif kind == "n":
                for spec in specs:
                    if not spec.matches(tags):
                        continue
                    if spec.task != "detection":
                        layers[spec.name].nodes_skipped += 1
                        continue
                    loc = obj.location
                    extent.add(loc.lon, loc.lat)
                    props = {"osm_id": obj.id, "osm_type": "node", "tags": {t.k: t.v for t in tags}, "label": not spec.excluded(tags)}
                    _name(props, spec, tags, layers[spec.name])
                    raw[spec.name].append(((2, obj.id), shapely.to_wkb(shapely.Point(loc.lon, loc.lat), hex=True), props))
                    found += 1
                    if len(raw[spec.name]) >= BATCH:
                        _add_wkb(layers[spec.name], raw[spec.name])
            elif kind == "w":
                for spec in seg_specs:
                    if spec.matches(tags):
                        candidates[spec.name][0].add(obj.id)
                for spec in det_specs:
                    if not spec.matches(tags):
                        continue
                    try:
                        line = wkb.create_linestring(obj)
                    except (RuntimeError, osmium.InvalidLocationError):  # a node outside the extract, fewer than 2 points
                        layers[spec.name].skipped_broken += 1
                        continue
                    props = {"osm_id": obj.id, "osm_type": "way", "tags": {t.k: t.v for t in tags}, "label": not spec.excluded(tags)}
                    _name(props, spec, tags, layers[spec.name])
                    raw[spec.name].append(((0, obj.id), line, props))
                    found += 1
                    if len(raw[spec.name]) >= BATCH:
                        _add_wkb(layers[spec.name], raw[spec.name])
                if "highway" in tags and (tags["highway"] in ROAD_TYPES or any(k in tags for k in TURN_KEYS)):
                    try:
                        line = wkb.create_linestring(obj)
                    except (RuntimeError, osmium.InvalidLocationError):  # missing nodes, fewer than 2 points
                        line = _inside_runs(obj)  # an extract cut at its edge: keep the part inside
                        if line is None:
                            roads.skipped_broken += 1
                            continue
                        roads.partial += 1
                    props = {"osm_id": obj.id, "osm_type": "way", **{k: tags.get(k) for k in ROAD_KEYS}}
                    props["width_m"] = road_width_m(props, lane_width_m)
                    raw_roads.append(((0, obj.id), line, props))
                    found += 1
                    if len(raw_roads) >= BATCH:
                        _add_wkb(roads, raw_roads)
            elif kind == "r" and tags.get("type") in AREA_RELATION_TYPES:
                for spec in specs:  # detection classes too: their multipolygons come as areas
                    if spec.matches(tags):
                        candidates[spec.name][1].add(obj.id)
    finally:
        bar.close(done=sys.exc_info()[0] is None)
    for name, layer in layers.items():
        _add_wkb(layer, raw[name])
        # matched ways/relations that never became an area: unclosed, incomplete or unassemblable
        layer.skipped_broken += sum(len(c - a) for c, a in zip(candidates[name], assembled[name], strict=True))
    _add_wkb(roads, raw_roads)
    for layer in [*layers.values(), roads]:
        for _, g, _ in layer.features:
            extent.add_bounds(g.bounds)
    box = header_bounds(path)
    return OsmLayers(classes=layers, roads=roads, bytes=size, bounds=box or extent.bounds(DATA_MARGIN_DEG), bounds_source="header" if box else "data")


def _name(props: dict[str, Any], spec: ClassSpec, tags: Any, layer: Layer) -> None:
    """Set ``kind`` (sub-class name) of a detection feature; one naming none of ``names`` is no label (``unnamed``)."""
    name = spec.name_of({t.k: t.v for t in tags} if not isinstance(tags, dict) else tags)
    props["kind"] = name
    if name is None:
        props["label"] = False
        layer.unnamed += 1
        value = tags.get(spec.name_tag) if spec.name_tag else None
        if value is not None:
            layer.unnamed_values[value] = layer.unnamed_values.get(value, 0) + 1


def _inside_runs(way: Any) -> str | None:
    """Hex WKB of the runs of 2+ consecutive nodes with a location (a way cut at the extract's edge), or None."""
    runs, run = [], []
    for n in way.nodes:
        if n.location.valid():
            pt = (n.location.lon, n.location.lat)
            if not run or run[-1] != pt:
                run.append(pt)
            continue
        if len(run) >= 2:
            runs.append(run)
        run = []
    if len(run) >= 2:
        runs.append(run)
    if not runs:
        return None
    geom = shapely.LineString(runs[0]) if len(runs) == 1 else shapely.MultiLineString(runs)
    return shapely.to_wkb(geom, hex=True)


class _Extent:
    """Running bounding box (degrees) of what was read."""

    def __init__(self) -> None:
        self.box = [np.inf, np.inf, -np.inf, -np.inf]

    def add(self, lon: float, lat: float) -> None:
        self.add_bounds((lon, lat, lon, lat))

    def add_bounds(self, b: tuple[float, float, float, float]) -> None:
        if not all(np.isfinite(b)):
            return
        self.box = [min(self.box[0], b[0]), min(self.box[1], b[1]), max(self.box[2], b[2]), max(self.box[3], b[3])]

    def bounds(self, margin: float = 0.0) -> tuple[float, float, float, float] | None:
        """The box grown by ``margin`` degrees on each side, or None when nothing was added."""
        if not np.isfinite(self.box[0]):
            return None
        w, s, e, n = self.box
        return (max(w - margin, -180.0), max(s - margin, -90.0), min(e + margin, 180.0), min(n + margin, 90.0))


def _add_wkb(layer: Layer, items: list[tuple[tuple[int, int], str, dict[str, Any]]]) -> None:
    """Parse the WKB of ``items`` in bulk, add the valid geometries to ``layer`` and empty ``items``."""
    if not items:
        return
    keys, wkbs, props = zip(*items, strict=True)
    items.clear()
    add_checked(layer, keys, shapely.from_wkb(np.asarray(wkbs, dtype=object), on_invalid="ignore"), props)


def _read(proc: osmium.FileProcessor, path: Path) -> Iterator[Any]:
    """The processor's objects; a read or parse error becomes an :class:`InputError` naming the file."""
    it = iter(proc)
    while True:
        try:
            obj = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{path}: cannot read OSM data ({reason}); the file is truncated or not an OSM file: re-download it or check the path"
            ) from exc
        yield obj


class _ReadProgress:
    """A tqdm bar over the bytes pyosmium has read (all passes); features found as postfix.

    pyosmium exposes no read offset, so the position of its file descriptor is
    read from /proc (Linux); elsewhere the bar only moves at the end. It can
    only move when pyosmium hands an object to Python.
    """

    def __init__(self, path: Path, size: int, passes: int, disable: bool | None) -> None:
        self.size = size
        self.passes = passes
        self.target = os.path.realpath(path)
        self.bar = tqdm(total=size * passes, unit="B", unit_scale=True, desc=f"extract {path.name}", disable=disable)
        self.next = 0.0

    def due(self) -> bool:
        """Whether a quarter second has passed since the last refresh."""
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + 0.25
        return True

    def show(self, found: int) -> None:
        pos = _fd_position(self.target)
        if pos is not None:  # objects only reach Python in the last pass
            self.bar.n = min(self.size * (self.passes - 1) + pos, self.bar.total)
        self.bar.set_postfix(features=str(found), refresh=False)
        self.bar.refresh()

    def close(self, done: bool) -> None:
        if done:
            self.bar.n = self.bar.total
            self.bar.refresh()
        self.bar.close()


def _fd_position(target: str) -> int | None:
    """Largest file offset of this process's open descriptors on ``target`` (Linux /proc), else None."""
    best = None
    try:
        for entry in os.scandir("/proc/self/fd"):
            try:
                if os.readlink(entry.path) != target:
                    continue
                with open(f"/proc/self/fdinfo/{entry.name}") as fh:
                    for line in fh:
                        if line.startswith("pos:"):
                            best = max(best or 0, int(line.split()[1]))
                            break
            except OSError:
                continue
    except OSError:
        return None
    return best
