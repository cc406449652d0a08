import pandas as pd
import pytest
from shapely.geometry import box

from navml.data.cover import assign_splits, build_index, cover_tiles, read_aoi
from navml.errors import ConfigError
from navml.geo.grid import Grid, tile_polygon

AOI = box(-104.999, 39.735, -104.985, 39.745)  # ~1.2 x 1.1 km in Denver


def test_cover_tiles_touch_the_aoi_and_nothing_else():
    tiles = cover_tiles(AOI, 18)
    assert 80 < len(tiles) < 140
    for t in tiles:
        assert tile_polygon(t).intersection(AOI).area > 0
    # sorted north->south, west->east
    assert tiles == sorted(tiles, key=lambda t: (t.y, t.x))


def test_split_keeps_blocks_and_lots_on_one_side(parking):
    grid = Grid(18, 256, 15)
    # a lot straddling a zoom-16 block border links the two blocks
    tiles = cover_tiles(AOI, 18)
    keys = {(t.x, t.y) for t in tiles}
    t = next(t for t in tiles if t.x % 4 == 0 and (t.x - 1, t.y) in keys)  # west edge of a zoom-16 block
    w, s, e, n = tile_polygon(t).bounds
    lot = box(w - 0.0002, s, w + 0.0002, n)  # crosses the west edge of t
    df = build_index(AOI, grid, [parking], {"parking": [lot]}, split_zoom=16, fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert set(df.columns) >= {"z", "x", "y", "shard", "block", "split", "pos_parking"}
    assert len(df) == len(tiles)
    # each block lies in one split, apart from buffer tiles
    assert (df[df.split != "buffer"].groupby("block")["split"].nunique() == 1).all()
    # the lot touches two tiles in two blocks; unless both blocks share a split,
    # the tile holding the smaller part becomes a buffer tile
    pos = df[df.pos_parking == 1]
    assert len(pos) == 2 and pos["block"].nunique() == 2
    assert pos[pos.split != "buffer"]["split"].nunique() == 1
    assert set(df["split"]) >= {"train", "val", "test"}
    # deterministic for a seed
    df2 = build_index(AOI, grid, [parking], {"parking": [lot]}, split_zoom=16, fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    pd.testing.assert_frame_equal(df, df2)


def test_assign_splits_follows_shares():
    blocks = {f"b{i}": 10 for i in range(20)}
    out = assign_splits(blocks, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    counts = pd.Series(out).value_counts().to_dict()
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert assign_splits(blocks, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1) != out
    # too few blocks: the small splits still get one each
    out = assign_splits({"a": 5, "b": 5, "c": 5}, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
    assert sorted(out.values()) == ["test", "train", "val"]


def test_bad_split_and_aoi(tmp_path, parking):
    grid = Grid(18, 256, 15)
    with pytest.raises(ConfigError, match="add up to 1"):
        build_index(AOI, grid, [parking], {}, split_zoom=16, fractions={"train": 0.7, "val": 0.5}, seed=0)
    with pytest.raises(ConfigError, match="unknown split"):
        build_index(AOI, grid, [parking], {}, split_zoom=16, fractions={"train": 0.7, "holdout": 0.3}, seed=0)
    with pytest.raises(ConfigError, match="west < east"):
        read_aoi("10,5,9,6")
    assert read_aoi("-104.999,39.735,-104.985,39.745").equals(AOI)


def test_write_cover_writes_index_and_outlines(tmp_path, parking):
    import json

    from navml.data.cover import cover_summary, write_cover
    from navml.geo.features import write_features
    from navml.geo.tile_index import read_index

    lot = box(-104.995, 39.738, -104.994, 39.739)
    write_features([{"geometry": lot, "properties": {}}, {"geometry": box(-104.99, 39.74, -104.989, 39.741), "properties": {"label": False}}],
                   tmp_path / "extract/parking.geojson")
    df = write_cover("-104.999,39.735,-104.985,39.745", tmp_path / "extract", Grid(18, 256, 15), [parking], tmp_path / "cover",
                     split_zoom=16, fractions={"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert len(read_index(tmp_path / "cover/tiles.csv")) == len(df) == len(cover_tiles(AOI, 18))
    outlines = json.loads((tmp_path / "cover/tiles.geojson").read_text())["features"]
    assert len(outlines) == len(df) and {"tile", "split", "shard"} <= set(outlines[0]["properties"])
    assert 1 <= df["pos_parking"].sum() <= 4  # the labelled lot only, not the one with label: false
    line = cover_summary(df)
    assert line.startswith(f"{len(df)} tiles in ") and f"positive tiles {{'parking': {df['pos_parking'].sum()}}}" in line
