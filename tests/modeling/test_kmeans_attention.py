"""k-means cross-attention against a direct numpy computation."""

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling.layers import kmeans_attention
from deeplab_panoptic.modeling.layers.drop_path import DropPath


def test_assignment_and_update_match_numpy_kmeans_step():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  values = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  assign = kmeans_attention.kmeans_assignment(tf.constant(logits)).numpy()
  update = kmeans_attention.kmeans_center_update(tf.constant(assign), tf.constant(values)).numpy()

  expected = np.zeros((2, 5, 6), np.float32)
  for b in range(2):
    for i in range(3):
      for j in range(4):
        k = int(np.argmax(logits[b, i, j]))
        assert assign[b, i, j, k] == 1.0 and assign[b, i, j].sum() == 1.0
        expected[b, k] += values[b, i, j]
  np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-5)


def test_assignment_has_no_gradient():
  logits = tf.Variable(tf.random.normal([1, 2, 2, 3]))
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(kmeans_attention.kmeans_assignment(logits) * 3.0)
  assert tape.gradient(y, logits) is None


def test_drop_path_keeps_expectation_and_drops_whole_samples():
  layer = DropPath(0.5)
  x = tf.ones([4000, 3])
  y = layer(x, training=True).numpy()
  # Each sample is all-zero or all-(1/keep).
  assert set(np.unique(y).tolist()) <= {0.0, 2.0}
  assert np.all(y.min(axis=1) == y.max(axis=1))
  assert abs(y.mean() - 1.0) < 0.06
  np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())


# ---------------------------------------------------------------------------
# The whole kMaX transformer layer in training mode against numpy, written from
# kMaX-DeepLab (arXiv 2207.04044) section 3.2, eq. (4)-(5): the k-means
# cross-attention  C^ = C + argmax_N(Q^c (K^p)^T) V^p  (a hard assignment of each
# pixel to one cluster centre: the argmax runs over the N centres), the updated
# centres then go through self-attention and the FFN. deeplab2 (google-research/
# deeplab2, model/layers/transformer_decoder / kmax layers) batch-normalises the
# summed update; in training every batch norm uses the batch's statistics.
# ---------------------------------------------------------------------------
B, HH, WW, CP = 2, 3, 4, 6            # pixels [B, h, w, c_pixel]
NC, CD = 5, 8                         # N centres of width d
BOTTLENECK, HEADS, KEY, VALUE, FFN = 8, 2, 8, 8, 10
EPS = 1e-3                            # conv.batch_norm's epsilon


class _Affinity(keras.layers.Layer):
  """Stand-in predictor: mask logits = pixels . centres (the Q^c (K^p)^T of eq. 4)."""

  def call(self, pixels, class_embedding, mask_embedding, training=None):
    del class_embedding, training
    return {common.PRED_MASK_LOGITS: tf.einsum("bhwd,bnd->bhwn", pixels, mask_embedding)}


def _bn_train(x, bn, channel_axes=(-1,)):
  """Training-mode batch norm: statistics over every axis but the channel axes."""
  channel_axes = [a % x.ndim for a in channel_axes]
  reduce = tuple(a for a in range(x.ndim) if a not in channel_axes)
  shape = [x.shape[a] if a in channel_axes else 1 for a in range(x.ndim)]
  mean, var = x.mean(reduce, keepdims=True), x.var(reduce, keepdims=True)
  gamma, beta = (np.reshape(v.numpy(), shape) for v in (bn.gamma, bn.beta))
  return gamma * (x - mean) / np.sqrt(var + EPS) + beta


def _relu(x):
  return np.maximum(x, 0.0)


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _numpy_kmax_layer(layer, pixels, centers):
  """kMaX-DeepLab eq. (4) and the layer around it, training mode, ReLU."""
  w = lambda sub: sub.kernel.numpy()
  c = _relu(_bn_train(centers @ w(layer._center_in), layer._center_in_bn))  # Q^c side
  p = _relu(_bn_train(_relu(pixels) @ w(layer._pixel_in._conv)[0, 0],
                      layer._pixel_in._bn))                                   # K^p side
  logits = np.einsum("bhwd,bnd->bhwn", p, c)            # Q^c (K^p)^T, per pixel
  # argmax over the N centres: one-hot, each pixel to exactly one centre.
  hard = np.eye(NC)[logits.argmax(-1)]                  # [B, h, w, N]
  v = _bn_train(p @ w(layer._pixel_value._conv)[0, 0], layer._pixel_value._bn)  # V^p
  update = np.einsum("bhwn,bhwd->bnd", hard, v)         # sum of each cluster's values
  update = _bn_train(update, layer._update_bn)
  update = _bn_train(update @ w(layer._update_out), layer._update_out_bn)
  # Self-attention among the (pre-update) centres, in parallel.
  att = layer._self_attention
  qkv = _bn_train(c @ w(att._qkv), att._qkv_bn)
  q, k, val = np.split(qkv, [KEY, 2 * KEY], -1)
  heads = lambda t: t.reshape(B, NC, HEADS, -1)
  sim = _bn_train(np.einsum("bnhc,bmhc->bhnm", heads(q), heads(k)), att._similarity_bn, (1,))
  out = np.einsum("bhnm,bmhc->bnhc", _softmax(sim), heads(val)).reshape(B, NC, VALUE)
  attn = _bn_train(_relu(_bn_train(out, att._value_bn)) @ w(layer._attn_out),
                   layer._attn_out_bn)
  new = _relu(centers + update + attn)
  ffn = _relu(_bn_train(new @ w(layer._ffn_in), layer._ffn_in_bn))
  ffn = _bn_train(ffn @ w(layer._ffn_out), layer._ffn_out_bn)
  return _relu(new + ffn), logits


def test_kmax_layer_in_training_matches_numpy_kmeans_cross_attention():
  rng = np.random.default_rng(8)
  layer = kmeans_attention.KMaXTransformerLayer(
      CD, BOTTLENECK, HEADS, KEY, VALUE, FFN, predictor=_Affinity(), activation="relu")
  pixels = rng.normal(size=(B, HH, WW, CP)).astype(np.float32)
  centers = rng.normal(size=(B, NC, CD)).astype(np.float32)
  layer(tf.constant(pixels), tf.constant(centers), training=True)
  # Random weights everywhere (the gamma-0 branch ends included); training mode
  # must not read the moving statistics.
  positive = ("gamma", "moving_variance")
  layer.set_weights([rng.uniform(0.5, 1.5, v.shape) if any(n in v.name for n in positive)
                     else rng.normal(0, 0.5, v.shape) for v in layer.weights])
  got, aux = layer(tf.constant(pixels), tf.constant(centers), training=True)
  expected, logits = _numpy_kmax_layer(layer, pixels.astype(np.float64),
                                       centers.astype(np.float64))
  np.testing.assert_allclose(aux[common.PRED_MASK_LOGITS].numpy(), logits,
                             rtol=1e-4, atol=1e-4)
  # The hand-sized case is a real clustering: several centres win pixels, and no
  # pixel is near a tie (the argmax is decided by far more than the tolerance).
  top2 = np.sort(logits, -1)[..., -2:]
  assert np.min(top2[..., 1] - top2[..., 0]) > 1e-2
  assert all(len(np.unique(logits[b].argmax(-1))) >= 3 for b in range(B))
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
