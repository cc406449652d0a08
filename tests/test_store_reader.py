"""Windows read with the shard files kept open (``Store.reader``) equal the store's own reads and the mosaic."""

from __future__ import annotations

import numpy as np

from navml.geo.grid import Tile, Window
from navml.geo.store import Store

SHARD0 = Tile(13000, 24000, 16)


def test_reader_reads_the_mosaic_with_each_shard_opened_once(tmp_path, small_grid):
    n = small_grid.shard_size
    store = Store(tmp_path / "store", small_grid)
    rng = np.random.default_rng(0)
    mosaic = np.zeros((3, 2 * n, 2 * n), "uint8")
    valid = np.zeros((2 * n, 2 * n), bool)
    for dy, dx in ((0, 0), (0, 1), (1, 0)):  # the south-east shard is missing
        img = rng.integers(1, 255, (3, n, n)).astype("uint8")
        mask = np.ones((n, n), bool)
        if (dy, dx) == (0, 1):
            mask[:, : n // 3] = False  # no imagery in the west third
            img[:, ~mask] = 0
        store.write_shard("imagery", Tile(SHARD0.x + dx, SHARD0.y + dy, 16), img, valid=mask)
        mosaic[:, dy * n : (dy + 1) * n, dx * n : (dx + 1) * n] = img
        valid[dy * n : (dy + 1) * n, dx * n : (dx + 1) * n] = mask
    x0, y0 = SHARD0.x * n, SHARD0.y * n
    windows = [Window(x0 + c, y0 + r, w, h) for c, r, w, h in
               ((0, 0, 2 * n, 2 * n), (n - 48, n - 48, 96, 96), (-40, 10, 100, 2 * n + 80), (n + 5, n + 5, 50, 50))]
    with store.reader("imagery") as reader:
        for _ in range(2):
            for w in windows:
                got, ok = reader.read_window(w, bands=3), reader.read_valid(w)
                np.testing.assert_array_equal(got, store.read_window("imagery", w, bands=3))
                np.testing.assert_array_equal(ok, store.read_valid("imagery", w))
                # the mosaic, 0 and not valid outside the shards
                r0, c0 = w.row - y0, w.col - x0
                want = np.zeros((3, w.height, w.width), "uint8")
                want_ok = np.zeros((w.height, w.width), bool)
                rs, cs = slice(max(r0, 0), min(r0 + w.height, 2 * n)), slice(max(c0, 0), min(c0 + w.width, 2 * n))
                dst = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
                want[(slice(None), *dst)] = mosaic[:, rs, cs]
                want_ok[dst] = valid[rs, cs]
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(ok, want_ok)
        opened = dict(reader._open)
        assert len(opened) == 3 and len(reader._missing) == 5  # 8 shards touched: each opened once, the missing remembered
    assert not reader._open and all(v.closed for v in opened.values())
    with store.reader("imagery", max_open=1) as one:  # one shard open at a time: the same pixels
        for w in windows:
            np.testing.assert_array_equal(one.read_window(w, bands=3), store.read_window("imagery", w, bands=3))
            np.testing.assert_array_equal(one.read_valid(w), store.read_valid("imagery", w))
            assert len(one._open) <= 1
    assert reader.read_window(Window(x0 + 3 * n, y0, 8, 8)).shape == (3, 8, 8)  # no shard at all: the layer's band count, fill
