"""Drop path (stochastic depth) with one mask per sample."""

import tensorflow as tf
import tf_keras as keras


class DropPath(keras.__internal__.layers.BaseRandomLayer):
  """Drops a residual branch per sample and rescales the kept ones by 1 / keep.

  The draws come from the layer's Keras random generator, as Dropout's: with
  ``keras.backend.experimental.enable_tf_random_generator()`` (done by a run with
  ``ExperimentConfig.seed``) it is a stateful tf.random.Generator, which the
  experiment checkpoints, so a resumed run draws the same masks as an
  uninterrupted one.

  Input and output: any shape ``[batch, ...]``.
  """

  def __init__(self, drop_rate: float = 0.0, seed=None, **kwargs):
    super().__init__(seed=seed, **kwargs)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}.")
    self.drop_rate = drop_rate

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    if not training or self.drop_rate == 0.0:
      return x
    keep = 1.0 - self.drop_rate
    shape = [tf.shape(x)[0]] + [1] * (x.shape.rank - 1)
    # Drawn in float32 (not every generator draws bfloat16), then cast.
    uniform = self._random_generator.random_uniform(shape, dtype=tf.float32)
    mask = tf.cast(tf.floor(keep + uniform), x.dtype)
    return x / keep * mask

  def get_config(self):
    return {**super().get_config(), "drop_rate": self.drop_rate}
