"""Tests for deeplab_panoptic.losses.mask2former against numpy / scipy loops."""

import os

import gin
import numpy as np
import pytest
import scipy.ndimage
import scipy.optimize
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import mask2former as m2f
from deeplab_panoptic.losses import point_sampling as sampling
from deeplab_panoptic.losses import targets as targets_lib
from tests.conftest import REPO_ROOT

B, H, W, K, N, C = 2, 16, 16, 3, 5, 3
HP, WP = 8, 8          # predicted masks at 1/2
S, OVERSAMPLE, IMPORTANCE = 12, 3.0, 0.75
NO_OBJECT = 0.1
WEIGHTS = {common.LOSS_CLASS_CE: 2.0, common.LOSS_MASK_BCE: 5.0,
           common.LOSS_DICE: 5.0}


def _batch():
  mask_id = -np.ones((B, H, W), np.int32)
  mask_id[0, :, :8] = 0             # stuff, left half
  mask_id[0, 3:9, 9:15] = 1         # a thing
  mask_id[0, 12:14, 10:12] = 2      # a small thing
  mask_id[1, :10, :] = 0
  mask_id[1, 11:, 4:9] = 1          # image 1 has two masks; slot 2 empty
  classes = np.array([[0, 1, 2], [2, 1, -1]], np.int32)
  semantic = np.where(mask_id >= 0, np.take(np.array([0, 1, 2]),
                                            np.maximum(mask_id, 0)), 255)
  return {
      common.GT_MASK_ID: tf.constant(mask_id),
      common.GT_CLASSES: tf.constant(classes),
      common.GT_IS_THING: tf.constant(classes > 0),
      common.GT_SEMANTIC: tf.constant(semantic.astype(np.int32)),
  }


def _outputs(seed=0):
  rng = np.random.default_rng(seed)
  stages = [{
      common.PRED_CLASS_LOGITS: tf.constant(
          rng.normal(size=(B, N, C + 1)).astype(np.float32)),
      common.PRED_MASK_LOGITS: tf.constant(
          rng.normal(scale=3.0, size=(B, HP, WP, N)).astype(np.float32)),
  } for _ in range(2)]
  outputs = dict(stages[-1])
  outputs[common.AUX_OUTPUTS] = stages[:1]
  return outputs


def _criterion(no_object_weight=NO_OBJECT, importance=IMPORTANCE):
  sampler = m2f.PointSampler(S, OVERSAMPLE, importance, seed=3)
  return criterion_lib.Criterion(
      terms=[m2f.ClassCrossEntropy(2.0, no_object_weight),
             m2f.PointMaskBCE(5.0, sampler), m2f.PointMaskDice(5.0, 1.0, sampler)],
      matcher=criterion_lib.HungarianMatcher(
          m2f.PointMaskCost(2.0, 5.0, 5.0, 1.0, sampler), "per_stage", "scipy"),
      mask_activation="sigmoid", mask_presence="input_size")


def _np_sample(image, points):
  """grid_sample(align_corners=False, zeros) of one [h, w] map at [M, 2]."""
  height, width = image.shape
  return scipy.ndimage.map_coordinates(
      image.astype(np.float64), [points[:, 1] * height - 0.5,
                                 points[:, 0] * width - 0.5],
      order=1, mode="grid-constant", cval=0.0)


def _np_bce(x, y):
  return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _np_dice(x, y):
  p = 1 / (1 + np.exp(-x))
  return 1 - (2 * np.sum(p * y) + 1) / (p.sum() + y.sum() + 1)


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _seeds(criterion, batch, outputs, stage_index, stream):
  sampler = criterion.stage_terms[1].sampler
  return sampler.seeds(criterion.inputs(batch, outputs), stage_index, stream)


def _np_stage_losses(criterion, batch, outputs, stage_index, output, matched,
                     importance=IMPORTANCE):
  """The three unweighted losses of one stage, the reference's way."""
  mask_id = batch[common.GT_MASK_ID].numpy()
  classes = batch[common.GT_CLASSES].numpy()
  logits = output[common.PRED_MASK_LOGITS].numpy()
  class_logits = output[common.PRED_CLASS_LOGITS].numpy()
  num_uncertain = int(importance * S)
  candidates = sampling.uniform_points(
      _seeds(criterion, batch, outputs, stage_index, 1),
      (K, int(S * OVERSAMPLE))).numpy()
  extra = sampling.uniform_points(
      _seeds(criterion, batch, outputs, stage_index, 2),
      (K, max(S - num_uncertain, 1))).numpy()
  bce = dice = ce_sum = weight_sum = 0.0
  num_masks = np.sum(classes >= 0)
  for b in range(B):
    target = np.full(N, C)
    for k in range(K):
      n = matched[b, k]
      if n < 0:
        continue
      target[n] = classes[b, k]
      uncertainty = -np.abs(_np_sample(logits[b, :, :, n], candidates[b, k]))
      chosen = candidates[b, k][np.argsort(-uncertainty, kind="stable")]
      points = np.concatenate([chosen[:num_uncertain],
                               extra[b, k][:S - num_uncertain]])
      x = _np_sample(logits[b, :, :, n], points)
      y = _np_sample((mask_id[b] == k).astype(np.float64), points)
      bce += _np_bce(x, y).mean()
      dice += _np_dice(x, y)
    w = np.where(target == C, NO_OBJECT, 1.0)
    ce = -_np_log_softmax(class_logits[b])[np.arange(N), target]
    ce_sum += np.sum(w * ce)
    weight_sum += np.sum(w)
  return {common.LOSS_CLASS_CE: ce_sum / weight_sum,
          common.LOSS_MASK_BCE: bce / num_masks,
          common.LOSS_DICE: dice / num_masks}


_MATCHING = [np.array([[4, 0, 2], [1, 3, -1]], np.int32),
             np.array([[1, 2, 0], [0, 4, -1]], np.int32)]


def test_losses_equal_numpy_on_sampled_points():
  batch, outputs = _batch(), _outputs()
  criterion = _criterion()
  got = criterion(batch, outputs, [tf.constant(m) for m in _MATCHING])
  stages = [outputs[common.AUX_OUTPUTS][0], outputs]
  total = 0.0
  for index, (output, prefix) in enumerate(zip(stages, ["aux_0/", ""])):
    want = _np_stage_losses(criterion, batch, outputs, index, output,
                            _MATCHING[index])
    for name, value in want.items():
      np.testing.assert_allclose(got[prefix + name].numpy(),
                                 WEIGHTS[name] * value, rtol=1e-5, atol=1e-6,
                                 err_msg=prefix + name)
      total += WEIGHTS[name] * value
  np.testing.assert_allclose(got[common.LOSS_TOTAL].numpy(), total, rtol=1e-5)
  assert len(got) == 7


def test_importance_ratio_zero_reads_only_uniform_points():
  batch, outputs = _batch(), _outputs()
  criterion = _criterion(importance=0.0)
  got = criterion(batch, outputs, [tf.constant(m) for m in _MATCHING])
  want = _np_stage_losses(criterion, batch, outputs, 1, outputs, _MATCHING[1],
                          importance=0.0)
  np.testing.assert_allclose(got[common.LOSS_MASK_BCE].numpy(),
                             5.0 * want[common.LOSS_MASK_BCE], rtol=1e-5)


def _np_cost(criterion, batch, outputs, stage_index, output):
  mask_id = batch[common.GT_MASK_ID].numpy()
  classes = batch[common.GT_CLASSES].numpy()
  logits = output[common.PRED_MASK_LOGITS].numpy()
  probs = np.exp(_np_log_softmax(output[common.PRED_CLASS_LOGITS].numpy()))
  points = sampling.uniform_points(
      _seeds(criterion, batch, outputs, stage_index, 0), (S,)).numpy()
  cost = np.zeros((B, K, N))
  for b in range(B):
    for k in range(K):
      y = _np_sample((mask_id[b] == k).astype(np.float64), points[b])
      for n in range(N):
        x = _np_sample(logits[b, :, :, n], points[b])
        cost[b, k, n] = (-2.0 * probs[b, n, max(classes[b, k], 0)] +
                         5.0 * _np_bce(x, y).mean() + 5.0 * _np_dice(x, y))
  return cost


def test_matching_cost_and_matching_equal_numpy_and_scipy():
  batch, outputs = _batch(), _outputs()
  criterion = _criterion()
  inputs = criterion.inputs(batch, outputs)
  got_matching = criterion.match(batch, outputs)
  classes = batch[common.GT_CLASSES].numpy()
  for index, stage in enumerate(inputs.stages):
    want = _np_cost(criterion, batch, outputs, index, stage.output)
    got = criterion.matcher.cost(inputs, stage).numpy()
    present = classes >= 0
    np.testing.assert_allclose(got[present], want[present], rtol=1e-5,
                               atol=1e-5)
    for b in range(B):
      rows = np.nonzero(present[b])[0]
      _, cols = scipy.optimize.linear_sum_assignment(want[b, rows])
      np.testing.assert_array_equal(got_matching[index].numpy()[b, rows], cols)


def test_a_mask_lost_at_the_loss_grid_is_still_matched_and_scored():
  batch = _batch()
  mask_id = batch[common.GT_MASK_ID].numpy()
  # One pixel at an even position: nearest resizing to 8 x 8 (half-pixel
  # centres) reads the odd rows and columns and drops it.
  mask_id[1, 14, 14] = 2
  batch[common.GT_MASK_ID] = tf.constant(mask_id)
  batch[common.GT_CLASSES] = tf.constant([[0, 1, 2], [2, 1, 0]], tf.int32)
  lost = targets_lib.prepare_mask_targets(
      batch[common.GT_MASK_ID], batch[common.GT_CLASSES],
      batch[common.GT_IS_THING], batch[common.GT_SEMANTIC], (HP, WP), C)
  assert not lost.present.numpy()[1, 2]
  matching = _criterion().match(batch, _outputs())
  assert matching[-1].numpy()[1, 2] >= 0


def test_points_are_a_function_of_the_ground_truth_and_seed():
  batch, outputs = _batch(), _outputs()
  first = _seeds(_criterion(), batch, outputs, 1, 1).numpy()
  again = _seeds(_criterion(), batch, outputs, 1, 1).numpy()
  np.testing.assert_array_equal(first, again)
  assert first[0] != first[1]
  flipped = dict(batch)
  flipped[common.GT_MASK_ID] = batch[common.GT_MASK_ID][:, :, ::-1]
  assert not np.array_equal(_seeds(_criterion(), flipped, outputs, 1, 1).numpy(),
                            first)
  other_stage = _seeds(_criterion(), batch, outputs, 0, 1).numpy()
  assert not np.any(other_stage == first)


def test_compiled_loss_and_gradient_equal_eager():
  batch, outputs = _batch(), _outputs()
  criterion = _criterion()
  matching = criterion.match(batch, outputs)

  def loss_and_grads(class_logits, mask_logits, aux_mask_logits):
    with tf.GradientTape() as tape:
      tape.watch([class_logits, mask_logits, aux_mask_logits])
      out = dict(outputs)
      out[common.PRED_CLASS_LOGITS] = class_logits
      out[common.PRED_MASK_LOGITS] = mask_logits
      out[common.AUX_OUTPUTS] = [dict(outputs[common.AUX_OUTPUTS][0])]
      out[common.AUX_OUTPUTS][0][common.PRED_MASK_LOGITS] = aux_mask_logits
      losses = criterion(batch, out, matching)
    grads = tape.gradient(losses[common.LOSS_TOTAL],
                          [class_logits, mask_logits, aux_mask_logits])
    return losses, grads

  args = (outputs[common.PRED_CLASS_LOGITS], outputs[common.PRED_MASK_LOGITS],
          outputs[common.AUX_OUTPUTS][0][common.PRED_MASK_LOGITS])
  eager = loss_and_grads(*args)
  compiled = tf.function(loss_and_grads, jit_compile=True)(*args)
  for name, value in eager[0].items():
    np.testing.assert_allclose(compiled[0][name].numpy(), value.numpy(),
                               rtol=1e-5, atol=1e-6, err_msg=name)
  for want, got in zip(eager[1], compiled[1]):
    assert np.abs(want.numpy()).max() > 0
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_gin_file_binds_the_paper_numbers():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO_ROOT, "configs", "losses", "mask2former.gin")], [],
        skip_unknown=["ExperimentConfig"])
    criterion = gin.get_configurable(criterion_lib.Criterion)()
  finally:
    gin.clear_config()
  class_term, bce, dice = criterion.stage_terms
  assert (class_term.weight, class_term.no_object_weight) == (2.0, 0.1)
  assert (bce.weight, dice.weight, dice.smooth) == (5.0, 5.0, 1.0)
  cost = criterion.matcher.cost
  assert (cost.class_weight, cost.mask_weight, cost.dice_weight) == (2, 5, 5)
  assert criterion.matcher.mode == "per_stage"
  assert criterion.mask_presence == "input_size"
  for sampler in (bce.sampler, dice.sampler, cost.sampler):
    assert (sampler.num_points, sampler.oversample_ratio,
            sampler.importance_ratio) == (12544, 3.0, 0.75)


def test_bad_no_object_weight_is_one_clear_error():
  with pytest.raises(ValueError, match="no_object_weight must be >= 0"):
    m2f.ClassCrossEntropy(2.0, -0.1)
