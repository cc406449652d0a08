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

Over several cities (``navml retrain --cities``) it trains on the union of their
stores, each negative on its own city's store. :func:`retrain_rounds` runs
``retrain.rounds``: each later round predicts every city's train tiles with the
model just trained and mines again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from navml.config import MineParams, PredictParams, RetrainParams
from navml.errors import ConfigError, InputError
from navml.geo.store import Store
from navml.io import staging_dir
from navml.mining.mine import MineSource, mine_sources
from navml.mining.negatives import (
    FILE,
    count_vetoed,
    feature_cities,
    kept,
    merge_previous,
    tile_masks,
    write_collection,
)
from navml.segment.dataset import split_tiles

#: Defaults of the keyword arguments below: the params models', written once there.
_RETRAIN, _MINE, _PREDICT = RetrainParams(), MineParams(), PredictParams()


def copy_model(first_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """``first_dir``'s model folder as ``out_dir``, replacing it whole (atomic)."""
    src, out = Path(first_dir), Path(out_dir)
    if not (src / "model.keras").is_file():
        raise InputError(f"{src}: no model.keras; run the train stage first")
    with staging_dir(out) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def train_kwargs(
    train: Mapping[str, Any], mode: str, *, steps: int, eval_every: int, learning_rate: float, warmup_steps: int
) -> dict[str, Any]:
    """The keyword arguments of a retraining's training: ``train`` (the first training's) less those the retraining
    gives itself (``progress``, ``where``, ``live_dir``); ``mode: finetune`` with its own budget in place of the first's."""
    kwargs = {k: v for k, v in train.items() if k not in ("progress", "where", "live_dir")}
    if mode == "finetune":
        kwargs.update(steps=steps, eval_every=eval_every, learning_rate=learning_rate, warmup_steps=warmup_steps)
    return kwargs


def retrain_segmentation(
    store: Store | Sequence[Store],
    index: pd.DataFrame | Sequence[pd.DataFrame],
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
    cities: Sequence[str] | None = None,
    progress: bool = True,
    where: str = "tile index",
) -> dict[str, Any]:
    """The mined model of ``first_dir`` in ``out_dir``; returns a summary (negatives used, tiles, training result).

    ``negatives``: features of the negatives schema (:mod:`navml.mining.negatives`); ``train``: the keyword
    arguments of :func:`~navml.segment.train.train_segmentation` (the train section), of which ``mode:
    finetune`` replaces ``steps``, ``eval_every``, ``learning_rate`` and ``warmup_steps`` with this stage's.

    Over several cities ``store`` and ``index`` are lists (one per city, as for training) and ``cities``
    their names: each negative goes to its city's store (:func:`~navml.mining.negatives.feature_cities`:
    its ``city`` property, else the one city whose index holds its tile; one of no listed city is not
    used), and the summary holds each city's counts under ``by_city`` (``cities``: the training's stores and scale factors).
    """
    from navml.geo.tile_index import tiles_from_index
    from navml.segment.dataset import SourceTile
    from navml.segment.train import train_segmentation, training_sources

    if mode not in ("finetune", "scratch"):
        raise InputError(f"retrain.mode is '{mode}'; use finetune or scratch")
    stores = [store] if isinstance(store, Store) else list(store)
    indexes = [index] if isinstance(index, pd.DataFrame) else list(index)
    if len(stores) != len(indexes) or not stores:
        raise ConfigError(f"retrain needs one tile index per store; got {len(stores)} store(s) and {len(indexes)} index(es)")
    if cities is None and len(stores) > 1:
        raise ConfigError("retrain over several stores needs their city names (cities=...) to place the negatives")
    if cities is not None and len(cities) != len(stores):
        raise ConfigError(f"retrain: {len(cities)} city name(s) for {len(stores)} store(s)")
    usable = kept(negatives, "segmentation", classes)
    vetoed = count_vetoed(negatives)
    if cities is None:
        groups, elsewhere = [usable], 0
    else:
        owner = feature_cities(usable, {n: tiles_from_index(df) for n, df in zip(cities, indexes)})
        groups = [[f for f, o in zip(usable, owner) if o == n] for n in cities]
        elsewhere = sum(o is None for o in owner)
    # one store at its own resolution trains on plain tiles, else on SourceTiles (store position, tile)
    by_source = "source" in training_sources(stores, indexes, train.get("gsd_m"))[1].columns
    masks: dict[Any, Any] = {}
    counts: list[dict[str, int]] = []
    for i, (st, df, feats) in enumerate(zip(stores, indexes, groups)):
        train_tiles = split_tiles(df, "train", where)
        own = tile_masks(feats, st.grid, train_tiles)
        masks.update({(SourceTile(t.x, t.y, t.z, i) if by_source else t): m for t, m in own.items()})
        counts.append({
            "negatives": len(feats),
            "negatives_used": sum(1 for f in feats if tile_masks([f], st.grid, train_tiles)) if own else 0,
            "hard_tiles": len(own),
            "mined_pixels": int(sum(int(m.sum()) for m in own.values())),
        })
    summary: dict[str, Any] = {
        "negatives_in_file": len(negatives),
        "vetoed": vetoed,
        "negatives_used": sum(c["negatives_used"] for c in counts),
        "hard_tiles": len(masks),
        "mined_pixels": sum(c["mined_pixels"] for c in counts),
        "mode": mode,
    }
    if cities is not None:
        summary["negatives_of_no_city"] = elsewhere
        summary["by_city"] = dict(zip(cities, counts))
    if not masks:
        copy_model(first_dir, out_dir)
        return {**summary, "copied_first_model": True, "model_dir": str(out_dir)}
    kwargs = train_kwargs(train, mode, steps=steps, eval_every=eval_every, learning_rate=learning_rate, warmup_steps=warmup_steps)
    result = train_segmentation(
        stores if len(stores) > 1 else stores[0], indexes if len(indexes) > 1 else indexes[0], classes, out_dir, **kwargs,
        init_model=first_dir if mode == "finetune" else None,
        hard=masks, hard_repeats=oversample, mined_weight=weight,
        progress=progress, where=where,
    )
    return {**summary, "copied_first_model": False, **{k: v for k, v in result.items() if k != "thresholds"},
            "thresholds": {k: v["threshold"] for k, v in result["thresholds"].items()}}


#: What the summary keeps of each round.
ROUND_KEYS = ("negatives_used", "hard_tiles", "mined_pixels", "best_val_iou", "copied_first_model", "by_city")


def retrain_rounds(
    sources: Sequence[MineSource],
    classes: Sequence[str],
    first_dir: str | os.PathLike,
    negatives: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    train: Mapping[str, Any],
    rounds: int = _RETRAIN.rounds,
    mine: MineParams = _MINE,
    window: int = _PREDICT.window_px,
    resample: bool = _PREDICT.resample,
    mode: str = _RETRAIN.mode,
    steps: int = _RETRAIN.steps,
    eval_every: int = _RETRAIN.eval_every,
    learning_rate: float = _RETRAIN.learning_rate,
    warmup_steps: int = _RETRAIN.warmup_steps,
    oversample: int = _RETRAIN.oversample,
    weight: float = _RETRAIN.weight,
    progress: bool = True,
) -> dict[str, Any]:
    """``rounds`` of retraining: :func:`retrain_segmentation` with ``negatives``, then per further round predict each
    source's train tiles with the model just trained, mine again (``mine``: its threshold, else the new model's
    val thresholds; seed ``mine.seed + round - 1``), add the new negatives to the earlier ones (vetoes and reviews
    kept: :func:`~navml.mining.negatives.merge_previous`) and fine-tune again from the model of the round before.

    ``sources``: one :class:`~navml.mining.mine.MineSource` per city (their ``probs`` are not read: each round
    predicts its own), mined with :func:`~navml.mining.mine.mine_cities`; a single source named ``""`` is the
    single store (:func:`~navml.mining.mine.mine_segmentation`, no ``city`` property). After more than one
    round the last round's negatives are written to ``out_dir/hard_negatives.geojson``. Returns the last
    round's summary with ``rounds``: per round :data:`ROUND_KEYS`.
    """
    import tempfile

    from navml.models.io import read_thresholds
    from navml.segment.predict import predict_store

    if not sources:
        raise ConfigError("retrain: no store to train on")
    if rounds < 1:
        raise ConfigError(f"params: retrain.rounds is {rounds}; use 1 or more")
    single = len(sources) == 1 and not sources[0].name
    names = None if single else [s.name for s in sources]
    out = Path(out_dir)
    knobs = dict(mode=mode, steps=steps, eval_every=eval_every, learning_rate=learning_rate, warmup_steps=warmup_steps,
                 oversample=oversample, weight=weight, cities=names, progress=progress, where=", ".join(s.where for s in sources))
    stores, indexes = [s.store for s in sources], [s.index for s in sources]
    feats = [dict(f) for f in negatives]
    done = [retrain_segmentation(stores, indexes, classes, first_dir, feats, out, train=train, **knobs)]
    for k in range(2, rounds + 1):
        tmp = Path(tempfile.mkdtemp(prefix=".retrain-round-", dir=out.parent))
        try:
            found = []
            for i, s in enumerate(sources):
                probs = Store(tmp / "predict" / str(i), s.store.grid)
                predict_store(s.store, split_tiles(s.index, "train", s.where), out, probs, classes, window=window, resample=resample,
                              progress=False)
                found.append(s._replace(probs=probs))
            thr = {n: float(mine.threshold) if mine.threshold is not None else v for n, (v, _) in zip(classes, read_thresholds(out, classes)[0])}
            opts = dict(min_area_m2=mine.min_area_m2, max_negatives=mine.max_negatives, tile_share=mine.tile_share, edge_m=mine.edge_m,
                        seed=mine.seed + k - 1)
            new, _ = mine_sources(found, classes, thr, **opts)
            merged, _ = merge_previous(new, feats)  # reviewed and vetoed ones of before, then the new ones less the vetoed
            feats = [f for f in feats if f not in merged] + merged  # plus the earlier rounds' kept ones
            shutil.copytree(out, tmp / "model")
            done.append(retrain_segmentation(stores, indexes, classes, tmp / "model", feats, out, train=train, **knobs))
            write_collection(out / FILE, feats)  # what the last round trained with, for review
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {**done[-1], "rounds": [{key: v for key, v in x.items() if key in ROUND_KEYS} for x in done]}


__all__ = ["ROUND_KEYS", "copy_model", "retrain_rounds", "retrain_segmentation", "train_kwargs"]
