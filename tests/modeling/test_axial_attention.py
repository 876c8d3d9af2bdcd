"""Position-sensitive axial attention and the axial residual blocks."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.layers import axial_attention
from deeplab_panoptic.modeling.layers.axial_attention import (
    AxialAttention, AxialAttention2D, ResidualBlock, relative_distance_index)
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder
from deeplab_panoptic.training import model_summary

EPS = 1e-3  # batch_norm's default epsilon.


def _randomise_batch_norms(layer, rng):
  """Random gamma/beta/mean/variance so the test sees every BN's axes."""
  for bn in [l for l in layer._flatten_layers() if "batch_norm" in l.name]:
    bn.set_weights([rng.uniform(0.5, 1.5, w.shape) if i in (0, 3)
                    else rng.normal(0, 0.3, w.shape) for i, w in enumerate(bn.get_weights())])


def _bn(x, bn, shape):
  gamma, beta, mean, var = [w.reshape(shape) for w in bn.get_weights()]
  return gamma * (x - mean) / np.sqrt(var + EPS) + beta


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_relative_distance_index():
  idx = relative_distance_index(3, max_span=4)
  # key - query + span - 1, so the diagonal is span - 1 = 3.
  np.testing.assert_array_equal(idx, [[3, 4, 5], [2, 3, 4], [1, 2, 3]])
  # Distances beyond the span share the boundary entry.
  assert relative_distance_index(6, max_span=2).max() == 2
  assert relative_distance_index(6, max_span=2).min() == 0


def test_axial_attention_matches_numpy_reference():
  rng = np.random.default_rng(0)
  b, length, c, heads, key_dim, value_dim = 2, 5, 6, 2, 4, 8
  layer = AxialAttention(key_dim, value_dim, heads, max_span=4)
  x = rng.normal(size=(b, length, c)).astype(np.float32)
  layer(x)
  _randomise_batch_norms(layer, rng)
  got = layer(x, training=False).numpy()

  dk, dv = key_dim // heads, value_dim // heads
  qkv = _bn(x @ layer.qkv_kernel.numpy(), layer._bn_qkv, (1, 1, -1))
  q = qkv[..., :key_dim].reshape(b, length, heads, dk)
  k = qkv[..., key_dim:2 * key_dim].reshape(b, length, heads, dk)
  v = qkv[..., 2 * key_dim:].reshape(b, length, heads, dv)
  # Relative positional encodings r[l, m] = table[m - l + span - 1].
  # Span 4 < length 5: the farthest distances share the table ends (0 and 6).
  rel = np.clip(np.arange(length)[None, :] - np.arange(length)[:, None] + 3, 0, 6)
  r_q, r_k, r_v = (t.numpy()[rel] for t in (layer.query_rpe, layer.key_rpe, layer.value_rpe))
  out = np.zeros((b, length, heads, dv))
  bn_sim = [w.reshape(3, heads) for w in layer._bn_similarity.get_weights()]
  bn_out = [w.reshape(2, heads, dv) for w in layer._bn_output.get_weights()]
  norm = lambda t, p, i, h: (p[0][i, h] * (t - p[2][i, h]) / np.sqrt(p[3][i, h] + EPS)
                             + p[1][i, h])
  for n in range(b):
    for h in range(heads):
      qk = q[n, :, h] @ k[n, :, h].T                       # [l, m]
      qr = np.einsum("ld,lmd->lm", q[n, :, h], r_q)
      kr = np.einsum("md,lmd->lm", k[n, :, h], r_k)
      logits = norm(qk, bn_sim, 0, h) + norm(qr, bn_sim, 1, h) + norm(kr, bn_sim, 2, h)
      w = _softmax(logits)
      content = w @ v[n, :, h]                            # [l, dv]
      position = np.einsum("lm,lmd->ld", w, r_v)
      out[n, :, h] = norm(content, bn_out, 0, h) + norm(position, bn_out, 1, h)
  np.testing.assert_allclose(got, out.reshape(b, length, value_dim), rtol=1e-4, atol=1e-4)


def test_axial_attention_parameter_count():
  # deeplab2 MaX-S stage-4 attention pass: 512 in, keys 256, values 512, 8 heads.
  layer = AxialAttention(256, 512, 8)
  layer(tf.zeros([1, 4, 512]))
  qkv = 512 * 1024 + 4 * 1024
  rpe = 509 * (32 + 32 + 64)
  bns = 4 * 3 * 8 + 4 * 2 * 512
  assert model_summary.count_params(layer.weights) == qkv + rpe + bns


def test_axial_attention_2d_height_then_width_and_stride():
  layer = AxialAttention2D(8, 16, num_heads=2, strides=2)
  out = layer(tf.random.normal([2, 7, 5, 6]))
  assert out.shape == (2, 4, 3, 16)
  # The height pass sees sequences of length 7, the width pass of length 5.
  assert layer._height_axis._length == 7 and layer._width_axis._length == 5


@pytest.mark.parametrize("kind,filters,strides,out_shape", [
    ("axial", (8, 8, 16), 1, (2, 6, 6, 16)),
    ("axial", (8, 8, 16), 2, (2, 3, 3, 16)),
    ("bottleneck", (4, 4, 16), 2, (2, 3, 3, 16)),
    ("basic", (8, 16), 1, (2, 6, 6, 16)),
])
def test_residual_block_shapes(kind, filters, strides, out_shape):
  block = ResidualBlock(filters, kind, strides, key_dim=4, num_heads=2)
  x = tf.random.normal([2, 6, 6, 16])
  assert block(x, training=True).shape == out_shape


def test_residual_block_starts_as_identity_of_activated_input():
  # Last BN gamma 0: a fresh block returns its activated input (no shortcut conv).
  block = ResidualBlock((8, 8, 16), "axial", 1, key_dim=4, num_heads=2)
  x = tf.random.normal([1, 5, 5, 16])
  np.testing.assert_allclose(block(x, training=False), tf.nn.relu(x), atol=1e-6)


def test_residual_block_rejects_bad_kind():
  with pytest.raises(ValueError, match="unknown kind"):
    ResidualBlock((8, 8, 16), "conv")


def test_axial_block_train_step_compiles_with_xla():
  block = ResidualBlock((8, 8, 16), "axial", 2, key_dim=4, num_heads=2, drop_path_rate=0.2)
  x = tf.random.normal([2, 6, 6, 16])
  block(x)

  @tf.function(jit_compile=True)
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(block(x, training=True)))
    return loss, tape.gradient(loss, block.trainable_variables)

  loss, grads = step(x)
  assert np.isfinite(loss.numpy())
  assert all(g is not None for g in grads)


def test_kmax_pixel_decoder_axial_blocks():
  decoder = KMaXPixelDecoder(strides=(32, 16, 8, 4), num_blocks=(1, 1, 1, 1),
                             filters=(8, 8, 4, 4),
                             block_types=("axial", "axial", "bottleneck", "bottleneck"),
                             expansion=2, num_heads=2)
  endpoints = {f"stride{s}": tf.random.normal([1, 64 // s, 64 // s, 8]) for s in (4, 8, 16, 32)}
  out = decoder(endpoints)
  assert out["stride32"].shape == (1, 2, 2, 16)
  assert out["stride16"].shape == (1, 4, 4, 16)
  assert out["stride4"].shape == (1, 16, 16, 8)
  # Axial block widths: conv1 2f, keys f, values 2f, output f * expansion.
  block = decoder._stages[0][0]
  assert block.kind == "axial" and block.filters == (16, 16, 16)
  with pytest.raises(ValueError, match="unknown block type"):
    KMaXPixelDecoder(block_types=("conv",) * 4)


def test_max_span_default_matches_deeplab2():
  assert axial_attention.MAX_SPAN == 255
