"""The YOLOv2-style detector: output shapes at strides 8 and 16, the stem, the passthrough, sizes, FLOPs, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from navml.errors import ConfigError
from navml.models.yolo import STRIDES, SpaceToDepth, build_yolo, conv_flops, receptive_field


@pytest.mark.parametrize("stride", [8, 16])
def test_output_shape_for_256_and_320_inputs(stride):
    model = build_yolo(bands=3, n_classes=6, n_anchors=5, stride=stride)
    for rows, cols in [(256, 256), (320, 320), (256, 320)]:
        y = model.predict_on_batch(np.zeros((1, rows, cols, 3), "float32"))
        assert y.shape == (1, rows // stride, cols // stride, 5 * (5 + 6))
        assert y.dtype == np.float32
    # a black image gives zero features (no conv bias, fresh batch norm), so the output is the head bias:
    # objectness logits at -4 (few cells hold a marking), everything else 0
    y = model.predict_on_batch(np.zeros((1, 64, 64, 3), "float32")).reshape(-1, 5, 11)
    np.testing.assert_allclose(y[..., 4], -4.0, atol=1e-6)
    np.testing.assert_allclose(np.delete(y, 4, axis=-1), 0.0, atol=1e-6)


def test_sizes_fit_two_cpu_cores_and_other_strides_are_allowed():
    model = build_yolo(stride=8)
    assert model.count_params() < 200_000  # 147 599 at base 8
    assert conv_flops(model, 256, 256) < 0.5e9  # 0.42 GFLOP per 256-px tile
    for s in STRIDES:
        m = build_yolo(n_classes=2, n_anchors=3, stride=s, base_filters=2)
        assert m.compute_output_shape((1, 128, 64, 3)) == (1, 128 // s, 64 // s, 3 * 7)
    with pytest.raises(ConfigError, match="stride is 12"):
        build_yolo(stride=12)
    assert [receptive_field(s) for s in STRIDES] == [42, 94, 198, 406]


def test_conv_flops_by_hand():
    # stride 4, base 2, 3 bands, 1 anchor, 1 class, 8 x 8 input (2 FLOPs per multiply-add):
    # l0 3x3 3->2 @8x8 6912; l1 3x3 2->4 @4x4 2304; l2 3x3 4->8 @2x2 2304; l3 1x1 8->4 256; l4 3x3 4->8 2304;
    # l5 3x3 8->8 4608; pass 1x1 4->4 @4x4 512; l6 3x3 (8 + 16)->8 @2x2 13824; head 1x1 8->6 @2x2 384
    model = build_yolo(bands=3, n_classes=1, n_anchors=1, stride=4, base_filters=2)
    assert conv_flops(model, 8, 8) == 33408
    assert model.get_layer("pass_concat").output.shape[-1] == 24


def test_stem_adds_full_resolution_layers_flops_and_receptive_field():
    # stem0 3x3 3->4 @8x8 13824 and l0 now 3x3 4->2 @8x8 9216 (was 3->2: 6912); the rest as above
    model = build_yolo(bands=3, n_classes=1, n_anchors=1, stride=4, base_filters=2, stem_convs=1, stem_filters=4)
    assert conv_flops(model, 8, 8) == 33408 - 6912 + 13824 + 9216
    model = build_yolo(stride=8, base_filters=4, stem_convs=2, stem_filters=16)
    for i in range(2):
        conv = model.get_layer(f"stem{i}_conv")
        assert conv.kernel.shape[:2] == (3, 3) and conv.filters == 16 and conv.output.shape[1:3] == (None, None)
        assert model.get_layer(f"stem{i}_act").output.shape[-1] == 16
    assert model.get_layer("l0_conv").kernel.shape[2] == 16  # the first level reads the stem
    assert model.compute_output_shape((1, 64, 96, 3)) == (1, 8, 12, 5 * 11)
    assert not any(layer.name.startswith("stem") for layer in build_yolo(stride=8, base_filters=4).layers)
    for s in STRIDES:
        assert [receptive_field(s, k) - receptive_field(s) for k in (1, 2, 3)] == [2, 4, 6]
    assert receptive_field(8, 2) == 98
    with pytest.raises(ConfigError, match="stem of -1"):
        build_yolo(stem_convs=-1)


def test_space_to_depth_matches_tensorflow_and_is_a_passthrough():
    import tensorflow as tf

    x = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    np.testing.assert_array_equal(np.asarray(SpaceToDepth(2)(x)), tf.nn.space_to_depth(x, 2).numpy())
    model = build_yolo(stride=8, base_filters=4)
    s2d = model.get_layer("pass_s2d")
    assert s2d.input.shape[-1] * 4 == s2d.output.shape[-1]


def test_save_and_load_round_trip(tmp_path):
    import keras

    model = build_yolo(n_classes=2, n_anchors=2, stride=8, base_filters=2)
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 48, 3)).astype("float32")
    path = tmp_path / "yolo.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


@pytest.mark.parametrize("stem", [0, 2])
def test_receptive_field_matches_what_a_pixel_changes(stem):
    # one bright pixel changes exactly the cells whose receptive field holds it: their centres lie within
    # half the receptive field of the pixel, and the farthest reaches that bound to within a stride
    import keras

    keras.utils.set_random_seed(0)
    stride, rf = 8, receptive_field(8, stem)
    model = build_yolo(stride=stride, base_filters=4, stem_convs=stem, stem_filters=4)
    x = np.full((1, 256, 256, 3), 100.0, "float32")
    base = model.predict_on_batch(x)
    for p in (128, 131):
        bright = x.copy()
        bright[0, p, p] = 10_000.0
        changed = np.abs(model.predict_on_batch(bright) - base).max(axis=(0, 3)) > 1e-6
        rows = np.flatnonzero(changed.any(axis=1))
        dist = np.abs(rows * stride + stride / 2 - (p + 0.5))
        assert dist.max() <= rf / 2
        assert dist.max() >= rf / 2 - stride


def test_load_model_registers_the_detector_layers_itself(tmp_path):
    """A detector saved by save_model loads through navml.models.io.load_model alone, in a fresh process."""
    import subprocess
    import sys

    from navml.models.io import ModelMeta, save_model

    model = build_yolo(bands=3, n_classes=2, n_anchors=1, stride=8, base_filters=4)
    save_model(model, ModelMeta("detection", ["a", "b"], 18, 64, 3, 8, receptive_field(8)), tmp_path / "m")
    code = f"from navml.models.io import load_model; m, _ = load_model({str(tmp_path / 'm')!r}); print(m.count_params())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]
    assert int(out) == model.count_params()
