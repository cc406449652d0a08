"""Train again with the hard negatives: mined tiles oversampled, mined pixels weighted in the loss.

:func:`retrain_segmentation` reads the negatives file (vetoed ones, ``keep:
false``, are not used; neither is a negative's part on a val or test tile),
burns the kept negatives onto the train tiles they cover and runs
:func:`navml.segment.train.train_segmentation` with them: every such tile
``oversample`` times per pass, its negative pixels (labelled background)
weighing ``weight`` in the loss. ``mode: finetune`` starts from the first
model's weights with a short budget of its own; ``scratch`` trains a fresh
U-Net with the train stage's budget. Without a usable negative the first
model is copied unchanged, so an empty mining result gives the first model's
metrics exactly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from navml.config import RetrainParams
from navml.errors import InputError
from navml.geo.store import Store
from navml.io import staging_dir
from navml.mining.negatives import kept, tile_masks
from navml.segment.dataset import split_tiles

#: Defaults of the keyword arguments below: the params model's, written once there.
_RETRAIN = RetrainParams()


def copy_model(first_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """``first_dir``'s model folder as ``out_dir``, replacing it whole (atomic)."""
    src, out = Path(first_dir), Path(out_dir)
    if not (src / "model.keras").is_file():
        raise InputError(f"{src}: no model.keras; run the train stage first")
    with staging_dir(out) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def retrain_segmentation(
    store: Store,
    index: pd.DataFrame,
    classes: Sequence[str],
    first_dir: str | os.PathLike,
    negatives: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    train: Mapping[str, Any],
    mode: str = _RETRAIN.mode,
    steps: int = _RETRAIN.steps,
    eval_every: int = _RETRAIN.eval_every,
    learning_rate: float = _RETRAIN.learning_rate,
    warmup_steps: int = _RETRAIN.warmup_steps,
    oversample: int = _RETRAIN.oversample,
    weight: float = _RETRAIN.weight,
    progress: bool = True,
    where: str = "tile index",
) -> dict[str, Any]:
    """The mined model of ``first_dir`` in ``out_dir``; returns a summary (negatives used, tiles, training result).

    ``negatives``: features of the negatives schema (:mod:`navml.mining.negatives`); ``train``: the keyword
    arguments of :func:`~navml.segment.train.train_segmentation` (the train section), of which ``mode:
    finetune`` replaces ``steps``, ``eval_every``, ``learning_rate`` and ``warmup_steps`` with this stage's.
    """
    from navml.segment.train import train_segmentation

    if mode not in ("finetune", "scratch"):
        raise InputError(f"retrain.mode is '{mode}'; use finetune or scratch")
    usable = kept(negatives, "segmentation", classes)
    vetoed = sum(1 for f in negatives if (f.get("properties") or {}).get("keep", True) is False)
    train_tiles = split_tiles(index, "train", where)
    masks = tile_masks(usable, store.grid, train_tiles)
    pixels = int(sum(int(m.sum()) for m in masks.values()))
    summary: dict[str, Any] = {
        "negatives_in_file": len(negatives),
        "vetoed": vetoed,
        "negatives_used": sum(1 for f in usable if tile_masks([f], store.grid, train_tiles)) if usable else 0,
        "hard_tiles": len(masks),
        "mined_pixels": pixels,
        "mode": mode,
    }
    if not masks:
        copy_model(first_dir, out_dir)
        return {**summary, "copied_first_model": True, "model_dir": str(out_dir)}
    kwargs = {k: v for k, v in train.items() if k not in ("progress", "where", "live_dir")}
    if mode == "finetune":
        kwargs.update(steps=steps, eval_every=eval_every, learning_rate=learning_rate, warmup_steps=warmup_steps)
    result = train_segmentation(
        store, index, classes, out_dir, **kwargs,
        init_model=first_dir if mode == "finetune" else None,
        hard=masks, hard_repeats=oversample, mined_weight=weight,
        progress=progress, where=where,
    )
    return {**summary, "copied_first_model": False, **{k: v for k, v in result.items() if k != "thresholds"},
            "thresholds": {k: v["threshold"] for k, v in result["thresholds"].items()}}


__all__ = ["copy_model", "retrain_segmentation"]
