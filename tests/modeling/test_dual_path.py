"""MaX-DeepLab dual-path transformer layer: eqs. 13 and 14 against numpy."""

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.layers.dual_path import DualPathTransformerLayer
from deeplab_panoptic.training import model_summary

EPS = 1e-3


def _randomise_batch_norms(layer, rng):
  for bn in [l for l in layer._flatten_layers()
             if l.__class__.__name__ == "BatchNormalization"]:
    bn.set_weights([rng.uniform(0.5, 1.5, w.shape) if i in (0, 3)
                    else rng.normal(0, 0.3, w.shape) for i, w in enumerate(bn.get_weights())])


def _bn(x, bn, shape=(-1,)):
  gamma, beta, mean, var = [w.reshape(shape) for w in bn.get_weights()]
  return gamma * (x - mean) / np.sqrt(var + EPS) + beta


def _dense_bn(x, layer, act=False):
  y = _bn(x @ layer._dense.kernel.numpy(), layer._bn)
  return np.maximum(y, 0) if act else y


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _attention(q, k, v, op, heads):
  """q [l, H, dk], k [m, H, dk], v [m, H, dv] -> [l, H * dv], BN per head (and channel)."""
  logits = np.einsum("lhd,mhd->hlm", q, k)
  logits = _bn(logits, op._bn_similarity, (heads, 1, 1))
  out = np.einsum("hlm,mhd->hld", _softmax(logits), v)
  out = np.maximum(_bn(out, op._bn_value, (heads, 1, -1)), 0)
  return out.transpose(1, 0, 2).reshape(q.shape[0], -1)


def test_dual_path_layer_matches_numpy_reference():
  rng = np.random.default_rng(0)
  b, hh, ww, c_pix, n, c_mem = 2, 3, 4, 12, 5, 10
  heads, key_dim, value_dim, bottleneck, ffn = 2, 8, 12, 16, 20
  layer = DualPathTransformerLayer(bottleneck, key_dim, value_dim, heads, ffn, "relu")
  pixel = rng.normal(size=(b, hh, ww, c_pix)).astype(np.float32)
  memory = np.maximum(rng.normal(size=(b, n, c_mem)), 0).astype(np.float32)
  layer((pixel, memory))
  # Random BNs everywhere, the zero-initialised branch ends included.
  _randomise_batch_norms(layer, rng)
  got_pixel, got_memory = [t.numpy() for t in layer((pixel, memory), training=False)]

  dk, dv = key_dim // heads, value_dim // heads
  exp_pixel = np.zeros_like(pixel)
  exp_memory = np.zeros_like(memory)
  for i in range(b):
    p_in = pixel[i].reshape(hh * ww, c_pix)
    m_in = memory[i]
    m = _dense_bn(m_in, layer._memory_conv1, act=True)
    p = _dense_bn(np.maximum(p_in, 0), layer._pixel_conv1, act=True)
    m_qkv = _dense_bn(m, layer._memory_qkv)
    p_qkv = _dense_bn(p, layer._pixel_qkv)
    split = lambda t: (t[:, :key_dim].reshape(-1, heads, dk),
                       t[:, key_dim:2 * key_dim].reshape(-1, heads, dk),
                       t[:, 2 * key_dim:].reshape(-1, heads, dv))
    m_q, m_k, m_v = split(m_qkv)
    p_q, p_k, p_v = split(p_qkv)
    # Eq. 14: memory queries, one softmax over [pixel keys; memory keys].
    upd = _attention(m_q, np.concatenate([p_k, m_k]), np.concatenate([p_v, m_v]),
                     layer._memory_attention, heads)
    mem = np.maximum(m_in + _dense_bn(upd, layer._memory_conv3), 0)
    ffn_out = _dense_bn(_dense_bn(mem, layer._ffn1, act=True), layer._ffn2)
    exp_memory[i] = np.maximum(mem + ffn_out, 0)
    # Eq. 13: pixel queries read the input memory's keys and values.
    upd = _attention(p_q, m_k, m_v, layer._pixel_attention, heads)
    exp_pixel[i] = (p_in + _dense_bn(upd, layer._pixel_conv3)).reshape(hh, ww, c_pix)
  np.testing.assert_allclose(got_memory, exp_memory, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_pixel, exp_pixel, rtol=1e-4, atol=1e-4)


def test_memory_attention_is_one_softmax_over_pixels_and_memory():
  # With pixel keys equal to memory keys scaled up, a separate-softmax design would
  # differ; check the weights the layer uses sum to one over H*W + N keys.
  layer = DualPathTransformerLayer(8, 4, 8, 2, 16)
  pixel = tf.random.normal([1, 2, 3, 6])
  memory = tf.nn.relu(tf.random.normal([1, 4, 8]))
  layer((pixel, memory))
  op = layer._memory_attention
  q = tf.random.normal([1, 2, 4, 2])
  k = tf.random.normal([1, 2, 6 + 4, 2])
  v = tf.ones([1, 6 + 4, 2, 4])
  # Values all one: BN-free retrieved value is exactly one iff the weights sum to 1.
  logits = op._bn_similarity(tf.einsum("bhld,bhmd->bhlm", q, k), training=False)
  weights = tf.nn.softmax(logits, axis=-1)
  np.testing.assert_allclose(tf.reduce_sum(weights, -1), 1.0, rtol=1e-5)
  assert op((q, k, v)).shape == (1, 4, 8)


def test_fresh_layer_keeps_pixels_and_drop_path_trains():
  layer = DualPathTransformerLayer(8, 4, 8, 2, 16, drop_path_rate=0.5)
  pixel = tf.random.normal([3, 2, 3, 6])
  memory = tf.nn.relu(tf.random.normal([3, 4, 8]))
  out_pixel, out_memory = layer((pixel, memory), training=False)
  # Branch ends start at BN gamma 0: pixels pass through, memory is re-activated.
  np.testing.assert_allclose(out_pixel, pixel, atol=1e-6)
  np.testing.assert_allclose(out_memory, memory, atol=1e-6)
  out_pixel, out_memory = layer((pixel, memory), training=True)
  assert out_pixel.shape == pixel.shape and out_memory.shape == memory.shape


def test_parameter_count_matches_deeplab2_max_s_layer():
  # deeplab2 (google-research/deeplab2, model/layers/dual_path_transformer.py):
  # 2,517,056 per MaX-S layer (pixel 2048, memory 256).
  layer = DualPathTransformerLayer(256, 128, 256, 8, 2048)
  layer((tf.zeros([1, 2, 2, 2048]), tf.zeros([1, 3, 256])))
  assert model_summary.count_params(layer.weights) == 2_517_056


def test_train_step_compiles_with_xla():
  layer = DualPathTransformerLayer(8, 4, 8, 2, 16, drop_path_rate=0.2)
  pixel = tf.random.normal([2, 3, 3, 6])
  memory = tf.nn.relu(tf.random.normal([2, 4, 8]))
  layer((pixel, memory))

  @tf.function(jit_compile=True)
  def step(pixel, memory):
    with tf.GradientTape() as tape:
      out_pixel, out_memory = layer((pixel, memory), training=True)
      loss = tf.reduce_sum(tf.square(out_pixel)) + tf.reduce_sum(tf.square(out_memory))
    return loss, tape.gradient(loss, layer.trainable_variables)

  loss, grads = step(pixel, memory)
  assert np.isfinite(loss.numpy()) and all(g is not None for g in grads)


def _bn_train(x, bn, channel_axes=(-1,)):
  """Training-mode batch norm: statistics of ``x`` over every non-channel axis."""
  channel_axes = [a % x.ndim for a in channel_axes]
  reduce = tuple(a for a in range(x.ndim) if a not in channel_axes)
  shape = [x.shape[a] if a in channel_axes else 1 for a in range(x.ndim)]
  gamma, beta = (np.reshape(v.numpy(), shape) for v in (bn.gamma, bn.beta))
  return gamma * (x - x.mean(reduce, keepdims=True)) / np.sqrt(
      x.var(reduce, keepdims=True) + EPS) + beta


def _retrieve(q, k, v, op):
  """softmax over the keys of BN(q . k), per head: MaX-DeepLab eq. 13 / 14 (training).

  q [B, l, H, dk], k [B, m, H, dk], v [B, m, H, dv] -> [B, l, H * dv].
  """
  similarity = _bn_train(np.einsum("blhd,bmhd->bhlm", q, k), op._bn_similarity, (1,))
  out = np.einsum("bhlm,bmhd->bhld", _softmax(similarity), v)
  out = np.maximum(_bn_train(out, op._bn_value, (1, 3)), 0)
  return out.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], -1)


def test_dual_path_layer_in_training_uses_batch_statistics():
  """Training mode (drop path off): every BN normalises with the batch's statistics
  (over images, positions and, for the similarities, both attention axes) and
  updates its moving averages; MaX-DeepLab (arXiv 2012.00759) eq. 13 and 14."""
  rng = np.random.default_rng(4)
  b, hh, ww, c_pix, n, c_mem = 2, 3, 4, 12, 5, 10
  heads, key_dim, value_dim, bottleneck, ffn = 2, 8, 12, 16, 20
  layer = DualPathTransformerLayer(bottleneck, key_dim, value_dim, heads, ffn, "relu",
                                   drop_path_rate=0.0)
  pixel = rng.normal(size=(b, hh, ww, c_pix)).astype(np.float32)
  memory = np.maximum(rng.normal(size=(b, n, c_mem)), 0).astype(np.float32)
  layer((pixel, memory))
  _randomise_batch_norms(layer, rng)
  bn = layer._memory_conv1._bn
  moving_mean = bn.moving_mean.numpy()
  got_pixel, got_memory = [t.numpy() for t in layer((pixel, memory), training=True)]

  relu = lambda x: np.maximum(x, 0)
  dense_bn = lambda x, l: _bn_train(x @ l._dense.kernel.numpy(), l._bn)
  flat = pixel.reshape(b, hh * ww, c_pix).astype(np.float64)
  m = relu(dense_bn(memory.astype(np.float64), layer._memory_conv1))
  p = relu(dense_bn(relu(flat), layer._pixel_conv1))
  dk, dv = key_dim // heads, value_dim // heads
  split = lambda t: (t[..., :key_dim].reshape(b, -1, heads, dk),
                     t[..., key_dim:2 * key_dim].reshape(b, -1, heads, dk),
                     t[..., 2 * key_dim:].reshape(b, -1, heads, dv))
  m_q, m_k, m_v = split(dense_bn(m, layer._memory_qkv))
  p_q, p_k, p_v = split(dense_bn(p, layer._pixel_qkv))
  # Eq. 14: memory queries over [pixel keys; memory keys], one softmax.
  update = _retrieve(m_q, np.concatenate([p_k, m_k], 1), np.concatenate([p_v, m_v], 1),
                     layer._memory_attention)
  mem = relu(memory + dense_bn(update, layer._memory_conv3))
  exp_memory = relu(mem + dense_bn(relu(dense_bn(mem, layer._ffn1)), layer._ffn2))
  # Eq. 13: pixel queries over the input memory's keys.
  update = _retrieve(p_q, m_k, m_v, layer._pixel_attention)
  exp_pixel = (flat + dense_bn(update, layer._pixel_conv3)).reshape(pixel.shape)
  np.testing.assert_allclose(got_memory, exp_memory, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_pixel, exp_pixel, rtol=1e-4, atol=1e-4)
  # Moving mean: momentum 0.99 towards the batch mean of the projected memory.
  batch_mean = (memory @ layer._memory_conv1._dense.kernel.numpy()).mean((0, 1))
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.99 * moving_mean + 0.01 * batch_mean,
                             rtol=1e-5, atol=1e-6)
