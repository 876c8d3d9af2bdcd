"""The library's resizes: bilinear for images, features and logits; nearest for labels.

One place decides the sampling convention, so the reader, the model, the losses
and the postprocessors resize alike:

* :func:`resize_bilinear`: half-pixel centres (``tf.image.resize``), or
  ``align_corners`` as deeplab2 does everywhere (its odd sizes ``2^k n + 1``
  make strided grids nest; needed for parity with imported deeplab2
  checkpoints). The input's floating dtype is kept (resize ops compute and
  return float32, which mixed precision must not inherit).
* :func:`resize_nearest`: label maps (integer ids, or 0/1 weights), half-pixel
  centres, so graph and eager agree bit for bit.
* :func:`resize_image_and_label`: the data pipeline's pair of the two.

Both resizes are the identity, without an op, when the static size already
matches.
"""

from typing import Sequence, Tuple, Union

import tensorflow as tf

Size = Union[Sequence[int], tf.Tensor]


def _same_static_size(x: tf.Tensor, size: Size, spatial: slice) -> bool:
  if not isinstance(size, (tuple, list)):
    return False
  return tuple(x.shape[spatial]) == tuple(int(s) for s in size)


def resize_bilinear(x: tf.Tensor, size: Size, align_corners: bool = False) -> tf.Tensor:
  """Bilinear resize of images or feature maps.

  Args:
    x: ``[B, H, W, C]`` or ``[H, W, C]``, any float dtype (or integer: the
      result is then float32).
    size: the new ``(height, width)``: python ints or an int32 ``[2]`` tensor.
    align_corners: align the corner pixels (deeplab2) instead of half-pixel
      centres.

  Returns:
    ``[B, height, width, C]`` (or ``[height, width, C]``) in ``x``'s float dtype.
  """
  spatial = slice(1, 3) if x.shape.rank == 4 else slice(0, 2)
  if _same_static_size(x, size, spatial):
    return x
  if align_corners:
    y = tf.compat.v1.image.resize_bilinear(
        x if x.shape.rank == 4 else x[tf.newaxis], size, align_corners=True)
    y = y if x.shape.rank == 4 else y[0]
  else:
    y = tf.image.resize(x, size, method=tf.image.ResizeMethod.BILINEAR)
  return tf.cast(y, x.dtype) if x.dtype.is_floating else y


def resize_nearest(labels: tf.Tensor, size: Size) -> tf.Tensor:
  """Nearest-neighbour resize of label maps (half-pixel centres).

  Args:
    labels: ``[B, H, W]`` or ``[H, W]``, any dtype (kept).
    size: the new ``(height, width)``: python ints or an int32 ``[2]`` tensor.

  Returns:
    ``[B, height, width]`` (or ``[height, width]``), ``labels``' dtype.
  """
  spatial = slice(1, 3) if labels.shape.rank == 3 else slice(0, 2)
  if _same_static_size(labels, size, spatial):
    return labels
  resized = tf.image.resize(labels[..., tf.newaxis], size,
                            method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
  return resized[..., 0]


def resize_image_and_label(image: tf.Tensor, label: tf.Tensor, size: Size
                           ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resizes an image bilinearly and its label map with nearest neighbour.

  Args:
    image: float32 ``[H, W, 3]``.
    label: int32 ``[H, W, 1]``.
    size: the new ``(height, width)``.

  Returns:
    float32 ``[h, w, 3]`` and int32 ``[h, w, 1]``.
  """
  return resize_bilinear(image, size), resize_nearest(label[..., 0], size)[..., tf.newaxis]
