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
from navml.errors import ConfigError, InputError
from navml.data.extract import extract
from navml.data.labels import read_labels

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
    from typer.testing import CliRunner

    import typer

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
