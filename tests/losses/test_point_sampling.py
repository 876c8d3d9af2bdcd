"""Tests for deeplab_panoptic.losses.point_sampling against numpy / scipy."""

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from deeplab_panoptic.losses import point_sampling as sampling


def _np_point_sample(features, points):
  """grid_sample(align_corners=False, zeros padding) with scipy.

  features [B, H, W, C], points [B, M, 2] (x, y) -> [B, M, C]. scipy's
  "grid-constant" mode interpolates against the zero padding, as grid_sample.
  """
  batch, height, width, channels = features.shape
  out = np.zeros(points.shape[:2] + (channels,))
  for b in range(batch):
    rows = points[b, :, 1] * height - 0.5
    cols = points[b, :, 0] * width - 0.5
    for c in range(channels):
      out[b, :, c] = scipy.ndimage.map_coordinates(
          features[b, :, :, c].astype(np.float64), [rows, cols], order=1,
          mode="grid-constant", cval=0.0)
  return out


def test_point_sample_hand_worked_2x2():
  # Pixel centres of a 2 x 2 map sit at 0.25 and 0.75.
  features = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)[None, :, :, None]
  points = np.array([[[0.25, 0.25],   # centre of pixel (0, 0)
                      [0.75, 0.25],   # centre of pixel (0, 1)
                      [0.5, 0.5],     # middle: mean of the four
                      [0.0, 0.0],     # corner: 1/4 of pixel (0, 0), 3/4 zeros
                      [0.5, 0.0],     # top edge: half of (1 + 2) / 2
                      [1.0, 1.0]]], np.float32)
  got = sampling.point_sample(tf.constant(features), tf.constant(points))
  np.testing.assert_allclose(got.numpy()[0, :, 0],
                             [1.0, 2.0, 2.5, 0.25, 0.75, 1.0], atol=1e-6)


def test_point_sample_matches_scipy_inside_on_edges_and_outside():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
  inside = rng.uniform(size=(2, 40, 2))
  edges = np.array([[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0], [0, 0.5],
                    [1, 0.3], [0.3, 1], [0.5 / 7, 0.5 / 5], [1 - 0.5 / 7, 0.7]])
  outside = np.array([[-0.1, 0.5], [1.05, 0.5], [0.5, -0.3], [0.5, 1.2],
                      [-0.05, -0.05], [2.0, 2.0], [1.07, 1.1], [-1, 0.4]])
  points = np.concatenate(
      [inside, np.broadcast_to(np.concatenate([edges, outside]), (2, 18, 2))],
      axis=1).astype(np.float32)
  got = sampling.point_sample(tf.constant(features), tf.constant(points))
  np.testing.assert_allclose(got.numpy(), _np_point_sample(features, points),
                             atol=1e-5)


def test_point_sample_channels_reads_the_chosen_channel():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
  points = rng.uniform(-0.1, 1.1, size=(2, 3, 9, 2)).astype(np.float32)
  channels = np.array([[4, 0, 2], [1, 1, 3]], np.int32)
  got = sampling.point_sample_channels(tf.constant(features),
                                       tf.constant(points),
                                       tf.constant(channels)).numpy()
  for b in range(2):
    for k in range(3):
      want = _np_point_sample(features[b:b + 1], points[b:b + 1, k])
      np.testing.assert_allclose(got[b, k], want[0, :, channels[b, k]],
                                 atol=1e-5)


def _one_hot(mask_id, num_slots):
  return (mask_id[..., None] == np.arange(num_slots)).astype(np.float32)


def test_labels_equal_point_sample_of_the_one_hot_masks():
  rng = np.random.default_rng(2)
  mask_id = rng.integers(-1, 3, size=(2, 6, 5)).astype(np.int32)
  one_hot = _one_hot(mask_id, 3)
  shared = rng.uniform(-0.05, 1.05, size=(2, 30, 2)).astype(np.float32)
  got = sampling.sample_all_labels(tf.constant(mask_id), tf.constant(shared),
                                   3).numpy()
  np.testing.assert_allclose(got, _np_point_sample(one_hot, shared), atol=1e-5)
  per_slot = rng.uniform(size=(2, 3, 11, 2)).astype(np.float32)
  got = sampling.sample_slot_labels(tf.constant(mask_id),
                                    tf.constant(per_slot)).numpy()
  for k in range(3):
    want = _np_point_sample(one_hot[..., k:k + 1], per_slot[:, k])[..., 0]
    np.testing.assert_allclose(got[:, k], want, atol=1e-5)


def test_hash_uniform_is_uniform_distinct_and_equal_under_xla():
  seeds = tf.constant([0, 1, 12345], tf.uint32)
  eager = sampling.hash_uniform(seeds, (100, 50)).numpy()
  compiled = tf.function(lambda s: sampling.hash_uniform(s, (100, 50)),
                         jit_compile=True)(seeds).numpy()
  np.testing.assert_array_equal(eager, compiled)
  assert eager.min() >= 0.0 and eager.max() < 1.0
  for row in eager:
    # 5000 uniforms: mean 0.5 +- 0.004 (1 sigma), deciles about 500 each.
    assert abs(row.mean() - 0.5) < 0.02
    counts = np.histogram(row, bins=10, range=(0, 1))[0]
    assert counts.min() > 400 and counts.max() < 600
  assert not np.array_equal(eager[0], eager[1])
  other = sampling.stream_seeds(seeds, 1)
  assert len(set(other.numpy().tolist()) | set(seeds.numpy().tolist())) == 6


def _importance_case(importance_ratio, num_points=8, oversample_ratio=3.0):
  rng = np.random.default_rng(3)
  # Channel 1 crosses 0 at x = 0.4; channel 0 is positive but falls to half
  # at the border (zero padding): two different uncertainty landscapes.
  xs = (np.arange(16) + 0.5) / 16
  ramp = np.tile((xs - 0.4) * 20.0, (12, 1))
  features = np.stack([np.full((12, 16), 5.0), ramp], axis=-1)[None]
  features = (features + rng.normal(scale=0.01, size=features.shape)).astype(
      np.float32)
  channels = np.array([[1, 0]], np.int32)
  seeds = (tf.constant([7], tf.uint32), tf.constant([9], tf.uint32))
  points = sampling.importance_points(
      tf.constant(features), tf.constant(channels), seeds, num_points,
      oversample_ratio, importance_ratio).numpy()
  return features, channels, seeds, points


@pytest.mark.parametrize("importance_ratio", [0.75, 0.0, 1.0])
def test_importance_sampling_keeps_exactly_the_most_uncertain(importance_ratio):
  num_points, oversample = 8, 3.0
  features, channels, seeds, points = _importance_case(importance_ratio)
  num_sampled = int(num_points * oversample)
  num_uncertain = int(importance_ratio * num_points)
  assert points.shape == (1, 2, num_points, 2)
  candidates = sampling.uniform_points(seeds[0], (2, num_sampled)).numpy()
  extra = sampling.uniform_points(
      seeds[1], (2, max(num_points - num_uncertain, 1))).numpy()
  for k in range(2):
    logits = _np_point_sample(features[..., channels[0, k]:channels[0, k] + 1],
                              candidates[:, k])[0, :, 0]
    order = np.argsort(np.abs(logits), kind="stable")
    want = candidates[0, k, order[:num_uncertain]]
    got = points[0, k, :num_uncertain]
    # The same set of points (top_k gives them in any order).
    np.testing.assert_allclose(got[np.lexsort(got.T)],
                               want[np.lexsort(want.T)], atol=0)
    if num_points > num_uncertain:
      np.testing.assert_array_equal(points[0, k, num_uncertain:], extra[0, k])
    if num_uncertain:
      # Hand check: no dropped candidate is more uncertain than a kept one.
      kept = np.abs(logits[order[:num_uncertain]]).max()
      dropped = np.abs(logits[order[num_uncertain:]]).min()
      assert kept <= dropped


def test_importance_sampling_counts_follow_detectron2_rounding():
  assert sampling.sample_counts(12544, 3.0, 0.75) == (37632, 9408)
  assert sampling.sample_counts(10, 1.5, 0.33) == (15, 3)
  with pytest.raises(ValueError, match="oversample_ratio 0.5"):
    sampling.check_sampling("PointSampler", 10, 0.5, 0.75)
  with pytest.raises(ValueError, match="importance_ratio must be in"):
    sampling.check_sampling("PointSampler", 10, 3.0, 1.5)
  with pytest.raises(ValueError, match="num_points must be >= 1"):
    sampling.check_sampling("PointSampler", 0, 3.0, 0.75)
