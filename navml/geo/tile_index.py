"""The tile index: every tile of the area of interest with its shard, split and flags.

Written by the ``cover`` stage as CSV (``z,x,y,shard,block,split,pos_<class>...``),
one row per tile, sorted north to south, west to east.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from navml.errors import InputError
from navml.geo.grid import Tile
from navml.io import atomic_path

SPLITS = ("train", "val", "test")
#: Tiles next to an object of another split: predicted, but used by no split.
BUFFER = "buffer"
BASE_COLUMNS = ["z", "x", "y", "shard", "block", "split"]


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """The tile index as a DataFrame; a missing or malformed file is an :class:`InputError`."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"shard": str, "block": str, "split": str})
    except FileNotFoundError as exc:
        raise InputError(f"{path}: tile index not found; run the cover stage first (dvc repro cover)") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a tile index CSV ({exc}); re-run the cover stage") from exc
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: tile index lacks columns {missing}; re-run the cover stage")
    return df


def write_index(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the index atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)


def tiles_from_index(df: pd.DataFrame, split: str | None = None) -> list[Tile]:
    """Tiles of the index, optionally only those of one split."""
    if split is not None:
        df = df[df["split"] == split]
    return [Tile(int(x), int(y), int(z)) for z, x, y in zip(df["z"], df["x"], df["y"])]
