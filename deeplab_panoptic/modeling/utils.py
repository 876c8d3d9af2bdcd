"""Small shape helpers shared by the modeling code."""

from typing import Sequence, Union

import gin
import tensorflow as tf

from deeplab_panoptic.ops import resize


def spatial_size(x: tf.Tensor) -> Union[Sequence[int], tf.Tensor]:
  """``(height, width)`` of ``[batch, height, width, ...]``, static when known."""
  if x.shape[1] is not None and x.shape[2] is not None:
    return (int(x.shape[1]), int(x.shape[2]))
  return tf.shape(x)[1:3]


@gin.configurable(allowlist=["align_corners"])
def resize_bilinear(x: tf.Tensor, size, align_corners: bool = False) -> tf.Tensor:
  """``ops.resize.resize_bilinear`` with the corner convention chosen in gin.

  Half-pixel centres by default; ``align_corners`` (gin) aligns the corner pixels
  as deeplab2 does everywhere (its odd sizes 2^k n + 1 make strided grids nest),
  needed for output parity with imported deeplab2 checkpoints.
  """
  return resize.resize_bilinear(x, size, align_corners=align_corners)
