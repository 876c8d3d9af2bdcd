"""Drop path (stochastic depth) with one mask per sample."""

import tensorflow as tf
import tf_keras as keras


class DropPath(keras.layers.Layer):
  """Drops a residual branch per sample and rescales the kept ones by 1 / keep.

  Input and output: any shape ``[batch, ...]``.
  """

  def __init__(self, drop_rate: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}.")
    self.drop_rate = drop_rate

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    if not training or self.drop_rate == 0.0:
      return x
    keep = 1.0 - self.drop_rate
    shape = [tf.shape(x)[0]] + [1] * (x.shape.rank - 1)
    mask = tf.floor(keep + tf.random.uniform(shape, dtype=x.dtype))
    return x / keep * mask

  def get_config(self):
    return {**super().get_config(), "drop_rate": self.drop_rate}
