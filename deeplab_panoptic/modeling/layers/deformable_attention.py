"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in pure TF.

The reference implementations sample with a custom CUDA op (or PyTorch's
``grid_sample(align_corners=False, padding_mode="zeros")``). Here the sampling is
four ``tf.gather`` calls per level (the bilinear corners) with static shapes, so
it XLA-compiles, runs on TPU/GPU/CPU and exports in a SavedModel without custom
ops. Corners outside the feature map contribute zero, as ``padding_mode="zeros"``.

The weighted sum of the sampled values is one einsum, so
``training/model_summary.count_macs`` counts the aggregation (one multiply-add per
corner, point, level, head and channel); the gathers themselves are memory moves
and are not counted (as the papers' FLOP counters do not count the custom op's
bilinear weights either).
"""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers.multi_head import check_head_widths

SpatialShapes = Sequence[Tuple[int, int]]


def flatten_levels(features: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, List[Tuple[int, int]]]:
  """Concatenates ``[batch, h_l, w_l, c]`` maps into ``[batch, sum h_l w_l, c]``."""
  shapes = [(int(f.shape[1]), int(f.shape[2])) for f in features]
  tokens = [tf.reshape(f, [-1, h * w, f.shape[-1]]) for f, (h, w) in zip(features, shapes)]
  return tf.concat(tokens, axis=1), shapes


def multi_scale_deformable_sampling(value: tf.Tensor, spatial_shapes: SpatialShapes,
                                    sampling_locations: tf.Tensor,
                                    attention_weights: tf.Tensor) -> tf.Tensor:
  """Bilinear sampling at the given locations, weighted and summed per head.

  Equals, per level l, ``grid_sample(value_l, 2 * loc - 1, bilinear,
  padding_mode="zeros", align_corners=False)`` weighted by the attention weights
  and summed over levels and points.

  Args:
    value: [batch, S, heads, head_dim], S = sum of h_l * w_l (levels flattened
      row-major and concatenated in the order of ``spatial_shapes``).
    spatial_shapes: python (h_l, w_l) per level (static).
    sampling_locations: [batch, Q, heads, levels, points, 2], (x, y) normalised
      to [0, 1] over each level (0 and 1 are the outer edges of the map).
    attention_weights: [batch, Q, heads, levels, points].

  Returns:
    [batch, Q, heads * head_dim].
  """
  _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
  head_dim = value.shape[-1]
  if num_levels != len(spatial_shapes):
    raise ValueError(f"sampling_locations has {num_levels} levels, spatial_shapes "
                     f"{len(spatial_shapes)}.")
  if value.shape[1] is not None and value.shape[1] != sum(h * w for h, w in spatial_shapes):
    raise ValueError(f"value has {value.shape[1]} tokens; spatial_shapes {spatial_shapes} "
                     f"give {sum(h * w for h, w in spatial_shapes)}.")
  dtype = value.dtype
  # Addresses and bilinear weights in float32 at least: bfloat16 holds integers
  # exactly only up to 256, so a flat index y * w + x would point at wrong pixels.
  geometry = _geometry_dtype(dtype)
  # [B, heads, Q, levels, points, 2]: heads next to batch so gathers use batch_dims=2.
  locations = tf.transpose(tf.cast(sampling_locations, geometry), [0, 2, 1, 3, 4, 5])
  weights = tf.transpose(tf.cast(attention_weights, geometry), [0, 2, 1, 3, 4])
  samples, sample_weights = [], []
  start = 0
  for level, (height, width) in enumerate(spatial_shapes):
    level_value = tf.transpose(value[:, start:start + height * width], [0, 2, 1, 3])
    start += height * width
    # align_corners=False: location 0 is the left edge of pixel 0, pixel i's
    # centre is at (i + 0.5) / w.
    x = locations[:, :, :, level, :, 0] * width - 0.5     # [B, heads, Q, P]
    y = locations[:, :, :, level, :, 1] * height - 0.5
    x0 = tf.floor(x)
    y0 = tf.floor(y)
    fx = x - x0
    fy = y - y0
    corner_index, corner_weight = [], []
    for dy, wy in ((0.0, 1.0 - fy), (1.0, fy)):
      for dx, wx in ((0.0, 1.0 - fx), (1.0, fx)):
        xi = x0 + dx
        yi = y0 + dy
        inside = ((xi >= 0.0) & (xi <= width - 1.0) & (yi >= 0.0) & (yi <= height - 1.0))
        # Out-of-map corners read a clipped (valid) address and get weight 0.
        index = (tf.clip_by_value(yi, 0.0, height - 1.0) * width +
                 tf.clip_by_value(xi, 0.0, width - 1.0))
        corner_index.append(tf.cast(index, tf.int32))
        corner_weight.append(wy * wx * tf.cast(inside, geometry))
    index = tf.stack(corner_index, axis=-1)                     # [B, heads, Q, P, 4]
    bilinear = tf.stack(corner_weight, axis=-1)
    gathered = tf.gather(level_value,
                         tf.reshape(index, [-1, num_heads, num_queries * num_points * 4]),
                         batch_dims=2)                          # [B, heads, Q*P*4, D]
    samples.append(tf.reshape(gathered,
                              [-1, num_heads, num_queries, num_points * 4, head_dim]))
    sample_weights.append(tf.cast(
        tf.reshape(bilinear * weights[:, :, :, level, :, tf.newaxis],
                   [-1, num_heads, num_queries, num_points * 4]), dtype))
  samples = tf.concat(samples, axis=3)                          # [B, heads, Q, K, D]
  sample_weights = tf.concat(sample_weights, axis=3)            # [B, heads, Q, K]
  output = tf.einsum("bmqkd,bmqk->bqmd", samples, sample_weights)
  return tf.reshape(output, [-1, num_queries, num_heads * head_dim])


def _geometry_dtype(dtype: tf.DType) -> tf.DType:
  """float32 for half-precision compute dtypes, else ``dtype`` (float32/float64)."""
  return tf.float32 if dtype in (tf.bfloat16, tf.float16) else dtype


def _offset_bias_init(num_heads: int, num_levels: int, num_points: int) -> np.ndarray:
  """Deformable DETR's offset bias: head k points at angle 2πk/heads, projected
  onto the unit square, times (point index + 1), the same for every level."""
  thetas = np.arange(num_heads, dtype=np.float64) * (2.0 * math.pi / num_heads)
  grid = np.stack([np.cos(thetas), np.sin(thetas)], axis=-1)
  grid = grid / np.abs(grid).max(axis=-1, keepdims=True)
  grid = np.tile(grid[:, None, None, :], [1, num_levels, num_points, 1])
  grid *= np.arange(1, num_points + 1, dtype=np.float64)[None, None, :, None]
  return grid.reshape(-1).astype(np.float32)


class MultiScaleDeformableAttention(keras.layers.Layer):
  """Multi-scale deformable attention module (Deformable DETR eq. 3).

  Each query predicts, per head, level and point, an offset from its reference
  point and an attention weight (softmax over levels x points); the output is the
  weighted sum of the bilinearly sampled (projected) values.

  Inputs:
    query: [batch, Q, dim] (with its positional embedding added).
    reference_points: [batch, Q, levels, 2], (x, y) in [0, 1], or [batch, Q,
      levels, 4] boxes (cx, cy, w, h) in [0, 1].
    value: [batch, S, dim], the flattened levels of ``spatial_shapes``.
    spatial_shapes: python (h, w) per level.
  Output: [batch, Q, dim].

  Args:
    dim: model width (256).
    num_heads: heads (8).
    num_levels: feature levels.
    num_points: sampling points per head and level (4).
  """

  def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 4,
               num_points: int = 4, **kwargs):
    super().__init__(**kwargs)
    check_head_widths("MultiScaleDeformableAttention", num_heads, dim=dim)
    self.dim, self.num_heads = dim, num_heads
    self.num_levels, self.num_points = num_levels, num_points
    # Offsets start at the fixed pattern of _offset_bias_init (zero weights);
    # attention starts uniform (zero weight and bias): Deformable DETR's init.
    self._offsets = keras.layers.Dense(
        num_heads * num_levels * num_points * 2, kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(
            _offset_bias_init(num_heads, num_levels, num_points)),
        name="sampling_offsets")
    self._attention = keras.layers.Dense(num_heads * num_levels * num_points,
                                         kernel_initializer="zeros",
                                         bias_initializer="zeros", name="attention_weights")
    self._value_proj = keras.layers.Dense(dim, kernel_initializer="glorot_uniform",
                                          name="value_proj")
    self._output_proj = keras.layers.Dense(dim, kernel_initializer="glorot_uniform",
                                           name="output_proj")

  def call(self, query: tf.Tensor, reference_points: tf.Tensor, value: tf.Tensor,
           spatial_shapes: SpatialShapes,
           value_mask: Optional[tf.Tensor] = None) -> tf.Tensor:
    """See the class docstring; ``value_mask`` [batch, S] bool zeroes padded values."""
    num_queries = query.shape[1]
    heads, levels, points = self.num_heads, self.num_levels, self.num_points
    value = self._value_proj(value)
    if value_mask is not None:
      value = value * tf.cast(value_mask, value.dtype)[..., tf.newaxis]
    value = tf.reshape(value, [-1, value.shape[1], heads, self.dim // heads])
    # Sampling geometry in float32 under mixed precision (see multi_scale_deformable_sampling).
    geometry = _geometry_dtype(query.dtype)
    offsets = tf.reshape(tf.cast(self._offsets(query), geometry),
                         [-1, num_queries, heads, levels, points, 2])
    weights = tf.reshape(tf.cast(self._attention(query), geometry),
                         [-1, num_queries, heads, levels * points])
    weights = tf.reshape(tf.nn.softmax(weights, axis=-1),
                         [-1, num_queries, heads, levels, points])
    # Offsets are in pixels of each level: divide by (w_l, h_l). Computed at rank 5
    # ([B*Q, heads, levels, points, 2]): CPU kernels do not broadcast 6-D adds.
    if reference_points.shape[-1] == 4:
      # Box references (cx, cy, w, h), Deformable DETR's box refinement: offsets
      # are in units of half the box size over num_points.
      reference = tf.broadcast_to(tf.cast(reference_points, offsets.dtype),
                                  [tf.shape(query)[0], num_queries, levels, 4])
      locations = (tf.reshape(reference[..., :2], [-1, 1, levels, 1, 2]) +
                   tf.reshape(offsets, [-1, heads, levels, points, 2]) / points *
                   tf.reshape(reference[..., 2:], [-1, 1, levels, 1, 2]) * 0.5)
    else:
      normaliser = tf.constant([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype)
      reference = tf.broadcast_to(tf.cast(reference_points, offsets.dtype),
                                  [tf.shape(query)[0], num_queries, levels, 2])
      locations = (tf.reshape(reference, [-1, 1, levels, 1, 2]) +
                   tf.reshape(offsets, [-1, heads, levels, points, 2]) /
                   normaliser[tf.newaxis, tf.newaxis, :, tf.newaxis, :])
    locations = tf.reshape(locations, [-1, num_queries, heads, levels, points, 2])
    output = multi_scale_deformable_sampling(value, spatial_shapes, locations, weights)
    return self._output_proj(output)
