"""The extract stage on small hand-written OSM data (XML and PBF) and own-label files."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import osmium
import pytest
import shapely
from osmium.osm.mutable import Node, Relation, Way
from pyproj import Geod, Transformer
from shapely.geometry import Point, Polygon, box, shape

from navml.config import parse_classes
from navml.data.extract import extract
from navml.data.labels import read_labels
from navml.errors import ConfigError, InputError

GEOD = Geod(ellps="WGS84")
LON, LAT = -104.99, 39.74  # Denver

CLASSES = {
    "parking": {
        "task": "segmentation",
        "tags": {"amenity": "parking"},
        "exclude": {"parking": ["underground", "multi-storey", "rooftop"]},
    },
}


def rect(first_id: int, x0: float, y0: float, w: float, h: float) -> dict[int, tuple[float, float]]:
    """Four corner nodes (ids first_id..first_id+3), counter-clockwise from the south-west, offsets in degrees."""
    pts = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    return {first_id + i: (round(LON + x, 7), round(LAT + y, 7)) for i, (x, y) in enumerate(pts)}


def ring(first_id: int) -> list[int]:
    return [first_id, first_id + 1, first_id + 2, first_id + 3, first_id]


# A small city: every case of the brief, once.
NODES = {
    **rect(1, 0.000, 0.000, 0.001, 0.0008),  # way 100: plain lot
    **rect(11, 0.003, 0.000, 0.002, 0.0016),  # way 101: outer of relation 300
    **rect(21, 0.0036, 0.0005, 0.0008, 0.0006),  # way 102: inner of relation 300
    **rect(31, 0.000, 0.003, 0.001, 0.001),  # way 103: only member present of relation 301
    **rect(41, 0.003, 0.003, 0.001, 0.001),  # way 104: open ring of relation 302
    **rect(51, 0.000, 0.006, 0.001, 0.001),  # way 105: unclosed way tagged amenity=parking
    **rect(61, 0.003, 0.006, 0.001, 0.001),  # way 106: underground lot
    **rect(71, 0.006, 0.006, 0.001, 0.001),  # way 107: a building
    **{81 + i: (round(LON + 0.002 * i, 7), round(LAT - 0.001, 7)) for i in range(4)},  # a street
}
WAYS = [
    (100, ring(1), {"amenity": "parking", "parking": "surface", "name": "Lot A"}),
    (101, ring(11), {}),
    (102, ring(21), {}),
    (103, ring(31), {}),
    (104, [41, 42, 43, 44], {}),
    (105, [51, 52, 53, 54], {"amenity": "parking"}),
    (106, ring(61), {"amenity": "parking", "parking": "underground"}),
    (107, ring(71), {"building": "yes"}),
    (200, [81, 82], {"highway": "primary", "lanes": "2", "turn:lanes": "left|through"}),
    (201, [82, 83], {"highway": "residential"}),
    (202, [83, 84], {"highway": "secondary", "turn:lanes:forward": "left|through;right"}),
    (203, [81, 84], {"turn:lanes": "left|through"}),  # no highway: not a road
    (204, [84, 81], {"highway": "footway"}),  # not a carriageway
]
RELATIONS = [
    (300, [("w", 101, "outer"), ("w", 102, "inner")], {"type": "multipolygon", "amenity": "parking"}),
    (301, [("w", 999, "outer"), ("w", 103, "outer")], {"type": "multipolygon", "amenity": "parking"}),
    (302, [("w", 104, "outer")], {"type": "multipolygon", "amenity": "parking"}),
]


def esc(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def tags_xml(tags: dict[str, str]) -> str:
    return "".join(f'<tag k="{esc(k)}" v="{esc(v)}"/>' for k, v in tags.items())


def write_osm_xml(path: Path, nodes=NODES, ways=WAYS, relations=RELATIONS) -> Path:
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", '<osm version="0.6" generator="navml-test">']
    lines += [f'<node id="{i}" version="1" lat="{lat}" lon="{lon}"/>' for i, (lon, lat) in sorted(nodes.items())]
    for wid, refs, tags in ways:
        lines.append(f'<way id="{wid}" version="1">' + "".join(f'<nd ref="{r}"/>' for r in refs) + tags_xml(tags) + "</way>")
    for rid, members, tags in relations:
        mem = "".join(f'<member type="{"way" if t == "w" else "node"}" ref="{r}" role="{role}"/>' for t, r, role in members)
        lines.append(f'<relation id="{rid}" version="1">{mem}{tags_xml(tags)}</relation>')
    lines.append("</osm>")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pbf(path: Path, nodes=NODES, ways=WAYS, relations=RELATIONS) -> Path:
    with osmium.SimpleWriter(str(path)) as w:
        for i, (lon, lat) in sorted(nodes.items()):
            w.add_node(Node(id=i, version=1, location=(lon, lat)))
        for wid, refs, tags in ways:
            w.add_way(Way(id=wid, version=1, nodes=refs, tags=tags))
        for rid, members, tags in relations:
            w.add_relation(Relation(id=rid, version=1, members=members, tags=tags))
    return path


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def by_id(features: list[dict]) -> dict[tuple[str, int], dict]:
    return {(f["properties"]["osm_type"], f["properties"]["osm_id"]): f for f in features}


def to_crs(geom, transformer: Transformer):
    return shapely.transform(geom, lambda c: np.column_stack(transformer.transform(c[:, 0], c[:, 1])))


def geod_area(geom) -> float:
    return abs(GEOD.geometry_area_perimeter(geom)[0])


@pytest.fixture
def classes():
    return parse_classes(CLASSES)


@pytest.fixture(params=["xml", "pbf"])
def city(request, tmp_path) -> Path:
    if request.param == "xml":
        return write_osm_xml(tmp_path / "city.osm")
    return write_pbf(tmp_path / "city.osm.pbf")


def test_areas_exclusions_and_broken_counts(city, classes, tmp_path):
    out = tmp_path / "out"
    summary = extract(city, classes, out, progress=False)
    feats = by_id(load(out / "parking.geojson"))
    # the plain lot, the multipolygon and the underground lot; nothing else
    assert sorted(feats) == [("relation", 300), ("way", 100), ("way", 106)]
    lot = feats[("way", 100)]
    assert lot["properties"]["label"] is True
    assert lot["properties"]["tags"] == {"amenity": "parking", "parking": "surface", "name": "Lot A"}
    assert shape(lot["geometry"]).equals(Polygon([NODES[i] for i in ring(1)]))
    assert shapely.Polygon(lot["geometry"]["coordinates"][0]).exterior.is_ccw  # RFC 7946 winding
    assert feats[("way", 106)]["properties"]["label"] is False  # parking=underground: kept, never a label
    # broken: relation 301 (missing member), relation 302 (open ring), way 105 (unclosed)
    assert summary["classes"]["parking"] == {"source": "osm", "kept": 2, "excluded": 1, "skipped_broken": 3}
    assert summary["totals"] == {"kept": 2, "excluded": 1, "skipped_broken": 3}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["classes"] == summary["classes"] and "seconds" not in on_disk and summary["seconds"] >= 0
    assert sorted(p.name for p in out.iterdir()) == ["parking.geojson", "roads.geojson", "summary.json"]


def test_multipolygon_hole_area(city, classes, tmp_path):
    extract(city, classes, tmp_path / "out", progress=False)
    mp = shape(by_id(load(tmp_path / "out" / "parking.geojson"))[("relation", 300)]["geometry"])
    assert mp.geom_type == "Polygon" and len(mp.interiors) == 1
    outer = Polygon([NODES[i] for i in ring(11)])
    inner = Polygon([NODES[i] for i in ring(21)])
    utm = Transformer.from_crs("EPSG:4326", "EPSG:32613", always_xy=True)  # local metric CRS (UTM 13N)
    expected = to_crs(outer, utm).area - to_crs(inner, utm).area
    assert 25_000 < expected < 26_500  # 171 m x 178 m minus 68 m x 67 m
    assert geod_area(mp) == pytest.approx(expected, rel=0.005)
    assert geod_area(mp) == pytest.approx(geod_area(outer) - geod_area(inner), rel=1e-6)
    assert not mp.contains(inner.centroid)
    assert mp.contains(Point(NODES[11][0] + 0.0001, NODES[11][1] + 0.0001))  # between outer and hole


def test_roads_are_carriageways_with_widths(city, classes, tmp_path):
    summary = extract(city, classes, tmp_path / "out", progress=False, lane_width_m=3.0)
    roads = by_id(load(tmp_path / "out" / "roads.geojson"))
    assert sorted(roads) == [("way", 200), ("way", 201), ("way", 202)]  # not the footway, not the untagged way
    assert [roads[("way", i)]["properties"]["width_m"] for i in (200, 201, 202)] == [6.0, 6.0, 6.0]
    p = roads[("way", 200)]["properties"]
    assert (p["highway"], p["lanes"], p["turn:lanes"], p["turn:lanes:forward"]) == ("primary", "2", "left|through", None)
    assert roads[("way", 202)]["properties"]["turn:lanes:forward"] == "left|through;right"
    assert roads[("way", 200)]["geometry"] == {"type": "LineString", "coordinates": [list(NODES[81]), list(NODES[82])]}
    assert summary["roads"]["kept"] == 3 and summary["roads"]["with_turn_lanes"] == 2 and summary["roads"]["skipped_broken"] == 0


def test_xml_and_pbf_give_identical_bytes_and_runs_are_deterministic(classes, tmp_path):
    xml = write_osm_xml(tmp_path / "city.osm")
    pbf = write_pbf(tmp_path / "city.osm.pbf")
    extract(xml, classes, tmp_path / "a", progress=False)
    extract(pbf, classes, tmp_path / "b", progress=False, index="sparse_file_array")
    extract(pbf, classes, tmp_path / "c", progress=False)
    for name in ("parking.geojson", "roads.geojson"):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_unclosed_way_alone_is_counted(classes, tmp_path):
    nodes = {i: NODES[i] for i in (51, 52, 53, 54)}
    osm = write_osm_xml(tmp_path / "one.osm", nodes, [WAYS[5]], [])
    summary = extract(osm, classes, tmp_path / "out", progress=False)
    assert load(tmp_path / "out" / "parking.geojson") == []
    assert summary["classes"]["parking"]["skipped_broken"] == 1


def test_bad_osm_files_raise_input_error_naming_the_file(classes, tmp_path):
    # a real pbf with enough data for several blocks, then cut in half
    nodes, ways = {}, []
    for i in range(4000):
        nodes.update(rect(4 * i + 1, (i % 100) * 2e-5, (i // 100) * 2e-5, 1e-5, 1e-5))
        ways.append((i + 1, ring(4 * i + 1), {"amenity": "parking"}))
    full = write_pbf(tmp_path / "full.osm.pbf", nodes, ways, [])
    data = full.read_bytes()
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "notes.osm.pbf"
    garbage.write_text("this is a text file, not OSM data\n" * 10)
    empty = tmp_path / "empty.osm.pbf"
    empty.write_bytes(b"")
    broken_xml = tmp_path / "broken.osm"
    broken_xml.write_text("<?xml version='1.0'?><osm version=\"0.6\"><node id=\"1\" lat=")
    for bad in (cut, garbage, empty, broken_xml, tmp_path / "missing.osm.pbf"):
        with pytest.raises(InputError) as err:
            extract(bad, classes, tmp_path / "out", progress=False)
        msg = str(err.value)
        assert str(bad) in msg and "\n" not in msg
        assert "re-download" in msg or "check the path" in msg
    assert not (tmp_path / "out").exists()
    assert summary_ok(extract(full, classes, tmp_path / "ok", progress=False))


def summary_ok(summary: dict) -> bool:
    return summary["classes"]["parking"]["kept"] == 4000


def test_bad_input_keeps_earlier_outputs(city, classes, tmp_path):
    out = tmp_path / "out"
    extract(city, classes, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.osm.pbf"
    bad.write_bytes(city.read_bytes()[:-1] if city.suffix == ".pbf" else b"\x00garbage")
    with pytest.raises(InputError):
        extract(bad, classes, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unknown_index_and_reserved_name_are_config_errors(city, classes, tmp_path):
    with pytest.raises(ConfigError, match="sparse_file_array"):
        extract(city, classes, tmp_path / "out", index="nope", progress=False)
    roads = parse_classes({"roads": {"task": "segmentation", "tags": {"highway": "*"}, "osm_tags": {"highway": "service"}}})
    with pytest.raises(ConfigError, match="roads"):
        extract(city, roads, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --- bring your own labels -------------------------------------------------

MARKINGS = {
    "parking": CLASSES["parking"],
    "turn_markings": {
        "task": "detection",
        "labels": "PLACEHOLDER",
        "label_field": "kind",
        "names": ["left", "right", "through"],
    },
}


def own_labels(path: Path, crs: str, driver: str, kinds=("left", "through", "right")) -> list:
    """Three labels near Denver written in ``crs``; returns their WGS84 geometries."""
    wgs = [
        box(LON, LAT, LON + 0.00002, LAT + 0.00003),
        box(LON + 0.001, LAT, LON + 0.00102, LAT + 0.00003),
        Point(LON + 0.002, LAT + 0.0001),
    ]
    to = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    projected = [to_crs(g, to) for g in wgs]
    gpd.GeoDataFrame({"kind": list(kinds), "score": [1, 2, 3]}, geometry=projected, crs=crs).to_file(path, driver=driver)
    return wgs


@pytest.mark.parametrize(
    "name,crs,driver", [("marks.geojson", "EPSG:4326", "GeoJSON"), ("marks.gpkg", "EPSG:32613", "GPKG"), ("m3857.geojson", "EPSG:3857", "GeoJSON")]
)
def test_own_labels_are_reprojected_and_written(name, crs, driver, tmp_path):
    path = tmp_path / name
    wgs = own_labels(path, crs, driver)
    spec = dict(MARKINGS)
    spec["turn_markings"] = {**MARKINGS["turn_markings"], "labels": str(path)}
    osm = write_osm_xml(tmp_path / "city.osm")
    summary = extract(osm, parse_classes(spec), tmp_path / "out", progress=False)
    feats = load(tmp_path / "out" / "turn_markings.geojson")
    assert [f["properties"] for f in feats] == [
        {"osm_id": None, "osm_type": None, "tags": {}, "label": True, "kind": k} for k in ("left", "through", "right")
    ]
    for f, g in zip(feats, wgs, strict=True):
        assert shape(f["geometry"]).equals_exact(g, tolerance=1e-6)
    assert summary["classes"]["turn_markings"] == {"source": str(path), "kept": 3, "excluded": 0, "skipped_broken": 0}
    assert summary["classes"]["parking"]["kept"] == 2  # OSM classes still come from the OSM file


def test_labels_file_wins_over_tags(tmp_path):
    path = tmp_path / "lots.geojson"
    gpd.GeoDataFrame(geometry=[box(LON, LAT, LON + 0.001, LAT + 0.001)], crs="EPSG:4326").to_file(path, driver="GeoJSON")
    spec = parse_classes({"parking": {**CLASSES["parking"], "labels": str(path)}})
    summary = extract(write_osm_xml(tmp_path / "city.osm"), spec, tmp_path / "out", progress=False)
    feats = load(tmp_path / "out" / "parking.geojson")
    assert len(feats) == 1 and feats[0]["properties"]["osm_id"] is None and "kind" not in feats[0]["properties"]
    assert summary["classes"]["parking"]["source"] == str(path)


def test_bad_labels_files_are_one_line_errors(tmp_path):
    spec = {**MARKINGS["turn_markings"]}
    good = tmp_path / "marks.geojson"
    own_labels(good, "EPSG:4326", "GeoJSON")
    no_field = parse_classes({"m": {**spec, "labels": str(good), "label_field": "type"}})[0]
    with pytest.raises(InputError, match=r"no attribute 'type'.*kind, score"):
        read_labels(no_field)
    garbage = tmp_path / "bad.geojson"
    garbage.write_text("{not json")
    for path, what in ((garbage, "cannot read"), (tmp_path / "none.gpkg", "not found")):
        with pytest.raises(InputError) as err:
            read_labels(parse_classes({"m": {**spec, "labels": str(path)}})[0])
        assert str(path) in str(err.value) and what in str(err.value) and "\n" not in str(err.value)
    odd = tmp_path / "odd.geojson"
    own_labels(odd, "EPSG:4326", "GeoJSON", kinds=("left", "u_turn", "right"))
    with pytest.raises(InputError, match="u_turn"):
        read_labels(parse_classes({"m": {**spec, "labels": str(odd)}})[0])


# --- command line ----------------------------------------------------------


def write_params(path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"classes": CLASSES, "extract": {"pbf": "unused.osm.pbf", "index": "flex_mem"}}))
    return path


def test_cli_writes_outputs_and_fails_cleanly(tmp_path):
    import typer
    from typer.testing import CliRunner

    from navml.cli.extract import command

    app = typer.Typer()
    app.command()(command)
    params = write_params(tmp_path / "params.yaml")
    runner = CliRunner()

    good = write_pbf(tmp_path / "city.osm.pbf")
    ok = runner.invoke(app, [str(good), "--params", str(params), "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "parking 2 kept, 1 excluded, 3 broken" in ok.output
    assert len(load(tmp_path / "out" / "parking.geojson")) == 3

    bad = tmp_path / "cut.osm.pbf"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    res = runner.invoke(app, [str(bad), "--params", str(params), "--out", str(tmp_path / "new")])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("navml: error: ") and str(bad) in lines[0]
    assert not (tmp_path / "new").exists()


# --- real extracts: cut at their edges, points, own labels only (issue 7) ---

DET_CLASSES = {
    "parking": CLASSES["parking"],
    "hydrant": {"task": "detection", "tags": {"emergency": "fire_hydrant"}, "box_m": 1.0},
    "arrow": {
        "task": "detection",
        "tags": {"road_marking": "arrow"},
        "names": ["left", "right", "through"],
        "name_tag": "direction",
        "name_map": {"slight_left": "left"},
        "box_m": [2.0, 5.0],
    },
}
# An extract cut at 0.004 deg east of LON: nodes beyond it are not in the file (osmium extract --strategy simple).
CUT_NODES = {
    **rect(1, 0.000, 0.000, 0.001, 0.0008),  # way 100: a lot
    **{k: v for k, v in rect(11, 0.0035, 0.000, 0.001, 0.001).items() if k in (11, 14)},  # way 101: a lot crossing the edge
    61: (round(LON + 0.0005, 7), round(LAT + 0.002, 7)),  # node: a hydrant
    62: (round(LON + 0.0010, 7), round(LAT + 0.002, 7)),  # node: a left arrow
    63: (round(LON + 0.0015, 7), round(LAT + 0.002, 7)),  # node: slight_left -> left
    64: (round(LON + 0.0020, 7), round(LAT + 0.002, 7)),  # node: a u_turn arrow: names none
    65: (round(LON + 0.0025, 7), round(LAT + 0.002, 7)),  # node: parking mapped as a point
    71: (round(LON + 0.0030, 7), round(LAT + 0.003, 7)),  # way 110: a through arrow drawn as a line
    72: (round(LON + 0.0030, 7), round(LAT + 0.00305, 7)),
    81: (round(LON + 0.0000, 7), round(LAT - 0.001, 7)),  # road 200: 81-82 inside, 83-84 outside, 85-86 inside again
    82: (round(LON + 0.0020, 7), round(LAT - 0.001, 7)),
    85: (round(LON + 0.0030, 7), round(LAT - 0.0012, 7)),
    86: (round(LON + 0.0035, 7), round(LAT - 0.0012, 7)),
    91: (round(LON + 0.0030, 7), round(LAT + 0.004, 7)),  # way 111: an arrow line with its 2nd node outside
}
CUT_WAYS = [
    (100, ring(1), {"amenity": "parking"}),
    (101, ring(11), {"amenity": "parking"}),  # two of its four nodes are outside: broken
    (110, [71, 72], {"road_marking": "arrow", "direction": "through"}),
    (111, [91, 92], {"road_marking": "arrow", "direction": "left"}),
    (200, [81, 82, 83, 84, 85, 86], {"highway": "primary", "lanes": "2"}),
    (201, [83, 84], {"highway": "residential"}),  # entirely outside
]
CUT_BOUNDS = (LON - 0.001, LAT - 0.002, LON + 0.004, LAT + 0.005)


def write_cut_xml(path: Path, bounds=CUT_BOUNDS) -> Path:
    node_tags = {
        61: {"emergency": "fire_hydrant"},
        62: {"road_marking": "arrow", "direction": "left"},
        63: {"road_marking": "arrow", "direction": "slight_left"},
        64: {"road_marking": "arrow", "direction": "u_turn"},
        65: {"amenity": "parking"},
    }
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", '<osm version="0.6" generator="osmium/1.16">']
    if bounds:
        w, s, e, n = bounds
        lines.append(f'<bounds minlat="{s}" minlon="{w}" maxlat="{n}" maxlon="{e}"/>')
    for i, (lon, lat) in sorted(CUT_NODES.items()):
        lines.append(f'<node id="{i}" version="1" lat="{lat}" lon="{lon}">{tags_xml(node_tags.get(i, {}))}</node>')
    for wid, refs, tags in CUT_WAYS:
        lines.append(f'<way id="{wid}" version="1">' + "".join(f'<nd ref="{r}"/>' for r in refs) + tags_xml(tags) + "</way>")
    lines.append("</osm>")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cut_extract_points_lines_and_names(tmp_path):
    osm = write_cut_xml(tmp_path / "cut.osm")
    summary = extract(osm, parse_classes(DET_CLASSES), tmp_path / "out", progress=False)
    parking = summary["classes"]["parking"]
    assert (parking["kept"], parking["skipped_broken"], parking["nodes_skipped"]) == (1, 1, 1)  # way 101 cut; node 65 a point
    hyd = load(tmp_path / "out" / "hydrant.geojson")
    assert [(f["properties"]["osm_type"], f["properties"]["osm_id"], f["properties"]["kind"]) for f in hyd] == [("node", 61, "hydrant")]
    assert hyd[0]["geometry"] == {"type": "Point", "coordinates": list(CUT_NODES[61])}
    arrows = load(tmp_path / "out" / "arrow.geojson")
    got = [(f["properties"]["osm_type"], f["properties"]["osm_id"], f["properties"]["kind"], f["properties"]["label"]) for f in arrows]
    assert got == [("way", 110, "through", True), ("node", 62, "left", True), ("node", 63, "left", True), ("node", 64, None, False)]
    assert arrows[0]["geometry"]["type"] == "LineString"
    a = summary["classes"]["arrow"]
    assert (a["kept"], a["excluded"], a["unnamed"], a["unnamed_values"], a["skipped_broken"]) == (3, 0, 1, {"u_turn": 1}, 1)  # way 111 cut
    notes = " | ".join(summary["notes"])
    assert "1 OSM features name none of classes.arrow.names with direction: u_turn (1)" in notes
    assert "'parking': 1 OSM features are mapped as points" in notes
    # the road crossing the edge keeps its two runs inside the file; the road entirely outside is broken
    roads = by_id(load(tmp_path / "out" / "roads.geojson"))
    assert sorted(roads) == [("way", 200)]
    g = shape(roads[("way", 200)]["geometry"])
    assert g.geom_type == "MultiLineString" and [list(map(tuple, p.coords)) for p in g.geoms] == [
        [CUT_NODES[81], CUT_NODES[82]], [CUT_NODES[85], CUT_NODES[86]]]
    assert (summary["roads"]["partial"], summary["roads"]["skipped_broken"]) == (1, 1)
    assert summary["input"]["bounds"] == [round(v, 7) for v in CUT_BOUNDS] and summary["input"]["bounds_source"] == "header"


def test_several_names_from_osm_need_a_name_tag():
    bad = {"arrow": {**DET_CLASSES["arrow"]}}
    del bad["arrow"]["name_tag"], bad["arrow"]["name_map"]
    with pytest.raises(ConfigError, match="name_tag"):
        parse_classes(bad)
    with pytest.raises(ConfigError, match="not one of names"):
        parse_classes({"arrow": {**DET_CLASSES["arrow"], "name_map": {"slight_left": "sharp_left"}}})
    with pytest.raises(ConfigError, match="box_m"):
        parse_classes({"hydrant": {**DET_CLASSES["hydrant"], "box_m": [0, 2]}})
    with pytest.raises(ConfigError, match="detection classes only"):
        parse_classes({"parking": {**CLASSES["parking"], "box_m": 2}})


def test_own_labels_only_need_no_osm_file(tmp_path):
    path = tmp_path / "marks.geojson"
    own_labels(path, "EPSG:4326", "GeoJSON")
    lots = tmp_path / "lots.geojson"
    gpd.GeoDataFrame(geometry=[box(LON, LAT, LON + 0.001, LAT + 0.001)], crs="EPSG:4326").to_file(lots, driver="GeoJSON")
    spec = {"parking": {**CLASSES["parking"], "labels": str(lots)}, "turn_markings": {**MARKINGS["turn_markings"], "labels": str(path)}}
    summary = extract(None, parse_classes(spec), tmp_path / "out", progress=False)
    assert summary["classes"]["turn_markings"]["kept"] == 3 and summary["classes"]["parking"]["kept"] == 1
    assert summary["input"] == {"path": None, "bytes": 0, "bounds": None, "bounds_source": "none"}
    assert load(tmp_path / "out" / "roads.geojson") == [] and summary["roads"]["source"] == "none"
    # a class from OSM without an OSM file is an error, not an empty result
    with pytest.raises(ConfigError, match="class 'parking' takes its features from OSM"):
        extract(None, parse_classes({**spec, "parking": CLASSES["parking"]}), tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_missing_labels_file_skips_the_class_unless_asked_for(tmp_path):
    """A fresh clone: the default turn_markings labels (written by synth) do not exist yet."""
    osm = write_osm_xml(tmp_path / "their_city.osm")
    spec = {**MARKINGS, "turn_markings": {**MARKINGS["turn_markings"], "labels": str(tmp_path / "synth" / "markings.geojson")}}
    classes = parse_classes(spec)
    summary = extract(osm, classes, tmp_path / "out", progress=False)
    assert summary["classes"]["turn_markings"]["skipped"].startswith("labels file ") and summary["classes"]["parking"]["kept"] == 2
    assert load(tmp_path / "out" / "turn_markings.geojson") == []  # later stages still see the whole registry
    assert len(summary["notes"]) == 1 and "--class turn_markings" in summary["notes"][0]
    with pytest.raises(InputError, match="labels file of class 'turn_markings' not found"):
        extract(osm, classes, tmp_path / "new", progress=False, required=["turn_markings"])
    with pytest.raises(ConfigError, match="--class 'nope'"):
        extract(osm, classes, tmp_path / "new", progress=False, required=["nope"])
    only = parse_classes({"turn_markings": spec["turn_markings"]})
    with pytest.raises(InputError, match="nothing to extract"):
        extract(osm, only, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_labels_of_another_city_are_dropped_not_carried(tmp_path):
    """Default turn_markings labels are in Denver; the user's OSM file is a Berlin extract."""
    berlin = (13.40, 52.50, 13.42, 52.52)
    nodes = {1: (13.401, 52.501), 2: (13.404, 52.501), 3: (13.404, 52.502), 4: (13.401, 52.502)}
    xml = ["<?xml version='1.0'?>", '<osm version="0.6">', f'<bounds minlat="{berlin[1]}" minlon="{berlin[0]}" maxlat="{berlin[3]}" maxlon="{berlin[2]}"/>']
    xml += [f'<node id="{i}" version="1" lat="{lat}" lon="{lon}"/>' for i, (lon, lat) in nodes.items()]
    xml += ['<way id="1" version="1"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="1"/><tag k="amenity" v="parking"/></way>', "</osm>"]
    osm = tmp_path / "berlin.osm"
    osm.write_text("\n".join(xml) + "\n")
    denver = tmp_path / "markings.geojson"
    own_labels(denver, "EPSG:4326", "GeoJSON")
    spec = {**MARKINGS, "turn_markings": {**MARKINGS["turn_markings"], "labels": str(denver)}}
    summary = extract(osm, parse_classes(spec), tmp_path / "out", progress=False)
    tm = summary["classes"]["turn_markings"]
    assert tm["outside"] == 3 and tm["kept"] == 0 and "no label inside the OSM file" in tm["skipped"]
    assert load(tmp_path / "out" / "turn_markings.geojson") == []
    assert any("none of its 3 labels" in n for n in summary["notes"])
    with pytest.raises(InputError, match="none of the labels of class 'turn_markings' lies in"):
        extract(osm, parse_classes(spec), tmp_path / "new", progress=False, required=["turn_markings"])
    # a PBF without a header box: its extent is that of the data read (plus ~1 km)
    pbf = write_pbf(tmp_path / "berlin.osm.pbf", nodes, [(1, [1, 2, 3, 4, 1], {"amenity": "parking"})], [])
    summary = extract(pbf, parse_classes(spec), tmp_path / "out_pbf", progress=False)
    assert summary["input"]["bounds_source"] == "data" and summary["classes"]["turn_markings"]["outside"] == 3
    w, s, e, n = summary["input"]["bounds"]
    assert (w, s, e, n) == pytest.approx((13.401 - 0.01, 52.501 - 0.01, 13.404 + 0.01, 52.502 + 0.01))
    # labels partly inside: the others are dropped and counted
    mixed = tmp_path / "mixed.geojson"
    gpd.GeoDataFrame({"kind": ["left", "right"]}, geometry=[Point(13.41, 52.51), Point(LON, LAT)], crs="EPSG:4326").to_file(mixed, driver="GeoJSON")
    spec["turn_markings"]["labels"] = str(mixed)
    summary = extract(osm, parse_classes(spec), tmp_path / "out2", progress=False)
    assert (summary["classes"]["turn_markings"]["kept"], summary["classes"]["turn_markings"]["outside"]) == (1, 1)
    assert [f["properties"]["kind"] for f in load(tmp_path / "out2" / "turn_markings.geojson")] == ["left"]
    assert any("1 labels of" in n and "were dropped" in n for n in summary["notes"])


def test_cli_class_option_notes_and_own_labels_without_pbf(tmp_path):
    import typer
    import yaml
    from typer.testing import CliRunner

    from navml.cli.extract import command

    app = typer.Typer()
    app.command()(command)
    marks = tmp_path / "marks.geojson"
    own_labels(marks, "EPSG:4326", "GeoJSON")
    params = tmp_path / "params.yaml"
    classes = {**MARKINGS, "turn_markings": {**MARKINGS["turn_markings"], "labels": "missing/markings.geojson"}}
    params.write_text(yaml.safe_dump({"classes": classes, "extract": {"pbf": "", "index": "flex_mem"}}))
    runner = CliRunner()
    city = write_pbf(tmp_path / "their_city.osm.pbf")
    ok = runner.invoke(app, [str(city), "--params", str(params), "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "navml: note: class 'turn_markings' skipped" in ok.output and "turn_markings skipped" in ok.output
    res = runner.invoke(app, [str(city), "--params", str(params), "--out", str(tmp_path / "new"), "--class", "turn_markings"])
    assert res.exit_code == 1 and "labels file of class 'turn_markings' not found" in res.output
    # own labels only, extract.pbf "": no OSM file at all
    classes = {"turn_markings": {**MARKINGS["turn_markings"], "labels": str(marks)}}
    params.write_text(yaml.safe_dump({"classes": classes, "extract": {"pbf": "", "index": "flex_mem"}}))
    res = runner.invoke(app, ["--params", str(params), "--out", str(tmp_path / "own")])
    assert res.exit_code == 0, res.output
    assert len(load(tmp_path / "own" / "turn_markings.geojson")) == 3
