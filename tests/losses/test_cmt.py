"""Tests for the CMT-DeepLab terms (deeplab_panoptic.losses.cmt) against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import cmt
from tests.losses import builders
from tests.losses import test_mask_losses as base

M = 4  # reference points per centre in these tests.


# ----------------------------------------------------------------------------
# Independent numpy versions.
# ----------------------------------------------------------------------------
def _np_one_hot_masks(mid, k):
  """[P] ids (-1: none) -> [P, K] float."""
  return np.stack([(mid == j).astype(np.float64) for j in range(k)], axis=-1)


def _np_sampling_logits(mid, temperature):
  out = np.full(mid.shape, -1e9)
  for p, m in enumerate(mid):
    if m >= 0:
      out[p] = temperature * np.log(len(mid) / np.sum(mid == m))
  return out


def _np_pixel_contrastive(emb, mid, samples, tau):
  """Eq. 14 over `samples` (pixel ids) with the anchor among its positives."""
  samples = [s for s in samples if mid[s] >= 0]
  if not samples:
    return 0.0
  terms = []
  for a in samples:
    logits = np.array([emb[a] @ emb[b] / tau for b in samples])
    log_prob = logits - np.log(np.sum(np.exp(logits - logits.max()))) - \
        logits.max()
    positives = [i for i, b in enumerate(samples) if mid[b] == mid[a]]
    terms.append(-np.mean([log_prob[i] for i in positives]))
  return float(np.mean(terms))


def _np_mask_approximation(points, mid, h, w, match):
  """Eq. 13 for one image; `match` maps ground-truth id -> prediction."""
  if not match:
    return 0.0
  total = 0.0
  for k, n in match.items():
    ys, xs = np.nonzero(mid.reshape(h, w) == k)
    gy, gx = (ys + 0.5) / h, (xs + 0.5) / w
    py, px = points[n, :, 0], points[n, :, 1]
    ext = (abs(py.min() - gy.min()) + abs(py.max() - gy.max()) +
           abs(px.min() - gx.min()) + abs(px.max() - gx.max()))
    cen = abs(py.mean() - gy.mean()) + abs(px.mean() - gx.mean())
    total += ext / 4 + cen / 2
  return total / len(match)


# ----------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------
def _layout(rng, batch=2, pixels=20, k=3):
  mid = rng.choice([-1, 0, 1, 2], size=(batch, pixels), p=[0.2, 0.5, 0.2, 0.1])
  mid[:, 0] = 2  # every mask present
  return mid, np.stack([_np_one_hot_masks(m, k) for m in mid])


def test_sampling_logits_are_temperature_times_log_inverse_area():
  mid, masks = _layout(np.random.default_rng(0))
  logits = cmt.mask_size_sampling_logits(tf.constant(masks), 1.5).numpy()
  for b in range(mid.shape[0]):
    np.testing.assert_allclose(logits[b], _np_sampling_logits(mid[b], 1.5),
                               rtol=1e-6)


def test_gumbel_top_k_with_given_noise():
  rng = np.random.default_rng(1)
  mid, masks = _layout(rng)
  noise = rng.uniform(0.01, 0.99, size=mid.shape)
  indices, valid = cmt.sample_pixels_by_mask_size(
      tf.constant(masks), 6, 0.6, uniform_noise=tf.constant(noise))
  for b in range(mid.shape[0]):
    scores = _np_sampling_logits(mid[b], 0.6) - np.log(-np.log(noise[b]))
    expected = set(np.argsort(-scores)[:6].tolist())
    assert set(indices.numpy()[b].tolist()) == expected
    np.testing.assert_array_equal(valid.numpy()[b],
                                  mid[b][indices.numpy()[b]] >= 0)


def test_more_samples_than_labelled_pixels_marks_the_rest_invalid():
  mid = np.array([[0, 0, -1, 1, -1, -1]])
  indices, valid = cmt.sample_pixels_by_mask_size(
      tf.constant(_np_one_hot_masks(mid[0], 2)[None]), 100, 1.5)
  assert indices.shape == (1, 6)  # at most P samples
  idx = indices.numpy()[0]
  assert sorted(idx[valid.numpy()[0] > 0].tolist()) == [0, 1, 3]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.5])
def test_sampling_frequencies_follow_area_power(temperature):
  # One draw per row; a mask of area a is drawn with probability
  # a * a^-T / sum (p of one pixel ~ area^-T).
  mid = np.array([0] + [1] * 3 + [2] * 12 + [-1] * 4)
  rows = 4000
  masks = np.repeat(_np_one_hot_masks(mid, 3)[None], rows, axis=0)
  tf.random.set_seed(0)
  indices, _ = cmt.sample_pixels_by_mask_size(tf.constant(masks, tf.float32),
                                              1, temperature)
  drawn = mid[indices.numpy()[:, 0]]
  assert np.all(drawn >= 0)
  areas = np.array([1.0, 3.0, 12.0])
  expected = areas ** (1 - temperature) / np.sum(areas ** (1 - temperature))
  frequency = np.bincount(drawn, minlength=3) / rows
  np.testing.assert_allclose(frequency, expected, atol=0.03)


# ----------------------------------------------------------------------------
# Pixel-wise contrastive loss.
# ----------------------------------------------------------------------------
def _contrastive_inputs(seed=2):
  rng = np.random.default_rng(seed)
  mid, masks = _layout(rng, batch=2, pixels=12)
  emb = rng.normal(size=(2, 12, 3))
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  indices = np.stack([rng.permutation(12)[:8] for _ in range(2)])
  valid = (np.take_along_axis(mid, indices, 1) >= 0).astype(np.float64)
  return mid, masks, emb, indices, valid


def test_pixel_contrastive_matches_numpy():
  mid, masks, emb, indices, valid = _contrastive_inputs()
  value = cmt.pixel_contrastive_loss(tf.constant(emb), tf.constant(masks),
                                     tf.constant(indices, tf.int32),
                                     tf.constant(valid), 0.3).numpy()
  for b in range(2):
    np.testing.assert_allclose(
        value[b], _np_pixel_contrastive(emb[b], mid[b], indices[b], 0.3),
        rtol=1e-10)


def test_pixel_contrastive_without_labelled_samples_is_zero():
  mid, masks, emb, indices, _ = _contrastive_inputs()
  value = cmt.pixel_contrastive_loss(tf.constant(emb), tf.constant(masks),
                                     tf.constant(indices, tf.int32),
                                     tf.zeros([2, 8], tf.float64), 0.3)
  np.testing.assert_array_equal(value.numpy(), 0.0)


def test_pixel_contrastive_gradient_matches_finite_differences():
  _, masks, emb, indices, valid = _contrastive_inputs(3)
  fn = lambda e: cmt.pixel_contrastive_loss(  # pylint: disable=g-long-lambda
      e, tf.constant(masks), tf.constant(indices, tf.int32),
      tf.constant(valid), 0.3)
  theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(emb)])
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


# ----------------------------------------------------------------------------
# Mask-approximation loss.
# ----------------------------------------------------------------------------
def _approximation_inputs(seed=4, h=4, w=5, n=5, k=3):
  rng = np.random.default_rng(seed)
  mid = rng.choice([-1, 0, 1, 2], size=(2, h * w))
  mid[1][mid[1] == 1] = 0  # image 1: mask 1 absent
  masks = np.stack([_np_one_hot_masks(m, k) for m in mid])
  points = rng.uniform(size=(2, n, M, 2))
  match = [{0: 3, 1: 0, 2: 4}, {0: 1, 2: 2}]
  assignment = np.zeros((2, k, n))
  for b, pairs in enumerate(match):
    for gt, pred in pairs.items():
      assignment[b, gt, pred] = 1.0
  return mid, masks, points, assignment, match


def test_mask_approximation_matches_numpy():
  mid, masks, points, assignment, match = _approximation_inputs()
  value = cmt.mask_approximation_loss(
      tf.constant(points), tf.constant(masks), tf.constant(assignment),
      (4, 5)).numpy()
  for b in range(2):
    np.testing.assert_allclose(
        value[b], _np_mask_approximation(points[b], mid[b], 4, 5, match[b]),
        rtol=1e-10)
  # No matched pair: 0, not NaN.
  empty = cmt.mask_approximation_loss(
      tf.constant(points), tf.constant(masks),
      tf.zeros_like(tf.constant(assignment)), (4, 5))
  np.testing.assert_array_equal(empty.numpy(), 0.0)


def test_mask_approximation_gradient_matches_finite_differences():
  _, masks, points, assignment, _ = _approximation_inputs(5)
  fn = lambda r: cmt.mask_approximation_loss(  # pylint: disable=g-long-lambda
      r, tf.constant(masks), tf.constant(assignment), (4, 5))
  theoretical, numerical = tf.test.compute_gradient(
      fn, [tf.constant(points)], delta=1e-6)
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-5)
  # Unmatched predictions (1 and 2 of image 0) get no gradient.
  np.testing.assert_array_equal(
      theoretical[0].reshape(2, 2, 5, M, 2)[0, :, 1:3], 0.0)


# ----------------------------------------------------------------------------
# Inside the criterion (PixelContrastive, MaskApproximation terms).
# ----------------------------------------------------------------------------
def _with_reference_points(outputs, rng):
  outputs[common.PRED_REFERENCE_POINTS] = rng.uniform(
      size=(base.B, base.N, M, 2)).astype(np.float32)
  for aux in outputs[common.AUX_OUTPUTS]:
    aux[common.PRED_REFERENCE_POINTS] = rng.uniform(
        size=(base.B, base.N, M, 2)).astype(np.float32)
  return outputs


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_cmt_loss_matches_numpy(activation):
  batch, outputs = base._make_inputs(seed=11, num_aux=1)
  outputs = _with_reference_points(outputs, np.random.default_rng(12))
  # |A| >= P: every labelled pixel is sampled whatever the noise, so the
  # expected value is deterministic (eq. 14 is invariant to sample order).
  loss_fn = builders.max_criterion(
      matcher_method="scipy", mask_activation=activation,
      instance_discrimination_sample_k=10_000, mask_approximation_weight=1.0)
  result = loss_fn(base._to_tf(batch), base._to_tf(outputs))
  per_output = [("", outputs)] + [
      ("aux_0/", base._resized_aux(outputs[common.AUX_OUTPUTS][0]))]
  expected = {}
  for b in range(base.B):
    ref = base._Reference(batch, b, activation)
    match = ref.match(outputs[common.PRED_CLASS_LOGITS][b],
                      outputs[common.PRED_MASK_LOGITS][b])
    mid = np.where(ref.labelled, ref.mid, -1)
    for prefix, out in per_output:
      emb = out[common.PRED_PIXEL_EMBEDDING][b].reshape(-1, base.D)
      expected.setdefault(prefix + common.LOSS_INSTANCE_DISCRIMINATION,
                          []).append(_np_pixel_contrastive(
                              emb.astype(np.float64), mid,
                              range(len(mid)), 0.3))
      expected.setdefault(prefix + common.LOSS_MASK_APPROXIMATION, []).append(
          _np_mask_approximation(out[common.PRED_REFERENCE_POINTS][b], mid,
                                 base.HP, base.WP, match))
      terms = ref.losses(out, match)
      expected.setdefault(prefix + common.LOSS_PQ_DICE, []).append(
          3.0 * terms["pq_dice"])
  for name, values in expected.items():
    np.testing.assert_allclose(result[name].numpy(), np.mean(values),
                               rtol=1e-4, atol=1e-6, err_msg=name)
  others = sum(v for k, v in result.items() if k != common.LOSS_TOTAL)
  np.testing.assert_allclose(result[common.LOSS_TOTAL].numpy(), others,
                             rtol=1e-6)


def test_cmt_loss_requires_reference_points_on_the_final_output():
  batch, outputs = base._make_inputs(seed=13, num_aux=0)
  loss_fn = builders.max_criterion(matcher_method="scipy",
                                   mask_approximation_weight=1.0)
  with pytest.raises(KeyError, match=common.PRED_REFERENCE_POINTS):
    loss_fn(base._to_tf(batch), base._to_tf(outputs))
