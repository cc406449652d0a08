"""A fully convolutional U-Net for per-pixel segmentation (Keras 3).

Contracting path of ``depth`` levels (two 3x3 convolutions + batch
normalization + ReLU, then 2x2 max-pooling), a bottleneck, and a symmetric
expanding path where each level upsamples by nearest neighbour and follows
with a 3x3 convolution (no transposed convolutions: no checkerboard
artifacts), concatenates the skip connection and applies two more 3x3
convolutions. Filters double at each level from ``base_filters``.

Input: float32 ``(batch, rows, cols, bands)`` with raw 0..255 values (a
``Rescaling`` layer inside divides by 255); rows and cols may be any multiple
of :func:`model_stride` (``2 ** depth`` pixels). Output: per-pixel softmax
``(batch, rows, cols, n_classes + 1)``, channel 0 background. Weights start
from scratch (no download).
"""

from __future__ import annotations

import math

from navml.errors import ConfigError

#: Encoder variants: ``plain`` (two conv-BN-ReLU) or ``residual`` (the same
#: with an identity / 1x1-projection shortcut around them).
ENCODERS = ("plain", "residual")
#: 3x3 convolutions per block.
CONVS_PER_BLOCK = 2


def model_stride(depth: int, downsample: int = 1) -> int:
    """Input rows and cols must be a multiple of this (pixels): ``downsample * 2 ** depth``."""
    return downsample * 2**depth


def _upsampled_from(position: int, downsample: int) -> tuple[int, int]:
    """The two low-resolution pixels a bilinear (half-pixel centres) upsampling by ``downsample`` blends into ``position``."""
    q = math.floor((position + 0.5) / downsample - 0.5)
    return q, q + 1


def receptive_span(
    depth: int, position: int, kernel: int = 3, convs_per_block: int = CONVS_PER_BLOCK, downsample: int = 1
) -> tuple[int, int]:
    """First and last input pixel (inclusive, along one axis) that output pixel ``position`` depends on.

    Exact interval arithmetic over :func:`build_unet`'s graph, backwards from
    the output: a ``k``-wide "same" convolution widens an interval by
    ``(k - 1) / 2`` each side, 2x2 max-pooling maps ``[a, b]`` to
    ``[2a, 2b + 1]``, nearest upsampling maps ``[a, b]`` to
    ``[a // 2, b // 2]``, a concatenation takes the hull of both branches.
    The residual encoder has the same span (its shortcut is 1x1). With
    ``downsample`` > 1 the U-Net runs on a ``downsample``-times average-pooled
    input (``[a, b]`` -> ``[d a, d b + d - 1]``) and its logits are upsampled
    bilinearly, so an output pixel blends two low-resolution neighbours.
    """
    if kernel % 2 == 0:
        raise ValueError("kernel must be odd")
    if downsample > 1:
        spans = [receptive_span(depth, q, kernel, convs_per_block) for q in _upsampled_from(position, downsample)]
        a, b = min(s[0] for s in spans), max(s[1] for s in spans)
        return downsample * a, downsample * b + downsample - 1
    c = convs_per_block * (kernel - 1) // 2  # one block, each side
    h = (kernel - 1) // 2  # one convolution, each side

    def enc(level: int, a: int, b: int) -> tuple[int, int]:
        a, b = a - c, b + c  # the block's input
        if level == 0:
            return a, b
        return enc(level - 1, 2 * a, 2 * b + 1)  # through the 2x2 pool

    def dec(level: int, a: int, b: int) -> tuple[int, int]:
        if level == depth:  # bottleneck: a block on the last pool output
            return enc(level - 1, 2 * (a - c), 2 * (b + c) + 1)
        a, b = a - c, b + c  # the block's input: the concatenation
        skip = enc(level, a, b)
        deep = dec(level + 1, (a - h) // 2, (b + h) // 2)  # conv after the upsampling, then the upsampling
        return min(skip[0], deep[0]), max(skip[1], deep[1])

    return dec(0, position, position)


def receptive_field(depth: int, kernel: int = 3, convs_per_block: int = CONVS_PER_BLOCK, downsample: int = 1) -> int:
    """Theoretical receptive field (pixels along one side) of :func:`build_unet`'s output.

    The widest :func:`receptive_span` over the ``2 ** depth`` pixel phases
    (pooling and upsampling make the span depend on the position modulo the
    stride). Depth 1 gives 20 px, 2 gives 50, 3 gives 114, 4 gives 236.
    """
    spans = [receptive_span(depth, p, kernel, convs_per_block, downsample) for p in range(model_stride(depth, downsample))]
    return max(b - a + 1 for a, b in spans)


def receptive_halo(depth: int, kernel: int = 3, convs_per_block: int = CONVS_PER_BLOCK, downsample: int = 1) -> int:
    """Farthest an output pixel looks to one side (pixels): the context a prediction
    window needs around the pixels it keeps (122 px at depth 4, a bit more than
    half of :func:`receptive_field` because the span is not centred)."""
    reach = 0
    for p in range(model_stride(depth, downsample)):
        a, b = receptive_span(depth, p, kernel, convs_per_block, downsample)
        reach = max(reach, p - a, b - p)
    return reach


#: Input downsampling factors of :func:`build_unet`.
DOWNSAMPLES = (1, 2, 4)


def _check(bands: int, n_classes: int, depth: int, base_filters: int, encoder: str, downsample: int = 1) -> None:
    if downsample not in DOWNSAMPLES:
        raise ConfigError(f"params: 'train.downsample' is {downsample}; use one of {', '.join(map(str, DOWNSAMPLES))}")
    if not 1 <= depth <= 7:
        raise ConfigError(f"params: 'train.depth' is {depth}; use 1..7 (stride 2**depth pixels)")
    if base_filters < 1:
        raise ConfigError(f"params: 'train.base_filters' is {base_filters}; use a positive integer such as 16")
    if encoder not in ENCODERS:
        raise ConfigError(f"params: 'train.encoder' is '{encoder}'; use one of {', '.join(ENCODERS)}")
    if bands < 1:
        raise ConfigError(f"params: 'train.bands' is {bands}; use the band count of the imagery (3 for RGB)")
    if n_classes < 1:
        raise ConfigError("classes: no segmentation class in the registry; add one with task: segmentation")


def build_unet(
    bands: int = 3,
    n_classes: int = 1,
    depth: int = 4,
    base_filters: int = 16,
    encoder: str = "plain",
    *,
    kernel: int = 3,
    dropout: float = 0.0,
    bn_momentum: float = 0.9,
    downsample: int = 1,
    name: str = "unet",
):
    """A U-Net ``keras.Model``: ``(b, rows, cols, bands)`` 0..255 -> ``(b, rows, cols, n_classes + 1)`` softmax.

    ``n_classes`` counts the segmentation classes without background;
    ``depth`` is the number of 2x pooling steps; level ``i`` has
    ``base_filters * 2 ** i`` filters; ``dropout`` (0..1) applies before the
    bottleneck; ``bn_momentum`` is the batch-normalization moving-average
    momentum (0.9 rather than Keras' 0.99 so that the inference statistics
    settle within the few hundred steps a small training set gives). ``downsample``
    (1, 2 or 4) runs the U-Net on the input average-pooled by that factor and
    upsamples its logits bilinearly back to the input's size: ``downsample ** 2``
    times fewer FLOPs and a receptive field ``downsample`` times wider, for classes
    whose objects are large against a pixel (parking lots at 0.3-0.5 m pixels).
    Layers are named ``enc{i}_*``, ``bottleneck_*``, ``dec{i}_*``,
    ``logits`` (``logits_up`` after it with ``downsample`` > 1) and ``probs``.
    """
    import keras
    from keras import layers

    _check(bands, n_classes, depth, base_filters, encoder, downsample)

    def conv_bn_relu(x, filters: int, prefix: str):
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn")(x)
        return layers.Activation("relu", name=f"{prefix}_relu")(x)

    def block(x, filters: int, prefix: str, residual: bool):
        if not residual:
            for k in range(CONVS_PER_BLOCK):
                x = conv_bn_relu(x, filters, f"{prefix}_{k}")
            return x
        shortcut = x
        if x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_proj")(x)
            shortcut = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_proj_bn")(shortcut)
        for k in range(CONVS_PER_BLOCK - 1):
            x = conv_bn_relu(x, filters, f"{prefix}_{k}")
        k = CONVS_PER_BLOCK - 1
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{prefix}_{k}_conv")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_{k}_bn")(x)
        x = layers.Add(name=f"{prefix}_add")([x, shortcut])
        return layers.Activation("relu", name=f"{prefix}_relu")(x)

    residual = encoder == "residual"
    inputs = keras.Input(shape=(None, None, bands), dtype="float32", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if downsample > 1:
        x = layers.AveragePooling2D(downsample, name="downsample")(x)
    skips = []
    for i in range(depth):
        x = block(x, base_filters * 2**i, f"enc{i}", residual)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    x = block(x, base_filters * 2**depth, "bottleneck", residual)
    for i in reversed(range(depth)):
        filters = base_filters * 2**i
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{i}_up")(x)
        x = conv_bn_relu(x, filters, f"dec{i}_upconv")
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = block(x, filters, f"dec{i}", False)
    x = layers.Conv2D(n_classes + 1, 1, name="logits")(x)
    if downsample > 1:
        from navml.models.layers import BilinearUpsample

        x = BilinearUpsample(downsample, name="logits_up")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


#: Per-element forward FLOPs of the non-convolution layers (an estimate: they are a few % of the total).
ELEMENTWISE_FLOPS = {
    "BatchNormalization": 2, "Activation": 1, "Rescaling": 1, "Add": 1, "MaxPooling2D": 3, "AveragePooling2D": 3, "Dropout": 1,
}


def forward_flops(model, rows: int, cols: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one ``rows x cols`` input (pixels) through ``model``, counted from its layers.

    A convolution costs ``2 * H_out * W_out * k_h * k_w * C_in * C_out`` (a multiply
    and an add per weight and output pixel; ``+ H_out * W_out * C_out`` with a
    bias); batch normalization, activations, rescaling, additions and pooling
    cost :data:`ELEMENTWISE_FLOPS` per output element, bilinear upsampling 4;
    nearest upsampling and concatenation none. Returns ``{"conv": ..., "other": ..., "total": ...}``.
    Works on any 2-D fully convolutional Keras model (spatial sizes are traced
    through the layers, so ``rows`` and ``cols`` must be multiples of its stride).
    """
    import keras

    cols = rows if cols is None else cols
    shapes: dict[int, tuple] = {}
    conv = other = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            shapes[id(layer.output)] = (rows, cols, layer.output.shape[-1])
            continue
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        in_shapes = [shapes[id(t)] for t in ins]
        h, w, c = in_shapes[0]
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            ho, wo = (h + sh - 1) // sh, (w + sw - 1) // sw
            out = (ho, wo, layer.filters)
            conv += 2 * ho * wo * kh * kw * c * layer.filters + (ho * wo * layer.filters if layer.use_bias else 0)
        elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            ph, pw = layer.pool_size
            out = (h // ph, w // pw, c)
        elif isinstance(layer, keras.layers.UpSampling2D):
            fh, fw = layer.size
            out = (h * fh, w * fw, c)
        elif kind == "BilinearUpsample":
            out = (h * layer.factor, w * layer.factor, c)
            other += 4 * out[0] * out[1] * out[2]
        elif isinstance(layer, keras.layers.Concatenate):
            out = (h, w, sum(s[-1] for s in in_shapes))
        else:
            out = (h, w, c)
        if kind == "Activation" and getattr(layer.activation, "__name__", "") == "softmax":
            other += 5 * out[0] * out[1] * out[2]
        else:
            other += ELEMENTWISE_FLOPS.get(kind, 0) * out[0] * out[1] * out[2]
        shapes[id(layer.output)] = out
    return {"conv": int(conv), "other": int(other), "total": int(conv + other)}
