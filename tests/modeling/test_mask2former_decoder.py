"""Mask2Former's masked-attention decoder: the attention mask and its fallback, masked
attention, the prediction contract and XLA, against numpy and hand-worked cases.

(Parity of the whole decoder with transformers' module is in
tests/tools/test_hf_mask2former_transformer_decoder.py.)
"""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.modeling.transformer_decoders.mask2former import (
    Mask2FormerDecoder, MaskedAttention, blocked_positions)

NUM_CLASSES = 3
QUERIES = 4
DIM = 8


def _features(batch=2, size=(32, 48), dim=DIM, seed=0):
  rng = np.random.default_rng(seed)
  return {f"stride{s}": tf.constant(rng.normal(size=(batch, size[0] // s, size[1] // s, dim)),
                                    tf.float32) for s in (4, 8, 16, 32)}


def _decoder(**overrides):
  kwargs = dict(num_classes=NUM_CLASSES, num_queries=QUERIES, hidden_dim=DIM, num_heads=2,
                ffn_dim=16, num_layers=2, mask_dim=DIM)
  kwargs.update(overrides)
  return Mask2FormerDecoder(**kwargs)


def test_blocked_positions_hand_worked_with_empty_mask_fallback():
  # [batch 1, h 2, w 2, 3 queries]: query 0 is inside its mask at (0, 1) and (1, 0) only;
  # query 1's mask is empty (every probability < 0.5): it must attend everywhere;
  # query 2's mask is full.
  logits = np.zeros([1, 2, 2, 3], np.float32)
  logits[0, :, :, 0] = [[-1.0, 2.0], [0.5, -3.0]]
  logits[0, :, :, 1] = [[-0.1, -2.0], [-5.0, -0.01]]
  logits[0, :, :, 2] = [[1.0, 0.1, ], [3.0, 0.2]]
  blocked = blocked_positions(tf.constant(logits), 0.5).numpy()
  expected = np.array([[[True, False, False, True],
                        [False, False, False, False],
                        [False, False, False, False]]])
  np.testing.assert_array_equal(blocked, expected)
  # The threshold is a probability: at 0.7 (logit 0.847) query 0's 0.5 is masked too.
  blocked = blocked_positions(tf.constant(logits), 0.7).numpy()
  np.testing.assert_array_equal(blocked[0, 0], [True, False, True, True])


def test_masked_attention_equals_numpy():
  rng = np.random.default_rng(1)
  query = rng.normal(size=(2, 3, DIM)).astype(np.float32)
  key = rng.normal(size=(2, 5, DIM)).astype(np.float32)
  value = rng.normal(size=(2, 5, DIM)).astype(np.float32)
  blocked = rng.uniform(size=(2, 3, 5)) < 0.5
  blocked[..., 0] = False
  attention = MaskedAttention(DIM, num_heads=2)
  got = attention(query, key, value, tf.constant(blocked)).numpy()

  def project(dense, x):
    return x @ dense.kernel.numpy() + dense.bias.numpy()

  q, k, v = (project(d, x).reshape(2, -1, 2, DIM // 2)
             for d, x in ((attention.q, query), (attention.k, key), (attention.v, value)))
  logits = np.einsum("bqhd,bshd->bhqs", q, k) / np.sqrt(DIM // 2)
  logits = np.where(blocked[:, None], -np.inf, logits)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqs,bshd->bqhd", weights, v).reshape(2, 3, DIM)
  np.testing.assert_allclose(got, project(attention.out, out), atol=1e-5)


def test_outputs_follow_the_prediction_contract_and_xla_equals_eager():
  decoder = _decoder()
  features = _features()
  eager = decoder(features)
  assert decoder.predicts_outputs
  assert eager[common.PRED_CLASS_LOGITS].shape == (2, QUERIES, NUM_CLASSES + 1)
  assert eager[common.PRED_MASK_LOGITS].shape == (2, 8, 12, QUERIES)
  assert len(eager[common.AUX_OUTPUTS]) == 2    # before the first layer, after the first
  compiled = tf.function(lambda f: decoder(f, training=True), jit_compile=True)(features)
  for got, want in zip(compiled[common.AUX_OUTPUTS] + [compiled],
                       eager[common.AUX_OUTPUTS] + [eager]):
    for key in (common.PRED_CLASS_LOGITS, common.PRED_MASK_LOGITS):
      np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, rtol=1e-5)


def test_the_first_prediction_is_the_normalised_queries_alone():
  decoder = _decoder()
  features = _features()
  first = decoder(features)[common.AUX_OUTPUTS][0]
  # Layer norm (gamma 1, beta 0 at init) of the query features, then the heads.
  x = decoder.query_features.numpy()
  normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
  dense = lambda layer, v: v @ layer.kernel.numpy() + layer.bias.numpy()
  embedding = normed
  for i, layer in enumerate(decoder.mask_embedding.dense):
    embedding = dense(layer, embedding)
    embedding = np.maximum(embedding, 0) if i < 2 else embedding
  masks = np.einsum("bhwc,nc->bhwn", features["stride4"].numpy(), embedding)
  np.testing.assert_allclose(first[common.PRED_MASK_LOGITS].numpy(), masks, atol=1e-4)
  np.testing.assert_allclose(first[common.PRED_CLASS_LOGITS].numpy()[0],
                             dense(decoder.class_head, normed), atol=1e-5)


def test_bad_features_fail_with_one_clear_line():
  features = _features()
  with pytest.raises(ValueError, match=r"needs the pixel-decoder outputs \['stride4'\]"):
    _decoder()({k: v for k, v in features.items() if k != "stride4"})
  with pytest.raises(ValueError, match=r"stride32 is 8 wide, hidden_dim is 16; set "
                                       r"Mask2FormerDecoder.input_projection"):
    _decoder(hidden_dim=16)(features)
  outputs = _decoder(hidden_dim=16, input_projection=True)(features)
  assert outputs[common.PRED_CLASS_LOGITS].shape == (2, QUERIES, NUM_CLASSES + 1)
