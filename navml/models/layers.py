"""Custom Keras layers of navml's models, registered so that saved models load by name.

Importing this module registers them (``navml.models.io.load_model`` does).
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="navml")
class BilinearUpsample(layers.Layer):
    """Bilinear upsampling by an integer ``factor`` (half-pixel centres, edges clamped), for inputs of any size.

    Equal to ``keras.layers.UpSampling2D(factor, interpolation="bilinear")``, which
    cannot run in a graph whose rows and cols are unknown (a prediction runner
    traced for any window size): here the output size is read from the tensor.
    """

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        import tensorflow as tf

        return tf.image.resize(x, tf.shape(x)[1:3] * self.factor, method="bilinear")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        f = self.factor
        return (b, None if h is None else h * f, None if w is None else w * f, c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="navml")
class SpaceToDepth(layers.Layer):
    """Moves each ``block x block`` patch into channels: (b, h, w, c) -> (b, h / block, w / block, block² c)."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def call(self, x):
        k = self.block
        shape = ops.shape(x)
        b, h, w, c = shape[0], shape[1], shape[2], shape[3]
        x = ops.reshape(x, (b, h // k, k, w // k, k, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h // k, w // k, k * k * c))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        k = self.block
        return (b, None if h is None else h // k, None if w is None else w // k, None if c is None else c * k * k)

    def get_config(self):
        return {**super().get_config(), "block": self.block}
