"""Small shape helpers shared by the modeling code."""

from typing import Sequence, Union

import tensorflow as tf


def spatial_size(x: tf.Tensor) -> Union[Sequence[int], tf.Tensor]:
  """``(height, width)`` of ``[batch, height, width, ...]``, static when known."""
  if x.shape[1] is not None and x.shape[2] is not None:
    return (int(x.shape[1]), int(x.shape[2]))
  return tf.shape(x)[1:3]


def resize_bilinear(x: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize with half-pixel centres; a no-op when the size already matches."""
  if isinstance(size, (tuple, list)) and tuple(x.shape[1:3]) == tuple(size):
    return x
  return tf.image.resize(x, size, method="bilinear")
