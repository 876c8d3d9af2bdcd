"""Multi-scale deformable attention against a direct numpy implementation."""

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.layers import deformable_attention as msda

SHAPES = [(3, 4), (2, 2)]


def _numpy_sampling(value, shapes, locations, weights):
  """grid_sample(bilinear, zeros padding, align_corners=False), looped per point.

  value [B, S, M, D]; locations [B, Q, M, L, P, 2] (x, y); weights [B, Q, M, L, P].
  """
  batch, num_queries, heads, levels, points, _ = locations.shape
  dim = value.shape[-1]
  out = np.zeros((batch, num_queries, heads, dim))
  starts = np.cumsum([0] + [h * w for h, w in shapes])
  for b in range(batch):
    for q in range(num_queries):
      for m in range(heads):
        for l, (h, w) in enumerate(shapes):
          grid = value[b, starts[l]:starts[l + 1], m].reshape(h, w, dim)
          for p in range(points):
            x = locations[b, q, m, l, p, 0] * w - 0.5
            y = locations[b, q, m, l, p, 1] * h - 0.5
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            sample = np.zeros(dim)
            for yi in (y0, y0 + 1):
              for xi in (x0, x0 + 1):
                if 0 <= yi < h and 0 <= xi < w:
                  sample += (1 - abs(y - yi)) * (1 - abs(x - xi)) * grid[yi, xi]
            out[b, q, m] += weights[b, q, m, l, p] * sample
  return out.reshape(batch, num_queries, heads * dim)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  batch, num_queries, heads, points, dim = 2, 3, 2, 3, 4
  total = sum(h * w for h, w in SHAPES)
  value = rng.normal(size=(batch, total, heads, dim))
  # Locations reach outside [0, 1] so the zero padding is exercised.
  locations = rng.uniform(-0.4, 1.4, size=(batch, num_queries, heads, len(SHAPES), points, 2))
  weights = rng.uniform(size=(batch, num_queries, heads, len(SHAPES), points))
  return value, locations, weights


def test_sampling_matches_numpy_including_padding():
  value, locations, weights = _inputs()
  assert (locations < 0).any() and (locations > 1).any()
  got = msda.multi_scale_deformable_sampling(
      tf.constant(value), SHAPES, tf.constant(locations), tf.constant(weights))
  np.testing.assert_allclose(got.numpy(), _numpy_sampling(value, SHAPES, locations, weights),
                             rtol=1e-10, atol=1e-10)


def test_far_outside_samples_are_zero():
  value, locations, weights = _inputs(1)
  locations = locations + 5.0
  got = msda.multi_scale_deformable_sampling(
      tf.constant(value), SHAPES, tf.constant(locations), tf.constant(weights))
  np.testing.assert_array_equal(got.numpy(), 0.0)


def test_gradients_match_finite_differences():
  value, locations, weights = _inputs(2)
  v, loc, w = tf.constant(value), tf.constant(locations), tf.constant(weights)
  cotangent = np.random.default_rng(3).normal(size=(2, 3, 8))
  with tf.GradientTape() as tape:
    tape.watch([v, loc, w])
    out = msda.multi_scale_deformable_sampling(v, SHAPES, loc, w)
    scalar = tf.reduce_sum(out * cotangent)
  grads = [g.numpy() for g in tape.gradient(scalar, [v, loc, w])]

  def f(val, lo, we):
    return float(np.sum(_numpy_sampling(val, SHAPES, lo, we) * cotangent))

  eps = 1e-6
  rng = np.random.default_rng(4)
  args = [value, locations, weights]
  for which in range(3):
    flat = args[which].reshape(-1)
    for index in rng.choice(flat.size, size=6, replace=False):
      plus = [a.copy() for a in args]
      minus = [a.copy() for a in args]
      plus[which].reshape(-1)[index] += eps
      minus[which].reshape(-1)[index] -= eps
      numeric = (f(*plus) - f(*minus)) / (2 * eps)
      np.testing.assert_allclose(grads[which].reshape(-1)[index], numeric,
                                 rtol=1e-5, atol=1e-6)


def test_layer_shapes_init_and_xla():
  layer = msda.MultiScaleDeformableAttention(dim=16, num_heads=2, num_levels=2,
                                             num_points=2)
  total = sum(h * w for h, w in SHAPES)
  query = tf.random.normal([2, 5, 16])
  reference = tf.random.uniform([2, 5, 2, 2])
  value = tf.random.normal([2, total, 16])
  eager = layer(query, reference, value, SHAPES)
  assert eager.shape == (2, 5, 16)
  compiled = tf.function(lambda q, r, v: layer(q, r, v, SHAPES), jit_compile=True)
  np.testing.assert_allclose(compiled(query, reference, value).numpy(), eager.numpy(),
                             rtol=1e-4, atol=1e-5)
  # Deformable DETR's initial offsets: head 0 points along +x, (point + 1) pixels.
  bias = msda._offset_bias_init(2, 2, 2).reshape(2, 2, 2, 2)
  np.testing.assert_allclose(bias[0, 0], [[1, 0], [2, 0]], atol=1e-6)
  np.testing.assert_allclose(bias[1, 1], [[-1, 0], [-2, 0]], atol=1e-6)


def test_bfloat16_values_sample_the_same_pixels_on_a_large_map():
  # A 40x50 level has flat indices up to 1999: bfloat16 holds integers exactly only
  # up to 256, so addresses must be computed in float32 whatever the compute dtype.
  rng = np.random.default_rng(3)
  shapes = [(40, 50)]
  value = rng.integers(-4, 5, size=(1, 2000, 1, 2)).astype(np.float32)  # exact in bf16
  locations = rng.uniform(0.0, 1.0, size=(1, 5, 1, 1, 2, 2)).astype(np.float32)
  weights = np.ones((1, 5, 1, 1, 2), np.float32)
  reference = _numpy_sampling(value, shapes, locations, weights)
  got = msda.multi_scale_deformable_sampling(
      tf.constant(value, tf.bfloat16), shapes, tf.constant(locations, tf.bfloat16),
      tf.constant(weights, tf.bfloat16))
  assert got.dtype == tf.bfloat16
  # Only the inputs' own rounding to bfloat16 (locations, ~1/256 relative) and the
  # output's remain: each sample moves by well under one pixel's value step.
  located = _numpy_sampling(value, shapes,
                            tf.cast(tf.constant(locations, tf.bfloat16), tf.float32).numpy(),
                            weights)
  np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), located, rtol=1e-2, atol=5e-2)
  assert np.abs(located - reference).max() < 1.0
