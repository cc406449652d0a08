"""The detector's second stage: a small CNN over a patch centred on a proposal (Keras 3), trained from scratch.

The YOLO head finds the arrows but reads their kind and their 4-px-wide box
coarsely at stride 8 (docs/detection.md, round 6). This model looks at a
``patch x patch`` window of the image at full resolution, centred on one
proposal, and says again: is there an arrow, which kind, and where its box is.

Layers: two 3x3 convolutions of ``filters`` at full resolution, 2x2 max-pooling,
two of ``2 * filters``, pooling, one of ``4 * filters`` (each convolution with
batch normalisation and leaky ReLU 0.1), then a dense layer of ``dense`` units
and a linear output of ``1 + C + 4`` values per patch: the objectness logit, the
class logits and the box ``(x0, y0, x1, y1)`` in units of :data:`BOX_SCALE` pixels
from the patch centre (see :mod:`navml.detect.refine`).

Input: float32 ``(n, patch, patch, bands)`` raw 0..255 (a ``Rescaling`` layer
divides by 255); ``patch`` a multiple of 4.
"""

from __future__ import annotations

import keras
from keras import layers

from navml.errors import ConfigError

LEAKY_SLOPE = 0.1
#: Pixels per unit of the box outputs (they stay near -2..2 for an arrow of 11 x 4 px).
BOX_SCALE = 4.0


def build_refiner(bands: int, n_classes: int, patch: int = 24, filters: int = 16, dense: int = 128) -> keras.Model:
    """The second-stage model for ``n_classes`` kinds on ``patch``-px patches of ``bands`` bands."""
    if patch < 8 or patch % 4:
        raise ConfigError(f"params: detect.refine.patch is {patch} px; use a multiple of 4, at least 8")
    if n_classes < 1 or filters < 1 or dense < 1:
        raise ConfigError("params: detect.refine needs at least one class, filter and dense unit")

    def cbl(x, f: int, name: str):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_leaky")(x)

    inp = keras.Input((patch, patch, bands), name="patch")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    x = cbl(x, filters, "c1a")
    x = cbl(x, filters, "c1b")
    x = layers.MaxPooling2D(name="pool1")(x)
    x = cbl(x, 2 * filters, "c2a")
    x = cbl(x, 2 * filters, "c2b")
    x = layers.MaxPooling2D(name="pool2")(x)
    x = cbl(x, 4 * filters, "c3")
    x = layers.Flatten(name="flat")(x)  # keeps where things are in the patch: the box needs it
    x = layers.Dense(dense, name="dense")(x)
    x = layers.LeakyReLU(LEAKY_SLOPE, name="dense_leaky")(x)
    out = layers.Dense(1 + n_classes + 4, name="head")(x)
    return keras.Model(inp, out, name="refiner")
