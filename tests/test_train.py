"""Training and evaluation end to end on a tiny synthetic store (lots drawn on noise)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from navml.data.rasterize import IGNORE
from navml.errors import ConfigError, InputError, ModelError
from navml.geo.grid import Grid, Tile, tile_key, tiles_of_shard
from navml.geo.store import Store
from navml.models.io import load_model
from navml.segment.dataset import Augment, TileReader, TrainingTiles, augment_pair, make_dataset, select_training_tiles
from navml.segment.evaluate import evaluate_segmentation
from navml.segment.metrics import confusion_counts, labels_from_probs
from navml.segment.train import train_segmentation

GRID = Grid(zoom=18, tile_size=64, shard_zoom=16)  # 4 x 4 tiles of 64 px per 256-px shard
SHARD0 = Tile(10000, 22500, 16)
FAST = dict(depth=2, base_filters=8, batch_size=4, progress=False, crop=None, warmup_steps=0, downsample=1)


def make_store(root, shards: int = 1, n_classes: int = 1, seed: int = 0, empty: bool = False, grid: Grid = GRID) -> tuple[Store, pd.DataFrame]:
    """Noise imagery with flat-coloured rectangles ("lots", class ``1..n_classes``) and their masks.

    The last 16 pixel rows of each shard are of unknown class (mask 255) and hold an
    unmapped lot. Split: tiles cycle train, train, val, test, ...; ``empty`` draws no lot.
    """
    rng = np.random.default_rng(seed)
    store = Store(root, grid)
    n = grid.shard_size
    rows = []
    for s in range(shards):
        shard = Tile(SHARD0.x + s, SHARD0.y, grid.shard_zoom)
        image = rng.integers(0, 256, size=(3, n, n), dtype=np.uint8)
        mask = np.zeros((n, n), np.uint8)
        for _ in range(0 if empty else 14):
            h, w = rng.integers(12, 40, size=2)
            r, c = rng.integers(0, n - h), rng.integers(0, n - w)
            mask[r : r + h, c : c + w] = rng.integers(1, n_classes + 1)
        for k in range(1, n_classes + 1):
            hit = mask == k
            image[:, hit] = (np.array([110, 105, 100]) + 30 * (k - 1))[:, None] + rng.integers(-6, 7, size=(3, hit.sum()))
        mask[-16:][mask[-16:] == 0] = IGNORE
        if not empty:
            image[:, -12:-4, 20:60] = np.array([110, 105, 100])[:, None, None]  # unmapped, in the unknown area
        store.write_shard("imagery", shard, image)
        store.write_shard("masks", shard, mask)
        for i, t in enumerate(tiles_of_shard(shard, grid)):
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
        store, index, ["c1"], tmp_path / "model", steps=60, eval_every=5, patience=12, learning_rate=1e-2,
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
    """Two trainings with the same seed give bit-identical weights and curves.

    Run in a fresh process, as the train stage is: TensorFlow's one-op-at-a-time
    setting (see ``set_determinism``) only applies before its first op, which
    other tests of this session may already have run.
    """
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import hashlib, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train import make_store
        from navml.geo.grid import Grid
        from navml.models.io import load_model
        from navml.segment.train import train_segmentation
        # 256-px tiles: big enough for concurrent ops to change the sums when determinism is off
        store, df = make_store({str(tmp_path / "store")!r}, grid=Grid(18, 256, 16))
        for name in ("a", "b"):
            train_segmentation(store, df, ["c1"], {str(tmp_path)!r} + "/" + name, steps=4, eval_every=2, warmup_steps=1, seed=7, depth=2,
                               base_filters=4, batch_size=4, progress=False, live_dir={str(tmp_path)!r} + "/live_" + name)
            weights = load_model({str(tmp_path)!r} + "/" + name)[0].get_weights()
            print(name, hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest())
        import tensorflow as tf
        print("inter_op", tf.config.threading.get_inter_op_parallelism_threads())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    digests = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("a ", "b ", "inter_op ")))
    assert digests["a"] == digests["b"]
    # one op at a time: concurrent batch-norm gradients are not reproducible on CPU (seen at 256 px, batch 8)
    assert digests["inter_op"] == "1"
    curves = [(tmp_path / f"live_{n}" / "plots" / "metrics" / "eval" / "iou.tsv").read_text() for n in ("a", "b")]
    assert curves[0] == curves[1] and len(curves[0].splitlines()) == 3  # header + 2 checks


def test_negative_share_and_augmentation(tmp_path):
    store, df = make_store(tmp_path / "store", shards=2)
    df = df.copy()
    df.loc[df.index[:12], "pos_c1"] = 0  # at least 6 train negatives
    train = df[df.split == "train"]
    n_pos, n_neg = int((train.pos_c1 == 1).sum()), int((train.pos_c1 == 0).sum())
    assert n_neg >= 6 and n_pos >= 8
    tiles = select_training_tiles(df, ["c1"], 0.2)
    want = round(n_pos * 0.25)
    assert (len(tiles.positives), len(tiles.negatives), tiles.negatives_per_epoch) == (n_pos, n_neg, want)
    draws = {tuple(tiles.epoch(np.random.default_rng([0, e]))) for e in range(6)}
    assert len(draws) > 1  # negatives change from epoch to epoch
    assert all(len(d) == n_pos + want and set(tiles.positives) <= set(d) for d in draws)
    assert select_training_tiles(df, ["c1"], 0.9).negatives_per_epoch == n_neg  # capped by what there is
    everything = select_training_tiles(df, ["c1"], None)
    assert everything.per_epoch == len(train) and everything.epoch(np.random.default_rng(0)) == everything.all

    # geometric augmentation moves image and mask together: each pixel keeps its (row, col) -> label pairing
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[0:64, 0:64]
    image = np.stack([rr, cc, np.full_like(rr, 9)], axis=-1).astype(np.uint8)
    mask = ((rr * 64 + cc) % 7).astype(np.uint8)
    moved = 0
    for _ in range(6):
        out_img, out_mask = augment_pair(image, mask, rng, Augment(brightness=0, contrast=0, hue=0))
        assert out_img.dtype == np.float32 and out_img.shape == (64, 64, 3)
        r, c = out_img[..., 0].astype(int), out_img[..., 1].astype(int)
        np.testing.assert_array_equal(out_mask, (r * 64 + c) % 7)
        moved += not np.array_equal(out_mask, mask)
    assert moved >= 3
    jittered, same_mask = augment_pair(image, mask, np.random.default_rng(3), Augment(flip=False, rotate=False, brightness=0.2, contrast=0.2, hue=0.05))
    assert np.array_equal(same_mask, mask) and not np.allclose(jittered, image)

    # the dataset streams one-hot batches of the right shape, same order for the same seed
    reader = TileReader(store, 1, 3)
    ds = make_dataset(reader, tiles, batch_size=4, shuffle=True, seed=3)
    x, y = next(iter(ds))  # epoch 0
    assert len(list(ds)) == (n_pos + want + 3) // 4  # epoch 1
    assert x.shape == (4, 64, 64, 3) and y.shape == (4, 64, 64, 2)
    rows = y.numpy().sum(-1)
    assert set(np.unique(rows)) == {0.0, 1.0}  # ignored pixels have an all-zero row
    np.testing.assert_array_equal(rows[:, :48], 1.0)
    again = next(iter(make_dataset(reader, tiles, batch_size=4, shuffle=True, seed=3)))[0]
    np.testing.assert_array_equal(x.numpy(), again.numpy())


def test_multi_class_train_and_evaluate(tmp_path):
    """Two classes from the registry, no code change: masks 0/1/2, softmax of 3 channels, metrics per class."""
    store, df = make_store(tmp_path / "store", shards=2, n_classes=2)
    train_segmentation(store, df, names(2), tmp_path / "model", steps=6, eval_every=2, augment=None, **FAST)
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
    train_segmentation(store, df, ["c1"], root / "model", steps=48, eval_every=8, learning_rate=5e-3, augment=None, **FAST)
    return root, store, df


def test_evaluate_writes_metrics_plots_and_overlays(trained, tmp_path):
    root, store, df = trained
    metrics = evaluate_segmentation(store, df, root / "model", tmp_path, classes=["c1"], colors=[(250, 200, 40)], overlays=3, progress=False)
    saved = json.loads((tmp_path / "seg.json").read_text())
    assert set(saved) == {"c1", "mean_iou", "pixel_accuracy", "tiles"}
    assert saved["tiles"] == int((df.split == "test").sum()) > 0
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
    assert np.sum(counts) == (truth != IGNORE).sum() < truth.size  # pixels of unknown class are not scored
    assert saved["c1"]["iou"] == pytest.approx(cm[1, 1] / (cm[1, 1] + cm[0, 1] + cm[1, 0]), abs=1e-6)
    assert saved["c1"]["precision"] == pytest.approx(cm[1, 1] / (cm[1, 1] + cm[0, 1]), abs=1e-6)
    assert saved["c1"]["recall"] == pytest.approx(cm[1, 1] / (cm[1, 1] + cm[1, 0]), abs=1e-6)
    assert saved["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    assert saved["mean_iou"] == saved["c1"]["iou"] > 0.8  # one class; measured 0.943 at 48 steps (flat rectangles on noise)

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
    fixed = evaluate_segmentation(store, df, root / "model", tmp_path / "fixed", classes=["c1"], threshold=0.01, overlays=0, progress=False)
    assert fixed["c1"]["threshold"] == 0.01 and fixed["c1"]["recall"] >= metrics["c1"]["recall"]


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
        train_segmentation(store, df.assign(split="test"), ["c1"], tmp_path / "m", steps=1, eval_every=1, **FAST)
    assert _no_model(tmp_path / "m")


def test_split_without_a_positive_pixel(tmp_path):
    store, df = make_store(tmp_path / "store", empty=True)
    with pytest.raises(InputError, match="split 'train' has no pixel of class 'c1'"):
        train_segmentation(store, df, ["c1"], tmp_path / "m", steps=1, eval_every=1, negative_share=None, **FAST)
    assert _no_model(tmp_path / "m")


def test_band_count_mismatch(tmp_path):
    store, df = make_store(tmp_path / "store")
    with pytest.raises(InputError, match="imagery has 3 bands, the model takes 4; set train.bands: 3"):
        train_segmentation(store, df, ["c1"], tmp_path / "m", bands=4, steps=1, eval_every=1, **FAST)
    assert _no_model(tmp_path / "m")


def test_corrupt_tile_stops_training_with_one_line(tmp_path):
    store, df = make_store(tmp_path / "store")
    path = store.path("imagery", SHARD0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy: header intact, pixel data cut
    with pytest.raises(InputError) as err:
        train_segmentation(store, df, ["c1"], tmp_path / "m", steps=1, eval_every=1, **FAST)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert _no_model(tmp_path / "m")
    # an earlier model stays untouched by a failed run
    good, df2 = make_store(tmp_path / "good")
    train_segmentation(good, df2, ["c1"], tmp_path / "m", steps=1, eval_every=1, **FAST)
    before = (tmp_path / "m" / "model.keras").read_bytes()
    with pytest.raises(InputError):
        train_segmentation(store, df, ["c1"], tmp_path / "m", steps=1, eval_every=1, **FAST)
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
        "train": {"bands": 4, "steps": 1, "eval_every": 1, "warmup_steps": 0, "crop": None, "depth": 2, "base_filters": 4},
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


def test_reader_opens_each_shard_once(tmp_path):
    store, df = make_store(tmp_path / "store", shards=3)
    tiles = [Tile(r.x, r.y, r.z) for r in df.itertuples()]
    reader = TileReader(store, 1, 3)
    for _ in range(3):  # three passes over 48 tiles of 3 shards: imagery, its valid-data mask, masks
        for t in tiles:
            image, mask = reader.pair(t)
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert reader.shard_reads == 3 * 3
    direct = TileReader(store, 1, 3, cache_mb=0)  # tile by tile from the files: the same pixels
    for t in tiles[::5]:
        np.testing.assert_array_equal(reader.image(t), direct.image(t))
        np.testing.assert_array_equal(reader.mask(t), direct.mask(t))
    assert direct.shard_reads == 0
    small = TileReader(store, 1, 3, cache_mb=0.32)  # room for one 256-px imagery shard (192 KB), its valid mask and labels (64 KB each)
    for t in tiles + tiles:
        small.pair(t)
    assert small.shard_reads == 3 * 3 * 2  # below the store's size: one shard at a time, read again each pass
    small.pair(tiles[-1])
    assert small.shard_reads == 3 * 3 * 2  # the last shard is still in memory


def test_random_crops_keep_image_and_mask_together(tmp_path):
    store, df = make_store(tmp_path / "store")
    tiles = TrainingTiles([Tile(r.x, r.y, r.z) for r in df.itertuples()], [], 0)
    reader = TileReader(store, 1, 3)
    ds = make_dataset(reader, tiles, batch_size=4, shuffle=True, seed=1, crop=32, repeat=True)
    full = {tile_key(t): reader.pair(t) for t in tiles.positives}
    seen = set()
    for x, y in ds.take(12):  # 48 crops: three passes over 16 tiles, batches run across passes
        assert x.shape == (4, 32, 32, 3) and y.shape == (4, 32, 32, 2)
        for img, onehot in zip(x.numpy(), y.numpy()):
            hits = []
            for key, (image, mask) in full.items():
                for r, c in zip(*np.nonzero((image[:33, :33] == img[0, 0]).all(-1))):
                    if np.array_equal(image[r : r + 32, c : c + 32], img):
                        hits.append((key, r, c))
                        want = np.eye(2, dtype="float32")[np.where(mask == IGNORE, 0, mask)] * (mask != IGNORE)[..., None]
                        np.testing.assert_array_equal(onehot, want[r : r + 32, c : c + 32])
            assert len(hits) == 1
            seen.add(hits[0])
    assert len({(r, c) for _, r, c in seen}) > 10  # windows are drawn at random offsets
    with pytest.raises(ConfigError, match="train.crop"):
        make_dataset(reader, tiles, batch_size=4, crop=65)


def test_step_budget_and_checks(tmp_path):
    store, df = make_store(tmp_path / "store", shards=2)
    out = train_segmentation(store, df, ["c1"], tmp_path / "m", steps=6, eval_every=2, patience=5,
                             live_dir=tmp_path / "live", **{**FAST, "crop": 32})
    assert out["steps_run"] == 6 and out["best_step"] in (2, 4, 6) and out["crop"] == 32
    assert out["train_samples"] == 6 * 4
    assert len((tmp_path / "live" / "plots" / "metrics" / "eval" / "iou.tsv").read_text().splitlines()) == 1 + 3
    for bad, match in [
        ({"steps": 4, "eval_every": 5}, "train.eval_every"),
        ({"steps": 4, "eval_every": 2, "warmup_steps": -1}, "train.warmup_steps"),
        ({"steps": 4, "eval_every": 2, "crop": 30}, "train.crop"),  # not a multiple of the stride 4
        ({"steps": 4, "eval_every": 2, "crop": 128}, "train.crop"),  # larger than the 64-px tiles
        ({"steps": 0, "eval_every": 1}, "train.steps"),
    ]:
        with pytest.raises(ConfigError, match=match):
            train_segmentation(store, df, ["c1"], tmp_path / "bad", **{**FAST, **bad})
    assert not (tmp_path / "bad").exists()


def test_learning_rate_warms_up_then_decays():
    from navml.segment.train import learning_rate_schedule

    lr = learning_rate_schedule(0.01, steps=100, warmup_steps=20)
    at = {s: float(lr(s)) for s in (0, 10, 20, 60, 100)}
    assert at[0] == pytest.approx(0.001) and at[10] == pytest.approx(0.0055)
    assert at[20] == pytest.approx(0.01) and at[60] == pytest.approx(0.01 * (0.05 + 0.95 * 0.5), rel=1e-4)
    assert at[100] == pytest.approx(0.0005)
    capped = learning_rate_schedule(0.01, steps=10, warmup_steps=50)  # warm-up at most half of the steps
    assert float(capped(5)) == pytest.approx(0.01) and float(capped(10)) == pytest.approx(0.0005)
    plain = learning_rate_schedule(0.01, steps=10)
    assert float(plain(0)) == pytest.approx(0.01) and float(plain(10)) == pytest.approx(0.0005)


def test_corrupt_shard_met_mid_stream_stops_training(tmp_path):
    """A damaged second shard is met after some samples of the endless stream: one-line error, no model, no hang."""
    store, df = make_store(tmp_path / "store", shards=2)
    path = store.path("imagery", Tile(SHARD0.x + 1, SHARD0.y, SHARD0.z))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        train_segmentation(store, df, ["c1"], tmp_path / "m", steps=40, eval_every=20, **FAST)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert _no_model(tmp_path / "m")


@pytest.mark.parametrize("cache_mb", [1024.0, 0.0])
def test_pixels_without_imagery_are_unknown_in_training(tmp_path, cache_mb):
    """Outside the orthophoto (the imagery's valid-data mask) labels are IGNORE: neither trained nor scored."""
    store, df = make_store(tmp_path / "store")
    shard = SHARD0
    n = GRID.shard_size
    image = store.read_shard("imagery", shard)
    valid = np.ones((n, n), bool)
    valid[:, n // 2 :] = False  # the east half has no imagery
    store.write_shard("imagery", shard, image, valid=valid)
    reader = TileReader(store, 1, 3, cache_mb=cache_mb)
    labels = np.concatenate([np.concatenate([reader.mask(Tile(shard.x * 4 + c, shard.y * 4 + r, 18)) for c in range(4)], 1) for r in range(4)])
    truth = store.read_shard("masks", shard)[0]
    assert (labels[:, n // 2 :] == IGNORE).all()
    np.testing.assert_array_equal(labels[:, : n // 2], truth[:, : n // 2])
    assert (truth[:, n // 2 :] != IGNORE).any()  # there were labels to hide


def test_a_downsampled_unet_trains_and_records_its_stride(tmp_path):
    """train.downsample 2: the model folder says stride 2 * 2**depth and the doubled receptive field the predictor's halo needs."""
    from navml.models.unet import receptive_field, receptive_halo

    store, df = make_store(tmp_path / "store")
    four = df[df["pos_c1"] == 1].head(4)
    index = pd.concat([four.assign(split="train"), four.assign(split="val")])
    fast = {**FAST, "downsample": 2}
    train_segmentation(store, index, ["c1"], tmp_path / "model", steps=4, eval_every=2, augment=None, negative_share=None, **fast)
    model, meta = load_model(tmp_path / "model")
    assert meta.stride == 8 and meta.receptive_field == receptive_field(2, downsample=2) == 104
    assert meta.extra["downsample"] == 2 and meta.extra["receptive_halo"] == receptive_halo(2, downsample=2)
    assert model.predict_on_batch(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 2)
    with pytest.raises(ConfigError, match="multiple of 8"):
        train_segmentation(store, index, ["c1"], tmp_path / "m2", steps=2, eval_every=2, **{**fast, "crop": 36})
