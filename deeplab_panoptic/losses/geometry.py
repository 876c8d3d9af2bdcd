"""Where ground-truth masks are: extreme points, centroid, box size and area.

Coordinates follow the model's coord-conv (modeling/layers/coord_conv.py): a
pixel (i, j) of an h x w map sits at (y, x) = ((i + 0.5) / h, (j + 0.5) / w),
so every coordinate lies in [0, 1] whatever the resolution.
"""

from typing import NamedTuple, Tuple

import tensorflow as tf


class MaskGeometry(NamedTuple):
  """Per-mask location statistics; all zero for empty masks.

  Attributes:
    minimum: [B, K, 2] smallest (y, x) of the mask's pixel centres.
    maximum: [B, K, 2] largest (y, x).
    centre: [B, K, 2] mean (y, x) of the mask's pixels (its centroid).
    box_size: [B, K, 2] bounding-box (height, width) over the image size,
      maximum - minimum + one pixel.
    area: [B, K] pixel count over the number of pixels.
  """
  minimum: tf.Tensor
  maximum: tf.Tensor
  centre: tf.Tensor
  box_size: tf.Tensor
  area: tf.Tensor


def pixel_coordinates(size: Tuple[int, int],
                      dtype: tf.DType = tf.float32) -> tf.Tensor:
  """Normalised pixel-centre coordinates of an h x w map, row-major.

  Args:
    size: static (h, w).
    dtype: float dtype.

  Returns:
    [h * w, 2]: (y, x) of every pixel, (i + 0.5) / h and (j + 0.5) / w.
  """
  height, width = size
  ys = (tf.range(height, dtype=dtype) + 0.5) / height
  xs = (tf.range(width, dtype=dtype) + 0.5) / width
  grid_y, grid_x = tf.meshgrid(ys, xs, indexing="ij")
  return tf.reshape(tf.stack([grid_y, grid_x], axis=-1), [height * width, 2])


def mask_geometry(gt_masks: tf.Tensor, size: Tuple[int, int]) -> MaskGeometry:
  """Extreme points, centroid, box size and area of binary masks.

  Args:
    gt_masks: float [B, P, K] binary masks over P = h * w pixels.
    size: static (h, w) of the pixel grid.

  Returns:
    A `MaskGeometry`, computed on pixel centres (no gradient: targets).
  """
  gt_masks = tf.stop_gradient(gt_masks)
  dtype = gt_masks.dtype
  coords = pixel_coordinates(size, dtype)  # [P, 2]
  inside = gt_masks[..., tf.newaxis] > 0  # [B, P, K, 1]
  coords = coords[tf.newaxis, :, tf.newaxis, :]  # [1, P, 1, 2]
  big = tf.constant(2.0, dtype)  # beyond every coordinate in [0, 1].
  minimum = tf.reduce_min(tf.where(inside, coords, big), axis=1)
  maximum = tf.reduce_max(tf.where(inside, coords, -big), axis=1)
  count = tf.reduce_sum(gt_masks, axis=1)  # [B, K]
  nonempty = (count > 0)[..., tf.newaxis]
  minimum = tf.where(nonempty, minimum, tf.zeros_like(minimum))
  maximum = tf.where(nonempty, maximum, tf.zeros_like(maximum))
  centre = (tf.einsum("bpk,pc->bkc", gt_masks, coords[0, :, 0, :]) /
            tf.maximum(count, 1.0)[..., tf.newaxis])
  pixel = tf.constant([1.0 / size[0], 1.0 / size[1]], dtype)
  box_size = tf.where(nonempty, maximum - minimum + pixel,
                      tf.zeros_like(maximum))
  area = count / float(size[0] * size[1])
  return MaskGeometry(minimum=minimum, maximum=maximum, centre=centre,
                      box_size=box_size, area=area)
