"""The detector chain learns: k-means anchors -> targets -> YoloLoss fit -> decode -> NMS -> mAP (slow, ~1 min)."""

from __future__ import annotations

import numpy as np
import pytest

from navml.detect.anchors import box_shapes, kmeans_anchors
from navml.detect.metrics import mean_ap
from navml.detect.nms import nms
from navml.detect.targets import decode, encode_targets


def _scene(rng: np.random.Generator, n: int):
    """64-px images with 1-3 bright bars: class 0 lies (11 x 4 px), class 1 stands (4 x 11 px), 2 px apart at least."""
    images, boxes, classes = [], [], []
    for _ in range(n):
        img = rng.uniform(60, 90, (64, 64, 3)).astype("float32")
        b: list[list[int]] = []
        c: list[int] = []
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(2))
            w, h = (11, 4) if k == 0 else (4, 11)
            for _ in range(20):
                x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
                nb = [x0, y0, x0 + w, y0 + h]
                if all(nb[2] + 2 <= o[0] or o[2] + 2 <= nb[0] or nb[3] + 2 <= o[1] or o[3] + 2 <= nb[1] for o in b):
                    b.append(nb)
                    c.append(k)
                    img[y0 : y0 + h, x0 : x0 + w] = 230
                    break
        images.append(img)
        boxes.append(np.array(b, float))
        classes.append(np.array(c))
    return np.stack(images), boxes, classes


@pytest.mark.slow
def test_the_detector_learns_bars_on_a_toy_set():
    import keras

    from navml.detect.loss import YoloLoss
    from navml.models.yolo import build_yolo

    keras.utils.set_random_seed(0)
    x, bx, cl = _scene(np.random.default_rng(0), 96)
    anchors = kmeans_anchors(box_shapes(np.concatenate(bx)), 2, seed=0).wh
    np.testing.assert_allclose(sorted(map(tuple, anchors)), [(4, 11), (11, 4)])
    y = np.stack([encode_targets(b, c, 64, 64, anchors, 2, 8) for b, c in zip(bx, cl)])
    model = build_yolo(n_classes=2, n_anchors=2, stride=8, base_filters=8)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=YoloLoss(anchors, 8, warmup_steps=20))
    model.loss.step = model.optimizer.iterations
    history = model.fit(x, y, batch_size=16, epochs=25, verbose=0).history["loss"]
    assert history[-1] < 0.1 * history[0]
    xt, bt, ct = _scene(np.random.default_rng(1), 32)
    preds = []
    for raw in model.predict(xt, verbose=0):
        d = decode(raw, anchors, 8, score_threshold=0.05)
        d = d.take(nms(d.boxes, d.scores, d.class_ids, 0.5))
        preds.append((d.boxes, d.scores, d.class_ids))
    m = mean_ap(list(zip(bt, ct)), preds, 2)
    assert m.map50 > 0.5  # 0.75 here after 150 steps
