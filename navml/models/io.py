"""Saving and loading a trained model with the metadata that says what it fits.

A model folder holds ``model.keras`` (Keras 3 format) and ``meta.json``
(:class:`ModelMeta`). Prediction checks the metadata against the store it is
asked to run on (zoom, tile size, bands, classes) and refuses a mismatch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from navml.errors import ModelError
from navml.perms import follow_umask

MODEL_FILE = "model.keras"
META_FILE = "meta.json"


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
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        follow_umask(tmp)
        os.replace(tmp, folder / MODEL_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    tmp_meta = folder / f".{META_FILE}.part"
    tmp_meta.write_text(json.dumps(asdict(meta), indent=2, sort_keys=True))
    os.replace(tmp_meta, folder / META_FILE)
    return folder


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
    import keras

    meta = read_meta(folder)
    path = Path(folder) / MODEL_FILE
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise ModelError(f"{path}: cannot load model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); retrain it") from exc
    return model, meta
