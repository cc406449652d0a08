"""The U-Net: shapes, free input size, exact receptive field, save/load round trip."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from navml.errors import ConfigError
from navml.models.io import ModelMeta, load_model, save_model
from navml.models.unet import build_unet, model_stride, receptive_field, receptive_halo, receptive_span


@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_output_is_a_softmax_of_the_input_size(encoder):
    model = build_unet(bands=4, n_classes=2, depth=2, base_filters=4, encoder=encoder)
    rng = np.random.default_rng(0)
    for rows, cols in [(64, 64), (32, 96), (128, 8 * 4)]:
        x = rng.uniform(0, 255, size=(2, rows, cols, 4)).astype("float32")
        y = model.predict_on_batch(x)
        assert y.shape == (2, rows, cols, 3)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
        assert (y >= 0).all()


def test_decoder_uses_nearest_upsampling_not_transposed_convolutions():
    model = build_unet(3, 1, depth=3, base_filters=4)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Conv2DTranspose" not in kinds
    ups = [layer for layer in model.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert len(ups) == 3 and all(u.interpolation == "nearest" for u in ups)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 3 * 2 + 2 + 3 * 3
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 3
    # filters double per level: 4, 8, 16 and 32 in the bottleneck
    assert model.get_layer("bottleneck_0_conv").filters == 32
    assert model.get_layer("dec0_1_conv").filters == 4


def test_stride_and_receptive_field_values():
    assert [model_stride(d) for d in (1, 2, 4)] == [2, 4, 16]
    # hand count for depth 1: two 3x3 convs (5), pool (6, stride 2), two 3x3 convs
    # at stride 2 (14), upsample + 3x3 conv + two 3x3 convs at stride 1: 14 + 6 = 20
    assert receptive_field(1) == 20
    assert receptive_span(1, 0) == (-10, 9)
    assert receptive_field(4) == 236
    assert receptive_halo(4) == 122
    assert receptive_halo(4) >= receptive_field(4) // 2


def _impulse_model(depth: int, encoder: str, downsample: int = 1):
    model = build_unet(1, 1, depth, 2, encoder, downsample=downsample)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):  # positive weights, no bias: every path carries the impulse
            layer.set_weights([np.abs(rng.normal(size=w.shape)).astype("float32") + 0.01 if w.ndim == 4 else np.zeros_like(w) for w in layer.get_weights()])
    return keras.Model(model.input, model.get_layer("probs").input)


@pytest.mark.parametrize(
    "depth,encoder,downsample", [(1, "plain", 1), (2, "plain", 1), (2, "residual", 1), (3, "plain", 1), (1, "plain", 2), (2, "plain", 4)]
)
def test_receptive_span_matches_the_network(depth, encoder, downsample):
    """Put an impulse on every column of a zero image: the outputs it reaches give each output's span exactly."""
    logits = _impulse_model(depth, encoder, downsample)
    s = model_stride(depth, downsample)
    width = (3 * receptive_field(depth, downsample=downsample) // s + 1) * s
    rows, r = 2 * s, s
    images = np.zeros((width, rows, width, 1), "float32")
    images[np.arange(width), r, np.arange(width), 0] = 100.0
    out = logits.predict(images, batch_size=32, verbose=0)
    base = logits.predict_on_batch(np.zeros((1, rows, width, 1), "float32"))
    reach = np.abs(out - base).sum(-1)[:, r, :] > 1e-6  # reach[input column, output column]
    centre = width // 2
    widths = []
    for p in range(centre - s, centre + s):
        cols = np.flatnonzero(reach[:, p])
        assert (cols.min(), cols.max()) == receptive_span(depth, p, downsample=downsample), p
        widths.append(cols.max() - cols.min() + 1)
    assert max(widths) == receptive_field(depth, downsample=downsample)


def test_downsampled_unet_is_cheaper_and_keeps_the_input_size():
    from navml.models.unet import forward_flops

    full, half = build_unet(3, 1, 4, 8), build_unet(3, 1, 4, 8, downsample=2)
    assert half.predict_on_batch(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 64, 96, 2)
    ratio = forward_flops(full, 256)["total"] / forward_flops(half, 256)["total"]
    assert 3.8 < ratio < 4.1  # a quarter of the pixels at every level, plus the pooling and the bilinear upsampling
    assert model_stride(4, 2) == 32 and receptive_field(4, downsample=2) == 472
    with pytest.raises(ConfigError, match="train.downsample"):
        build_unet(3, 1, 4, 8, downsample=3)


def test_bad_architecture_params_are_config_errors():
    with pytest.raises(ConfigError, match="train.encoder"):
        build_unet(encoder="dense")
    with pytest.raises(ConfigError, match="train.depth"):
        build_unet(depth=0)
    with pytest.raises(ConfigError, match="train.base_filters"):
        build_unet(base_filters=0)


def test_save_and_load_round_trip(tmp_path):
    model = build_unet(3, 1, depth=2, base_filters=4, encoder="residual")
    meta = ModelMeta("segmentation", ["parking"], 18, 64, 3, model_stride(2), receptive_field(2))
    save_model(model, meta, tmp_path / "m")
    loaded, meta2 = load_model(tmp_path / "m")
    x = np.random.default_rng(1).uniform(0, 255, size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    assert meta2 == meta


def test_forward_flops_counted_from_the_layers():
    from navml.models.unet import forward_flops

    # depth 1, base 2, 3 bands, 1 class, 8 x 8 px, by hand: 2 * H * W * k * k * Cin * Cout per convolution
    model = build_unet(3, 1, depth=1, base_filters=2)
    convs = (
        2 * 64 * 9 * 3 * 2 + 2 * 64 * 9 * 2 * 2  # enc0: 3 -> 2 -> 2 at 8 x 8
        + 2 * 16 * 9 * 2 * 4 + 2 * 16 * 9 * 4 * 4  # bottleneck: 2 -> 4 -> 4 at 4 x 4
        + 2 * 64 * 9 * 4 * 2  # dec0 upconv 4 -> 2 after the upsampling
        + 2 * 64 * 9 * 4 * 2 + 2 * 64 * 9 * 2 * 2  # dec0 block on the concatenation (2 + 2) -> 2 -> 2
        + 2 * 64 * 2 * 2 + 64 * 2  # 1x1 logits with bias
    )
    flops = forward_flops(model, 8)
    assert flops["conv"] == convs == 42112
    assert 0 < flops["other"] < 0.2 * flops["conv"] and flops["total"] == flops["conv"] + flops["other"]
    # the default U-Net: ~2.1 GFLOP per 256-px tile, a quarter of it at 128 px, 32 x 64 px half of 64 x 64
    default = build_unet(3, 1, depth=4, base_filters=8)
    big, small = forward_flops(default, 256)["total"], forward_flops(default, 128)["total"]
    assert 2.0e9 < big < 2.2e9 and big == 4 * small
    assert forward_flops(default, 32, 64)["conv"] * 2 == forward_flops(default, 64)["conv"]


def test_a_downsampled_unet_loads_and_runs_for_any_window(tmp_path):
    """Saved, loaded, BN-folded and run by the prediction runner (a graph with free rows/cols), it equals the trained model."""
    from navml.models.inference import fold_batchnorm, runner

    model = build_unet(3, 1, depth=2, base_filters=4, downsample=2)
    meta = ModelMeta("segmentation", ["parking"], 18, 64, 3, model_stride(2, 2), receptive_field(2, downsample=2))
    save_model(model, meta, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    run = runner(fold_batchnorm(loaded), 3)
    rng = np.random.default_rng(2)
    for rows, cols in [(64, 64), (32, 96)]:
        x = rng.uniform(0, 255, size=(1, rows, cols, 3)).astype("float32")
        np.testing.assert_allclose(run(x), model.predict_on_batch(x), atol=1e-5)
