"""Small shape helpers shared by the modeling code."""

from typing import Sequence, Union

import gin
import tensorflow as tf


def spatial_size(x: tf.Tensor) -> Union[Sequence[int], tf.Tensor]:
  """``(height, width)`` of ``[batch, height, width, ...]``, static when known."""
  if x.shape[1] is not None and x.shape[2] is not None:
    return (int(x.shape[1]), int(x.shape[2]))
  return tf.shape(x)[1:3]


@gin.configurable(allowlist=["align_corners"])
def resize_bilinear(x: tf.Tensor, size, align_corners: bool = False) -> tf.Tensor:
  """Bilinear resize; a no-op when the size already matches.

  Half-pixel centres by default; ``align_corners`` (gin) aligns the corner pixels
  as deeplab2 does everywhere (its odd sizes 2^k n + 1 make strided grids nest),
  needed for output parity with imported deeplab2 checkpoints.
  """
  if isinstance(size, (tuple, list)) and tuple(x.shape[1:3]) == tuple(size):
    return x
  if align_corners:
    y = tf.compat.v1.image.resize_bilinear(x, size, align_corners=True)
  else:
    y = tf.image.resize(x, size, method="bilinear")
  # Resize ops return float32 whatever the input; mixed precision (bfloat16 /
  # float16 features) needs the input's type back.
  return tf.cast(y, x.dtype) if x.dtype.is_floating else y
