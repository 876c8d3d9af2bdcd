"""Tests for deeplab_panoptic.losses.panoptic_segformer against numpy loops."""

import itertools

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.losses import panoptic_segformer as psf
from deeplab_panoptic.losses import criterion
from tests.losses import builders
from tests.conftest import REPO_ROOT
from tests.losses import test_mask_losses as base

ALPHA, GAMMA = 0.25, 2.0


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_focal(z, t, alpha=ALPHA, gamma=GAMMA):
  """Focal loss of one logit z with target t in {0, 1}."""
  p = _sigmoid(z)
  if t:
    return -alpha * (1 - p) ** gamma * np.log(p)
  return -(1 - alpha) * p ** gamma * np.log(1 - p)


class _Reference:
  """Panoptic SegFormer loss of one image, with loops."""

  def __init__(self, batch, b, activation="sigmoid"):
    self.ref = base._Reference(batch, b, activation)
    self.activation = activation

  def masks(self, mask_logits):
    return self.ref.probs(mask_logits) * self.ref.valid[:, None]

  def dice_loss(self, probs, k, n):
    g = (self.ref.mid == k).astype(np.float64)
    return 1 - (2 * np.sum(g * probs[:, n]) + 1) / (g.sum() + probs[:, n].sum()
                                                     + 1)

  def cost(self, class_logits, mask_logits):
    probs = self.masks(mask_logits)
    cost = {}
    for k in self.ref.present:
      c = self.ref.classes[k]
      for n in range(base.N):
        z = class_logits[n, c]
        cost[k, n] = (_np_focal(z, 1) - _np_focal(z, 0) +
                      self.dice_loss(probs, k, n))
    return cost

  def match(self, class_logits, mask_logits):
    cost = self.cost(class_logits, mask_logits)
    present = self.ref.present
    best = min(itertools.permutations(range(base.N), len(present)),
               key=lambda perm: sum(cost[k, n] for k, n in zip(present, perm)))
    return dict(zip(present, best))

  def losses(self, class_logits, mask_logits, match, centre=None, scale=None):
    probs = self.masks(mask_logits)
    num = max(len(match), 1)
    slot_of = {n: k for k, n in match.items()}
    focal = 0.0
    for n in range(base.N):
      for c in range(base.C):
        positive = n in slot_of and self.ref.classes[slot_of[n]] == c
        focal += _np_focal(class_logits[n, c], positive)
    dice = sum(self.dice_loss(probs, k, n) for k, n in match.items())
    out = {common.LOSS_FOCAL_CLASS: focal / num, common.LOSS_DICE: dice / num}
    if centre is not None:
      loc = 0.0
      for k, n in match.items():
        ys, xs = np.nonzero(self.ref.mid.reshape(base.HP, base.WP) == k)
        gy, gx = (ys + 0.5) / base.HP, (xs + 0.5) / base.WP
        gt_centre = [gy.mean(), gx.mean()]
        gt_scale = [gy.max() - gy.min() + 1 / base.HP,
                    gx.max() - gx.min() + 1 / base.WP]
        loc += np.sum(np.abs(centre[n] - gt_centre))
        loc += np.sum(np.abs(scale[n] - gt_scale))
      out[common.LOSS_LOCATION] = loc / num
    return out


def _inputs(seed, num_aux=1):
  batch, outputs = base._make_inputs(seed=seed, num_aux=num_aux)
  rng = np.random.default_rng(seed + 100)
  for out in [outputs] + outputs[common.AUX_OUTPUTS]:
    out[common.PRED_LOCATION_CENTER] = rng.uniform(
        size=(base.B, base.N, 2)).astype(np.float32)
    out[common.PRED_LOCATION_SCALE] = rng.uniform(
        size=(base.B, base.N, 2)).astype(np.float32)
  return batch, outputs


def test_focal_loss_matches_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 4)) * 3
  t = (rng.random((3, 4)) < 0.4).astype(np.float64)
  value = psf.sigmoid_focal_loss(tf.constant(z), tf.constant(t), ALPHA,
                                 GAMMA).numpy()
  expected = np.vectorize(_np_focal)(z, t)
  np.testing.assert_allclose(value, expected, rtol=1e-10)


@pytest.mark.parametrize("mode", ["per_stage", "shared"])
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_full_loss_matches_numpy(mode, activation):
  batch, outputs = _inputs(seed=31)
  loss_fn = builders.psf_criterion(matcher_method="scipy",
                                   matching_mode=mode,
                                   mask_activation=activation)
  result = loss_fn(base._to_tf(batch), base._to_tf(outputs))
  stages = [("aux_0/", base._resized_aux(outputs[common.AUX_OUTPUTS][0])),
            ("", outputs)]
  expected = {}
  for b in range(base.B):
    ref = _Reference(batch, b, activation)
    final_match = ref.match(outputs[common.PRED_CLASS_LOGITS][b],
                            outputs[common.PRED_MASK_LOGITS][b])
    for prefix, out in stages:
      match = final_match if mode == "shared" else ref.match(
          out[common.PRED_CLASS_LOGITS][b], out[common.PRED_MASK_LOGITS][b])
      terms = ref.losses(out[common.PRED_CLASS_LOGITS][b],
                         out[common.PRED_MASK_LOGITS][b], match,
                         out[common.PRED_LOCATION_CENTER][b],
                         out[common.PRED_LOCATION_SCALE][b])
      for name, value in terms.items():
        weight = 5.0 if name == common.LOSS_LOCATION else 1.0
        expected.setdefault(prefix + name, []).append(weight * value)
  assert set(result) == set(expected) | {common.LOSS_TOTAL}
  total = 0.0
  for name, values in expected.items():
    np.testing.assert_allclose(result[name].numpy(), np.mean(values),
                               rtol=1e-4, atol=1e-6, err_msg=name)
    total += np.mean(values)
  np.testing.assert_allclose(result[common.LOSS_TOTAL].numpy(), total,
                             rtol=1e-4)


def test_matching_minimises_class_plus_dice_cost():
  batch, outputs = _inputs(seed=32, num_aux=0)
  matched = builders.psf_criterion(matcher_method="tpu").match(
      base._to_tf(batch), base._to_tf(outputs))[-1].numpy()  # final stage
  for b in range(base.B):
    ref = _Reference(batch, b)
    expected = ref.match(outputs[common.PRED_CLASS_LOGITS][b],
                         outputs[common.PRED_MASK_LOGITS][b])
    cost = ref.cost(outputs[common.PRED_CLASS_LOGITS][b],
                    outputs[common.PRED_MASK_LOGITS][b])
    got = sum(cost[k, matched[b, k]] for k in expected)
    np.testing.assert_allclose(got, sum(cost[k, n] for k, n in
                                        expected.items()), rtol=1e-5)
    absent = [k for k in range(base.K) if k not in expected]
    assert np.all(matched[b, absent] == -1)


def test_focal_cost_is_the_change_of_the_class_loss():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 4, 4))  # C = 3 real classes + void
  classes = np.array([[2, 0]])
  cost = psf.focal_matching_cost(tf.constant(logits), tf.constant(classes),
                                 ALPHA, GAMMA).numpy()
  for k in range(2):
    for n in range(4):
      assignment = np.zeros((1, 2, 4))
      with_pair = assignment.copy()
      with_pair[0, k, n] = 1.0
      # focal_class_loss divides by max(#matched, 1) = 1 in both cases.
      delta = (psf.focal_class_loss(tf.constant(logits), tf.constant(with_pair),
                                    tf.constant(classes), ALPHA, GAMMA) -
               psf.focal_class_loss(tf.constant(logits),
                                    tf.constant(assignment),
                                    tf.constant(classes), ALPHA, GAMMA))
      np.testing.assert_allclose(cost[0, k, n], delta.numpy()[0], rtol=1e-10)


def test_term_gradients_match_finite_differences():
  rng = np.random.default_rng(4)
  logits = tf.constant(rng.normal(size=(2, 4, 3)))
  masks = tf.constant(rng.normal(size=(2, 6, 4)))
  centre = tf.constant(rng.uniform(size=(2, 4, 2)))
  scale = tf.constant(rng.uniform(size=(2, 4, 2)))
  mid = rng.choice([-1, 0, 1], size=(2, 6))
  mid[:, :2] = [0, 1]
  gt = tf.constant(np.eye(2)[np.where(mid < 0, 0, mid)] *
                   (mid >= 0)[..., None])
  assignment = np.zeros((2, 2, 4))
  assignment[0, 0, 2] = assignment[0, 1, 0] = assignment[1, 1, 3] = 1.0
  assignment = tf.constant(assignment)
  classes = tf.constant([[1, 0], [0, 1]])

  def focal(x):
    return psf.focal_class_loss(x, assignment, classes, ALPHA, GAMMA)

  def dice(x):
    return psf.matched_dice_loss(gt, tf.sigmoid(x), assignment, 1.0)

  def squared_dice(x):
    return psf.matched_dice_loss(gt, tf.sigmoid(x), assignment, 1.0, True)

  def location(c, s):
    return psf.location_loss(c, s, gt, assignment, (2, 3))

  for fn, args in [(focal, [logits]), (dice, [masks]),
                   (squared_dice, [masks]), (location, [centre, scale])]:
    theoretical, numerical = tf.test.compute_gradient(fn, args, delta=1e-6)
    for t, n in zip(theoretical, numerical):
      np.testing.assert_allclose(t, n, atol=1e-6)
  # The void logit gets no gradient from the focal loss.
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = tf.reduce_sum(focal(logits))
  np.testing.assert_array_equal(tape.gradient(loss, logits).numpy()[..., -1],
                                0.0)


def test_images_without_ground_truth_and_too_many_masks():
  batch, outputs = _inputs(seed=33, num_aux=0)
  batch[common.GT_CLASSES][0] = -1           # image 0: no ground truth
  batch[common.GT_MASK_ID][0] = -1
  result = builders.psf_criterion(matcher_method="scipy")(
      base._to_tf(batch), base._to_tf(outputs))
  for value in result.values():
    assert np.isfinite(value.numpy())
  # Image 0 then only has the focal loss of pushing every class down.
  logits = outputs[common.PRED_CLASS_LOGITS][0][:, :base.C]
  expected0 = np.sum(np.vectorize(_np_focal)(logits, 0))
  ref1 = _Reference(batch, 1)
  match1 = ref1.match(outputs[common.PRED_CLASS_LOGITS][1],
                      outputs[common.PRED_MASK_LOGITS][1])
  expected1 = ref1.losses(outputs[common.PRED_CLASS_LOGITS][1],
                          outputs[common.PRED_MASK_LOGITS][1], match1)
  np.testing.assert_allclose(
      result[common.LOSS_FOCAL_CLASS].numpy(),
      (expected0 + expected1[common.LOSS_FOCAL_CLASS]) / 2, rtol=1e-4)
  # K > N: two predictions for three real masks.
  batch, outputs = _inputs(seed=34, num_aux=0)
  for key in (common.PRED_CLASS_LOGITS, common.PRED_LOCATION_CENTER,
              common.PRED_LOCATION_SCALE):
    outputs[key] = outputs[key][:, :2]
  outputs[common.PRED_MASK_LOGITS] = outputs[common.PRED_MASK_LOGITS][..., :2]
  loss_fn = builders.psf_criterion(matcher_method="scipy")
  matched = loss_fn.match(base._to_tf(batch), base._to_tf(outputs))[-1].numpy()
  assert sorted(matched[1][matched[1] >= 0].tolist()) == [0, 1]
  result = loss_fn(base._to_tf(batch), base._to_tf(outputs))
  assert np.isfinite(result[common.LOSS_TOTAL].numpy())


def test_gin_and_errors(monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  gin.clear_config()
  try:
    main_lib.parse_gin(["configs/losses/panoptic_segformer.gin"], [
        "FOCAL_ALPHA = 0.5", "LocationL1.weight = 0.0",
        "HungarianMatcher.mode = 'shared'"])
    loss_fn = criterion.Criterion()
  finally:
    gin.clear_config()
  focal, _, location = loss_fn.stage_terms
  assert focal.alpha == 0.5 and loss_fn.matcher.cost.focal_alpha == 0.5
  assert loss_fn.matcher.mode == "shared" and location.weight == 0.0
  batch, outputs = base._make_inputs(seed=35, num_aux=0)  # no location keys
  result = loss_fn(base._to_tf(batch), base._to_tf(outputs))
  assert common.LOSS_LOCATION not in result
  with pytest.raises(KeyError, match=common.PRED_LOCATION_CENTER):
    builders.psf_criterion(matcher_method="scipy")(base._to_tf(batch),
                                                   base._to_tf(outputs))
  with pytest.raises(ValueError, match="HungarianMatcher.mode"):
    builders.psf_criterion(matching_mode="each")
  with pytest.raises(ValueError, match="scale_target"):
    builders.psf_criterion(scale_target="radius")
