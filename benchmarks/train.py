"""Benchmark of the segmentation U-Net: FLOPs, training and inference throughput, share of peak, stage vs bare fit.

    python benchmarks/train.py [--depth 4] [--base-filters 8] [--encoder plain] [--batch-size 8]
                               [--steps 12] [--crop 128] [--sizes 256 512] [--only train|stage|predict]
                               [--inter-op 1] [--intra-op 0] [--no-op-determinism] [--jit]

Builds the model exactly as ``navml.segment.train`` does (same loss, optimizer and
IoU metric; op determinism on and one op at a time unless told otherwise) and prints:

* the forward FLOPs of one tile counted from the layers (``forward_flops``) and
  ~3x that for a training step (backward: two convolutions per forward one);
* the machine's fp32 peak: cores x clock x FLOPs per cycle of its widest vector
  unit, read from /proc/cpuinfo (assumed 2 FMA units per core: AVX-512 2 x 16 lanes x 2
  = 64 FLOP/cycle, AVX2+FMA 2 x 8 x 2 = 32, SSE 8);
* ``train``: ``train_on_batch`` on random 256-px tiles after two warm-up steps: tiles/s,
  achieved GFLOP/s and share of the peak;
* ``stage``: samples/s of the train stage's own input (``training_dataset``: shard
  cache, random crops of ``--crop`` px, augmentation, tf.data) from a store of random
  shards written to a temp dir, against a bare ``model.fit`` on the same crops held
  in memory, and their ratio (the reading overhead; >= 0.85 wanted);
* ``predict``: ``predict_on_batch`` at each size of ``--sizes``;
* the peak RSS of the process.

Throughput is in samples (tiles or crops) of the stated size per second. The machine
may be shared: repeat runs and compare medians.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak GFLOP/s of the CPUs this process may use, and the assumption behind it."""
    cores = len(os.sched_getaffinity(0))
    with open("/proc/cpuinfo") as f:
        text = f.read()
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.MULTILINE).group(1).split())
    named = re.search(r"@\s*([\d.]+)\s*GHz", text)
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    ghz = float(named.group(1)) if named else (max(mhz) / 1000 if mhz else 0.0)
    if "avx512f" in flags:
        per_cycle, unit = 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, unit = 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2"
    else:
        per_cycle, unit = 8, "SSE: 4 lanes x (add + mul)"
    peak = cores * ghz * per_cycle
    return peak, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({unit}) = {peak:.0f} GFLOP/s"


def random_store(root: str, grid, n_classes: int, seed: int = 0):
    """One shard of noise imagery with flat-coloured lots and their masks; returns (store, tiles)."""
    from navml.geo.grid import Tile, tiles_of_shard
    from navml.geo.store import Store

    rng = np.random.default_rng(seed)
    store = Store(root, grid)
    n = grid.shard_size
    shard = Tile(1000, 1500, grid.shard_zoom)
    image = rng.integers(0, 256, size=(3, n, n), dtype=np.uint8)
    mask = np.zeros((n, n), np.uint8)
    for _ in range(n * n // 6000):
        h, w = rng.integers(20, 80, size=2)
        r, c = rng.integers(0, n - h), rng.integers(0, n - w)
        mask[r : r + h, c : c + w] = rng.integers(1, n_classes + 1)
    image[:, mask > 0] = 110
    store.write_shard("imagery", shard, image)
    store.write_shard("masks", shard, mask)
    return store, list(tiles_of_shard(shard, grid))


class EpochTimer:
    """Keras callback keeping each epoch's wall seconds."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._t)

        return _Timer()


def stage_vs_bare(model, a, k: int) -> tuple[float, float]:
    """(stage samples/s, bare samples/s), each over ``a.stage_epochs`` epochs of ``a.steps`` steps after one warm-up epoch."""
    from navml.geo.grid import Grid
    from navml.segment.dataset import Augment, TileReader, TrainingTiles
    from navml.segment.train import training_dataset

    grid = Grid(zoom=18, tile_size=a.tile, shard_zoom=15)
    size = a.crop or a.tile
    with tempfile.TemporaryDirectory(prefix="navml-bench-") as root:
        store, tiles = random_store(root, grid, k - 1)
        tiles = tiles[: a.steps * a.batch_size]
        reader = TileReader(store, k - 1, 3)
        ds = training_dataset(reader, TrainingTiles(tiles, [], 0), batch_size=a.batch_size, augment=Augment(), seed=0, crop=a.crop)
        timer = EpochTimer()
        model.fit(ds, epochs=1 + a.stage_epochs, steps_per_epoch=a.steps, callbacks=[timer], verbose=0, shuffle=False)
        stage = a.steps * a.batch_size / np.median(timer.seconds[1:])
        # crops of the same tiles and size, held in memory
        x = np.stack([reader.image(t) for t in tiles]).astype("float32")[:, :size, :size]
        m = np.stack([reader.mask(t) for t in tiles])[:, :size, :size]
        y = np.eye(k, dtype="float32")[np.where(m == 255, 0, m)]
        timer = EpochTimer()
        model.fit(x, y, batch_size=a.batch_size, epochs=1 + a.stage_epochs, callbacks=[timer], verbose=0, shuffle=False)
        bare = len(x) / np.median(timer.seconds[1:])
        print(f"stage reads: {reader.shard_reads} shard files for {(1 + a.stage_epochs) * len(tiles)} samples")
    return stage, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=8)
    ap.add_argument("--downsample", type=int, default=1, help="train.downsample: the U-Net runs on tiles average-pooled by this")
    ap.add_argument("--encoder", default="plain")
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="timed steps (per epoch in the stage measure)")
    ap.add_argument("--stage-epochs", type=int, default=3, help="timed epochs of the stage and bare fits (median taken)")
    ap.add_argument("--tile", type=int, default=256, help="tile size, px")
    ap.add_argument("--crop", type=int, default=128, help="training crop of the stage measure, px (0 = whole tiles)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="inference tile sizes, px")
    ap.add_argument("--loss", default="crossentropy+dice")
    ap.add_argument("--only", choices=["train", "stage", "predict"], action="append", help="run only these measures")
    ap.add_argument("--inter-op", type=int, default=1, help="TensorFlow inter-op threads: 1 as in training (deterministic), 0 = TF default")
    ap.add_argument("--intra-op", type=int, default=0, help="TensorFlow intra-op threads: 0 = TF default (one per core)")
    ap.add_argument("--no-op-determinism", action="store_true", help="skip tf.config.experimental.enable_op_determinism()")
    ap.add_argument("--jit", action="store_true", help="compile with XLA (jit_compile=True; Keras turns it off under op determinism)")
    ap.add_argument("--precision", default="float32", help="Keras dtype policy: float32 or mixed_bfloat16 (bf16 convolutions, AMX/AVX512-BF16)")
    a = ap.parse_args()
    parts = set(a.only or ["train", "stage", "predict"])

    import keras
    import tensorflow as tf

    from navml.models.unet import build_unet, forward_flops, receptive_field
    from navml.segment.losses import MaskedIoU, SegmentationLoss

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(a.precision)
    if not a.no_op_determinism:
        tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(a.inter_op)
    tf.config.threading.set_intra_op_parallelism_threads(a.intra_op)
    k = a.classes + 1
    model = build_unet(3, a.classes, a.depth, a.base_filters, a.encoder, downsample=a.downsample)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=SegmentationLoss(a.loss, class_weights=[1.0] * k),
        metrics=[MaskedIoU(k, list(range(1, k)), name="iou")],
        jit_compile=a.jit,
    )
    flops = forward_flops(model, a.tile)
    peak, peak_text = cpu_peak_gflops()
    train_flops = 3 * flops["total"]
    print(
        f"model: depth {a.depth}, base {a.base_filters}, {a.encoder}, downsample {a.downsample}; {model.count_params():,} parameters; "
        f"receptive field {receptive_field(a.depth, downsample=a.downsample)} px; inter-op {a.inter_op}, intra-op {a.intra_op} (0 = TF default), "
        f"op determinism {'off' if a.no_op_determinism else 'on'}, XLA {'on' if a.jit else 'off'}, {a.precision}, "
        f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"FLOPs per {a.tile}-px tile: forward {flops['total'] / 1e9:.2f} G ({flops['conv'] / flops['total']:.0%} in convolutions), "
        f"training step ~3x = {train_flops / 1e9:.2f} G"
    )
    print(f"peak (fp32): {peak_text}")
    rng = np.random.default_rng(0)
    if "train" in parts:
        x = rng.uniform(0, 255, size=(a.batch_size, a.tile, a.tile, 3)).astype("float32")
        y = keras.utils.to_categorical(rng.integers(0, k, size=(a.batch_size, a.tile, a.tile)), k).astype("float32")
        for _ in range(2):
            model.train_on_batch(x, y)
        t = time.perf_counter()
        for _ in range(a.steps):
            model.train_on_batch(x, y)
        dt = time.perf_counter() - t
        rate = a.steps * a.batch_size / dt
        achieved = rate * train_flops / 1e9
        print(
            f"train   {a.tile:4d} px: {rate:6.2f} tiles/s (batch {a.batch_size}, {dt / a.steps * 1000:.0f} ms/step); "
            f"{achieved:.1f} GFLOP/s = {achieved / peak:.1%} of peak"
        )
    if "stage" in parts:
        size = a.crop or a.tile
        stage, bare = stage_vs_bare(model, a, k)
        print(
            f"stage   {size:4d} px: {stage:6.2f} samples/s (store -> training_dataset -> fit); bare fit in memory {bare:6.2f} samples/s; "
            f"stage/bare {stage / bare:.2f}; {stage * 3 * forward_flops(model, size)['total'] / 1e9:.1f} GFLOP/s in the stage"
        )
    if "predict" in parts:
        for size in a.sizes:
            xb = rng.uniform(0, 255, size=(a.batch_size, size, size, 3)).astype("float32")
            model.predict_on_batch(xb)
            n = max(2, a.steps // 2)
            t = time.perf_counter()
            for _ in range(n):
                model.predict_on_batch(xb)
            dt = time.perf_counter() - t
            rate = n * a.batch_size / dt
            achieved = rate * forward_flops(model, size)["total"] / 1e9
            print(f"predict {size:4d} px: {rate:6.1f} tiles/s (batch {a.batch_size}); {achieved:.1f} GFLOP/s = {achieved / peak:.1%} of peak")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
