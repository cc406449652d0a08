"""Saving and loading a trained model with the metadata that says what it fits.

A model folder holds ``model.keras`` (Keras 3 format) and ``meta.json``
(:class:`ModelMeta`). Prediction checks the metadata against the store it is
asked to run on (zoom, tile size, bands, classes) and refuses a mismatch.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from navml.errors import ModelError
from navml.io import atomic_path, write_json

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class ModelMeta:
    """What a saved model was trained for.

    The model takes float32 input ``(batch, rows, cols, bands)`` with raw 0..255
    pixel values (scaling is inside the model) and returns per-pixel softmax
    probabilities ``(batch, rows, cols, len(classes) + 1)``, channel 0 being
    background and channel ``i + 1`` the class ``classes[i]``.
    """

    task: str  # "segmentation" or "detection"
    classes: list[str]
    zoom: int
    tile_size: int  # pixels the model was trained on
    bands: int
    stride: int  # input rows/cols must be a multiple of this (pixels)
    receptive_field: int  # theoretical receptive field, pixels
    extra: dict = field(default_factory=dict)

    def check_fits(self, *, zoom: int, bands: int, classes: list[str], where: str) -> None:
        """Raise :class:`ModelError` when the model does not fit a store / class set."""
        if self.zoom != zoom:
            raise ModelError(f"{where}: model was trained at zoom {self.zoom}, the store is zoom {zoom}; retrain or set grid.zoom: {self.zoom}")
        if self.bands != bands:
            raise ModelError(f"{where}: model expects {self.bands} bands, the imagery has {bands}; retrain with matching bands")
        if list(self.classes) != list(classes):
            raise ModelError(f"{where}: model classes {self.classes} differ from the registry's {classes}; retrain after changing classes")


def save_model(model, meta: ModelMeta, folder: str | os.PathLike) -> Path:
    """Write ``model.keras`` and ``meta.json`` into ``folder`` atomically (file by file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_keras(model, folder / MODEL_FILE)
    write_json(folder / META_FILE, asdict(meta))
    return folder


def save_keras(model, path: str | os.PathLike) -> Path:
    """Write one Keras model file (``.keras``) atomically, the same bytes for the same weights."""
    path = Path(path)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        _fix_zip_times(tmp)
    return path


def _fix_zip_times(path: Path) -> None:
    """Rewrite a ``.keras`` zip without save times, so equal weights give equal bytes (and DVC hashes).

    Keras stamps ``date_saved`` into ``metadata.json`` and the time into each
    zip entry; both are dropped or fixed. In ``config.json`` an object that
    several layers share (a loaded model's dtype policy) carries its Python
    ``id()`` as ``shared_object_id``: those are renumbered 1, 2, ... in order of
    appearance. The rest is copied unchanged.
    """
    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    for i, (info, data) in enumerate(entries):
        if info.filename == "metadata.json":
            meta = json.loads(data)
            meta.pop("date_saved", None)
            entries[i] = (info, json.dumps(meta).encode())
        elif info.filename == "config.json":
            entries[i] = (info, _renumber_shared(data))
    with zipfile.ZipFile(path, "w") as zout:
        for info, data in entries:
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            zout.writestr(fixed, data)


def _renumber_shared(config: bytes) -> bytes:
    """``config.json`` with each ``shared_object_id`` replaced by 1, 2, ... in order of first appearance."""
    ids: dict[bytes, int] = {}
    return re.sub(rb'("shared_object_id": )(\d+)', lambda m: m[1] + b"%d" % ids.setdefault(m[2], len(ids) + 1), config)


def read_meta(folder: str | os.PathLike) -> ModelMeta:
    """The :class:`ModelMeta` of a model folder."""
    path = Path(folder) / META_FILE
    try:
        data = json.loads(path.read_text())
        return ModelMeta(**data)
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no model metadata; train a model first (dvc repro train)") from exc
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable model metadata ({exc}); retrain the model") from exc


def load_model(folder: str | os.PathLike):
    """``(keras.Model, ModelMeta)`` from a model folder, compiled=False."""
    meta = read_meta(folder)
    return load_keras(Path(folder) / MODEL_FILE), meta


def load_keras(path: str | os.PathLike):
    """One Keras model file, compiled=False; a :class:`ModelError` for a missing or bad file."""
    import keras

    import navml.models.layers  # noqa: F401  (registers the custom layers)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise ModelError(f"{path}: cannot load model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); retrain it") from exc


def read_thresholds(model_dir: str | os.PathLike, classes: Sequence[str]) -> tuple[list[tuple[float, float]], str] | None:
    """``([(threshold, val score), ...] in classes order, metric name)`` from ``model_dir/thresholds.json``; None without the file.

    The file maps each class to ``{"threshold": t, "val_<metric>": score}``;
    thresholds are probabilities 0..1 chosen on the val split at training.
    """
    path = Path(model_dir) / THRESHOLDS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        out, metric = [], "iou"
        for c in classes:
            entry = data[c]
            keys = [k for k in entry if k.startswith("val_")]
            metric = keys[0][4:] if keys else metric
            score = entry[keys[0]] if keys else None
            out.append((float(entry["threshold"]), float("nan") if score is None else float(score)))
        return out, metric
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path}: unreadable thresholds ({exc}); retrain the model") from exc
