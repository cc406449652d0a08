import json
import math
import re

import osmium
import pytest
import shapely
from conftest import PARKING, navml
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box

from navml.errors import ConfigError, InputError
from navml.geo.features import read_features, write_features
from navml.post.dedupe import dedupe, overlaps
from navml.post.josm import osm_xml

LON0, LAT0 = -104.99, 39.74


def m(geom):
    """Local metres (x east, y north) around LON0, LAT0 -> WGS84."""
    return shapely.transform(
        geom, lambda c: c * [1 / (111320 * math.cos(math.radians(LAT0))), 1 / 110574] + [LON0, LAT0]
    )


def feat(geom, **props):
    return {"geometry": m(geom), "properties": props}


@pytest.fixture
def scene():
    """Existing OSM lots and predictions, hand-made in metres."""
    existing = [
        feat(box(0, 0, 40, 30), osm_id=1, osm_type="way", tags={"amenity": "parking"}, label=True),  # A
        feat(box(100, 0, 130, 30), osm_id=2, osm_type="way", tags={}, label=True),  # B
        feat(box(160, 0, 190, 30), osm_id=3, osm_type="way", tags={}, label=True),  # C: next to B
        feat(box(300, 0, 340, 40), osm_id=4, osm_type="way", tags={"parking": "underground"}, label=False),  # D: not a label
        feat(Point(405, 15), osm_id=5, osm_type="node", tags={}, label=True),  # a lot mapped as a node
    ]
    preds = [
        feat(box(4, 3, 44, 33), **{"class": "parking", "area_m2": 1200.0, "score": 0.9}),  # ~A shifted: share 0.81
        feat(box(0, 100, 40, 130), **{"class": "parking", "area_m2": 1200.0, "score": 0.8}),  # nowhere: new
        feat(box(115, 0, 175, 30), **{"class": "parking", "area_m2": 1800.0, "score": 0.7}),  # half on B, half on C... 30/60
        feat(box(20, 0, 60, 30), **{"class": "parking", "area_m2": 1200.0, "score": 0.6}),  # half on A: share 0.5, IoU 1/3
        feat(box(300, 0, 340, 40), **{"class": "parking", "area_m2": 1600.0, "score": 0.5}),  # exactly the underground one
        feat(box(390, 0, 420, 30), **{"class": "parking", "area_m2": 900.0, "score": 0.5}),  # holds the node
        feat(Polygon(box(500, 0, 560, 60).exterior, [box(520, 20, 540, 40).exterior.coords]), **{"class": "parking", "area_m2": 3200.0, "score": 0.75}),
    ]
    return existing, preds


def test_overlap_share_and_iou(scene):
    existing, preds = scene
    ex = [f["geometry"] for f in existing]
    pg = [f["geometry"] for f in preds]
    share = overlaps(pg, ex, "share")
    iou = overlaps(pg, ex, "iou")
    expected_share = [36 * 27 / 1200, 0, 30 * 30 / 1800, 0.5, 1.0, 1.0, 0.0]
    expected_iou = [972 / (2400 - 972), 0, 900 / (1800 + 900 + 900 - 900), 600 / 1800, 1.0, 1.0, 0.0]
    assert share.tolist() == pytest.approx(expected_share, abs=2e-3)
    assert iou.tolist() == pytest.approx(expected_iou, abs=2e-3)


def test_dedupe_writes_new_features_osm_and_summary(tmp_path, scene, parking):
    existing, preds = scene
    write_features(existing, tmp_path / "extract" / "parking.geojson")
    write_features(preds, tmp_path / "out" / "predictions.geojson")
    summary = dedupe(tmp_path / "out" / "predictions.geojson", tmp_path / "extract", [parking], tmp_path / "out", min_overlap=0.45, source="navml test")
    # matched: ~A (share 0.81), half on A (0.5), half on B and C (0.5), the underground one, the node one
    assert summary["predicted"] == 7
    assert summary["matched_existing"] == 5
    assert summary["new"] == 2
    assert summary["classes"]["parking"]["existing_osm"] == 5
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    new = read_features(tmp_path / "out" / "new_features.geojson")
    assert sorted(f["properties"]["score"] for f in new) == [0.75, 0.8]
    assert all(f["geometry"].is_valid and f["properties"]["overlap"] == 0 for f in new)

    # The JOSM file parses as OSM XML and carries the registry's tags plus source.
    class H(osmium.SimpleHandler):
        def __init__(self):
            super().__init__()
            self.nodes, self.ways, self.rels, self.areas = [], [], [], []

        def node(self, n):
            self.nodes.append(n.id)

        def way(self, w):
            self.ways.append((w.id, dict(w.tags), [n.ref for n in w.nodes]))

        def relation(self, r):
            self.rels.append((r.id, dict(r.tags), [(mm.type, mm.ref, mm.role) for mm in r.members]))

    h = H()
    path = tmp_path / "out" / "new_features.osm"
    h.apply_file(str(path))
    assert all(i < 0 for i in h.nodes + [w[0] for w in h.ways] + [r[0] for r in h.rels])
    tagged_ways = [w for w in h.ways if w[1]]
    assert len(tagged_ways) == 1 and tagged_ways[0][1] == {"amenity": "parking", "parking": "surface", "source": "navml test"}
    assert tagged_ways[0][2][0] == tagged_ways[0][2][-1] and len(tagged_ways[0][2]) == 5  # closed, 4 corners
    assert len(h.rels) == 1
    rid, rtags, members = h.rels[0]
    assert rtags == {"type": "multipolygon", "amenity": "parking", "parking": "surface", "source": "navml test"}
    assert sorted(role for _, _, role in members) == ["inner", "outer"]
    # Both assemble into areas (libosmium's assembler skips negative ids, so renumber first).
    positive = tmp_path / "positive.osm"
    positive.write_text(re.sub(r'(id|ref)="-(\d+)"', r'\1="\2"', path.read_text()))
    areas = []
    for o in osmium.FileProcessor(str(positive)).with_areas().with_locations():
        if o.is_area():
            outers = list(o.outer_rings())
            areas.append((o.from_way(), dict(o.tags), len(outers), sum(1 for r in outers for _ in o.inner_rings(r))))
    tags = {"amenity": "parking", "parking": "surface", "source": "navml test"}
    assert sorted(areas, key=str) == sorted([(True, tags, 1, 0), (False, tags, 1, 1)], key=str)


def test_iou_mode_keeps_partial_overlaps(tmp_path, scene, parking):
    existing, preds = scene
    write_features(existing, tmp_path / "extract" / "parking.geojson")
    write_features(preds, tmp_path / "predictions.geojson")
    s = dedupe(tmp_path / "predictions.geojson", tmp_path / "extract", [parking], tmp_path / "out", match="iou", min_overlap=0.45)
    # IoU >= 0.45: ~A (0.68), the underground one, the node one; the half-covered ones (IoU 1/3) stay new
    assert (s["matched_existing"], s["new"]) == (3, 4)


def test_empty_prediction_gives_valid_empty_outputs(tmp_path, scene, parking):
    existing, _ = scene
    write_features(existing, tmp_path / "extract" / "parking.geojson")
    write_features([], tmp_path / "predictions.geojson")
    s = dedupe(tmp_path / "predictions.geojson", tmp_path / "extract", [parking], tmp_path / "out")
    assert (s["predicted"], s["matched_existing"], s["new"]) == (0, 0, 0)
    assert json.loads((tmp_path / "out" / "new_features.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    count = [0]

    class H(osmium.SimpleHandler):
        def node(self, n):
            count[0] += 1

        def way(self, w):
            count[0] += 1

    H().apply_file(str(tmp_path / "out" / "new_features.osm"))
    assert count[0] == 0
    assert (tmp_path / "out" / "new_features.osm").read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6"')


def test_missing_extract_and_bad_threshold_write_nothing(tmp_path, scene, parking):
    _, preds = scene
    write_features(preds, tmp_path / "predictions.geojson")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="parking.geojson: OSM extract .* missing") as err:
        dedupe(tmp_path / "predictions.geojson", tmp_path / "extract", [parking], out)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="min_overlap"):
        dedupe(tmp_path / "predictions.geojson", tmp_path / "extract", [parking], out, min_overlap=1.5)
    with pytest.raises(ConfigError, match="match"):
        dedupe(tmp_path / "predictions.geojson", tmp_path / "extract", [parking], out, match="area")
    with pytest.raises(InputError, match="run the vectorize stage"):
        dedupe(tmp_path / "nothing.geojson", tmp_path / "extract", [parking], out)
    assert not out.exists()


def test_osm_xml_escapes_tags_and_skips_degenerate_rings():
    f = {"geometry": m(affinity.rotate(box(0, 0, 30, 20), 20)), "properties": {"class": "parking"}}
    flat = {"geometry": Polygon([(LON0, LAT0), (LON0 + 1e-9, LAT0), (LON0, LAT0 + 1e-9)]), "properties": {"class": "parking"}}
    xml = osm_xml([f, flat], {"parking": {"name": 'Lot "A" & <B>'}})
    assert 'v="Lot &quot;A&quot; &amp; &lt;B&gt;"' in xml
    assert xml.count("<way ") == 1 and xml.count("<node ") == 4


def cli_params(tmp_path, **sections):
    import yaml

    params = {
        "classes": {"parking": PARKING},
        "grid": {"zoom": 18, "tile_size": 256, "shard_zoom": 16},
        **sections,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def test_cli_dedupe_errors_are_one_line_and_keep_earlier_outputs(tmp_path, scene):
    existing, preds = scene
    cli_params(tmp_path, dedupe={"match": "share", "min_overlap": 0.45, "source": "navml", "max_road_share": None})
    write_features(preds, tmp_path / "data/output/predictions.geojson")
    proc = navml("dedupe", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("navml: error: data/extract/parking.geojson: OSM extract")
    assert not (tmp_path / "data/output/new_features.osm").exists()

    write_features(existing, tmp_path / "data/extract/parking.geojson")
    proc = navml("dedupe", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "7 predicted, 5 already in OSM, 0 on mapped roads, 2 new" in proc.stdout
    before = (tmp_path / "data/output/new_features.osm").read_text()

    cli_params(tmp_path, dedupe={"match": "share", "min_overlap": 2})
    proc = navml("dedupe", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "min_overlap" in proc.stderr
    cli_params(tmp_path, dedupe={"match": "share", "min_ovrlap": 0.5})
    proc = navml("dedupe", cwd=tmp_path)
    assert proc.returncode == 1 and "dedupe.min_ovrlap" in proc.stderr
    assert (tmp_path / "data/output/new_features.osm").read_text() == before


def test_predictions_on_mapped_roads_are_dropped(tmp_path, scene, parking):
    existing, preds = scene
    write_features(existing, tmp_path / "extract" / "parking.geojson")
    write_features(preds, tmp_path / "out" / "predictions.geojson")
    # a 14 m wide road along y = 115 crosses the new lot box(0, 100, 40, 130): 14 x 40 of 30 x 40 -> share 0.47
    road = {"geometry": m(LineString([(-50, 115), (100, 115)])), "properties": {"osm_id": 9, "osm_type": "way", "width_m": 14.0}}
    write_features([road], tmp_path / "extract" / "roads.geojson")
    out = tmp_path / "out"
    summary = dedupe(out / "predictions.geojson", tmp_path / "extract", [parking], out, min_overlap=0.45, max_road_share=0.4)
    assert (summary["matched_existing"], summary["on_roads"], summary["new"]) == (5, 1, 1)
    (kept,) = read_features(out / "new_features.geojson")
    assert kept["properties"]["score"] == 0.75 and kept["properties"]["road_share"] == 0.0
    summary = dedupe(out / "predictions.geojson", tmp_path / "extract", [parking], out, min_overlap=0.45, max_road_share=0.5)
    assert (summary["on_roads"], summary["new"]) == (0, 2)
    road_share = {f["properties"]["score"]: f["properties"]["road_share"] for f in read_features(out / "new_features.geojson")}
    assert road_share[0.8] == pytest.approx(14 / 30, abs=0.01)


def test_road_filter_needs_the_roads_file(tmp_path, scene, parking):
    existing, preds = scene
    write_features(existing, tmp_path / "extract" / "parking.geojson")
    write_features(preds, tmp_path / "out" / "predictions.geojson")
    with pytest.raises(InputError, match="roads.geojson: OSM roads missing"):
        dedupe(tmp_path / "out" / "predictions.geojson", tmp_path / "extract", [parking], tmp_path / "o2", max_road_share=0.2)
    with pytest.raises(ConfigError, match="max_road_share"):
        dedupe(tmp_path / "out" / "predictions.geojson", tmp_path / "extract", [parking], tmp_path / "o2", max_road_share=1.5)
    assert not (tmp_path / "o2").exists()
