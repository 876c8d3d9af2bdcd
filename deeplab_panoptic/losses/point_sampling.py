"""Point sampling of mask logits and labels (PointRend, Mask2Former).

Mask2Former (Cheng et al., arXiv 2112.01527, section 3.3 "Improving training
efficiency") computes its mask losses on K sampled points instead of every
pixel: uniformly random points for the matching cost, and for the loss the
importance sampling of PointRend (Kirillov et al., arXiv 1912.08193, section
3.1): draw oversample_ratio * K random points, keep the importance_ratio * K
whose logit is closest to 0 (most uncertain), and add (1 - importance_ratio) * K
uniformly random points (facebookresearch/detectron2
projects/PointRend/point_rend/point_features.py,
`get_uncertain_point_coords_with_randomness`).

Points are (x, y) in [0, 1]^2 over a map's whole extent, and a value at a point
is the bilinear interpolation with half-pixel centres and zero outside the map,
i.e. `torch.nn.functional.grid_sample(input, 2 * point - 1,
align_corners=False)` as detectron2's `point_sample` calls it. So a 1/4-size
logit map and the full-size ground truth are sampled at the same place.

Random numbers are a counter-based hash of (seed, counter), written with
32-bit integer operations only: TensorFlow's stateless random ops give other
numbers once XLA compiles them (measured on CPU with TF 2.20, Philox
included), while this hash gives the same bits in eager, graph and XLA, so the
compiled train step equals the eager one.

Shapes: B batch, H x W map, C channels, M points, K ground-truth slots, S
points per slot.
"""

from typing import Tuple

import tensorflow as tf

# MurmurHash3's 32-bit finaliser ("fmix32", Austin Appleby, public domain).
_FMIX_SHIFTS = (16, 13, 16)
_FMIX_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)
_GOLDEN_RATIO_32 = 0x9E3779B9   # odd constant spreading consecutive stream ids.
_MANTISSA_BITS = 24             # float32 holds 24 significant bits exactly.
NUM_CORNERS = 4


def fmix32(values: tf.Tensor) -> tf.Tensor:
  """MurmurHash3's finaliser: a bijective mix of uint32 values (any shape)."""
  h = tf.bitwise.bitwise_xor(values, tf.bitwise.right_shift(values, _FMIX_SHIFTS[0]))
  h = h * tf.constant(_FMIX_MULTIPLIERS[0], tf.uint32)
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _FMIX_SHIFTS[1]))
  h = h * tf.constant(_FMIX_MULTIPLIERS[1], tf.uint32)
  return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _FMIX_SHIFTS[2]))


def stream_seeds(seeds: tf.Tensor, stream: int) -> tf.Tensor:
  """uint32 [B]: independent per-image seeds for stream number `stream`."""
  offset = tf.constant((stream * _GOLDEN_RATIO_32) % (1 << 32), tf.uint32)
  return fmix32(fmix32(seeds) + offset)


def hash_uniform(seeds: tf.Tensor, shape: Tuple[int, ...]) -> tf.Tensor:
  """Uniform float32 [B, *shape] in [0, 1), a pure function of the seeds.

  Args:
    seeds: uint32 [B], one per image.
    shape: static shape of each image's numbers.

  Returns:
    float32 [B, *shape]; multiples of 2^-24.
  """
  count = 1
  for size in shape:
    count *= int(size)
  counters = tf.cast(tf.range(count), tf.uint32)[tf.newaxis]
  keys = fmix32(seeds)[:, tf.newaxis]
  bits = fmix32(fmix32(tf.bitwise.bitwise_xor(counters, keys)) + keys)
  uniform = tf.cast(tf.bitwise.right_shift(bits, 32 - _MANTISSA_BITS),
                    tf.float32) * (2.0 ** -_MANTISSA_BITS)
  return tf.reshape(uniform, [-1] + [int(s) for s in shape])


def uniform_points(seeds: tf.Tensor, shape: Tuple[int, ...]) -> tf.Tensor:
  """float32 [B, *shape, 2] points (x, y) uniform in [0, 1)^2."""
  return hash_uniform(seeds, tuple(shape) + (2,))


def bilinear_corners(points: tf.Tensor, size: Tuple[int, int]
                     ) -> Tuple[tf.Tensor, tf.Tensor]:
  """The four pixels around each point and their bilinear weights.

  Args:
    points: float [B, M, 2] (x, y) in map-extent units ([0, 1] covers it).
    size: static (H, W) of the map.

  Returns:
    (indices int32 [B, M, 4] flat pixel indices y * W + x, clipped into the
    map; weights float32 [B, M, 4], zero for a corner outside the map, so the
    map reads as zero-padded).
  """
  height, width = size
  points = tf.cast(points, tf.float32)
  # Half-pixel centres (align_corners=False): pixel i covers [i, i + 1) / size.
  x = points[..., 0] * width - 0.5
  y = points[..., 1] * height - 0.5
  x0 = tf.math.floor(x)
  y0 = tf.math.floor(y)
  fx = x - x0
  fy = y - y0
  indices, weights = [], []
  for dy, wy in ((0.0, 1.0 - fy), (1.0, fy)):
    for dx, wx in ((0.0, 1.0 - fx), (1.0, fx)):
      cx, cy = x0 + dx, y0 + dy
      inside = ((cx >= 0) & (cx <= width - 1) & (cy >= 0) & (cy <= height - 1))
      cx = tf.cast(tf.clip_by_value(cx, 0, width - 1), tf.int32)
      cy = tf.cast(tf.clip_by_value(cy, 0, height - 1), tf.int32)
      indices.append(cy * width + cx)
      weights.append(wy * wx * tf.cast(inside, tf.float32))
  return tf.stack(indices, axis=-1), tf.stack(weights, axis=-1)


def point_sample(features: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
  """Bilinear values of a map at points (detectron2's `point_sample`).

  Args:
    features: float [B, H, W, C].
    points: float [B, M, 2] (x, y), [0, 1] spans the map.

  Returns:
    float [B, M, C]; zero-padded outside the map.
  """
  _, height, width, channels = features.shape
  num_points = points.shape[1]
  indices, weights = bilinear_corners(points, (height, width))
  flat = tf.reshape(features, [-1, height * width, channels])
  values = tf.gather(flat, tf.reshape(indices, [-1, num_points * NUM_CORNERS]),
                     batch_dims=1)
  values = tf.reshape(values, [-1, num_points, NUM_CORNERS, channels])
  return tf.einsum("bmc,bmcd->bmd", tf.cast(weights, values.dtype), values)


def point_sample_channels(features: tf.Tensor, points: tf.Tensor,
                          channels: tf.Tensor) -> tf.Tensor:
  """Bilinear values of one chosen channel per row of points.

  Args:
    features: float [B, H, W, N].
    points: float [B, K, S, 2] (x, y).
    channels: int32 [B, K] in [0, N): the channel row k reads.

  Returns:
    float [B, K, S]: features[b, :, :, channels[b, k]] at points[b, k].
  """
  _, height, width, num_channels = features.shape
  num_rows, num_points = points.shape[1], points.shape[2]
  indices, weights = bilinear_corners(
      tf.reshape(points, [-1, num_rows * num_points, 2]), (height, width))
  indices = tf.reshape(indices, [-1, num_rows, num_points, NUM_CORNERS])
  weights = tf.reshape(weights, [-1, num_rows, num_points, NUM_CORNERS])
  # Channel-major flat map, so each (image, channel) is one contiguous plane.
  planes = tf.reshape(tf.transpose(features, [0, 3, 1, 2]), [-1])
  batch_index = tf.range(tf.shape(features)[0])[:, tf.newaxis]
  plane = (batch_index * num_channels + channels) * (height * width)
  values = tf.gather(planes, plane[:, :, tf.newaxis, tf.newaxis] + indices)
  return tf.reduce_sum(tf.cast(weights, values.dtype) * values, axis=-1)


def sample_slot_labels(mask_id: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
  """Each slot's binary ground-truth mask, bilinearly sampled at its points.

  Equals `point_sample` of the one-hot masks [B, H, W, K] without building
  them (K full-size maps would not fit in memory at 1024 x 1024).

  Args:
    mask_id: int [B, H, W] slot of each pixel in [0, K), -1 for none.
    points: float [B, K, S, 2] (x, y), row k for slot k.

  Returns:
    float32 [B, K, S] in [0, 1].
  """
  _, height, width = mask_id.shape
  num_slots, num_points = points.shape[1], points.shape[2]
  indices, weights = bilinear_corners(
      tf.reshape(points, [-1, num_slots * num_points, 2]), (height, width))
  ids = tf.gather(tf.reshape(tf.cast(mask_id, tf.int32), [-1, height * width]),
                  indices, batch_dims=1)
  ids = tf.reshape(ids, [-1, num_slots, num_points, NUM_CORNERS])
  weights = tf.reshape(weights, [-1, num_slots, num_points, NUM_CORNERS])
  slot = tf.range(num_slots)[tf.newaxis, :, tf.newaxis, tf.newaxis]
  return tf.reduce_sum(weights * tf.cast(tf.equal(ids, slot), tf.float32), -1)


def sample_all_labels(mask_id: tf.Tensor, points: tf.Tensor,
                      num_slots: int) -> tf.Tensor:
  """Every slot's binary ground-truth mask sampled at shared points.

  Args:
    mask_id: int [B, H, W] in [-1, K).
    points: float [B, M, 2] (x, y).
    num_slots: K.

  Returns:
    float32 [B, M, K] in [0, 1].
  """
  _, height, width = mask_id.shape
  indices, weights = bilinear_corners(points, (height, width))
  ids = tf.gather(tf.reshape(tf.cast(mask_id, tf.int32), [-1, height * width]),
                  indices, batch_dims=1)
  # one_hot maps -1 (void, crowd, padding) to zeros.
  return tf.einsum("bmc,bmck->bmk", weights,
                   tf.one_hot(ids, num_slots, dtype=tf.float32))


def sample_counts(num_points: int, oversample_ratio: float,
                  importance_ratio: float) -> Tuple[int, int]:
  """(candidates drawn, uncertain points kept), as detectron2 rounds them."""
  return int(num_points * oversample_ratio), int(importance_ratio * num_points)


def importance_points(features: tf.Tensor, channels: tf.Tensor,
                      seeds: Tuple[tf.Tensor, tf.Tensor], num_points: int,
                      oversample_ratio: float,
                      importance_ratio: float) -> tf.Tensor:
  """PointRend's uncertainty-based point selection with randomness.

  Draws oversample_ratio * S candidates per row, keeps the importance_ratio *
  S most uncertain (largest -|logit| of the row's channel) and appends
  uniformly random points up to S.

  Args:
    features: float [B, H, W, N] logits.
    channels: int32 [B, K] the channel each row is scored on.
    seeds: (candidate seeds, extra-point seeds), uint32 [B] each.
    num_points: S.
    oversample_ratio: >= 1 (Mask2Former: 3).
    importance_ratio: in [0, 1] (Mask2Former: 0.75).

  Returns:
    float32 [B, K, S, 2] points (x, y), without gradient.
  """
  num_rows = channels.shape[1]
  num_sampled, num_uncertain = sample_counts(num_points, oversample_ratio,
                                             importance_ratio)
  candidates = uniform_points(seeds[0], (num_rows, num_sampled))
  logits = point_sample_channels(tf.stop_gradient(features), candidates,
                                 channels)
  _, chosen = tf.math.top_k(-tf.abs(logits), k=num_uncertain, sorted=False)
  points = [tf.gather(candidates, chosen, batch_dims=2)]
  if num_points > num_uncertain:
    points.append(uniform_points(seeds[1],
                                 (num_rows, num_points - num_uncertain)))
  return tf.stop_gradient(tf.concat(points, axis=2))


def check_sampling(owner: str, num_points: int, oversample_ratio: float,
                   importance_ratio: float) -> None:
  """One clear error for a sampling set-up that cannot work."""
  if num_points < 1:
    raise ValueError(f"{owner}.num_points must be >= 1, got {num_points}.")
  if not 0.0 <= importance_ratio <= 1.0:
    raise ValueError(f"{owner}.importance_ratio must be in [0, 1], got "
                     f"{importance_ratio}.")
  num_sampled, num_uncertain = sample_counts(num_points, oversample_ratio,
                                             importance_ratio)
  if num_sampled < num_uncertain:
    raise ValueError(f"{owner}: oversample_ratio {oversample_ratio} draws "
                     f"{num_sampled} candidates, fewer than the "
                     f"{num_uncertain} uncertain points importance_ratio "
                     f"{importance_ratio} keeps; use oversample_ratio >= "
                     "importance_ratio.")
