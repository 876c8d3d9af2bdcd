"""The criterion alone: per-pixel terms without a matcher, term bookkeeping."""

import math

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import semantic

B, H, W, C = 2, 8, 8, 3
VOID = 255


def _semantic_inputs(seed=0, logit_size=(4, 4)):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, size=(B, H, W)).astype(np.int32)
  labels[rng.random((B, H, W)) < 0.2] = VOID
  weight = np.where(labels != VOID, 1.0, 0.0).astype(np.float32)
  weight[(labels != VOID) & (rng.random((B, H, W)) < 0.3)] = 2.0
  batch = {common.GT_SEMANTIC: tf.constant(labels),
           common.GT_SEMANTIC_WEIGHT: tf.constant(weight)}
  logits = rng.normal(size=(B,) + logit_size + (C,)).astype(np.float32)
  return batch, {common.PRED_SEMANTIC_LOGITS: tf.constant(logits)}


def _np_cross_entropy(logits, labels, weights, top_k=1.0):
  """Per-image loss of [h, w, C] logits against same-size labels, loops."""
  terms = []
  for i in range(logits.shape[0]):
    for j in range(logits.shape[1]):
      if weights[i, j] > 0:
        z = logits[i, j].astype(np.float64)
        log_p = z - z.max() - math.log(np.exp(z - z.max()).sum())
        terms.append((weights[i, j] * -log_p[labels[i, j]], 1))
      else:
        terms.append((0.0, 0))
  if top_k < 1.0:
    terms = sorted(terms, key=lambda t: -t[0])[
        :int(round(top_k * logits.shape[0] * logits.shape[1]))]
  return sum(v for v, _ in terms) / max(sum(c for _, c in terms), 1)


def _np_nearest(x, h, w):
  rows = [min(int(math.floor((i + 0.5) * x.shape[0] / h)), x.shape[0] - 1)
          for i in range(h)]
  cols = [min(int(math.floor((j + 0.5) * x.shape[1] / w)), x.shape[1] - 1)
          for j in range(w)]
  return x[rows][:, cols]


@pytest.mark.parametrize("top_k", [1.0, 0.25])
def test_semantic_only_criterion_resizes_labels(top_k):
  batch, outputs = _semantic_inputs()
  loss_fn = criterion_lib.Criterion(
      terms=[semantic.SemanticCrossEntropy(weight=2.0, top_k_percent=top_k)])
  losses = loss_fn(batch, outputs)
  assert set(losses) == {common.LOSS_SEMANTIC, common.LOSS_TOTAL}
  logits = outputs[common.PRED_SEMANTIC_LOGITS].numpy()
  expected = np.mean([_np_cross_entropy(
      logits[b], _np_nearest(batch[common.GT_SEMANTIC].numpy()[b], 4, 4),
      _np_nearest(batch[common.GT_SEMANTIC_WEIGHT].numpy()[b], 4, 4), top_k)
                      for b in range(B)])
  np.testing.assert_allclose(losses[common.LOSS_SEMANTIC].numpy(),
                             2.0 * expected, rtol=1e-5)
  np.testing.assert_allclose(losses[common.LOSS_TOTAL].numpy(),
                             2.0 * expected, rtol=1e-5)


def test_semantic_criterion_can_upsample_the_logits():
  batch, outputs = _semantic_inputs(seed=1)
  loss_fn = criterion_lib.Criterion(
      terms=[semantic.SemanticCrossEntropy(resize="logits")])
  losses = loss_fn(batch, outputs)
  upsampled = tf.image.resize(outputs[common.PRED_SEMANTIC_LOGITS], (H, W),
                              method="bilinear").numpy()
  expected = np.mean([_np_cross_entropy(
      upsampled[b], batch[common.GT_SEMANTIC].numpy()[b],
      batch[common.GT_SEMANTIC_WEIGHT].numpy()[b]) for b in range(B)])
  np.testing.assert_allclose(losses[common.LOSS_SEMANTIC].numpy(), expected,
                             rtol=1e-5)
  # align_corners samples the logits elsewhere: a different value.
  aligned = criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy(
      resize="logits", align_corners=True)])(batch, outputs)
  assert abs(float(aligned[common.LOSS_SEMANTIC]) - expected) > 1e-4


def test_semantic_criterion_compiles_with_xla_and_trains_the_logits():
  batch, outputs = _semantic_inputs(seed=2)
  loss_fn = criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy()])
  logits = tf.Variable(outputs[common.PRED_SEMANTIC_LOGITS])

  @tf.function(jit_compile=True)
  def step():
    with tf.GradientTape() as tape:
      losses = loss_fn(batch, {common.PRED_SEMANTIC_LOGITS: logits})
    return losses, tape.gradient(losses[common.LOSS_TOTAL], logits)

  losses, grad = step()
  np.testing.assert_allclose(losses[common.LOSS_TOTAL].numpy(),
                             loss_fn(batch, outputs)[common.LOSS_TOTAL].numpy(),
                             rtol=1e-5)
  assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)


def test_semantic_criterion_from_gin():
  gin.clear_config()
  try:
    gin.parse_config("""
        Criterion.terms = [@SemanticCrossEntropy()]
        SemanticCrossEntropy.weight = 0.5
    """)
    loss_fn = criterion_lib.Criterion()
  finally:
    gin.clear_config()
  batch, outputs = _semantic_inputs(seed=3)
  reference = criterion_lib.Criterion(
      terms=[semantic.SemanticCrossEntropy()])(batch, outputs)
  np.testing.assert_allclose(
      loss_fn(batch, outputs)[common.LOSS_SEMANTIC].numpy(),
      0.5 * reference[common.LOSS_SEMANTIC].numpy(), rtol=1e-6)


def test_auxiliary_head_term_reads_its_own_logits():
  batch, outputs = _semantic_inputs(seed=4)
  _, aux = _semantic_inputs(seed=5, logit_size=(2, 2))
  outputs[common.PRED_AUX_SEMANTIC_LOGITS] = aux[common.PRED_SEMANTIC_LOGITS]
  losses = criterion_lib.Criterion(terms=[
      semantic.SemanticCrossEntropy(),
      semantic.AuxiliarySemanticCrossEntropy()])(batch, outputs)
  assert set(losses) == {common.LOSS_SEMANTIC, common.LOSS_AUX_SEMANTIC,
                         common.LOSS_TOTAL}
  logits = aux[common.PRED_SEMANTIC_LOGITS].numpy()
  expected = np.mean([_np_cross_entropy(
      logits[b], _np_nearest(batch[common.GT_SEMANTIC].numpy()[b], 2, 2),
      _np_nearest(batch[common.GT_SEMANTIC_WEIGHT].numpy()[b], 2, 2))
                      for b in range(B)])
  np.testing.assert_allclose(losses[common.LOSS_AUX_SEMANTIC].numpy(),
                             0.4 * expected, rtol=1e-5)
  np.testing.assert_allclose(
      losses[common.LOSS_TOTAL].numpy(),
      losses[common.LOSS_SEMANTIC].numpy() + 0.4 * expected, rtol=1e-5)


def test_zero_weight_reports_zero_without_reading_outputs():
  batch, _ = _semantic_inputs()
  losses = criterion_lib.Criterion(
      terms=[semantic.SemanticCrossEntropy(weight=0.0)])(batch, {})
  assert float(losses[common.LOSS_SEMANTIC]) == 0.0


def test_configuration_errors_name_what_is_wrong():
  with pytest.raises(ValueError, match="Criterion.terms is empty"):
    criterion_lib.Criterion()
  with pytest.raises(TypeError, match="not a LossTerm"):
    criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy])
  with pytest.raises(ValueError, match="top_k_percent"):
    semantic.SemanticCrossEntropy(top_k_percent=0.0)
  with pytest.raises(ValueError, match="resize"):
    semantic.SemanticCrossEntropy(resize="both")
  with pytest.raises(ValueError, match="weight"):
    semantic.SemanticCrossEntropy(weight=-1.0)
  with pytest.raises(ValueError, match="mask_activation"):
    criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy()],
                            mask_activation="relu")
  loss_fn = criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy(),
                                           semantic.SemanticCrossEntropy()])
  batch, outputs = _semantic_inputs()
  with pytest.raises(ValueError, match="already reports"):
    loss_fn(batch, outputs)
  with pytest.raises(KeyError, match=common.PRED_SEMANTIC_LOGITS):
    criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy()])(batch, {})
  with pytest.raises(ValueError, match="no matcher"):
    criterion_lib.Criterion(terms=[semantic.SemanticCrossEntropy()]).match(
        batch, outputs)
