"""Evaluation of the detector on the held-out test split: mAP, AP per class, P/R, confusion, PR curves, overlays.

Every test tile is detected whole (decode with a score floor of
:data:`SCORE_FLOOR`, class-aware NMS at the model's ``nms_iou``, boxes clipped
to the tile as ``boxes.csv`` clips the truth) and scored with
:mod:`navml.detect.metrics`. Writes into ``out_dir``:

* ``detect.json`` (DVC metrics): ``map50`` (all-point interpolated AP at IoU
  0.5, mean over the classes with test truths), ``map50_95``; ``precision``,
  ``recall``, ``f1`` over all classes at ``score_threshold`` (the model's, chosen
  on val); counts (``tiles``, ``truths``, ``detections`` at the threshold,
  ``classes_scored``); per class under ``classes.<name>``: ``ap50``,
  ``ap50_95``, ``precision``, ``recall``, ``truths``, ``tp``, ``fp``, ``fn``,
  ``confused`` (truths found as another class) and ``missed``;
* ``detect_plots/pr/<name>.csv``: the class's precision-recall curve at IoU 0.5
  (``recall, precision, score``; classes without test truths have none);
* ``detect_plots/confusion.csv``: one ``actual,predicted`` row per truth or
  detection at the threshold (``none``: missed or false alarm), for DVC's
  confusion template; ``detect_plots/confusion.json``: the matrix;
* ``detect_plots/overlays/<z-x-y>.png``: truth | detections over the imagery,
  enlarged, boxes in the class colour with its name (and score).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from navml.config import EvaluateParams
from navml.detect.dataset import BOXES_FILE, EMPTY, TileBoxes, read_boxes, tile_images
from navml.detect.metrics import confusion_matrix, counts_at, match_image, mean_ap, pr_curve
from navml.detect.nms import nms
from navml.detect.targets import Detections, decode
from navml.errors import InputError, ModelError
from navml.geo.grid import tile_key
from navml.geo.store import Store
from navml.io import staging_dir, write_json
from navml.segment.dataset import IMAGERY, TileReader, check_store, split_tiles

#: Defaults of the keyword arguments below: the params model's, written once there.
_EVALUATE = EvaluateParams()

METRICS_FILE = "detect.json"
PLOTS_DIR = "detect_plots"
#: Detections scoring below this are not decoded (they cannot change mAP by more than noise).
SCORE_FLOOR = 0.01
#: Most detections kept per tile after NMS, by score.
MAX_DETECTIONS = 300
#: IoU of a match for P/R, confusion and the PR curves.
IOU = 0.5
#: Enlargement of the overlay panels (an arrow is about 11 x 4 px).
OVERLAY_SCALE = 3


def predict_detections(
    model,
    images: np.ndarray,
    anchors: np.ndarray,
    stride: int,
    *,
    batch_size: int = _EVALUATE.batch_size,
    nms_iou: float = 0.5,
    score_floor: float = SCORE_FLOOR,
    max_detections: int = MAX_DETECTIONS,
    clip: bool = True,
    offset_scale: float = 1.0,
    refiner=None,
) -> list[Detections]:
    """Detections of each image (n, rows, cols, bands) 0..255: decode, class-aware NMS, best ``max_detections``.

    ``clip`` clips boxes to the image (truth boxes of ``boxes.csv`` are clipped to their tile). ``refiner``: the
    second stage (:class:`navml.detect.refine.Refiner`), which reads each box after NMS again (then NMS once more).
    """
    out: list[Detections] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        raw = np.asarray(model.predict_on_batch(chunk))
        dets = [decode(r, anchors, stride, score_threshold=score_floor, offset_scale=offset_scale) for r in raw]
        dets = [d.take(nms(d.boxes, d.scores, d.class_ids, nms_iou)) for d in dets]
        if refiner is not None:
            from navml.detect.refine import refine_batch

            dets = [d.take(nms(d.boxes, d.scores, d.class_ids, nms_iou)) for d in refine_batch(refiner, chunk, dets)]
        for d in dets:
            d = d.take(np.arange(min(len(d), max_detections)))
            if clip:
                rows, cols = chunk.shape[1:3]
                b = d.boxes.copy()
                b[:, 0::2] = np.clip(b[:, 0::2], 0, cols)
                b[:, 1::2] = np.clip(b[:, 1::2], 0, rows)
                d = Detections(b, d.scores, d.class_ids)
            out.append(d)
    return out


def detect_images(
    model,
    images: np.ndarray,
    anchors: np.ndarray,
    stride: int,
    *,
    factor: float = 1.0,
    batch_size: int = _EVALUATE.batch_size,
    nms_iou: float = 0.5,
    offset_scale: float = 1.0,
    refiner=None,
) -> list[Detections]:
    """:func:`predict_detections` of whole tiles (n, rows, cols, bands) with the images resampled by ``factor``
    (model pixels per tile pixel: the detector's ground resolution) and the boxes mapped back to tile pixels."""
    from navml.models.scale import resample

    if factor == 1.0:
        return predict_detections(model, images, anchors, stride, batch_size=batch_size, nms_iou=nms_iou, offset_scale=offset_scale,
                                  refiner=refiner)
    rows, cols = images.shape[1:3]
    mr, mc = (-(-round(k * factor) // stride) * stride for k in (rows, cols))
    x = resample(images, mr, mc, (mr / rows, mc / cols), (0.0, 0.0))
    out = []
    for d in predict_detections(model, x, anchors, stride, batch_size=batch_size, nms_iou=nms_iou, offset_scale=offset_scale,
                                refiner=refiner):
        b = d.boxes * np.array([cols / mc, rows / mr, cols / mc, rows / mr])
        b[:, 0::2] = np.clip(b[:, 0::2], 0, cols)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, rows)
        out.append(Detections(b, d.scores, d.class_ids))
    return out


def best_f1_threshold(truths: Sequence[TileBoxes], preds: Sequence, n_classes: int, iou_threshold: float = IOU) -> dict:
    """The score threshold of best F1 over all classes together (IoU ``iou_threshold``), with its F1, precision, recall.

    Matching is greedy by decreasing score (:func:`navml.detect.metrics.match_image`), so the
    matches of the predictions above any threshold are those of the full matching: one
    matching gives the counts at every threshold. The threshold lies halfway between the
    lowest kept score and the next lower one (0.5 without any prediction).
    """
    scores, flags, n_true = [], [], 0
    for c in range(n_classes):
        for t, p in zip(truths, preds):
            s, tp, k = match_image(t, p, c, iou_threshold)
            scores.append(s)
            flags.append(tp)
            n_true += k
    s = np.concatenate(scores) if scores else np.zeros(0)
    f = np.concatenate(flags) if flags else np.zeros(0, bool)
    if not len(s):
        return {"threshold": 0.5, "f1": 0.0, "precision": float("nan"), "recall": 0.0 if n_true else float("nan")}
    order = np.argsort(-s, kind="mergesort")
    s, f = s[order], f[order]
    tp, fp = np.cumsum(f), np.cumsum(~f)
    f1 = 2 * tp / np.maximum(tp + fp + n_true, 1)
    ends = np.flatnonzero(np.r_[s[:-1] > s[1:], True])  # cut only between different scores
    best = int(ends[int(np.argmax(f1[ends]))])
    thr = float(s[best] + s[best + 1]) / 2 if best + 1 < len(s) else float(s[best])
    return {
        "threshold": thr,
        "f1": float(f1[best]),
        "precision": float(tp[best] / (tp[best] + fp[best])),
        "recall": float(tp[best] / n_true) if n_true else float("nan"),
    }


def _colors(n: int, colors: Sequence[Sequence[int]] | None) -> list[tuple[int, int, int]]:
    from navml.palette import FALLBACK

    if colors and len(colors) >= n and len({tuple(c) for c in colors[:n]}) == n:
        return [tuple(int(v) for v in c) for c in colors[:n]]  # type: ignore[misc]
    return [FALLBACK[i % len(FALLBACK)] for i in range(n)]


def render_boxes(
    image: np.ndarray,
    truth: TileBoxes,
    dets: Detections,
    names: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    scale: int = OVERLAY_SCALE,
    gap: int = 4,
) -> np.ndarray:
    """Two panels side by side, RGB uint8: truth boxes | detections, over the imagery enlarged ``scale`` times.

    Each box is drawn in its class colour with the class name (detections: and score).
    """
    import cv2

    from navml.palette import to_rgb

    cols = _colors(len(names), colors)
    base = cv2.resize(to_rgb(image), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    panels = []
    for boxes, ids, scores in ((truth[0], truth[1], None), (dets.boxes, dets.class_ids, dets.scores)):
        panel = np.ascontiguousarray(base.copy())
        for k, (b, c) in enumerate(zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(ids, int))):
            x0, y0, x1, y1 = (int(round(v * scale)) for v in b)
            color = tuple(int(v) for v in cols[c])
            cv2.rectangle(panel, (x0, y0), (x1, y1), color, 1)
            label = names[c] if scores is None else f"{names[c]} {scores[k]:.2f}"
            cv2.putText(panel, label, (x0, max(y0 - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.33, color, 1, cv2.LINE_AA)
        panels.append(panel)
    sep = np.full((base.shape[0], gap, 3), 255, dtype="uint8")
    return np.concatenate([panels[0], sep, panels[1]], axis=1)


def _confusion_rows(cm: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    rows = [(labels[t], labels[p]) for t in range(len(labels)) for p in range(len(labels)) for _ in range(int(cm[t, p]))]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def _write_plots(folder: Path, names: Sequence[str], curves: list, cm: np.ndarray, threshold: float, overlay_images: Mapping[str, np.ndarray]) -> None:
    import cv2

    (folder / "pr").mkdir(parents=True)
    for name, curve in zip(names, curves):
        if curve is None:
            continue
        precision, recall, scores = curve
        pd.DataFrame({"recall": recall, "precision": precision, "score": scores}).round(6).to_csv(folder / "pr" / f"{name}.csv", index=False)
    labels = [*names, "none"]
    _confusion_rows(cm, labels).to_csv(folder / "confusion.csv", index=False)
    write_json(
        folder / "confusion.json",
        {"labels": labels, "counts": cm.tolist(), "rows": "actual", "columns": "predicted", "score_threshold": threshold, "iou": IOU},
    )
    (folder / "overlays").mkdir()
    for key, img in overlay_images.items():
        if not cv2.imwrite(str(folder / "overlays" / f"{key}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise InputError(f"{folder / 'overlays'}: cannot write {key}.png")


def evaluate_detection(
    store: Store,
    index: pd.DataFrame,
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    names: Sequence[str],
    boxes: Mapping | None = None,
    colors: Sequence[Sequence[int]] | None = None,
    score_threshold: float | None = None,
    batch_size: int = _EVALUATE.batch_size,
    overlays: int = _EVALUATE.overlays,
    decoys: Sequence[tuple] | None = None,
    split: str = "test",
    progress: bool = True,
    where: str = "tile index",
) -> dict:
    """Score the detector in ``model_dir`` on the test split; write ``detect.json`` and ``detect_plots/`` into ``out_dir``.

    ``names``: the detection names in class-id order (must equal the model's);
    ``boxes``: truth per tile (default: the store's ``boxes.csv``); ``colors``:
    RGB per name for the overlays; ``score_threshold``: None uses the model's
    (``meta.json``, chosen on val at training); ``overlays``: how many test
    tiles to draw (those with the most truths + detections); ``decoys``: look-alikes ``[(WGS84 polygon, kind), ...]``
    (the synthetic city's ``truth/decoys.geojson``): ``decoys`` in the metrics counts the false detections at the
    threshold lying on them, by kind (:func:`navml.post.score.score_box_decoys`); ``split``: the split scored
    (``test``; another one only for measurements). Returns the metrics.
    """
    from navml.detect.refine import load_refiner
    from navml.models.io import load_model, read_meta

    names = list(names)
    n = len(names)
    meta = read_meta(model_dir)
    if meta.task != "detection":
        raise ModelError(f"{model_dir}: a {meta.task} model, not a detection one; pass the detector's model folder (data/models/det)")
    bands = store.count(IMAGERY)
    if bands == 0:
        raise InputError(f"{store.root / IMAGERY}: no imagery shard; run `dvc repro imagery`")
    meta.check_fits(zoom=store.grid.zoom, bands=bands, classes=names, where=str(model_dir))
    if store.grid.tile_size % meta.stride:
        raise ModelError(f"{model_dir}: model needs tiles of a multiple of {meta.stride} px; grid.tile_size is {store.grid.tile_size}")
    try:
        anchors = np.asarray(meta.extra["anchors"], float).reshape(-1, 2)
        threshold = float(meta.extra["score_threshold"] if score_threshold is None else score_threshold)
        nms_iou = float(meta.extra.get("nms_iou", 0.5))
        offset_scale = float(meta.extra.get("offset_scale", 1.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{model_dir}: meta.json lacks the detector's anchors or score_threshold ({exc}); retrain it") from exc
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"score threshold {threshold}: use 0..1")
    truth = read_boxes(store.root / BOXES_FILE, n) if boxes is None else dict(boxes)
    tiles = split_tiles(index, split, where)
    if not tiles:
        raise InputError(f"{where}: split '{split}' has no tile; enlarge the AOI or raise cover.split.{split}")
    check_store(store, tiles, bands, (IMAGERY,))
    model, _ = load_model(model_dir)
    refiner = load_refiner(model_dir, meta)
    reader = TileReader(store, 0, bands)
    from navml.geo.grid import tiles_ground_resolution
    from navml.models.scale import scale_factor

    # at the detector's ground resolution, as predict_detect runs it (tile by tile here)
    factor = scale_factor(meta.extra.get("gsd_m"), tiles_ground_resolution(tiles, store.grid.tile_size))

    def detect(images: np.ndarray) -> list[Detections]:
        return detect_images(model, images, anchors, meta.stride, factor=factor, batch_size=batch_size, nms_iou=nms_iou,
                             offset_scale=offset_scale, refiner=refiner)

    from tqdm import tqdm

    truths: list[TileBoxes] = [truth.get(t, EMPTY) for t in tiles]
    preds, images_of = [], {}
    for start in tqdm(range(0, len(tiles), batch_size), desc="test", unit="batch", disable=None if progress else True, leave=False):
        chunk = tiles[start : start + batch_size]
        images = tile_images(reader, chunk)
        for tile, img, d in zip(chunk, images, detect(images)):
            preds.append(d)
            images_of[tile] = img
    as_tuples = [(d.boxes, d.scores, d.class_ids) for d in preds]
    n_truth = sum(len(t[1]) for t in truths)
    if not n_truth:
        raise InputError(f"{store.root / BOXES_FILE}: split 'test' has no detection box; use a larger AOI or another cover.seed")

    m = mean_ap(truths, as_tuples, n)
    counts = counts_at(truths, as_tuples, n, threshold, IOU)
    cm = confusion_matrix(truths, as_tuples, n, threshold, IOU)
    curves = []
    for c in range(n):
        p, r, s, k = pr_curve(truths, as_tuples, c, IOU)
        curves.append((p, r, s) if k else None)
    tp, fp, fn = int(counts.tp.sum()), int(counts.fp.sum()), int(counts.fn.sum())
    per_class = {}
    for c, name in enumerate(names):
        per_class[name] = {
            "ap50": m.ap50[c],
            "ap50_95": m.ap50_95[c],
            "precision": counts.precision[c],
            "recall": counts.recall[c],
            "truths": int(counts.tp[c] + counts.fn[c]),
            "tp": int(counts.tp[c]),
            "fp": int(counts.fp[c]),
            "fn": int(counts.fn[c]),
            "confused": int(cm[c, :n].sum() - cm[c, c]),
            "missed": int(cm[c, n]),
        }
    metrics = {
        "map50": m.map50,
        "map50_95": m.map50_95,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "score_threshold": threshold,
        "tiles": len(tiles),
        "truths": n_truth,
        "detections": tp + fp,
        "classes_scored": int(np.sum(~np.isnan(m.ap50))),
        "classes": per_class,
    }
    if decoys is not None:
        metrics["decoys"] = decoy_detections(tiles, truths, preds, threshold, decoys, store.grid)
    metrics = _rounded(metrics)

    interest = sorted(
        ((len(t[1]) + int((d.scores >= threshold).sum()), tile) for tile, t, d in zip(tiles, truths, preds)),
        key=lambda it: (-it[0], it[1].y, it[1].x),
    )
    overlay_images = {}
    for _, tile in interest[: max(0, overlays)]:
        i = tiles.index(tile)
        d = preds[i].take(preds[i].scores >= threshold)
        overlay_images[tile_key(tile)] = render_boxes(images_of[tile], truths[i], d, names, colors)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with staging_dir(out_dir / PLOTS_DIR) as tmp:
        _write_plots(tmp, names, curves, cm, threshold, overlay_images)
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def decoy_detections(tiles: Sequence, truths: Sequence[TileBoxes], preds: Sequence[Detections], threshold: float,
                     decoys: Sequence[tuple], grid) -> dict:
    """False detections (IoU < 0.5 with every truth box of the tile) at ``threshold`` on ``decoys`` (WGS84 polygon, kind),
    by kind: ``{false_detections, on_decoys, kinds}`` (:func:`navml.post.score.score_box_decoys`, one pixel grid)."""
    import shapely

    from navml.geo.features import to_pixels
    from navml.geo.grid import tile_window
    from navml.post.score import score_box_decoys

    size = grid.tile_size
    boxes, gts = [], []
    for t, (tb, _), d in zip(tiles, truths, preds):
        w = tile_window(getattr(t, "tile", t), size)
        off = np.array([w.col, w.row, w.col, w.row], float)
        keep = d.scores >= threshold
        boxes.append(d.boxes[keep] + off)
        gts.append(np.reshape(tb, (-1, 4)) + off)
    px = [(to_pixels(g, grid.zoom, size), str(k)) for g, k in decoys]
    # a detection is matched against its own tile's truths only (a box reaching into the next tile is clipped there)
    out = {"false_detections": 0, "on_decoys": 0, "kinds": {}}
    tree = shapely.STRtree([g for g, _ in px]) if px else None
    for b, tb in zip(boxes, gts):
        if not len(b):
            continue
        near = [px[j] for j in tree.query(shapely.box(*b[:, :2].min(axis=0), *b[:, 2:].max(axis=0))).tolist()] if tree is not None else []
        r = score_box_decoys(b, tb, near, IOU)
        out["false_detections"] += r["false_detections"]
        out["on_decoys"] += r["on_decoys"]
        for k, v in r["kinds"].items():
            out["kinds"][k] = out["kinds"].get(k, 0) + v
    out["kinds"] = dict(sorted(out["kinds"].items()))
    return out


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value

