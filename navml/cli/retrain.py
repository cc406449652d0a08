"""Retrain the segmentation model with the hard negatives (mined tiles oversampled, mined pixels weighted)."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params, StoreDir, TilesCsv


@exits
def command(
    tiles: Path = TilesCsv,
    store: Path = StoreDir,
    model: Path = typer.Option(Path("data/first/models/seg"), "--model", help="The first model folder (fine-tuned, or copied when nothing was mined)."),
    negatives: Path = typer.Option(
        Path("data/mining/seg/hard_negatives.geojson"), "--negatives", help="Hard negatives (navml mine; keep: false vetoes one)."
    ),
    out: Path = typer.Option(Path("data/models/seg_mined"), "--out", help="Model folder of the mined model."),
    summary: Path = typer.Option(Path("data/metrics/retrain.json"), "--summary", help="JSON summary: negatives used, tiles, training."),
    params: Path = Params,
) -> None:
    import shutil
    import tempfile

    from navml.config import segmentation_classes
    from navml.data.rasterize import complete_areas
    from navml.errors import InputError
    from navml.geo.store import Store
    from navml.geo.tile_index import read_index
    from navml.io import write_json
    from navml.mining.negatives import merge_previous, read_collection, write_collection
    from navml.mining.retrain import retrain_segmentation
    from navml.segment.dataset import Augment

    p = load_params(params)
    r, t = p.retrain, p.train
    grid = p.grid.grid()
    specs = segmentation_classes(p.class_specs())
    names = [c.name for c in specs]
    if not negatives.is_file():
        raise InputError(f"{negatives}: hard-negatives file not found; run `navml mine` (dvc repro mine) first")
    st, index = Store(store, grid), read_index(tiles)
    train = {**t.model_dump(exclude={"augment"}), "augment": Augment(**t.augment.model_dump()) if t.augment else None}
    knobs = dict(mode=r.mode, steps=r.steps, eval_every=r.eval_every, learning_rate=r.learning_rate, warmup_steps=r.warmup_steps,
                 oversample=r.oversample, weight=r.weight)
    feats = read_collection(negatives)
    rounds = [retrain_segmentation(st, index, names, model, feats, out, train=train, **knobs, where=str(tiles))]
    # further rounds: mine with the model just trained, add what it gets wrong, fine-tune again
    for k in range(2, r.rounds + 1):
        from navml.cli.mine import NEGATIVES
        from navml.mining.mine import mine_segmentation
        from navml.models.io import read_thresholds
        from navml.segment.dataset import split_tiles
        from navml.segment.predict import predict_store

        m = p.mine
        tmp = Path(tempfile.mkdtemp(prefix=".retrain-round-", dir=out.parent))
        try:
            probs = Store(tmp / "predict", grid)
            predict_store(st, split_tiles(index, "train", str(tiles)), out, probs, names, window=p.predict.window_px, progress=False)
            thr = {n: float(m.threshold) if m.threshold is not None else v for n, (v, _) in zip(names, read_thresholds(out, names)[0])}
            new, _ = mine_segmentation(probs, st, index, names, complete_areas(specs, p.rasterize.complete), thr,
                                       min_area_m2=m.min_area_m2, max_negatives=m.max_negatives, tile_share=m.tile_share,
                                       edge_m=m.edge_m, seed=m.seed + k - 1, where=str(tiles))
            merged, _ = merge_previous(new, feats)  # reviewed and vetoed ones of before, then the new ones less the vetoed
            feats = [f for f in feats if f not in merged] + merged  # plus the earlier rounds' kept ones
            shutil.copytree(out, tmp / "model")
            rounds.append(retrain_segmentation(st, index, names, tmp / "model", feats, out, train=train, **knobs, where=str(tiles)))
            write_collection(out / NEGATIVES, feats)  # what the last round trained with, for review
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {**rounds[-1], "rounds": [{k: v for k, v in x.items() if k in ("negatives_used", "hard_tiles", "mined_pixels",
                                                                           "best_val_iou", "copied_first_model")} for x in rounds]}
    write_json(summary, result)
    last = rounds[-1]
    how = "first model copied (no usable negative)" if last["copied_first_model"] else (
        f"{last['mode']} {last['steps_run']} steps, best val IoU {last['best_val_iou']:.4f} at step {last['best_step']}")
    typer.echo(
        f"retrain: {last['negatives_used']} negatives ({last['vetoed']} vetoed) on {last['hard_tiles']} train tiles, "
        f"{last['mined_pixels']} px x{r.weight:g}, tiles x{r.oversample}; {how}; {len(rounds)} round(s) -> {out}"
    )
