"""Detection metrics on hand-computed cases, and against pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from navml.detect.metrics import average_precision, confusion_matrix, counts_at, mean_ap, pr_curve

# Image 1, class 0: three truths T1, T2, T3; four predictions by decreasing score:
#   P1 0.9 on T1 (IoU 1)                      -> TP
#   P2 0.8 far from everything                 -> FP
#   P3 0.7 on T2 shifted 2 px (IoU 80/120=2/3) -> TP (at IoU >= 0.5 .. 0.65), FP from 0.70 on
#   P4 0.6 on T1 again (T1 taken)              -> FP
# At IoU 0.5: precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3; monotone envelope 1, 2/3, 2/3, 1/2.
#   all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
#   COCO 101-point: recall 0 .. 0.33 (34 points) at 1, 0.34 .. 0.66 (33) at 2/3, 0.67 .. 1 (34) at 0 -> 56/101
# At IoU >= 0.70 only P1 is a TP: AP = 1/3. Over the ten IoUs 0.50 .. 0.95: (4 * 5/9 + 6 * 1/3) / 10 = 19/45.
# Image 2, class 1: one truth, one exact prediction -> AP 1 at every IoU.
# Class 2: a prediction but no truth -> no AP, left out of the means.
T1, T2, T3 = [0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]
TRUTHS = [(np.array([T1, T2, T3], float), np.array([0, 0, 0])), (np.array([[5, 5, 16, 9]], float), np.array([1]))]
PREDS = [
    (np.array([T1, [100, 100, 110, 110], [22, 0, 32, 10], [1, 0, 11, 10]], float), np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 0, 0])),
    (np.array([[5, 5, 16, 9], [60, 60, 70, 70]], float), np.array([0.95, 0.5]), np.array([1, 2])),
]


def test_pr_curve_and_ap_by_hand():
    p, r, s, n = pr_curve(TRUTHS, PREDS, 0, 0.5)
    assert n == 3 and s.tolist() == [0.9, 0.8, 0.7, 0.6]
    np.testing.assert_allclose(p, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(r, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert average_precision(p, r) == pytest.approx(5 / 9)
    assert average_precision(p, r, "coco") == pytest.approx(56 / 101)
    p75, r75, _, _ = pr_curve(TRUTHS, PREDS, 0, 0.75)
    assert average_precision(p75, r75) == pytest.approx(1 / 3)


def test_map_at_05_and_05_095_by_hand():
    m = mean_ap(TRUTHS, PREDS, n_classes=3)
    np.testing.assert_allclose(m.ap50[:2], [5 / 9, 1.0])
    np.testing.assert_allclose(m.ap50_95[:2], [19 / 45, 1.0])
    assert np.isnan(m.ap50[2]) and np.isnan(m.ap50_95[2])
    assert m.map50 == pytest.approx((5 / 9 + 1) / 2)
    assert m.map50_95 == pytest.approx((19 / 45 + 1) / 2)


def test_precision_recall_at_a_score_threshold():
    c = counts_at(TRUTHS, PREDS, 3, score_threshold=0.65)
    # class 0 keeps P1, P2, P3: 2 TP, 1 FP, T3 missed; class 1: 1 TP; class 2's 0.5 prediction is below the threshold
    assert c.tp.tolist() == [2, 1, 0] and c.fp.tolist() == [1, 0, 0] and c.fn.tolist() == [1, 0, 0]
    np.testing.assert_allclose(c.precision[:2], [2 / 3, 1.0])
    np.testing.assert_allclose(c.recall[:2], [2 / 3, 1.0])
    assert np.isnan(c.precision[2]) and np.isnan(c.recall[2])


def test_confusion_matrix_counts_a_wrong_class_on_a_truth():
    # classes 0 left, 1 right, 2 through, 3 through_left; index 4 = none
    truths = [(np.array([[0, 0, 11, 4], [20, 0, 31, 4], [50, 0, 61, 4]], float), np.array([0, 3, 2]))]
    preds = [(np.array([[0, 0, 11, 4], [20, 0, 31, 4], [90, 0, 101, 4], [20.5, 0, 31.5, 4]], float),
              np.array([0.9, 0.8, 0.7, 0.6]), np.array([3, 3, 1, 0]))]
    m = confusion_matrix(truths, preds, 4, score_threshold=0.5)
    want = np.zeros((5, 5), int)
    want[0, 3] = 1  # the left arrow called through_left
    want[3, 3] = 1  # through_left found
    want[4, 1] = 1  # a right arrow where there is none
    want[4, 0] = 1  # a left arrow on the through_left already found: a false alarm, not a confusion
    want[2, 4] = 1  # the through arrow missed
    np.testing.assert_array_equal(m, want)
    assert m[:4].sum(axis=1).tolist() == [1, 0, 1, 1]  # truth counts per class


def _random_case(seed: int, n_images: int = 6, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(n_images):
        n = int(rng.integers(1, 8))
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(4, 30, (n, 2))
        tb = np.column_stack([xy, xy + wh])
        tc = rng.integers(0, n_classes, n)
        keep = rng.random(n) < 0.8
        pb = tb[keep] + rng.normal(0, 1, (keep.sum(), 4)) * np.tile(wh[keep], 2) * 0.08  # IoUs spread over 0.5 .. 1
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        pc = np.where(rng.random(keep.sum()) < 0.85, tc[keep], rng.integers(0, n_classes, keep.sum()))
        m = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 200, (m, 2))
        fb = np.column_stack([fxy, fxy + rng.uniform(4, 30, (m, 2))])
        pb = np.concatenate([pb, fb])
        pc = np.concatenate([pc, rng.integers(0, n_classes, m)])
        truths.append((tb, tc))
        preds.append((pb, rng.uniform(0.05, 1.0, len(pb)), pc))
    return truths, preds


def _coco_stats(truths, preds, n_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, ((tb, tc), (pb, ps, pc)) in enumerate(zip(truths, preds)):
        images.append({"id": i + 1, "width": 256, "height": 256})
        for b, c in zip(tb, tc):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(pb, ps, pc):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_map_agrees_with_pycocotools(seed):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (pip install -e '.[test]')")
    truths, preds = _random_case(seed)
    stats = _coco_stats(truths, preds, 3)
    ours = mean_ap(truths, preds, 3, interpolation="coco")
    assert 0.2 < stats[0] < 0.95  # a case with something to get right
    assert ours.map50_95 == pytest.approx(stats[0], abs=1e-9)
    assert ours.map50 == pytest.approx(stats[1], abs=1e-9)
    # all-point interpolation differs from the 101-point sampling by little
    assert mean_ap(truths, preds, 3).map50_95 == pytest.approx(stats[0], abs=0.03)


def test_a_class_with_truths_but_no_predictions_scores_zero_not_nan():
    truths = [(np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float), np.array([0, 1]))]
    preds = [(np.array([[0, 0, 10, 10]], float), np.array([0.9]), np.array([0]))]
    m = mean_ap(truths, preds, 2)
    assert m.ap50.tolist() == [1.0, 0.0] and m.map50 == pytest.approx(0.5)
    assert mean_ap(truths, preds, 2, interpolation="coco").ap50.tolist() == [1.0, 0.0]
