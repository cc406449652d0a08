"""Custom Keras layers of navml's models, registered so that saved models load by name.

Importing this module registers them (``navml.models.io.load_model`` does).
"""

from __future__ import annotations

import keras
from keras import layers


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
