"""Tests for ReMaX ReMask / ReClass (deeplab_panoptic.losses.remax) vs numpy."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import remax
from tests.losses import builders
from tests.losses import test_mask_losses as base


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_remask(mask_logits, semantic_logits, class_logits):
  """Eq. 1-2 for one image with loops: [P, N], [P, C], [N, C(+1)]."""
  p_count, n_count = mask_logits.shape
  c_count = semantic_logits.shape[-1]
  out = np.zeros_like(mask_logits, dtype=np.float64)
  for p in range(p_count):
    for n in range(n_count):
      guide = sum(_sigmoid(semantic_logits[p, c]) * _sigmoid(class_logits[n, c])
                  for c in range(c_count))
      out[p, n] = mask_logits[p, n] + guide * mask_logits[p, n]
  return out


def _np_reclass(mask_probs, semantic, target_class, num_classes, eta):
  """Eq. 3-4 for one prediction: probs [P], semantic ids [P] -> [C + 1]."""
  y = np.zeros(num_classes + 1)
  y[target_class] = 1.0
  out = y.copy()
  for c in range(num_classes):
    area = np.sum(semantic == c)
    y_m = np.sum(mask_probs[semantic == c]) / area if area else 0.0
    out[c] = eta * y_m + (1 - eta * y_m) * y[c]
  return out


def test_remask_matches_numpy():
  rng = np.random.default_rng(0)
  mask = rng.normal(size=(2, 6, 4))
  semantic = rng.normal(size=(2, 6, 3))
  classes = rng.normal(size=(2, 4, 4))  # C + 1 entries, void last
  value = remax.remask_logits(tf.constant(mask), tf.constant(semantic),
                              tf.constant(classes)).numpy()
  for b in range(2):
    np.testing.assert_allclose(value[b],
                               _np_remask(mask[b], semantic[b], classes[b]),
                               rtol=1e-12)


def test_remask_gradients_and_stop_gradient():
  rng = np.random.default_rng(1)
  mask = tf.constant(rng.normal(size=(1, 5, 3)))
  semantic = tf.constant(rng.normal(size=(1, 5, 2)))
  classes = tf.constant(rng.normal(size=(1, 3, 3)))
  # A non-linear read-out so every input matters.
  fn = lambda m, c: tf.reduce_sum(  # pylint: disable=g-long-lambda
      tf.sin(remax.remask_logits(m, semantic, c)))
  theoretical, numerical = tf.test.compute_gradient(fn, [mask, classes],
                                                    delta=1e-6)
  for t, n in zip(theoretical, numerical):
    np.testing.assert_allclose(t, n, atol=1e-6)
  with tf.GradientTape() as tape:
    tape.watch(semantic)
    out = tf.reduce_sum(remax.remask_logits(mask, semantic, classes))
  assert tape.gradient(out, semantic) is None  # stop-gradient into m_sem.
  with pytest.raises(ValueError, match="semantic classes"):
    remax.remask_logits(mask, semantic, tf.zeros([1, 3, 5], tf.float64))


def test_reclass_targets_match_numpy():
  rng = np.random.default_rng(2)
  num_classes, pixels, preds = 3, 10, 4
  probs = rng.uniform(size=(2, pixels, preds))
  semantic = rng.choice([0, 1, 2, 255], size=(2, pixels))
  semantic[1][semantic[1] == 1] = 0  # class 1 absent in image 1
  targets = rng.integers(0, num_classes + 1, size=(2, preds))
  one_hot = np.eye(num_classes + 1)[targets]
  value = remax.reclass_targets(
      tf.constant(probs),
      remax.semantic_one_hot(tf.constant(semantic), num_classes, tf.float64),
      tf.constant(one_hot), 0.1).numpy()
  for b in range(2):
    for n in range(preds):
      np.testing.assert_allclose(
          value[b, n], _np_reclass(probs[b, :, n], semantic[b], targets[b, n],
                                   num_classes, 0.1), rtol=1e-12)
  # The true class keeps target 1; no gradient flows into the mask probs.
  assert np.all(value[np.arange(2)[:, None], np.arange(preds)[None],
                      targets] == 1.0)
  with tf.GradientTape() as tape:
    p = tf.constant(probs)
    tape.watch(p)
    out = tf.reduce_sum(remax.reclass_targets(
        p, remax.semantic_one_hot(tf.constant(semantic), num_classes,
                                  tf.float64), tf.constant(one_hot), 0.1))
  assert tape.gradient(out, p) is None


# ----------------------------------------------------------------------------
# Inside the criterion (ReMask, ReClass, StageSemanticCrossEntropy).
# ----------------------------------------------------------------------------
def _with_stage_semantics(outputs, rng):
  for out in [outputs] + outputs[common.AUX_OUTPUTS]:
    out[common.PRED_STAGE_SEMANTIC_LOGITS] = rng.normal(
        size=(base.B, base.HP, base.WP, base.C)).astype(np.float32)
  return outputs


def _np_pq_class_soft(class_logits, match, dice, soft_targets, alpha=0.75):
  """MaX PQ class term with soft positive targets (ReClass)."""
  total = 0.0
  num = class_logits.shape[0]
  slot_of = {n: k for k, n in match.items()}
  for n in range(num):
    z = class_logits[n].astype(np.float64)
    log_p = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
    if n in slot_of:
      k = slot_of[n]
      total += alpha * max(dice[k, n], 1e-5) * -np.sum(soft_targets[n] * log_p)
    else:
      total += (1 - alpha) * -log_p[-1]
  return total / num


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_remax_loss_matches_numpy(activation):
  batch, outputs = base._make_inputs(seed=21, num_aux=1)
  outputs = _with_stage_semantics(outputs, np.random.default_rng(22))
  # Stages: aux_0 (0), final (1); ReMask on both, ReClass everywhere.
  loss_fn = builders.max_criterion(
      matcher_method="scipy", mask_activation=activation,
      remask_num_stages=2, reclass_eta=0.1)
  result = loss_fn(base._to_tf(batch), base._to_tf(outputs))
  stages = [("aux_0/", base._resized_aux(outputs[common.AUX_OUTPUTS][0])),
            ("", outputs)]
  expected = {}
  for b in range(base.B):
    ref = base._Reference(batch, b, activation)
    sem_ids = base._np_resize_nearest(batch[common.GT_SEMANTIC][b], base.HP,
                                      base.WP).ravel()
    remasked = {}
    for prefix, out in stages:
      flat = out[common.PRED_MASK_LOGITS][b].reshape(-1, base.N)
      sem = out[common.PRED_STAGE_SEMANTIC_LOGITS][b].reshape(-1, base.C)
      remasked[prefix] = _np_remask(flat, sem, out[common.PRED_CLASS_LOGITS][b])
    # Shared matching on the final (ReMasked) output.
    match = ref.match(outputs[common.PRED_CLASS_LOGITS][b],
                      remasked[""].reshape(base.HP, base.WP, base.N))
    for prefix, out in stages:
      relaxed = dict(out)
      relaxed[common.PRED_MASK_LOGITS] = np.array(
          out[common.PRED_MASK_LOGITS], np.float64)
      relaxed[common.PRED_MASK_LOGITS][b] = remasked[prefix].reshape(
          base.HP, base.WP, base.N)
      terms = ref.losses(relaxed, match)
      dice, _ = ref.similarity(out[common.PRED_CLASS_LOGITS][b],
                               relaxed[common.PRED_MASK_LOGITS][b])
      raw_probs = ref.probs(out[common.PRED_MASK_LOGITS][b])
      soft = {}
      for k, n in match.items():
        soft[n] = _np_reclass(raw_probs[:, n], sem_ids, ref.classes[k], base.C,
                              0.1)
      pq_class = _np_pq_class_soft(out[common.PRED_CLASS_LOGITS][b], match,
                                   dice, soft)
      for name, value in [(common.LOSS_PQ_CLASS, 3.0 * pq_class),
                          (common.LOSS_PQ_DICE, 3.0 * terms["pq_dice"]),
                          (common.LOSS_MASK_ID, 0.3 * terms["mask_id"]),
                          (common.LOSS_STAGE_SEMANTIC, 0.5 * base._np_semantic(
                              batch, out[common.PRED_STAGE_SEMANTIC_LOGITS],
                              b))]:
        expected.setdefault(prefix + name, []).append(value)
  for name, values in expected.items():
    np.testing.assert_allclose(result[name].numpy(), np.mean(values),
                               rtol=2e-4, atol=1e-6, err_msg=name)


def test_panoptic_losses_send_no_gradient_into_stage_semantics():
  batch, outputs = base._make_inputs(seed=23, num_aux=2)
  outputs = _with_stage_semantics(outputs, np.random.default_rng(24))
  batch, outputs = base._to_tf(batch), base._to_tf(outputs)
  # Stages aux_0, aux_1 get ReMask; aux_1's semantic logits must train only
  # through its semantic loss; the final stage (2) has none.
  loss_fn = builders.max_criterion(
      matcher_method="scipy", mask_activation="sigmoid", remask_num_stages=2,
      reclass_eta=0.1)
  semantic = [aux[common.PRED_STAGE_SEMANTIC_LOGITS]
              for aux in outputs[common.AUX_OUTPUTS]]
  final_semantic = outputs[common.PRED_STAGE_SEMANTIC_LOGITS]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(semantic + [final_semantic])
    result = loss_fn(batch, outputs)
    panoptic = result[common.LOSS_TOTAL] - tf.add_n(
        [result[f"aux_{i}/{common.LOSS_STAGE_SEMANTIC}"] for i in range(2)])
  assert common.LOSS_STAGE_SEMANTIC not in result  # final stage: no ReMask
  for i, logits in enumerate(semantic):
    grad = tape.gradient(panoptic, logits, unconnected_gradients="zero")
    np.testing.assert_array_equal(grad.numpy(), 0.0)
    total = tape.gradient(result[common.LOSS_TOTAL], logits)
    own = tape.gradient(result[f"aux_{i}/{common.LOSS_STAGE_SEMANTIC}"],
                        logits)
    np.testing.assert_allclose(total.numpy(), own.numpy(), atol=1e-7)
    assert np.any(own.numpy() != 0)
  assert tape.gradient(result[common.LOSS_TOTAL], final_semantic) is None


def test_remask_stage_without_semantic_logits_is_a_clear_error():
  batch, outputs = base._make_inputs(seed=25, num_aux=1)
  loss_fn = builders.max_criterion(matcher_method="scipy", remask_num_stages=1)
  with pytest.raises(KeyError, match="ReMask stage 0"):
    loss_fn(base._to_tf(batch), base._to_tf(outputs))
