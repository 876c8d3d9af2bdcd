"""MaX-DeepLab's criterion (losses.mask_losses terms) against loop implementations."""

import itertools
import math

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion
from deeplab_panoptic.losses import mask_losses
from deeplab_panoptic.losses import semantic
from deeplab_panoptic.losses import targets as targets_lib
from tests.losses import builders

B, H, W = 2, 8, 8          # ground-truth size
HP, WP = 4, 4              # prediction size (stride 2 here)
HS, WS = 4, 4              # semantic logits size
N, K, C, D = 6, 3, 4, 5
VOID = 255


# ----------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------
def _make_inputs(seed=0, num_aux=1):
  """Tiny batch with void, crowd, an empty slot and a vanishing mask."""
  rng = np.random.default_rng(seed)
  mask_id = np.full((B, H, W), -1, np.int32)
  classes = np.full((B, K), -1, np.int32)
  is_thing = np.zeros((B, K), bool)
  semantic = np.full((B, H, W), VOID, np.int32)
  # Image 0: a thing (class 1) and a stuff (class 3) mask, slot 2 empty; the
  # rest is void or crowd (class 2).
  mask_id[0] = rng.choice([-1, 0, 1], size=(H, W), p=[0.3, 0.35, 0.35])
  classes[0] = [1, 3, -1]
  is_thing[0] = [True, False, False]
  # Image 1: two things (classes 0 and 2) and a stuff (class 3); mask 1 only
  # covers pixel (0, 0), which the stride-2 nearest resize never samples.
  mask_id[1] = rng.choice([-1, 0, 2], size=(H, W), p=[0.2, 0.4, 0.4])
  mask_id[1, 0, 0] = 1
  classes[1] = [0, 2, 3]
  is_thing[1] = [True, True, False]
  for b in range(B):
    for k in range(K):
      semantic[b][mask_id[b] == k] = classes[b, k]
  crowd = (mask_id == -1) & (rng.random((B, H, W)) < 0.5)
  semantic[crowd] = 2
  weight = np.where(semantic != VOID, 1.0, 0.0).astype(np.float32)
  weight[(semantic != VOID) & (rng.random((B, H, W)) < 0.2)] = 3.0
  batch = {
      common.GT_MASK_ID: mask_id,
      common.GT_CLASSES: classes,
      common.GT_IS_THING: is_thing,
      common.GT_SEMANTIC: semantic,
      common.GT_SEMANTIC_WEIGHT: weight,
  }

  def per_mask(scale, size):
    emb = rng.normal(size=(B,) + size + (D,)).astype(np.float32)
    return {
        common.PRED_CLASS_LOGITS:
            (scale * rng.normal(size=(B, N, C + 1))).astype(np.float32),
        common.PRED_MASK_LOGITS:
            (scale * rng.normal(size=(B,) + size + (N,))).astype(np.float32),
        common.PRED_PIXEL_EMBEDDING:
            emb / np.linalg.norm(emb, axis=-1, keepdims=True),
    }

  outputs = per_mask(2.0, (HP, WP))
  outputs[common.PRED_SEMANTIC_LOGITS] = rng.normal(
      size=(B, HS, WS, C)).astype(np.float32)
  # Aux outputs at a coarser size: the loss resizes them to (HP, WP).
  outputs[common.AUX_OUTPUTS] = [per_mask(1.5, (2, 2)) for _ in range(num_aux)]
  return batch, outputs


def _to_tf(tree):
  return tf.nest.map_structure(tf.convert_to_tensor, tree)


# ----------------------------------------------------------------------------
# Independent loop implementation.
# ----------------------------------------------------------------------------
def _np_resize_nearest(x, h, w):
  rows = [min(int(math.floor((i + 0.5) * x.shape[0] / h)), x.shape[0] - 1)
          for i in range(h)]
  cols = [min(int(math.floor((j + 0.5) * x.shape[1] / w)), x.shape[1] - 1)
          for j in range(w)]
  return x[rows][:, cols]


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


class _Reference:
  """MaX-DeepLab losses of one image, written with loops."""

  def __init__(self, batch, b, activation="softmax"):
    self.mid = _np_resize_nearest(batch[common.GT_MASK_ID][b], HP, WP).ravel()
    sem = _np_resize_nearest(batch[common.GT_SEMANTIC][b], HP, WP).ravel()
    self.classes = batch[common.GT_CLASSES][b]
    self.is_thing = batch[common.GT_IS_THING][b]
    self.present = [k for k in range(K)
                    if self.classes[k] >= 0 and np.any(self.mid == k)]
    self.labelled = np.array([m in self.present for m in self.mid])
    self.valid = np.array([self.labelled[p] or 0 <= sem[p] < C
                           for p in range(HP * WP)], np.float64)
    self.activation = activation
    self.batch = batch
    self.b = b

  def probs(self, mask_logits):
    flat = mask_logits.reshape(HP * WP, N).astype(np.float64)
    if self.activation == "softmax":
      return np.stack([_softmax(row) for row in flat])
    return _sigmoid(flat)

  def similarity(self, class_logits, mask_logits):
    pv = self.probs(mask_logits) * self.valid[:, None]
    dice = np.zeros((K, N))
    cls = np.zeros((K, N))
    for k in self.present:
      g = (self.mid == k).astype(np.float64)
      for n in range(N):
        dice[k, n] = 2 * np.sum(g * pv[:, n]) / (g.sum() + pv[:, n].sum() + 1e-5)
        cls[k, n] = _softmax(class_logits[n].astype(np.float64))[self.classes[k]]
    return dice, cls

  def match(self, class_logits, mask_logits):
    dice, cls = self.similarity(class_logits, mask_logits)
    best, best_perm = -1.0, None
    for perm in itertools.permutations(range(N), len(self.present)):
      total = sum(dice[k, n] * cls[k, n] for k, n in zip(self.present, perm))
      if total > best:
        best, best_perm = total, perm
    return dict(zip(self.present, best_perm))

  def losses(self, out, match, temperature=0.3, negative="constant",
             anchors="thing", alpha=0.75):
    class_logits = out[common.PRED_CLASS_LOGITS][self.b].astype(np.float64)
    mask_logits = out[common.PRED_MASK_LOGITS][self.b].astype(np.float64)
    emb = out[common.PRED_PIXEL_EMBEDDING][self.b].reshape(HP * WP, D)
    emb = emb.astype(np.float64)
    dice, cls = self.similarity(class_logits, mask_logits)
    probs = self.probs(mask_logits)
    pv = probs * self.valid[:, None]
    slot_of = {n: k for k, n in match.items()}
    # PQ class term.
    class_loss = 0.0
    for n in range(N):
      p = _softmax(class_logits[n])
      if n in slot_of:
        k = slot_of[n]
        class_loss += alpha * max(dice[k, n], 1e-5) * -np.log(p[self.classes[k]])
      else:
        w = 1.0
        if negative == "void_fraction":
          w = max(np.sum(probs[:, n] * (1 - self.valid)) / probs[:, n].sum(),
                  1e-5)
        class_loss += (1 - alpha) * w * -np.log(p[C])
    class_loss /= N
    # PQ Dice term.
    dice_loss = 0.0
    for k, n in match.items():
      g = (self.mid == k).astype(np.float64)
      d = (2 * np.sum(g * pv[:, n]) + 1) / (g.sum() + pv[:, n].sum() + 1)
      dice_loss += max(cls[k, n], 1e-5) * (1 - d)
    dice_loss *= alpha / N
    # Mask-ID cross-entropy.
    flat_logits = mask_logits.reshape(HP * WP, N)
    terms = []
    for p in range(HP * WP):
      if not self.labelled[p]:
        continue
      n = match[self.mid[p]]
      if self.activation == "softmax":
        terms.append(-np.log(_softmax(flat_logits[p])[n]))
      else:
        s = _sigmoid(flat_logits[p])
        terms.append(sum(-np.log(s[j]) if j == n else -np.log(1 - s[j])
                         for j in range(N)))
    mask_id = np.mean(terms) if terms else 0.0
    # Instance discrimination.
    centers = {}
    for k in self.present:
      v = emb[self.mid == k].sum(axis=0)
      centers[k] = v / np.linalg.norm(v)
    terms = []
    for p in range(HP * WP):
      if not self.labelled[p]:
        continue
      own = self.mid[p]
      if anchors == "thing" and not self.is_thing[own]:
        continue
      logits = np.array([emb[p] @ centers[k] / temperature
                         for k in self.present])
      terms.append(-np.log(_softmax(logits)[self.present.index(own)]))
    insdis = np.mean(terms) if terms else 0.0
    return dict(pq_class=class_loss, pq_dice=dice_loss, mask_id=mask_id,
                insdis=insdis)


def _np_semantic(batch, logits, b, top_k=1.0):
  hs, ws = logits.shape[1:3]
  labels = _np_resize_nearest(batch[common.GT_SEMANTIC][b], hs, ws).ravel()
  weights = _np_resize_nearest(batch[common.GT_SEMANTIC_WEIGHT][b], hs,
                               ws).ravel()
  flat = logits[b].reshape(hs * ws, -1).astype(np.float64)
  losses = []
  for p in range(hs * ws):
    ce = -np.log(_softmax(flat[p])[labels[p]]) if weights[p] > 0 else 0.0
    losses.append((weights[p] * ce, weights[p]))
  if top_k < 1.0:
    losses = sorted(losses, key=lambda t: -t[0])[:int(round(top_k * hs * ws))]
  count = sum(1 for _, w in losses if w > 0)
  return sum(v for v, _ in losses) / max(count, 1)


def _resized_aux(aux):
  """Aux output with mask logits / embedding resized like the loss does."""
  out = dict(aux)
  out[common.PRED_MASK_LOGITS] = tf.image.resize(
      aux[common.PRED_MASK_LOGITS], (HP, WP), method="bilinear").numpy()
  emb = tf.image.resize(aux[common.PRED_PIXEL_EMBEDDING], (HP, WP),
                        method="bilinear").numpy()
  out[common.PRED_PIXEL_EMBEDDING] = emb / np.linalg.norm(
      emb, axis=-1, keepdims=True)
  return out


def _reference_losses(batch, outputs, activation="softmax", **kwargs):
  """Batch-mean weighted losses from the loop implementation."""
  terms = {}
  for b in range(B):
    ref = _Reference(batch, b, activation)
    match = ref.match(outputs[common.PRED_CLASS_LOGITS][b],
                      outputs[common.PRED_MASK_LOGITS][b])
    per_output = [("", outputs)] + [
        (f"aux_{i}/", _resized_aux(aux))
        for i, aux in enumerate(outputs[common.AUX_OUTPUTS])]
    for prefix, out in per_output:
      for name, value in ref.losses(out, match, **kwargs).items():
        terms.setdefault(prefix + name, []).append(value)
    terms.setdefault("semantic", []).append(
        _np_semantic(batch, outputs[common.PRED_SEMANTIC_LOGITS], b))
  return {name: float(np.mean(v)) for name, v in terms.items()}


_PER_MASK = [common.LOSS_PQ_CLASS, common.LOSS_PQ_DICE, common.LOSS_MASK_ID,
             common.LOSS_INSTANCE_DISCRIMINATION]
# The TensorBoard names of MaX-DeepLab's criterion with one aux output.
_MAX_NAMES = _PER_MASK + [common.LOSS_SEMANTIC, common.LOSS_TOTAL] + [
    "aux_0/" + name for name in _PER_MASK]

_WEIGHTS = {"pq_class": (3.0, common.LOSS_PQ_CLASS),
            "pq_dice": (3.0, common.LOSS_PQ_DICE),
            "mask_id": (0.3, common.LOSS_MASK_ID),
            "insdis": (1.0, common.LOSS_INSTANCE_DISCRIMINATION),
            "semantic": (1.0, common.LOSS_SEMANTIC)}


def _compare(result, reference, rtol=1e-4, atol=1e-6):
  expected_total = 0.0
  for name, value in reference.items():
    prefix, _, short = name.rpartition("/")
    weight, key = _WEIGHTS[short]
    key = f"{prefix}/{key}" if prefix else key
    np.testing.assert_allclose(result[key].numpy(), weight * value, rtol=rtol,
                               atol=atol, err_msg=key)
    expected_total += weight * value
  np.testing.assert_allclose(result[common.LOSS_TOTAL].numpy(), expected_total,
                             rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------
def test_targets_handle_void_crowd_empty_and_vanished_masks():
  batch, _ = _make_inputs()
  targets = targets_lib.prepare_mask_targets(
      tf.constant(batch[common.GT_MASK_ID]),
      tf.constant(batch[common.GT_CLASSES]),
      tf.constant(batch[common.GT_IS_THING]),
      tf.constant(batch[common.GT_SEMANTIC]), (HP, WP), C)
  present = targets.present.numpy()
  np.testing.assert_array_equal(present, [[True, True, False],
                                          [True, False, True]])
  for b in range(B):
    ref = _Reference(batch, b)
    assert ref.present == list(np.nonzero(present[b])[0])
    np.testing.assert_array_equal(targets.valid_pixels.numpy()[b], ref.valid)
    np.testing.assert_array_equal(
        targets.masks.numpy()[b].argmax(-1)[ref.labelled],
        ref.mid[ref.labelled])
    assert np.all(targets.masks.numpy()[b][~ref.labelled] == 0)
  # Crowd pixels (valid semantic, no mask) exist and are valid but unlabelled.
  valid = targets.valid_pixels.numpy() > 0
  labelled = targets.masks.numpy().sum(-1) > 0
  assert np.any(valid & ~labelled)
  assert np.any(~valid)


def test_full_loss_matches_loop_implementation():
  batch, outputs = _make_inputs(seed=1)
  result = builders.max_criterion(matcher_method="scipy")(
      _to_tf(batch), _to_tf(outputs))
  assert set(result) == set(_MAX_NAMES)
  _compare(result, _reference_losses(batch, outputs))


@pytest.mark.parametrize("options", [
    dict(mask_activation="sigmoid"),
    dict(negative_class_weighting="void_fraction",
         instance_discrimination_anchors="all"),
])
def test_loss_options_match_loop_implementation(options):
  batch, outputs = _make_inputs(seed=2, num_aux=0)
  result = builders.max_criterion(matcher_method="scipy", **options)(
      _to_tf(batch), _to_tf(outputs))
  kwargs = {}
  if "negative_class_weighting" in options:
    kwargs = dict(negative="void_fraction", anchors="all")
  _compare(result, _reference_losses(
      batch, outputs, activation=options.get("mask_activation", "softmax"),
      **kwargs))


def test_semantic_top_k_matches_loop_implementation():
  batch, outputs = _make_inputs(seed=3, num_aux=0)
  logits = outputs[common.PRED_SEMANTIC_LOGITS]
  value = semantic.semantic_loss(
      tf.constant(logits), tf.constant(batch[common.GT_SEMANTIC]),
      tf.constant(batch[common.GT_SEMANTIC_WEIGHT]), top_k_percent=0.25)
  expected = [_np_semantic(batch, logits, b, top_k=0.25) for b in range(B)]
  np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)


def test_hand_worked_pq_loss():
  # One image, 2x2 pixels, 2 slots, 1 class + void. All logits 0, so every
  # class and mask probability is 1/2; the GT mask is the top row.
  batch = {
      common.GT_MASK_ID: tf.constant([[[0, 0], [-1, -1]]]),
      common.GT_CLASSES: tf.constant([[0]]),
      common.GT_IS_THING: tf.constant([[True]]),
      common.GT_SEMANTIC: tf.constant([[[0, 0], [0, 0]]]),  # bottom row: crowd
      common.GT_SEMANTIC_WEIGHT: tf.ones([1, 2, 2]),
  }
  outputs = {
      common.PRED_CLASS_LOGITS: tf.zeros([1, 2, 2]),
      common.PRED_MASK_LOGITS: tf.zeros([1, 2, 2, 2]),
      common.PRED_PIXEL_EMBEDDING: tf.ones([1, 2, 2, 1]),
      common.PRED_SEMANTIC_LOGITS: tf.zeros([1, 2, 2, 1]),
  }
  result = builders.max_criterion(matcher_method="scipy")(batch,
                                                                   outputs)
  # Matching Dice = 2 * (2 * 0.5) / (2 + 2) = 0.5 for both slots.
  # Class: (0.75 * 0.5 * ln2 [positive] + 0.25 * ln2 [negative]) / N=2.
  expected_class = 3.0 * (0.75 * 0.5 + 0.25) * math.log(2) / 2
  # Dice loss: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4, weight p = 0.5, x 0.75 / 2.
  expected_dice = 3.0 * 0.5 * 0.4 * 0.75 / 2
  np.testing.assert_allclose(result[common.LOSS_PQ_CLASS], expected_class,
                             rtol=1e-4)
  np.testing.assert_allclose(result[common.LOSS_PQ_DICE], expected_dice,
                             rtol=1e-6)
  # Mask-ID: ln 2 on the two labelled pixels. Instance discrimination: one
  # mask, so probability 1. Semantic: one class, CE 0.
  np.testing.assert_allclose(result[common.LOSS_MASK_ID], 0.3 * math.log(2),
                             rtol=1e-6)
  np.testing.assert_allclose(result[common.LOSS_INSTANCE_DISCRIMINATION], 0.0,
                             atol=1e-6)
  np.testing.assert_allclose(result[common.LOSS_SEMANTIC], 0.0, atol=1e-6)


def test_gradients_finite_and_stopped_where_promised():
  batch, outputs = _make_inputs(seed=4)
  batch, outputs = _to_tf(batch), _to_tf(outputs)
  loss_fn = builders.max_criterion(
      matcher_method="scipy", negative_class_weighting="void_fraction")
  matched = loss_fn.match(batch, outputs)
  class_logits = outputs[common.PRED_CLASS_LOGITS]
  mask_logits = outputs[common.PRED_MASK_LOGITS]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([class_logits, mask_logits])
    result = loss_fn(batch, outputs, matching=matched)
  for name in [common.LOSS_TOTAL, common.LOSS_PQ_CLASS, common.LOSS_PQ_DICE]:
    for grad in tape.gradient(result[name], [class_logits, mask_logits],
                              unconnected_gradients="zero"):
      assert np.all(np.isfinite(grad.numpy())), name
  # The Dice weights of the class term (and the void-fraction weights of its
  # negatives) are constants: no gradient into the mask logits.
  grad = tape.gradient(result[common.LOSS_PQ_CLASS], mask_logits,
                       unconnected_gradients="zero")
  np.testing.assert_array_equal(grad.numpy(), 0.0)
  # The class-probability weight of the Dice term is a constant too.
  grad = tape.gradient(result[common.LOSS_PQ_DICE], class_logits,
                       unconnected_gradients="zero")
  np.testing.assert_array_equal(grad.numpy(), 0.0)
  # ... while each term does train its own head.
  assert np.any(tape.gradient(result[common.LOSS_PQ_CLASS],
                              class_logits).numpy() != 0)
  assert np.any(tape.gradient(result[common.LOSS_PQ_DICE],
                              mask_logits).numpy() != 0)


def test_full_loss_compiles_with_xla_and_matches_scipy():
  batch, outputs = _make_inputs(seed=5)
  batch, outputs = _to_tf(batch), _to_tf(outputs)
  expected = builders.max_criterion(matcher_method="scipy")(batch,
                                                                     outputs)
  loss_fn = builders.max_criterion(matcher_method="tpu")
  compiled = tf.function(loss_fn, jit_compile=True)
  result = compiled(batch, outputs)
  assert set(result) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(result[name].numpy(), value.numpy(), rtol=1e-4,
                               atol=1e-6, err_msg=name)
  # With a host (scipy) matcher, everything after the matching still compiles.
  scipy_fn = builders.max_criterion(matcher_method="scipy")
  matched = scipy_fn.match(batch, outputs)
  compiled = tf.function(
      lambda b, o, m: scipy_fn(b, o, matching=m), jit_compile=True)
  result = compiled(batch, outputs, matched)
  np.testing.assert_allclose(result[common.LOSS_TOTAL].numpy(),
                             expected[common.LOSS_TOTAL].numpy(), rtol=1e-4)


def test_empty_slots_do_not_change_the_assignment():
  batch, outputs = _make_inputs(seed=6, num_aux=0)
  batch, outputs = _to_tf(batch), _to_tf(outputs)
  loss_fn = builders.max_criterion(matcher_method="scipy")
  matched = loss_fn.match(batch, outputs).numpy()
  for b in range(B):
    ref = _Reference({k: v.numpy() for k, v in batch.items()}, b)
    match = ref.match(outputs[common.PRED_CLASS_LOGITS].numpy()[b],
                      outputs[common.PRED_MASK_LOGITS].numpy()[b])
    for k, n in match.items():
      assert matched[b, k] == n
    absent = [k for k in range(K) if k not in match]
    assert np.all(matched[b, absent] == -1)


def test_nan_is_not_hidden():
  batch, outputs = _make_inputs(seed=7, num_aux=0)
  outputs[common.PRED_MASK_LOGITS][0, 0, 0, 0] = np.nan
  result = builders.max_criterion(matcher_method="scipy")(
      _to_tf(batch), _to_tf(outputs))
  assert np.isnan(result[common.LOSS_TOTAL].numpy())


def test_weights_come_from_gin():
  gin.clear_config()
  try:
    gin.parse_config("""
        Criterion.terms = [@PQClassLoss(), @PQDiceLoss(), @MaskIDCrossEntropy(),
                           @InstanceDiscrimination(), @SemanticCrossEntropy()]
        Criterion.matcher = @HungarianMatcher()
        HungarianMatcher.cost = @PQSimilarityCost()
        HungarianMatcher.method = "scipy"
        PQClassLoss.weight = 2.0
        PQDiceLoss.weight = 2.0
        MaskIDCrossEntropy.weight = 0.0
    """)
    loss_fn = criterion.Criterion()
  finally:
    gin.clear_config()
  assert loss_fn.matcher.method == "scipy"
  assert [term.weight for term in loss_fn.stage_terms] == [2.0, 2.0, 0.0, 1.0]
  batch, outputs = _make_inputs(seed=8, num_aux=0)
  result = loss_fn(_to_tf(batch), _to_tf(outputs))
  assert result[common.LOSS_MASK_ID].numpy() == 0.0
  reference = _reference_losses(batch, outputs)
  np.testing.assert_allclose(result[common.LOSS_PQ_DICE].numpy(),
                             2.0 * reference["pq_dice"], rtol=1e-4)


def test_more_ground_truth_masks_than_predictions():
  batch, outputs = _make_inputs(num_aux=0)
  outputs[common.PRED_CLASS_LOGITS] = outputs[common.PRED_CLASS_LOGITS][:, :2]
  outputs[common.PRED_MASK_LOGITS] = outputs[common.PRED_MASK_LOGITS][..., :2]
  loss_fn = builders.max_criterion(matcher_method="scipy")
  matched = loss_fn.match(_to_tf(batch), _to_tf(outputs)).numpy()
  # Image 0 has 2 real masks, image 1 has 2 (one vanished): all matched.
  for b in range(B):
    ref = _Reference(batch, b)
    assert sorted(matched[b][ref.present].tolist()) == [0, 1]
  # Three real masks, two predictions: one ground-truth mask stays unmatched.
  batch[common.GT_MASK_ID][1, :4] = 1
  matched = loss_fn.match(_to_tf(batch), _to_tf(outputs)).numpy()
  assert sorted(matched[1].tolist()) == [-1, 0, 1]
  result = loss_fn(_to_tf(batch), _to_tf(outputs))
  assert np.isfinite(result[common.LOSS_TOTAL].numpy())
  compiled = tf.function(builders.max_criterion(matcher_method="tpu"),
                         jit_compile=True)
  np.testing.assert_allclose(
      compiled(_to_tf(batch), _to_tf(outputs))[common.LOSS_TOTAL].numpy(),
      result[common.LOSS_TOTAL].numpy(), rtol=1e-4)


def test_image_without_ground_truth():
  batch, outputs = _make_inputs(seed=9, num_aux=0)
  batch[common.GT_CLASSES][0] = -1
  batch[common.GT_MASK_ID][0] = -1
  loss_fn = builders.max_criterion(matcher_method="scipy")
  result = loss_fn(_to_tf(batch), _to_tf(outputs))
  assert np.all(loss_fn.match(_to_tf(batch), _to_tf(outputs)).numpy()[0] == -1)
  for value in result.values():
    assert np.isfinite(value.numpy())
  # Image 0 only trains every slot towards void.
  ref = _Reference(batch, 0)
  terms = ref.losses(outputs, {})
  assert terms["pq_dice"] == 0.0 and terms["mask_id"] == 0.0
  ref1 = _Reference(batch, 1)
  match1 = ref1.match(outputs[common.PRED_CLASS_LOGITS][1],
                      outputs[common.PRED_MASK_LOGITS][1])
  expected = (terms["pq_class"] + ref1.losses(outputs, match1)["pq_class"]) / 2
  np.testing.assert_allclose(result[common.LOSS_PQ_CLASS].numpy(),
                             3.0 * expected, rtol=1e-4)


def test_per_stage_matching_matches_each_stage_on_its_own():
  batch, outputs = _make_inputs(seed=10, num_aux=1)
  loss_fn = builders.max_criterion(matcher_method="scipy",
                                            matching_mode="per_stage")
  matched = loss_fn.match(_to_tf(batch), _to_tf(outputs))
  assert len(matched) == 2
  result = loss_fn(_to_tf(batch), _to_tf(outputs))
  aux = _resized_aux(outputs[common.AUX_OUTPUTS][0])
  for b in range(B):
    ref = _Reference(batch, b)
    for stage, out in enumerate([aux, outputs]):
      expected = ref.match(out[common.PRED_CLASS_LOGITS][b],
                           out[common.PRED_MASK_LOGITS][b])
      for k, n in expected.items():
        assert matched[stage].numpy()[b, k] == n
  # The aux stage's loss is that of the aux output matched with itself.
  expected = []
  for b in range(B):
    ref = _Reference(batch, b)
    match = ref.match(aux[common.PRED_CLASS_LOGITS][b],
                      aux[common.PRED_MASK_LOGITS][b])
    expected.append(ref.losses(aux, match)["pq_dice"])
  np.testing.assert_allclose(
      result[criterion.aux_loss_name(0, common.LOSS_PQ_DICE)].numpy(),
      3.0 * np.mean(expected), rtol=1e-4)
  # A list of matchings can be passed back in (host matcher + XLA loss).
  compiled = tf.function(lambda b, o, m: loss_fn(b, o, matching=m),
                         jit_compile=True)
  again = compiled(_to_tf(batch), _to_tf(outputs), matched)
  np.testing.assert_allclose(again[common.LOSS_TOTAL].numpy(),
                             result[common.LOSS_TOTAL].numpy(), rtol=1e-4)


def test_max_term_gradients_match_finite_differences():
  rng = np.random.default_rng(12)
  b, p, k, n, c, d = 2, 6, 2, 3, 3, 4
  mid = rng.choice([-1, 0, 1], size=(b, p))
  mid[:, :2] = [0, 1]
  gt = tf.constant(np.eye(k)[np.where(mid < 0, 0, mid)] * (mid >= 0)[..., None])
  assignment = np.zeros((b, k, n))
  assignment[0, 0, 2] = assignment[0, 1, 0] = assignment[1, 1, 1] = 1.0
  assignment = tf.constant(assignment)
  classes = tf.constant([[1, 0], [0, 2]])
  present = tf.constant([[True, True], [True, True]])
  matched_dice = tf.constant(rng.uniform(size=(b, k)))
  matched_probs = tf.constant(rng.uniform(size=(b, k)))
  class_logits = tf.constant(rng.normal(size=(b, n, c + 1)))
  mask_logits = tf.constant(rng.normal(size=(b, p, n)))
  embedding = tf.constant(rng.normal(size=(b, p, d)))
  semantic_logits = tf.constant(rng.normal(size=(b, 2, 3, c)))
  gt_semantic = tf.constant(rng.integers(0, c, size=(b, 2, 3)), tf.int32)
  gt_weight = tf.constant(rng.choice([0.0, 1.0, 3.0], size=(b, 2, 3)))
  checks = [
      (lambda x: mask_losses.pq_class_loss(x, assignment, classes,
                                           matched_dice, 0.75, 1e-5),
       class_logits),
      (lambda x: mask_losses.pq_dice_loss(tf.nn.softmax(x), assignment, gt,
                                          matched_probs, 0.75, 1.0, 1e-5),
       mask_logits),
      (lambda x: mask_losses.mask_id_loss(x, assignment, gt, "softmax"),
       mask_logits),
      (lambda x: mask_losses.mask_id_loss(x, assignment, gt, "sigmoid"),
       mask_logits),
      (lambda x: mask_losses.instance_discrimination_loss(
          tf.math.l2_normalize(x, axis=-1), gt, present,
          tf.constant([[True, False], [False, True]]), 0.3, "all"),
       embedding),
      (lambda x: semantic.semantic_loss(x, gt_semantic, gt_weight, 0.5),
       semantic_logits),
  ]
  for index, (fn, x) in enumerate(checks):
    theoretical, numerical = tf.test.compute_gradient(fn, [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6,
                               err_msg=str(index))


def test_bad_configuration_raises():
  batch, outputs = _make_inputs(num_aux=0)
  with pytest.raises(ValueError, match="HungarianMatcher.mode"):
    builders.max_criterion(matching_mode="every")
  with pytest.raises(ValueError, match="HungarianMatcher.method"):
    builders.max_criterion(matcher_method="gpu")
  with pytest.raises(ValueError, match="HungarianMatcher.cost"):
    criterion.HungarianMatcher()
  with pytest.raises(ValueError, match="need a matching"):
    criterion.Criterion(terms=[mask_losses.PQClassLoss()])
  with pytest.raises(KeyError, match=common.PRED_MASK_LOGITS):
    del outputs[common.PRED_MASK_LOGITS]
    builders.max_criterion()(_to_tf(batch), _to_tf(outputs))
  with pytest.raises(ValueError, match="mask_activation"):
    builders.max_criterion(mask_activation="relu")
  with pytest.raises(ValueError, match="negative_weighting"):
    builders.max_criterion(negative_class_weighting="x")
  with pytest.raises(ValueError, match="anchors"):
    mask_losses.InstanceDiscrimination(anchors="stuff")
  with pytest.raises(ValueError, match="temperature"):
    mask_losses.InstanceDiscrimination(temperature=0.0)
  batch, outputs = _make_inputs(num_aux=1)
  loss_fn = builders.max_criterion(matcher_method="scipy")
  with pytest.raises(ValueError, match="matching must be"):
    loss_fn(_to_tf(batch), _to_tf(outputs),
            matching=tf.zeros([B, K + 1], tf.int32))
  with pytest.raises(ValueError, match="3 matchings for 2 decoder stages"):
    loss_fn(_to_tf(batch), _to_tf(outputs),
            matching=[tf.zeros([B, K], tf.int32)] * 3)
  outputs[common.AUX_OUTPUTS][0][common.PRED_CLASS_LOGITS] = (
      outputs[common.AUX_OUTPUTS][0][common.PRED_CLASS_LOGITS][:, :2])
  with pytest.raises(ValueError, match="predictions, the final output"):
    loss_fn(_to_tf(batch), _to_tf(outputs))
