import cv2
import numpy as np
import pandas as pd
import pytest

import navml.data.export as export_mod
from navml.config import parse_classes
from navml.data.export import export_tiles
from navml.errors import ConfigError, InputError
from navml.geo.grid import Tile, tiles_of_shard
from navml.geo.store import Store
from navml.palette import UNKNOWN, UNKNOWN_DARK, colorize, hatch, palette_from_colors, palette_of

SHARD = Tile(8577, 6245, 16)

CLASSES = parse_classes(
    {
        "parking": {"task": "segmentation", "tags": {"amenity": "parking"}, "color": [0, 255, 0]},
        "building": {"task": "segmentation", "tags": {"building": "*"}, "osm_tags": {"building": "yes"}, "color": [0, 255, 0]},  # same colour: gets another
        "turn": {"task": "detection", "labels": "x.geojson", "label_field": "kind", "names": ["left", "right"], "color": [0, 0, 255]},
        "hydrant": {"task": "detection", "tags": {"emergency": "fire_hydrant"}, "color": [255, 128, 0]},
    }
)


def read_png(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


def make_store(tmp_path, small_grid, bands: int) -> Store:
    """A shard of ``bands``-band imagery (band b = 40 * (b + 1)) and a mask with classes 1, 2 and unknown (255)."""
    store = Store(tmp_path / "store", small_grid)
    img = np.stack([np.full((1024, 1024), 40 * (b + 1), dtype="uint8") for b in range(bands)])
    mask = np.zeros((1, 1024, 1024), dtype="uint8")
    mask[0, 10:50, 20:60] = 1
    mask[0, 60:90, 20:60] = 2
    mask[0, :, 512:] = 255  # east half unknown: outside complete mapping
    store.write_shard("imagery", SHARD, img)
    store.write_shard("masks", SHARD, mask)
    return store


def test_export_writes_slippy_map_pngs_in_class_colours(tmp_path, small_grid):
    store = make_store(tmp_path, small_grid, 3)
    t = next(iter(tiles_of_shard(SHARD, small_grid)))
    boxes = pd.DataFrame(
        [
            {"z": t.z, "x": t.x, "y": t.y, "class_id": 1, "class": "turn", "name": "right", "xmin": 100.0, "ymin": 100.0, "xmax": 120.0, "ymax": 110.0},
            {"z": t.z, "x": t.x, "y": t.y, "class_id": 2, "class": "hydrant", "name": "hydrant", "xmin": 150.0, "ymin": 150.0, "xmax": 160.0, "ymax": 160.0},
        ]
    )
    pal = palette_of(CLASSES)
    n = export_tiles(store, [t], tmp_path / "out", palette=pal, boxes=boxes, progress=False)
    assert n == 3
    png = read_png(tmp_path / "out" / "imagery" / f"{t.z}/{t.x}/{t.y}.png")
    assert png.shape == (256, 256, 3) and (png[..., 0] == 40).all() and (png[..., 2] == 120).all()
    m = read_png(tmp_path / "out" / "masks" / f"{t.z}/{t.x}/{t.y}.png")
    assert (m[10:50, 20:60] == (0, 255, 0)).all() and m[100:, 100:].sum() == 0
    second = tuple(int(v) for v in m[70, 30])
    assert second == pal.mask[1] and second != (0, 255, 0)  # a repeated colour is replaced, classes stay apart
    ov = read_png(tmp_path / "out" / "overlay" / f"{t.z}/{t.x}/{t.y}.png")
    assert tuple(ov[100, 110]) == (0, 0, 255)  # box edge in its class colour (turn), whatever the name
    assert tuple(ov[150, 155]) == (255, 128, 0)  # hydrant
    assert "imagery/18/" in (tmp_path / "out" / "index.html").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


@pytest.mark.parametrize("bands", [1, 4])
def test_export_all_layers_with_1_and_4_bands_and_unknown_pixels(tmp_path, small_grid, bands):
    store = make_store(tmp_path, small_grid, bands)
    tiles = list(tiles_of_shard(SHARD, small_grid))
    probs = Store(tmp_path / "pred", small_grid)
    p = np.zeros((2, 1024, 1024), dtype="uint8")
    p[0, :100, :100] = 255
    p[1, 200:300, :100] = 128
    probs.write_shard("probs", SHARD, p)
    out = tmp_path / "look"
    n = export_tiles(store, tiles, out, layers=["imagery", "masks", "probs", "overlay"], palette=palette_of(CLASSES), probs=probs, progress=False)
    assert n == 4 * len(tiles) == 64
    assert len(list(out.rglob("*.png"))) == 64 and (out / "index.html").exists()
    t0, t1 = tiles[0], tiles[1]  # t1 is the tile east of t0: x + 1
    assert t1.x == t0.x + 1
    img = read_png(out / "imagery" / f"{t0.z}/{t0.x}/{t0.y}.png")
    expected = (40, 40, 40) if bands == 1 else (40, 80, 120)  # 1 band as grey; 4 bands: the first three as RGB
    assert img.shape == (256, 256, 3) and (img == np.array(expected, dtype="uint8")).all()
    ov_known = read_png(out / "overlay" / f"{t0.z}/{t0.x}/{t0.y}.png")
    m = read_png(out / "masks" / f"{t0.z}/{t0.x}/{t0.y}.png")
    assert (m[150:, 100:] == 0).all()  # background stays black
    unknown_tile = next(t for t in tiles if t.x - SHARD.x * 4 >= 2)  # east half of the shard
    u = read_png(out / "masks" / f"{unknown_tile.z}/{unknown_tile.x}/{unknown_tile.y}.png")
    colours = {tuple(int(v) for v in c) for c in u.reshape(-1, 3)}
    assert colours == {UNKNOWN, UNKNOWN_DARK}  # unknown: a hatch, never the background's black
    stripes = hatch((256, 256))
    assert 0.4 < stripes.mean() < 0.6
    ov_unknown = read_png(out / "overlay" / f"{unknown_tile.z}/{unknown_tile.x}/{unknown_tile.y}.png")
    assert (ov_known[200:, 200:] == np.array(expected, dtype="uint8")).all()  # background: imagery unchanged
    assert len({tuple(c) for c in ov_unknown.reshape(-1, 3)}) == 2  # unknown: darkened imagery with light stripes
    assert (ov_unknown.astype(int).sum(-1) != sum(expected)).all()
    pr = read_png(out / "probs" / f"{t0.z}/{t0.x}/{t0.y}.png")
    pal = palette_of(CLASSES)
    assert tuple(int(v) for v in pr[50, 50]) == pal.mask[0]  # class 1 at p = 1
    assert tuple(int(v) for v in pr[250, 50]) == tuple(int(c * 128 / 255) for c in pal.mask[1])  # class 2 at p = 0.5
    assert (pr[150, 150] == 0).all()


def test_failed_export_keeps_the_previous_one_whole(tmp_path, small_grid, monkeypatch):
    store = make_store(tmp_path, small_grid, 3)
    tiles = list(tiles_of_shard(SHARD, small_grid))
    out = tmp_path / "look"
    export_tiles(store, tiles[:2], out, colors=[(0, 255, 0)], progress=False)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    calls = {"n": 0}
    real = export_mod._write_png

    def failing(path, rgb):
        calls["n"] += 1
        if calls["n"] > 5:
            raise InputError(f"{path}: cannot write the PNG")
        real(path, rgb)

    monkeypatch.setattr(export_mod, "_write_png", failing)
    with pytest.raises(InputError):
        export_tiles(store, tiles, out, colors=[(0, 255, 0)], progress=False)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(export_mod, "_write_png", real)
    export_tiles(store, tiles, out, colors=[(0, 255, 0)], progress=False)  # an earlier export is replaced
    assert len(list((out / "masks").rglob("*.png"))) == 16


def test_foreign_folder_bad_layer_and_probs_without_store(tmp_path, small_grid):
    store = make_store(tmp_path, small_grid, 3)
    tiles = list(tiles_of_shard(SHARD, small_grid))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(InputError, match="not a navml export"):
        export_tiles(store, tiles[:1], mine, progress=False)
    assert (mine / "thesis.tex").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown layer 'nir'"):
        export_tiles(store, [], tmp_path / "o", layers=["nir"])
    with pytest.raises(ConfigError, match="--probs"):
        export_tiles(store, tiles[:1], tmp_path / "o", layers=["probs"])
    assert not (tmp_path / "o").exists()


def test_palette_colours_and_unknown():
    pal = palette_from_colors([(1, 2, 3), (4, 5, 6)])
    rgb = colorize(np.array([[0, 1, 2]], dtype="uint8"), pal)
    assert rgb.tolist() == [[[0, 0, 0], [1, 2, 3], [4, 5, 6]]]
    u = colorize(np.full((8, 8), 255, dtype="uint8"), pal)
    assert {tuple(c) for c in u.reshape(-1, 3)} == {UNKNOWN, UNKNOWN_DARK}
    full = palette_of(CLASSES)
    assert full.mask[0] == (0, 255, 0) and full.mask[1] not in (full.mask[0], (0, 0, 0))
    assert full.box_color(0) == full.box_color(1) == (0, 0, 255)  # turn:left and turn:right share their class colour
    assert full.box_color(2) == (255, 128, 0)


def test_cli_export_split_with_one_band_imagery_and_unknown(tmp_path, small_grid):
    """The README's `navml export /tmp/look --split test` on a 1-band orthophoto with unknown pixels."""
    import typer
    import yaml
    from typer.testing import CliRunner

    from navml.cli.export import command

    make_store(tmp_path, small_grid, 1)
    tiles = list(tiles_of_shard(SHARD, small_grid))
    pd.DataFrame(
        [{"z": t.z, "x": t.x, "y": t.y, "shard": "16-8577-6245", "block": "b", "split": "test" if i < 10 else "train"} for i, t in enumerate(tiles)]
    ).to_csv(tmp_path / "tiles.csv", index=False)
    classes = {
        "parking": {"task": "segmentation", "tags": {"amenity": "parking"}, "color": [250, 200, 40]},
        "building": {"task": "segmentation", "tags": {"building": "*"}, "osm_tags": {"building": "yes"}, "color": [200, 0, 0]},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"classes": classes, "grid": {"zoom": 18, "tile_size": 256, "shard_zoom": 16}}, sort_keys=False))  # registry order
    app = typer.Typer()
    app.command()(command)
    out = tmp_path / "look"
    args = [str(out), "--split", "test", "--store", str(tmp_path / "store"), "--tiles", str(tmp_path / "tiles.csv"), "--params", str(params)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "wrote 30 PNGs for 10 tiles" in res.output
    assert len(list(out.rglob("*.png"))) == 30 and (out / "index.html").exists()
    t = tiles[0]
    m = read_png(out / "masks" / f"{t.z}/{t.x}/{t.y}.png")
    assert tuple(int(v) for v in m[20, 30]) == (250, 200, 40) and tuple(int(v) for v in m[70, 30]) == (200, 0, 0)


def test_select_tiles_from_options_and_index(tmp_path):
    from navml.data.export import read_boxes, select_tiles, tile_range

    assert tile_range("18/10/20:18/11/22") == [Tile(x, y, 18) for y in (20, 21, 22) for x in (10, 11)]
    with pytest.raises(ConfigError, match="same zoom"):
        tile_range("18/10/20:17/11/22")
    with pytest.raises(ConfigError, match="z/x0/y0:z/x1/y1"):
        tile_range("18/10/20")
    index = tmp_path / "tiles.csv"
    index.write_text("z,x,y,shard,block,split\n18,54610,99480,15-6826-12435,b,train\n18,54611,99480,15-6826-12435,b,test\n")
    assert select_tiles(18, index, split="test") == [Tile(54611, 99480, 18)]
    assert select_tiles(18, index, tiles=["18/1/2"], range_="18/3/4:18/3/5") == [Tile(1, 2, 18), Tile(3, 4, 18), Tile(3, 5, 18)]
    assert select_tiles(18, index, bbox="0,0,1,1") == []
    with pytest.raises(ConfigError, match="store zoom 18"):
        select_tiles(18, index, tiles=["17/1/2"])
    assert read_boxes(tmp_path) is None


def test_export_outlines_hard_negatives(tmp_path, small_grid):
    from shapely.geometry import box, mapping

    from navml.data.export import NEGATIVE_COLOR, VETOED_COLOR
    from navml.geo.features import to_lonlat
    from navml.geo.grid import tile_window

    store = make_store(tmp_path, small_grid, 3)
    t = next(iter(tiles_of_shard(SHARD, small_grid)))
    w = tile_window(t, small_grid.tile_size)

    def neg(x0, y0, x1, y1, keep=True):
        g = to_lonlat(box(x0, y0, x1, y1), t.z, small_grid.tile_size, origin=(w.col, w.row))
        return {"type": "Feature", "geometry": mapping(g), "properties": {"keep": keep}}

    export_tiles(store, [t], tmp_path / "out", layers=["overlay"], negatives=[neg(100, 100, 200, 150), neg(10, 200, 60, 250, keep=False)],
                 progress=False)
    ov = read_png(tmp_path / "out" / "overlay" / f"{t.z}/{t.x}/{t.y}.png")
    assert tuple(ov[100, 150]) == NEGATIVE_COLOR and tuple(ov[150, 150]) == NEGATIVE_COLOR  # top and bottom edges
    assert tuple(ov[125, 150]) != NEGATIVE_COLOR  # the inside is left as it was
    assert tuple(ov[200, 30]) == VETOED_COLOR


def test_cli_export_city_reads_the_city_store_and_tiles(tmp_path, small_grid):
    """`navml export /tmp/look --city oslo`: the city's store and tile index as the pipeline lays them out, no --store."""
    import typer
    import yaml
    from typer.testing import CliRunner

    from navml.cli.export import command

    root = tmp_path / "cities" / "predict" / "oslo"
    make_store(root, small_grid, 3)  # root/store
    tiles = list(tiles_of_shard(SHARD, small_grid))
    (root / "cover").mkdir(parents=True)
    pd.DataFrame(
        [{"z": t.z, "x": t.x, "y": t.y, "shard": "16-8577-6245", "block": "b", "split": "test"} for t in tiles[:4]]
    ).to_csv(root / "cover" / "tiles.csv", index=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "paths": {"cities": str(tmp_path / "cities")},
        "classes": {"parking": {"task": "segmentation", "tags": {"amenity": "parking"}, "color": [250, 200, 40]}},
        "grid": {"zoom": 18, "tile_size": 256, "shard_zoom": 16},
        "cities": {"denver": {"role": "train", "synthetic": True}, "oslo": {"role": "predict", "synthetic": True}},
    }, sort_keys=False))
    app = typer.Typer()
    app.command()(command)
    out = tmp_path / "look"
    res = CliRunner().invoke(app, [str(out), "--city", "oslo", "--layers", "imagery", "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert "wrote 4 PNGs for 4 tiles" in res.output  # the 4 tiles of oslo's index, not data/cover/tiles.csv
    t = tiles[0]
    assert tuple(int(v) for v in read_png(out / "imagery" / f"{t.z}/{t.x}/{t.y}.png")[5, 5][:3]) == (40, 80, 120)
    res = CliRunner().invoke(app, [str(out), "--city", "rome", "--params", str(params)])
    assert res.exit_code == 1 and "no city 'rome'" in res.output
