"""The detections table: one row per detected marking, written by predict_detect, read by markings.

Columns (:data:`COLUMNS`): ``z, x, y`` the tile holding the box centre;
``x0, y0, x1, y1`` the box in global pixels at zoom ``z`` (floats, see
:mod:`navml.geo.grid`); ``class_id`` and ``class`` (the registry's detection
name); ``score`` 0..1. Rows are sorted by tile (north to south, west to east),
then by box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from navml.detect.targets import Detections
from navml.errors import InputError
from navml.geo.grid import Grid
from navml.io import atomic_path

#: Columns of the detections table.
COLUMNS = ["z", "x", "y", "x0", "y0", "x1", "y1", "class_id", "class", "score"]


def detections_table(dets: Detections, names: Sequence[str], grid: Grid):
    """A DataFrame of :data:`COLUMNS`: the tile of each box centre, the global pixel box, class and score; sorted by tile, then box."""
    import pandas as pd

    b = np.asarray(dets.boxes, float).reshape(-1, 4)
    ids = np.asarray(dets.class_ids, int).reshape(-1)
    size = grid.tile_size
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    df = pd.DataFrame({
        "z": np.full(len(b), grid.zoom, int),
        "x": np.floor(cx / size).astype(int),
        "y": np.floor(cy / size).astype(int),
        "x0": np.round(b[:, 0], 3), "y0": np.round(b[:, 1], 3), "x1": np.round(b[:, 2], 3), "y1": np.round(b[:, 3], 3),
        "class_id": ids,
        "class": [names[i] for i in ids],
        "score": np.round(np.asarray(dets.scores, float).reshape(-1), 5),
    }, columns=COLUMNS)
    return df.sort_values(["z", "y", "x", "y0", "x0", "class_id"], kind="stable").reset_index(drop=True)


def write_detections(df, path: str | os.PathLike) -> Path:
    """Write the detections table as CSV, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return path


def read_detections(path: str | os.PathLike, names: Sequence[str] | None = None):
    """The detections table of :func:`write_detections`; an :class:`InputError` when missing or malformed.

    With ``names``, every class must be one of them (the registry's detection names).
    """
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"class": str})
    except FileNotFoundError as exc:
        raise InputError(f"{path}: detections not found; run the predict_detect stage first (dvc repro predict_detect)") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a detections CSV ({exc}); re-run predict_detect") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: detections table lacks columns {missing}; re-run predict_detect")
    if names is not None:
        bad = sorted(set(df["class"]) - set(names))
        if bad:
            raise InputError(f"{path}: class '{bad[0]}' is not a detection name of the registry ({', '.join(names)}); re-run predict_detect")
    return df
