"""Training and evaluation end to end on a tiny synthetic store (lots drawn on noise)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from navml.dataset import Augment, TileReader, augment_pair, make_dataset, select_training_tiles
from navml.errors import InputError, ModelError
from navml.evaluate import evaluate_segmentation
from navml.grid import Grid, Tile, tile_key, tiles_of_shard
from navml.metrics import confusion_counts, labels_from_probs
from navml.models.io import load_model
from navml.store import Store
from navml.train import train_segmentation

GRID = Grid(zoom=18, tile_size=64, shard_zoom=16)  # 4 x 4 tiles of 64 px per 256-px shard
SHARD0 = Tile(10000, 22500, 16)
FAST = dict(depth=2, base_filters=8, batch_size=4, progress=False)


def make_store(root, shards: int = 1, n_classes: int = 1, seed: int = 0, empty: bool = False) -> tuple[Store, pd.DataFrame]:
    """Noise imagery with flat-coloured rectangles ("lots", class ``1..n_classes``) and their masks.

    Split: tiles in a checkerboard-ish cycle train, train, val, test, ...; ``empty`` draws no lot.
    """
    rng = np.random.default_rng(seed)
    store = Store(root, GRID)
    n = GRID.shard_size
    rows = []
    for s in range(shards):
        shard = Tile(SHARD0.x + s, SHARD0.y, GRID.shard_zoom)
        image = rng.integers(0, 256, size=(3, n, n), dtype=np.uint8)
        mask = np.zeros((n, n), np.uint8)
        for _ in range(0 if empty else 14):
            h, w = rng.integers(12, 40, size=2)
            r, c = rng.integers(0, n - h), rng.integers(0, n - w)
            mask[r : r + h, c : c + w] = rng.integers(1, n_classes + 1)
        for k in range(1, n_classes + 1):
            hit = mask == k
            image[:, hit] = (np.array([110, 105, 100]) + 30 * (k - 1))[:, None] + rng.integers(-6, 7, size=(3, hit.sum()))
        store.write_shard("imagery", shard, image)
        store.write_shard("masks", shard, mask)
        for i, t in enumerate(tiles_of_shard(shard, GRID)):
            m = store.read_tile("masks", t)[0]
            row = dict(z=t.z, x=t.x, y=t.y, shard=tile_key(shard), block="b0", split=("train", "train", "val", "test")[i % 4])
            for k in range(1, n_classes + 1):
                row[f"pos_c{k}"] = int((m == k).any())
            rows.append(row)
    return store, pd.DataFrame(rows)


def names(n: int) -> list[str]:
    return [f"c{k}" for k in range(1, n + 1)]


def iou_on(model, store: Store, tiles: list[Tile], threshold: float = 0.5) -> float:
    reader = TileReader(store, 1, 3)
    images = np.stack([reader.image(t) for t in tiles]).astype("float32")
    masks = np.stack([reader.mask(t) for t in tiles])
    cm = confusion_counts(masks, labels_from_probs(model.predict_on_batch(images), [threshold]), 2)
    return cm[1, 1] / (cm[1, 1] + cm[0, 1] + cm[1, 0])


@pytest.mark.slow
def test_overfits_four_tiles(tmp_path):
    store, df = make_store(tmp_path / "store")
    four = df[df["pos_c1"] == 1].head(4)
    index = pd.concat([four.assign(split="train"), four.assign(split="val")])
    out = train_segmentation(
        store, index, ["c1"], tmp_path / "model", epochs=60, patience=60, learning_rate=1e-2,
        augment=None, negative_share=None, loss="crossentropy+dice", seed=1, **FAST,
    )
    model, meta = load_model(tmp_path / "model")
    tiles = [Tile(r.x, r.y, r.z) for r in four.itertuples()]
    assert iou_on(model, store, tiles) > 0.9
    assert out["best_val_iou"] > 0.9
    assert meta.classes == ["c1"] and meta.stride == 4 and meta.receptive_field == 52 and meta.tile_size == 64
    saved = json.loads((tmp_path / "model" / "thresholds.json").read_text())
    assert 0 < saved["c1"]["threshold"] < 1 and saved["c1"]["val_iou"] > 0.9


def test_same_seed_gives_same_weights(tmp_path):
    store, df = make_store(tmp_path / "store")
    runs = []
    for name in ("a", "b"):
        train_segmentation(store, df, ["c1"], tmp_path / name, epochs=2, seed=7, live_dir=tmp_path / f"live_{name}", **FAST)
        runs.append(load_model(tmp_path / name)[0].get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    curves = [(tmp_path / f"live_{n}" / "plots" / "metrics" / "eval" / "iou.tsv").read_text() for n in ("a", "b")]
    assert curves[0] == curves[1] and len(curves[0].splitlines()) == 3  # header + 2 epochs


def test_negative_share_and_augmentation(tmp_path):
    store, df = make_store(tmp_path / "store", shards=2)
    df = df.copy()
    df.loc[df.index[:6], "pos_c1"] = 0  # at least 6 negatives
    pos = int((df[df.split == "train"]["pos_c1"] == 1).sum())
    tiles = select_training_tiles(df, ["c1"], 0.2, seed=0)
    negatives = len(tiles) - pos
    assert negatives == min(round(pos * 0.25), int((df[df.split == "train"]["pos_c1"] == 0).sum()))
    assert select_training_tiles(df, ["c1"], 0.2, seed=0) == tiles
    assert len(select_training_tiles(df, ["c1"], None)) == int((df.split == "train").sum())

    # geometric augmentation moves image and mask together; photometric changes the image only
    rng = np.random.default_rng(0)
    image = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    mask = (np.arange(64 * 64).reshape(64, 64) % 7).astype(np.uint8)
    for _ in range(5):
        out_img, out_mask = augment_pair(image, mask, rng, Augment(brightness=0, contrast=0, hue=0))
        src = np.unique(np.rot90(image[..., 0], 1)), np.unique(mask)
        assert out_img.dtype == np.float32 and out_img.shape == (64, 64, 3)
        flat = {(int(i), int(m)) for i, m in zip(out_img[..., 0].ravel(), out_mask.ravel())}
        assert flat == {(int(i), int(m)) for i, m in zip(image[..., 0].ravel(), mask.ravel())}
        assert src  # both non-empty
    jittered, same_mask = augment_pair(image, mask, np.random.default_rng(3), Augment(flip=False, rotate=False, brightness=0.2, contrast=0.2, hue=0.05))
    assert np.array_equal(same_mask, mask) and not np.allclose(jittered, image)

    # the dataset streams one-hot batches of the right shape, same order for the same seed
    reader = TileReader(store, 1, 3)
    ds = make_dataset(reader, tiles, batch_size=4, shuffle=True, seed=3)
    x, y = next(iter(ds))
    assert x.shape == (4, 64, 64, 3) and y.shape == (4, 64, 64, 2)
    np.testing.assert_array_equal(y.numpy().sum(-1), 1.0)
    again = next(iter(make_dataset(reader, tiles, batch_size=4, shuffle=True, seed=3)))[0]
    np.testing.assert_array_equal(x.numpy(), again.numpy())


def test_multi_class_train_and_evaluate(tmp_path):
    """Two classes from the registry, no code change: masks 0/1/2, softmax of 3 channels, metrics per class."""
    store, df = make_store(tmp_path / "store", shards=2, n_classes=2)
    train_segmentation(store, df, names(2), tmp_path / "model", epochs=3, augment=None, **FAST)
    model, meta = load_model(tmp_path / "model")
    assert meta.classes == ["c1", "c2"] and model.output_shape[-1] == 3
    metrics = evaluate_segmentation(store, df, tmp_path / "model", tmp_path / "metrics", classes=names(2), overlays=2, progress=False)
    assert set(metrics) >= {"c1", "c2", "mean_iou", "pixel_accuracy", "tiles"}
    assert metrics["mean_iou"] == pytest.approx((metrics["c1"]["iou"] + metrics["c2"]["iou"]) / 2, abs=1e-6)
    assert (tmp_path / "metrics" / "seg_plots" / "pr" / "c2.csv").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    store, df = make_store(root / "store", shards=2)
    train_segmentation(store, df, ["c1"], root / "model", epochs=8, learning_rate=5e-3, augment=None, **FAST)
    return root, store, df


def test_evaluate_writes_metrics_plots_and_overlays(trained, tmp_path):
    root, store, df = trained
    metrics = evaluate_segmentation(store, df, root / "model", tmp_path, classes=["c1"], colors=[(250, 200, 40)], overlays=3, progress=False)
    saved = json.loads((tmp_path / "seg.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    thr = json.loads((root / "model" / "thresholds.json").read_text())["c1"]["threshold"]
    assert saved["c1"]["threshold"] == thr and "val_iou" in saved["c1"]

    # the confusion counts match a direct count over the test tiles at the same threshold
    model, _ = load_model(root / "model")
    test = [Tile(r.x, r.y, r.z) for r in df[df.split == "test"].itertuples()]
    reader = TileReader(store, 1, 3)
    truth = np.stack([reader.mask(t) for t in test])
    probs = model.predict_on_batch(np.stack([reader.image(t) for t in test]).astype("float32"))
    cm = confusion_counts(truth, probs[..., 1] >= thr, 2)
    counts = json.loads((tmp_path / "seg_plots" / "confusion.json").read_text())["counts"]
    np.testing.assert_array_equal(counts, cm)
    assert saved["c1"]["iou"] == pytest.approx(cm[1, 1] / (cm[1, 1] + cm[0, 1] + cm[1, 0]), abs=1e-6)
    assert saved["c1"]["precision"] == pytest.approx(cm[1, 1] / (cm[1, 1] + cm[0, 1]), abs=1e-6)

    pr = pd.read_csv(tmp_path / "seg_plots" / "pr" / "c1.csv")
    assert list(pr.columns) == ["threshold", "precision", "recall", "iou", "f1"] and len(pr) > 10
    assert pr["recall"].is_monotonic_decreasing
    conf = pd.read_csv(tmp_path / "seg_plots" / "confusion.csv")
    assert abs(len(conf) - 10_000) < 10 and set(conf["actual"]) == {"background", "c1"}
    pngs = sorted((tmp_path / "seg_plots" / "overlays").glob("*.png"))
    assert len(pngs) == 3
    import cv2

    img = cv2.imread(str(pngs[0]))
    assert img.shape == (64, 3 * 64 + 8, 3)

    # a fixed threshold is used as given
    fixed = evaluate_segmentation(store, df, root / "model", tmp_path / "fixed", classes=["c1"], threshold=0.9, overlays=0, progress=False)
    assert fixed["c1"]["threshold"] == 0.9 and fixed["c1"]["recall"] <= metrics["c1"]["recall"] + 1e-9


def test_model_of_another_class_set_is_refused(trained, tmp_path):
    root, store, df = trained
    with pytest.raises(ModelError, match=r"classes \['c1'\] differ"):
        evaluate_segmentation(store, df, root / "model", tmp_path, classes=["c1", "buildings"], progress=False)
    assert not (tmp_path / "seg.json").exists()


def _no_model(path) -> bool:
    return not path.exists() or not any(path.iterdir())


def test_empty_training_split(tmp_path):
    store, df = make_store(tmp_path / "store")
    with pytest.raises(InputError, match="split 'train' has no tile"):
        train_segmentation(store, df.assign(split="test"), ["c1"], tmp_path / "m", epochs=1, **FAST)
    assert _no_model(tmp_path / "m")


def test_split_without_a_positive_pixel(tmp_path):
    store, df = make_store(tmp_path / "store", empty=True)
    with pytest.raises(InputError, match="split 'train' has no pixel of class 'c1'"):
        train_segmentation(store, df, ["c1"], tmp_path / "m", epochs=1, negative_share=None, **FAST)
    assert _no_model(tmp_path / "m")


def test_band_count_mismatch(tmp_path):
    store, df = make_store(tmp_path / "store")
    with pytest.raises(InputError, match="imagery has 3 bands, the model takes 4; set train.bands: 3"):
        train_segmentation(store, df, ["c1"], tmp_path / "m", bands=4, epochs=1, **FAST)
    assert _no_model(tmp_path / "m")


def test_corrupt_tile_stops_training_with_one_line(tmp_path):
    store, df = make_store(tmp_path / "store")
    path = store.path("imagery", SHARD0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy: header intact, pixel data cut
    with pytest.raises(InputError) as err:
        train_segmentation(store, df, ["c1"], tmp_path / "m", epochs=1, **FAST)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert _no_model(tmp_path / "m")
    # an earlier model stays untouched by a failed run
    good, df2 = make_store(tmp_path / "good")
    train_segmentation(good, df2, ["c1"], tmp_path / "m", epochs=1, **FAST)
    before = (tmp_path / "m" / "model.keras").read_bytes()
    with pytest.raises(InputError):
        train_segmentation(store, df, ["c1"], tmp_path / "m", epochs=1, **FAST)
    assert (tmp_path / "m" / "model.keras").read_bytes() == before
    assert not list(tmp_path.glob(".m.train-*"))


def test_cli_reports_one_line_errors(tmp_path):
    import typer
    from typer.testing import CliRunner

    from navml.cli.train import command

    store, df = make_store(tmp_path / "store")
    df.to_csv(tmp_path / "tiles.csv", index=False)
    params = {
        "grid": {"zoom": 18, "tile_size": 64, "shard_zoom": 16},
        "classes": {"c1": {"task": "segmentation", "tags": {"amenity": "parking"}}},
        "train": {"bands": 4, "epochs": 1, "depth": 2, "base_filters": 4},
    }
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    app = typer.Typer()
    app.command()(command)
    args = ["--params", str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "tiles.csv"), "--store", str(tmp_path / "store"),
            "--out", str(tmp_path / "model"), "--live", str(tmp_path / "live")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("navml: error:") and "set train.bands: 3" in lines[0]
    params["train"]["bands"] = 3
    params["train"]["loos"] = "dice"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "unknown key 'train.loos'" in result.output
    assert not (tmp_path / "model").exists()
