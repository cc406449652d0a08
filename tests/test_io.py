"""Atomic writes: whole or nothing, umask permissions, one JSON style."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from navml.io import atomic_path, dumps_json, staging_dir, write_json, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        f = write_text(tmp_path / "a" / "x.txt", "hi")
        with staging_dir(tmp_path / "layer") as d:
            (d / "f").write_text("1")
    finally:
        os.umask(old)
    assert f.read_text() == "hi"
    assert _mode(f) == 0o640  # mkstemp alone would leave 0600
    assert _mode(tmp_path / "layer") == 0o750


def test_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = write_text(tmp_path / "x.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_staging_dir_swaps_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "probs"
    with staging_dir(target) as d:
        (d / "a.tif").write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        with staging_dir(target) as d:
            (d / "a.tif").write_text("v2")
            raise KeyboardInterrupt
    assert (target / "a.tif").read_text() == "v1"
    with staging_dir(target) as d:
        (d / "b.tif").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["b.tif"]  # replaced as a whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs"]


def test_json_style_numpy_and_nan(tmp_path):
    data = {"b": np.float32(0.5), "a": [np.int64(3), (1, 2)], "nan": float("nan"), "inf": np.float64(np.inf)}
    text = dumps_json(data)
    assert text.endswith("}\n") and text.startswith('{\n  "b": 0.5')  # insertion order, indent 2
    assert json.loads(text) == {"b": 0.5, "a": [3, [1, 2]], "nan": None, "inf": None}
    assert json.loads(write_json(tmp_path / "m.json", data).read_text())["a"] == [3, [1, 2]]


def test_saved_model_bytes_do_not_depend_on_time(tmp_path):
    import time
    import zipfile

    import keras

    from navml.models.io import ModelMeta, save_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, padding="same")])
    meta = ModelMeta(task="segmentation", classes=["a"], zoom=18, tile_size=8, bands=3, stride=1, receptive_field=3)
    first = save_model(model, meta, tmp_path / "m1") / "model.keras"
    with zipfile.ZipFile(first) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # Keras would stamp the save time
        assert "model.weights.h5" in z.namelist()
    assert keras.saving.load_model(first).count_params() == model.count_params()
    time.sleep(1.1)  # Keras records the save time to the second
    second = save_model(model, meta, tmp_path / "m2") / "model.keras"
    assert first.read_bytes() == second.read_bytes()
    assert json.loads((tmp_path / "m1" / "meta.json").read_text())["classes"] == ["a"]


SAVE_FUNCTIONAL = """
import sys
import keras
from navml.models.io import ModelMeta, save_model
keras.utils.set_random_seed(0)
x = inp = keras.Input((8, 8, 3))
x = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3, padding="same")(x))
model = keras.Model(inp, keras.layers.Conv2D(1, 1)(x))
meta = ModelMeta(task="segmentation", classes=["a"], zoom=18, tile_size=8, bands=3, stride=1, receptive_field=3)
save_model(model, meta, sys.argv[1])
"""


def test_model_bytes_do_not_depend_on_the_process(tmp_path):
    """A functional model's layers share one dtype policy, which Keras writes with its Python id(): renumbered."""
    import subprocess
    import sys
    import zipfile

    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:  # two processes: two id()s of the policy
        subprocess.run([sys.executable, "-c", SAVE_FUNCTIONAL, str(out)], check=True, capture_output=True)
    with zipfile.ZipFile(runs[0] / "model.keras") as z:
        config = z.read("config.json").decode()
    assert '"shared_object_id": 1' in config and '"shared_object_id": 2' not in config  # one shared object, numbered 1
    assert (runs[0] / "model.keras").read_bytes() == (runs[1] / "model.keras").read_bytes()
