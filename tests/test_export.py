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
