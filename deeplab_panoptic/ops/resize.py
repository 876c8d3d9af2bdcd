"""The library's resizes: bilinear for images, features and logits; nearest for labels.

One place decides the sampling convention, so the reader, the model, the losses
and the postprocessors resize alike:

* :func:`resize_bilinear`: half-pixel centres (``tf.image.resize``), or
  ``align_corners`` as deeplab2 does everywhere (its odd sizes ``2^k n + 1``
  make strided grids nest; needed for parity with imported deeplab2
  checkpoints). The input's floating dtype is kept (resize ops compute and
  return float32, which mixed precision must not inherit). With static sizes
  (every resize inside the train step) it is two matrix products with
  interpolation matrices built in numpy, not TensorFlow's resize op: XLA on CPU
  lowers that op wrongly at non-integer factors (tensorflow/tensorflow#118344)
  and its float64 gradient is garbage, while a matmul compiles alike
  everywhere, is the TPU's fast path, and keeps float64 exact.
* :func:`resize_nearest`: label maps (integer ids, or 0/1 weights), half-pixel
  centres, so graph and eager agree bit for bit.
* :func:`resize_image_and_label`: the data pipeline's pair of the two.

Both resizes are the identity, without an op, when the static size already
matches.
"""

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

Size = Union[Sequence[int], tf.Tensor]


def _same_static_size(x: tf.Tensor, size: Size, spatial: slice) -> bool:
  if not isinstance(size, (tuple, list)):
    return False
  return tuple(x.shape[spatial]) == tuple(int(s) for s in size)


def _static_size(size: Size) -> Optional[Tuple[int, int]]:
  """``size`` as python ints, or None when it is only known at run time."""
  value = tf.get_static_value(size) if isinstance(size, tf.Tensor) else size
  return None if value is None else (int(value[0]), int(value[1]))


def interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """The bilinear weights of one axis, as ``tf.image.resize`` samples.

  Output pixel ``i`` reads source position ``(i + 0.5) * in / out - 0.5``
  (half-pixel centres) or ``i * (in - 1) / (out - 1)`` (align corners); the two
  neighbouring source pixels, clamped to the edges, share the weight linearly.

  Args:
    in_size: the source length.
    out_size: the resized length.
    align_corners: the sampling convention (see :func:`resize_bilinear`).

  Returns:
    float64 ``[out_size, in_size]``; every row sums to 1.
  """
  out = np.arange(out_size, dtype=np.float64)
  if align_corners:
    source = out * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
  else:
    source = (out + 0.5) * (in_size / out_size) - 0.5
  floor = np.floor(source)
  lerp = source - floor
  lower = np.clip(floor, 0, in_size - 1).astype(np.int64)
  upper = np.clip(floor + 1, 0, in_size - 1).astype(np.int64)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), lower), 1.0 - lerp)
  np.add.at(matrix, (np.arange(out_size), upper), lerp)
  return matrix


# Name scope of the resize matmuls: a resize, not multiply-adds of the model, so
# training/model_summary leaves the ops under it out of the count (as the papers'
# M-Adds leave resizing out).
RESIZE_SCOPE = "bilinear_resize_matmul"


def _resize_by_matmul(x: tf.Tensor, size: Tuple[int, int], align_corners: bool) -> tf.Tensor:
  """``x`` ``[B, H, W, C]`` (static H, W) -> ``[B, size[0], size[1], C]``, one
  matmul per axis that changes, in float32 (float64 stays float64)."""
  with tf.name_scope(RESIZE_SCOPE):
    dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    y = tf.cast(x, dtype)
    if size[0] != x.shape[1]:
      rows = interpolation_matrix(x.shape[1], size[0], align_corners)
      y = tf.einsum("oh,bhwc->bowc", tf.constant(rows, dtype), y)
    if size[1] != x.shape[2]:
      cols = interpolation_matrix(x.shape[2], size[1], align_corners)
      y = tf.einsum("ow,bhwc->bhoc", tf.constant(cols, dtype), y)
    return y


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
  batched = x if x.shape.rank == 4 else x[tf.newaxis]
  static = _static_size(size)
  if static is not None and None not in batched.shape[1:3]:
    y = _resize_by_matmul(batched, static, align_corners)
  elif align_corners:
    y = tf.compat.v1.image.resize_bilinear(batched, size, align_corners=True)
  else:
    y = tf.image.resize(batched, size, method=tf.image.ResizeMethod.BILINEAR)
  y = y if x.shape.rank == 4 else y[0]
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
