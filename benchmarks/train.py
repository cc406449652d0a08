"""Benchmark of the segmentation U-Net: training and inference throughput (tiles/s) and peak RSS.

    python benchmarks/train.py [--depth 4] [--base-filters 16] [--encoder plain]
                               [--batch-size 8] [--steps 12] [--sizes 256 512]

Builds the model exactly as ``navml.segment.train`` does (same loss, optimizer and
IoU metric, op determinism on, one op at a time unless ``--inter-op 0``) and times ``train_on_batch`` on random
256-px tiles after two warm-up steps, then ``predict_on_batch`` at each size
in ``--sizes``. Throughput is in tiles of that size per second; the
tf.data/store reading is not included (it is < 3 ms per tile). Prints one
line per measure and the peak RSS of the process (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--encoder", default="plain")
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--tile", type=int, default=256, help="training tile size, px")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="inference tile sizes, px")
    ap.add_argument("--loss", default="crossentropy+dice")
    ap.add_argument("--inter-op", type=int, default=1, help="TensorFlow inter-op threads: 1 as in training (deterministic), 0 = TF default")
    a = ap.parse_args()

    import keras
    import tensorflow as tf

    from navml.segment.losses import MaskedIoU, SegmentationLoss
    from navml.models.unet import build_unet, receptive_field

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(a.inter_op)
    k = a.classes + 1
    model = build_unet(3, a.classes, a.depth, a.base_filters, a.encoder)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=SegmentationLoss(a.loss, class_weights=[1.0] * k),
        metrics=[MaskedIoU(k, list(range(1, k)), name="iou")],
        jit_compile=False,
    )
    print(
        f"model: depth {a.depth}, base {a.base_filters}, {a.encoder}; {model.count_params():,} parameters; "
        f"receptive field {receptive_field(a.depth)} px; inter-op threads {a.inter_op} (0 = TF default), "
        f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}"
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(a.batch_size, a.tile, a.tile, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, k, size=(a.batch_size, a.tile, a.tile)), k).astype("float32")
    for _ in range(2):
        model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(a.steps):
        model.train_on_batch(x, y)
    dt = time.perf_counter() - t
    print(f"train   {a.tile:4d} px: {a.steps * a.batch_size / dt:6.1f} tiles/s (batch {a.batch_size}, {dt / a.steps * 1000:.0f} ms/step)")
    for size in a.sizes:
        xb = rng.uniform(0, 255, size=(a.batch_size, size, size, 3)).astype("float32")
        model.predict_on_batch(xb)
        n = max(2, a.steps // 2)
        t = time.perf_counter()
        for _ in range(n):
            model.predict_on_batch(xb)
        dt = time.perf_counter() - t
        print(f"predict {size:4d} px: {n * a.batch_size / dt:6.1f} tiles/s (batch {a.batch_size})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
