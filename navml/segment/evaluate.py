"""Evaluation of a segmentation model on the held-out test split.

Writes into ``out_dir``:

* ``seg.json`` (DVC metrics): per class ``iou``, ``precision``, ``recall``,
  ``f1`` on the test split at ``threshold``, the ``val_<metric>`` that chose
  it, and ``mean_iou`` / ``pixel_accuracy`` / ``tiles``;
* ``seg_plots/pr/<class>.csv`` (precision-recall curve over thresholds),
  ``seg_plots/confusion.csv`` (rows ``actual,predicted`` scaled to about
  10,000 pixels, for DVC's confusion templates), ``seg_plots/confusion.json``
  (exact pixel counts) and ``seg_plots/overlays/<z-x-y>.png`` (imagery | truth
  | prediction).

Pixels of unknown class (mask 255, outside complete mapping) are left out
of every count. Thresholds are chosen per class on the validation split (the one maximizing
IoU or F1) unless fixed by the caller. A pixel gets the most probable
foreground class when that probability reaches the class threshold, else
background (see :func:`navml.segment.metrics.labels_from_probs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from navml.config import EvaluateParams
from navml.data.rasterize import IGNORE
from navml.errors import InputError, ModelError
from navml.geo.grid import Tile, tile_key
from navml.geo.store import Store
from navml.io import staging_dir, write_json
from navml.models.io import read_thresholds
from navml.segment.dataset import IMAGERY, MASKS, TileReader, check_store, image_batches, split_tiles
from navml.segment.metrics import best_threshold, class_scores, confusion_counts, curve, histograms, labels_from_probs

#: Defaults of the keyword arguments below: the params model's, written once there.
_EVALUATE = EvaluateParams()


METRICS_FILE = "seg.json"
PLOTS_DIR = "seg_plots"
#: Rows written to the confusion CSV (counts are scaled to this total).
CONFUSION_ROWS = 10_000


def predict_tiles(
    model, reader: TileReader, tiles: Sequence[Tile], batch_size: int = 8, progress: bool = False, desc: str = "predict",
    factor: float = 1.0, stride: int = 1,
) -> Iterator[tuple[list[Tile], np.ndarray, np.ndarray, np.ndarray]]:
    """``(tiles, images, masks, probs)`` batch by batch; probs float32 ``(b, rows, cols, K)``.

    ``factor`` (model pixels per store pixel, :func:`navml.models.inference.scale_factor`) resamples each
    tile to the model's ground resolution (a side rounded up to ``stride``) and the probabilities back."""
    from tqdm import tqdm

    from navml.models.scale import resample

    bar = tqdm(total=len(tiles), desc=desc, unit="tile", disable=None if progress else True, leave=False)
    for chunk, images, masks in image_batches(reader, tiles, batch_size):
        if factor == 1.0:
            probs = np.asarray(model.predict_on_batch(images), dtype="float32")
        else:
            rows, cols = images.shape[1:3]
            mr, mc = (-(-round(n * factor) // stride) * stride for n in (rows, cols))
            x = resample(images, mr, mc, (mr / rows, mc / cols), (0.0, 0.0))
            y = np.asarray(model.predict_on_batch(x), dtype="float32")
            probs = resample(y, rows, cols, (rows / mr, cols / mc), (0.0, 0.0))
        bar.update(len(chunk))
        yield chunk, images, masks, probs
    bar.close()


def val_thresholds(
    model, reader: TileReader, tiles: Sequence[Tile], *, batch_size: int = 8, bins: int = 100, metric: str = "iou", progress: bool = False
) -> list[tuple[float, float]]:
    """Per class ``(threshold, score)`` maximizing ``metric`` (iou | f1) over ``tiles`` (thresholds k / bins)."""
    n = reader.n_classes
    pos = np.zeros((n, bins), dtype="int64")
    neg = np.zeros((n, bins), dtype="int64")
    for _, _, masks, probs in predict_tiles(model, reader, tiles, batch_size, progress, "val thresholds"):
        for c in range(n):
            p, q = histograms(probs[..., c + 1], masks == c + 1, bins, masks != IGNORE)
            pos[c] += p
            neg[c] += q
    return [best_threshold(pos[c], neg[c], metric) for c in range(n)]


def render_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, colors: Sequence[Sequence[int]], alpha: float = 0.5, gap: int = 4) -> np.ndarray:
    """Three panels side by side, RGB uint8: imagery | truth over imagery | prediction over imagery.

    Classes are painted in ``colors`` (alpha ``alpha``) with :func:`navml.palette.paint`;
    truth pixels of unknown class (:data:`IGNORE`) are darkened and hatched."""
    from navml.palette import paint, palette_from_colors, to_rgb

    palette = palette_from_colors(colors)
    rgb = to_rgb(image)
    h = rgb.shape[0]
    sep = np.full((h, gap, 3), 255, dtype="uint8")
    return np.concatenate([rgb, sep, paint(rgb, truth, palette, alpha), sep, paint(rgb, pred, palette, alpha)], axis=1)


def _write_plots(folder: Path, classes: Sequence[str], curves: list[dict], cm: np.ndarray, overlay_images: dict[str, np.ndarray]) -> None:
    import cv2

    (folder / "pr").mkdir(parents=True)
    for name, c in zip(classes, curves):
        ok = np.isfinite(c["precision"]) & np.isfinite(c["recall"])
        pd.DataFrame(
            {k: c[k][ok] for k in ("threshold", "precision", "recall", "iou", "f1")}
        ).round(6).to_csv(folder / "pr" / f"{name}.csv", index=False)
    labels = ["background", *classes]
    total = cm.sum()
    rows = []
    for t in range(len(labels)):
        for p in range(len(labels)):
            if cm[t, p]:
                rows += [(labels[t], labels[p])] * max(1, int(round(cm[t, p] / total * CONFUSION_ROWS)))
    pd.DataFrame(rows, columns=["actual", "predicted"]).to_csv(folder / "confusion.csv", index=False)
    write_json(folder / "confusion.json", {"labels": labels, "counts": cm.tolist(), "rows": "actual", "columns": "predicted"})
    (folder / "overlays").mkdir()
    for key, img in overlay_images.items():
        if not cv2.imwrite(str(folder / "overlays" / f"{key}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise InputError(f"{folder / 'overlays'}: cannot write {key}.png")




def evaluate_segmentation(
    store: Store,
    index: pd.DataFrame,
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    threshold: float | None = None,
    threshold_metric: str = "iou",
    batch_size: int = _EVALUATE.batch_size,
    overlays: int = _EVALUATE.overlays,
    bins: int = _EVALUATE.bins,
    progress: bool = True,
    where: str = "tile index",
    resample: bool = True,
) -> dict:
    """Score the model in ``model_dir`` on the test split and write ``seg.json`` and ``seg_plots/`` into ``out_dir``.

    ``classes``: segmentation class names in registry order (must equal the
    model's); ``colors``: RGB per class for the overlays; ``threshold``: one
    probability for every class, or None to pick per class on the val split
    (maximizing ``threshold_metric``); ``overlays``: how many test tiles to
    draw (those with the most truth + predicted pixels). With ``threshold``
    None the model's ``thresholds.json`` (chosen on val by training) is used,
    or, without that file, thresholds are chosen here on the val split.
    ``resample``: tiles of another ground resolution than the model's (``meta.extra["gsd_m"]``) are
    resampled to it, as ``predict`` does. Returns the metrics.
    """
    from navml.models.io import load_model, read_meta

    classes = list(classes)
    n = len(classes)
    meta = read_meta(model_dir)
    if meta.task != "segmentation":
        raise ModelError(f"{model_dir}: a {meta.task} model, not a segmentation one; pass the segmentation model folder")
    bands = store.count(IMAGERY)
    if bands == 0:
        raise InputError(f"{store.root / IMAGERY}: no imagery shard; run `dvc repro imagery`")
    meta.check_fits(zoom=store.grid.zoom, bands=bands, classes=classes, where=str(model_dir))
    if store.grid.tile_size % meta.stride:
        raise ModelError(f"{model_dir}: model needs tiles of a multiple of {meta.stride} px; grid.tile_size is {store.grid.tile_size}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"params: 'evaluate.threshold' is {threshold}; use 0..1 or auto")
    if not colors:
        from navml.palette import FALLBACK

        colors = [FALLBACK[i % len(FALLBACK)] for i in range(n)]
    colors = list(colors)
    saved = None if threshold is not None else read_thresholds(model_dir, classes)
    model, _ = load_model(model_dir)

    val_tiles = split_tiles(index, "val", where)
    test_tiles = split_tiles(index, "test", where)
    if not test_tiles:
        raise InputError(f"{where}: split 'test' has no tile; enlarge the AOI or raise cover.split.test")
    if threshold is None and saved is None and not val_tiles:
        raise InputError(f"{where}: split 'val' has no tile to choose thresholds on; set evaluate.threshold to a number")
    check_store(store, val_tiles + test_tiles, bands, (IMAGERY, MASKS))
    reader = TileReader(store, n, bands)
    from navml.geo.grid import tiles_ground_resolution
    from navml.models.scale import scale_factor

    # at the model's ground resolution, as predict runs it (tile by tile here)
    factor = scale_factor(meta.extra.get("gsd_m"), tiles_ground_resolution(test_tiles, store.grid.tile_size)) if resample else 1.0
    scaled = {"factor": factor, "stride": meta.stride}

    metric_name = threshold_metric
    if threshold is not None:
        chosen = [(float(threshold), float("nan"))] * n
    elif saved is not None:
        chosen, metric_name = saved
    else:
        chosen = val_thresholds(model, reader, val_tiles, batch_size=batch_size, bins=bins, metric=threshold_metric, progress=progress)
        for name, (_, score) in zip(classes, chosen):
            if score != score:
                raise InputError(f"{store.root / MASKS}: split 'val' has no pixel of class '{name}'; set evaluate.threshold or use another cover.seed")
    thresholds = [t for t, _ in chosen]

    cm = np.zeros((n + 1, n + 1), dtype="int64")
    pos = np.zeros((n, bins), dtype="int64")
    neg = np.zeros((n, bins), dtype="int64")
    interest: list[tuple[int, Tile]] = []
    for chunk, _, masks, probs in predict_tiles(model, reader, test_tiles, batch_size, progress, "test", **scaled):
        labels = labels_from_probs(probs, thresholds)
        cm += confusion_counts(masks, labels, n + 1)
        for c in range(n):
            p, q = histograms(probs[..., c + 1], masks == c + 1, bins, masks != IGNORE)
            pos[c] += p
            neg[c] += q
        for tile, m, lab in zip(chunk, masks, labels):
            interest.append((int(((m > 0) & (m != IGNORE)).sum() + ((lab > 0) & (m != IGNORE)).sum()), tile))
    per_class = class_scores(cm)
    for i, name in enumerate(classes, start=1):
        if per_class[i]["tp"] + per_class[i]["fn"] == 0:
            raise InputError(f"{store.root / MASKS}: split 'test' has no pixel of class '{name}'; use a larger AOI or another cover.seed")

    metrics: dict = {}
    for i, name in enumerate(classes, start=1):
        s = per_class[i]
        metrics[name] = {
            "iou": s["iou"],
            "precision": s["precision"],
            "recall": s["recall"],
            "f1": s["f1"],
            "threshold": thresholds[i - 1],
        }
        if threshold is None:
            metrics[name][f"val_{metric_name}"] = chosen[i - 1][1]
    metrics["mean_iou"] = float(np.mean([per_class[i]["iou"] for i in range(1, n + 1)]))
    metrics["pixel_accuracy"] = float(np.trace(cm) / cm.sum())
    metrics["tiles"] = len(test_tiles)
    metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    for name in classes:
        metrics[name] = {k: round(v, 6) for k, v in metrics[name].items()}

    picked = [t for _, t in sorted(interest, key=lambda it: (-it[0], it[1].y, it[1].x))[: max(0, overlays)]]
    overlay_images = {}
    for chunk, images, masks, probs in predict_tiles(model, reader, picked, batch_size, **scaled):
        for tile, img, m, pr in zip(chunk, images, masks, probs):
            overlay_images[tile_key(tile)] = render_overlay(img, m, labels_from_probs(pr, thresholds), colors)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with staging_dir(out_dir / PLOTS_DIR) as tmp:
        _write_plots(tmp, classes, [curve(pos[c], neg[c]) for c in range(n)], cm, overlay_images)
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics
