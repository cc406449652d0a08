import cv2
import numpy as np
import pandas as pd
import pytest

from navml.errors import ConfigError
from navml.data.export import colorize, export_tiles
from navml.geo.grid import Tile, tiles_of_shard
from navml.geo.store import Store


def test_export_writes_slippy_map_pngs(tmp_path, small_grid):
    shard = Tile(8577, 6245, 16)
    store = Store(tmp_path / "store", small_grid)
    img = np.zeros((3, 1024, 1024), dtype="uint8")
    img[0] = 200  # red everywhere
    mask = np.zeros((1, 1024, 1024), dtype="uint8")
    mask[0, 10:50, 20:60] = 1
    store.write_shard("imagery", shard, img)
    store.write_shard("masks", shard, mask)
    t = next(iter(tiles_of_shard(shard, small_grid)))
    boxes = pd.DataFrame([{"z": t.z, "x": t.x, "y": t.y, "class_id": 0, "xmin": 100.0, "ymin": 100.0, "xmax": 120.0, "ymax": 110.0}])
    n = export_tiles(store, [t], tmp_path / "out", colors=[(0, 255, 0)], boxes=boxes, progress=False)
    assert n == 3
    png = cv2.imread(str(tmp_path / "out" / "imagery" / f"{t.z}/{t.x}/{t.y}.png"))[..., ::-1]
    assert png.shape == (256, 256, 3) and (png[..., 0] == 200).all()
    m = cv2.imread(str(tmp_path / "out" / "masks" / f"{t.z}/{t.x}/{t.y}.png"))[..., ::-1]
    assert (m[10:50, 20:60] == (0, 255, 0)).all() and m[60:, 60:].sum() == 0
    ov = cv2.imread(str(tmp_path / "out" / "overlay" / f"{t.z}/{t.x}/{t.y}.png"))[..., ::-1]
    assert tuple(ov[100, 110]) == (255, 64, 64)  # box edge in the class-0 colour
    assert "imagery/18/" in (tmp_path / "out" / "index.html").read_text()


def test_colorize_and_bad_layer(tmp_path, small_grid):
    rgb = colorize(np.array([[0, 1, 2]], dtype="uint8"), [(1, 2, 3), (4, 5, 6)])
    assert rgb.tolist() == [[[0, 0, 0], [1, 2, 3], [4, 5, 6]]]
    with pytest.raises(ConfigError, match="unknown layer 'nir'"):
        export_tiles(Store(tmp_path, small_grid), [], tmp_path, layers=["nir"])


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
