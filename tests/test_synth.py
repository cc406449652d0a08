"""The synthetic city on a small (0.5 km) square: files, georeferencing, OSM content, truth, pixels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import osmium
import pytest
import rasterio
import shapely
import yaml
from pyproj import Transformer
from rasterio.features import rasterize
from shapely.geometry import Polygon, shape
from typer.testing import CliRunner

import navml.data.synth.osm as synth_osm
from navml.data.synth import make_city
from navml.data.synth.scene import KINDS
from navml.errors import ConfigError

SIZE_KM = 0.5
SEED = 5
FILES = ["aoi.geojson", "city.osm.pbf", "ortho.tif", "truth/complete_aoi.geojson", "truth/decoys.geojson", "truth/lots.geojson",
         "truth/markings.geojson"]


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "city"
    counts = make_city(out, seed=SEED, size_km=SIZE_KM, progress=False)
    return out, counts


@pytest.fixture(scope="module")
def to_utm(city):
    with rasterio.open(city[0] / "ortho.tif") as src:
        tr = Transformer.from_crs(4326, src.crs, always_xy=True)
    return lambda g: shapely.transform(g, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))


class OsmIndex(osmium.SimpleHandler):
    def __init__(self):
        super().__init__()
        self.nodes, self.ways, self.relations = {}, {}, {}
        self.meta = []

    def node(self, n):
        self.nodes[n.id] = (n.location.lon, n.location.lat)
        self.meta.append((n.id, n.version, n.timestamp))

    def way(self, w):
        self.ways[w.id] = ([n.ref for n in w.nodes], dict(w.tags))
        self.meta.append((w.id, w.version, w.timestamp))

    def relation(self, r):
        self.relations[r.id] = ([(m.type, m.ref, m.role) for m in r.members], dict(r.tags))
        self.meta.append((r.id, r.version, r.timestamp))


@pytest.fixture(scope="module")
def osm(city) -> OsmIndex:
    h = OsmIndex()
    h.apply_file(str(city[0] / "city.osm.pbf"))
    return h


def test_outputs_exist_and_same_seed_gives_same_bytes(city, tmp_path):
    out, counts = city
    assert sorted(hashes(out)) == FILES
    again = make_city(tmp_path / "again", seed=SEED, size_km=SIZE_KM, progress=False)
    assert hashes(tmp_path / "again") == hashes(out)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in counts.items() if k != "seconds"}
    other = make_city(tmp_path / "other", seed=SEED + 1, size_km=SIZE_KM, progress=False)
    a, b = hashes(out), hashes(tmp_path / "other")
    for name in ("ortho.tif", "city.osm.pbf", "truth/lots.geojson", "truth/markings.geojson"):
        assert a[name] != b[name], name
    assert other["lots_visible"] > 0
    # no temporary folders left beside the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]


def test_ortho_is_a_utm_geotiff_covering_the_aoi(city, to_utm):
    out, counts = city
    with rasterio.open(out / "ortho.tif") as src:
        assert src.crs.to_epsg() == 32613 == counts["epsg"]  # Denver: UTM zone 13 north
        assert src.count == 3 and src.dtypes == ("uint8",) * 3
        assert src.res == pytest.approx((0.3, 0.3))
        assert src.width == src.height == round(SIZE_KM * 1000 / 0.3)
        assert src.profile["tiled"] and src.profile["compress"] == "deflate"
        assert src.tags()["TIFFTAG_DATETIME"] == "2024:06:01 12:00:00"
        bounds = shapely.box(*src.bounds)
        centre = Transformer.from_crs(src.crs, 4326, always_xy=True).transform(*shapely.centroid(bounds).coords[0])
    assert centre == pytest.approx((-104.9903, 39.7392), abs=2e-5)
    (aoi,) = features(out / "aoi.geojson")
    aoi_utm = to_utm(shape(aoi["geometry"]))
    assert aoi_utm.geom_type == "Polygon"
    # the AOI is the raster footprint (to the 1e-7 deg rounding)
    assert aoi_utm.symmetric_difference(bounds).area < 0.001 * bounds.area
    assert bounds.buffer(0.05).contains(aoi_utm)


def test_pbf_has_the_mapping_the_pipeline_expects(city, osm):
    out, counts = city
    assert all(i > 0 and v == 1 for i, v, _ in osm.meta)
    years = {ts.year for _, _, ts in osm.meta}
    assert min(years) >= 2012 and max(years) <= 2024
    for nodes, _ in osm.ways.values():
        assert all(n in osm.nodes for n in nodes)
    tags = [t for _, t in osm.ways.values()]
    assert any(t.get("parking") == "underground" and t.get("amenity") == "parking" for t in tags)
    assert any(t.get("parking") == "multi-storey" and t.get("building") == "parking" for t in tags)
    assert any("turn:lanes" in t and t.get("oneway") == "yes" for t in tags)
    assert any("turn:lanes:forward" in t or "turn:lanes:backward" in t for t in tags)
    for t in tags:  # one turn value per lane
        if "turn:lanes" in t:
            assert len(t["turn:lanes"].split("|")) == int(t["lanes"])
        if "turn:lanes:forward" in t:
            assert len(t["turn:lanes:forward"].split("|")) == int(t.get("lanes:forward", int(t["lanes"]) // 2))
    multi = [(m, t) for m, t in osm.relations.values() if t.get("type") == "multipolygon" and t.get("amenity") == "parking"]
    assert multi and all({r for _, _, r in m} == {"outer", "inner"} for m, _ in multi)
    assert counts["lots_multipolygon"] == len(multi)
    # truth ids point at the right OSM objects
    for f in features(out / "truth/lots.geojson"):
        p = f["properties"]
        if p["mapped"]:
            obj = osm.ways if p["osm_type"] == "way" else osm.relations
            assert obj[p["osm_id"]][1]["amenity"] == "parking"
        else:
            assert p["osm_id"] is None
    # roads split at junctions share their junction nodes
    road_nodes = [n for nodes, t in osm.ways.values() if "highway" in t for n in (nodes[0], nodes[-1])]
    assert len(road_nodes) > len(set(road_nodes)) + 10


def test_mapped_outlines_are_shifted_at_most_shift_m(city, osm, to_utm):
    out, _ = city
    shifts = []
    for f in features(out / "truth/lots.geojson"):
        p = f["properties"]
        if not p["mapped"] or p["osm_type"] != "way":
            continue
        ring = [osm.nodes[n] for n in osm.ways[p["osm_id"]][0]]
        mapped = to_utm(Polygon(ring))
        true = to_utm(shape(f["geometry"]))
        assert abs(mapped.area - true.area) < 0.02 * true.area
        shifts.append(mapped.centroid.distance(true.centroid))
    assert shifts and max(shifts) <= 2.0 + 0.05 and max(shifts) > 0.1


def test_markings_have_all_six_kinds_on_turn_lane_ways(city, osm, to_utm):
    out, counts = city
    marks = features(out / "truth/markings.geojson")
    kinds = [f["properties"]["kind"] for f in marks]
    assert set(kinds) == set(KINDS)
    assert len(marks) == counts["markings"] and all(counts[f"markings_{k}"] == kinds.count(k) for k in KINDS)
    for f in marks:
        way = osm.ways[f["properties"]["lane_way"]][1]
        assert way["highway"] in ("primary", "secondary", "residential")
        assert any(k.startswith("turn:lanes") for k in way)
        c = np.asarray(to_utm(shape(f["geometry"])).exterior.coords)
        short, long = sorted(np.hypot(*(c[i + 1] - c[i])) for i in range(2))
        assert 4.5 < long < 5.5 and 1.5 < short < 2.0


def test_unmapped_lots_lie_outside_the_complete_area(city, to_utm):
    out, counts = city
    lots = features(out / "truth/lots.geojson")
    unmapped = [f for f in lots if not f["properties"]["mapped"]]
    assert len(lots) == counts["lots_visible"] >= 4
    assert len(unmapped) == counts["lots_unmapped"] == round(0.25 * len(lots))
    complete = shapely.union_all([to_utm(shape(f["geometry"])) for f in features(out / "truth/complete_aoi.geojson")])
    aoi = to_utm(shape(features(out / "aoi.geojson")[0]["geometry"]))
    assert 0.3 < complete.area / aoi.area < 0.7
    for f in unmapped:
        assert not to_utm(shape(f["geometry"])).intersects(complete)
    for f in lots:
        g = to_utm(shape(f["geometry"]))
        assert f["properties"]["area_m2"] == pytest.approx(g.area, rel=0.01)
        assert g.is_valid
    assert any(shape(f["geometry"]).interiors for f in lots)


def test_lot_pixels_are_paved_and_arrows_are_painted(city, to_utm):
    out, _ = city
    with rasterio.open(out / "ortho.tif") as src:
        img = src.read().astype(np.int16)
        lots = rasterize([(to_utm(shape(f["geometry"])), 1) for f in features(out / "truth/lots.geojson")],
                         out_shape=src.shape, transform=src.transform).astype(bool)
        marks = features(out / "truth/markings.geojson")
        arrows = rasterize([(to_utm(shape(f["geometry"])), 1) for f in marks], out_shape=src.shape, transform=src.transform).astype(bool)
        around = rasterize([(to_utm(shape(f["geometry"])).buffer(1.5), 1) for f in marks], out_shape=src.shape,
                           transform=src.transform).astype(bool) & ~arrows
    r, g, b = img
    grass = (g > r + 8) & (g > b + 8)
    assert lots.sum() > 20_000
    assert grass[lots].mean() < 0.02 < 0.15 < grass.mean()
    lum = img.mean(axis=0)
    assert lum[arrows].mean() > lum[around].mean() + 20


def test_bad_parameters_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="size_km"):
        make_city(tmp_path / "a", size_km=0.05, progress=False)
    with pytest.raises(ConfigError, match="center"):
        make_city(tmp_path / "a", center=(200.0, 10.0), progress=False)
    with pytest.raises(ConfigError, match="unmapped_share"):
        make_city(tmp_path / "a", unmapped_share=1.5, progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        make_city(mine, size_km=0.3, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_failed_run_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "city"
    make_city(out, seed=SEED, size_km=0.3, progress=False)
    before = hashes(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth_osm, "write_pbf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_city(out, seed=SEED + 1, size_km=0.3, progress=False)
    assert hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city"]


def test_cli_reads_params_and_options_override(tmp_path):
    import typer

    from navml.cli.synth import command

    app = typer.Typer()
    app.command()(command)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"synth": {"seed": 3, "center": [2.35, -33.9], "size_km": 5.0, "gsd_m": 0.5,
                                                "unmapped_share": 0.0, "shift_m": 0.0}}))
    res = CliRunner().invoke(app, ["--params", str(params), "--out", str(tmp_path / "o"), "--size-km", "0.3", "-q"])
    assert res.exit_code == 0, res.output
    assert "synth:" in res.output and "EPSG:32731" in res.output  # south of the equator, zone 31
    with rasterio.open(tmp_path / "o" / "ortho.tif") as src:
        assert src.width == 600 and src.res == pytest.approx((0.5, 0.5))
    assert all(f["properties"]["mapped"] for f in features(tmp_path / "o" / "truth/lots.geojson"))
    params.write_text(yaml.safe_dump({"synth": {"seed": 3, "size_kms": 1.0}}))
    res = CliRunner().invoke(app, ["--params", str(params), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "synth.size_kms" in res.output
    assert not (tmp_path / "p").exists()


def test_decoys_are_recorded_by_kind_and_follow_the_share(city, tmp_path):
    """Every look-alike drawn is in truth/decoys.geojson with its class and kind; decoy_share 0 draws no yard and no word."""
    from navml.data.synth.scene import DECOY_KINDS

    out, counts = city
    feats = json.loads((out / "truth" / "decoys.geojson").read_text())["features"]
    assert len(feats) == counts["decoys"] > 0
    for f in feats:
        p = f["properties"]
        assert p["kind"] in DECOY_KINDS[p["class"]] and p["area_m2"] > 0
    assert {"crosswalk", "stop_line", "plaza"} <= {f["properties"]["kind"] for f in feats}
    lots = shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in json.loads((out / "truth" / "lots.geojson").read_text())["features"]])
    parking = [shapely.geometry.shape(f["geometry"]) for f in feats if f["properties"]["class"] == "parking"]
    assert all(g.intersection(lots).area < 0.05 * g.area for g in parking)  # a look-alike is not a lot
    none = make_city(tmp_path / "plain", seed=SEED, size_km=SIZE_KM, decoy_share=0.0, progress=False)
    assert "paved_yard" not in none["decoy_kinds"] and "word" not in none["decoy_kinds"]
    assert none["decoy_kinds"].get("plaza", 0) <= counts["decoy_kinds"].get("plaza", 0)
