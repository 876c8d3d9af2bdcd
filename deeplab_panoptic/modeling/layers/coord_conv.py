"""Coord-conv: a 1x1 conv over features concatenated with their pixel coordinates.

CMT-DeepLab eq. 12, ``F' = Conv(Concat(F, r^p))``: convolutions are translation
equivariant, so without it two identical objects at different places get the same
features, and cluster centres cannot claim them separately.
"""

import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers import conv


def coordinate_grid(height, width, dtype=tf.float32) -> tf.Tensor:
  """Normalised pixel-centre coordinates.

  Returns:
    ``[height, width, 2]``: (y, x) in [0, 1], ``(i + 0.5) / size``.
  """
  ys = (tf.range(height, dtype=dtype) + 0.5) / tf.cast(height, dtype)
  xs = (tf.range(width, dtype=dtype) + 0.5) / tf.cast(width, dtype)
  yy, xx = tf.meshgrid(ys, xs, indexing="ij")
  return tf.stack([yy, xx], axis=-1)


class CoordConv(keras.layers.Layer):
  """``ConvBN_1x1(Concat(x, coordinates))`` keeping the channel count.

  Input ``[batch, h, w, c]``; output ``[batch, h, w, c]`` (not activated).
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._conv = None

  def build(self, input_shape):
    self._conv = conv.ConvBN(int(input_shape[-1]), 1, name="conv")
    super().build(input_shape)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    shape = tf.shape(x)
    grid = coordinate_grid(shape[1], shape[2], x.dtype)
    grid = tf.broadcast_to(grid[None], [shape[0], shape[1], shape[2], 2])
    return self._conv(tf.concat([x, grid], axis=-1), training=training)
