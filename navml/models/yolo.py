"""A small YOLOv2-style fully convolutional detector (Keras 3), trained from scratch.

An optional stem (``stem_convs`` 3x3 convolutions of ``stem_filters`` before
the first pooling) adds capacity at full resolution, where a marking of about
11 x 4 px at zoom 18 is still whole (off by default: docs/detection.md, round 5).
Darknet-style backbone: 3x3 convolutions (filters doubling per level from
``base_filters``) with 1x1 bottlenecks in between, each followed by batch
normalisation and leaky ReLU (slope 0.1); 2x2 max-pooling between levels
down to the output ``stride`` (4, 8, 16 or 32 pixels). A passthrough takes
the finer map at ``stride / 2``, reduces it by a 1x1 convolution and moves
2x2 blocks into channels (space-to-depth), joins it to the output-stride map
and a last 3x3 convolution mixes both. The head is a 1x1 convolution with
``A * (5 + C)`` linear outputs per cell (see :mod:`navml.detect.targets`
for their meaning and layout).

Input: float32 ``(batch, rows, cols, bands)`` raw 0..255 (a ``Rescaling``
layer divides by 255); rows and cols any multiple of ``stride``. Output:
``(batch, rows / stride, cols / stride, A * (5 + C))`` logits.
The space-to-depth layer is registered with Keras (package ``navml``), so a
saved model loads once this module is imported.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from navml.errors import ConfigError
from navml.models.layers import SpaceToDepth

STRIDES = (4, 8, 16, 32)
LEAKY_SLOPE = 0.1


def _levels(stride: int) -> int:
    if stride not in STRIDES:
        raise ConfigError(f"params: detector stride is {stride} px; use one of {', '.join(map(str, STRIDES))}")
    return int(math.log2(stride))


def _plan(stride: int, base_filters: int, stem_convs: int = 0, stem_filters: int = 16) -> list[tuple[str, int, int]]:
    """Layers of the main path, in order: ``(kind, kernel, filters)`` with kind stem | conv | pool | mark (the passthrough tap)."""
    levels = _levels(stride)
    plan: list[tuple[str, int, int]] = [("stem", 3, stem_filters)] * stem_convs
    for i in range(levels + 1):
        f = base_filters * 2**i
        if i > 0:
            plan.append(("pool", 2, 0))
        plan.append(("conv", 3, f))
        if i >= 2:
            plan += [("conv", 1, f // 2), ("conv", 3, f)]
        if i == levels - 1:
            plan.append(("mark", 0, f))
    plan.append(("conv", 3, base_filters * 2**levels))  # extra context at the output stride
    plan.append(("concat", 0, 0))
    plan.append(("conv", 3, base_filters * 2**levels))
    return plan


def receptive_field(stride: int = 8, stem_convs: int = 0) -> int:
    """Receptive field (pixels along one side) of an output cell of :func:`build_yolo`.

    Standard recursion over the main path (``r += (k - 1) j`` per layer,
    ``j`` the current stride); the passthrough branch sees a subset of it.
    Stride 4: 42 px; 8: 94 px; 16: 198 px; 32: 406 px; each stem convolution adds 2 px.
    """
    r, j = 1, 1
    for kind, k, _ in _plan(stride, 1, stem_convs, 1):
        if kind in ("conv", "stem"):
            r += (k - 1) * j
        elif kind == "pool":
            r += (k - 1) * j
            j *= k
    return r


def build_yolo(
    bands: int = 3,
    n_classes: int = 6,
    n_anchors: int = 5,
    stride: int = 8,
    base_filters: int = 8,
    *,
    stem_convs: int = 0,
    stem_filters: int = 16,
    bn_momentum: float = 0.9,
    name: str = "yolo",
) -> keras.Model:
    """The detector ``keras.Model``: ``(b, rows, cols, bands)`` 0..255 -> ``(b, rows / stride, cols / stride, A (5 + C))``.

    Layers are named ``stem{i}_conv`` / ``_bn`` / ``_act`` (the stem), ``l{i}_conv`` / ``_bn`` / ``_act``, ``pass_conv``,
    ``pass_s2d``, ``pass_concat`` and ``head``. The head bias starts the
    objectness logit at -4 (sigmoid ~0.02: few cells hold a marking).
    """
    if bands < 1 or n_classes < 1 or n_anchors < 1 or base_filters < 1:
        raise ConfigError(
            f"detector: bands {bands}, classes {n_classes}, anchors {n_anchors}, base filters {base_filters}; each must be at least 1"
        )
    if stem_convs < 0 or (stem_convs and stem_filters < 1):
        raise ConfigError(f"detector: stem of {stem_convs} convolution(s) of {stem_filters} filters; use 0 or more of at least 1")
    plan = _plan(stride, base_filters, stem_convs, stem_filters)

    def cbl(x, filters: int, kernel: int, prefix: str):
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn")(x)
        return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{prefix}_act")(x)

    inputs = keras.Input(shape=(None, None, bands), dtype="float32", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    fine = None
    n = m = 0
    for kind, k, f in plan:
        if kind == "stem":
            x = cbl(x, f, k, f"stem{m}")
            m += 1
        elif kind == "conv":
            x = cbl(x, f, k, f"l{n}")
            n += 1
        elif kind == "pool":
            x = layers.MaxPooling2D(2, name=f"pool{n}")(x)
        elif kind == "mark":
            fine = x
        else:  # concat: the passthrough joins here
            p = cbl(fine, max(fine.shape[-1] // 4, 4), 1, "pass")
            p = SpaceToDepth(2, name="pass_s2d")(p)
            x = layers.Concatenate(name="pass_concat")([x, p])
    per = 5 + n_classes
    bias = [0.0] * (n_anchors * per)
    for a in range(n_anchors):
        bias[a * per + 4] = -4.0
    outputs = layers.Conv2D(
        n_anchors * per, 1, name="head", dtype="float32", bias_initializer=keras.initializers.Constant(bias)
    )(x)
    return keras.Model(inputs, outputs, name=name)


def conv_flops(model: keras.Model, rows: int, cols: int) -> int:
    """Floating-point operations (2 per multiply-add) of the model's convolutions on one ``rows x cols`` input.

    Counts Conv2D layers only (batch norm, activations and pooling add about
    1 %); exact for any graph of this module.
    """
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    probe = keras.Model(model.inputs, [c.output for c in convs])
    specs = probe.compute_output_spec(keras.KerasTensor((1, rows, cols, model.inputs[0].shape[-1])))
    total = 0
    for c, spec in zip(convs, specs):
        kh, kw, cin, cout = c.kernel.shape
        _, oh, ow, _ = spec.shape
        total += 2 * kh * kw * cin * cout * oh * ow
    return int(total)
