"""CMT-DeepLab: the CMT layer against numpy, residual paths, coord-convs, sizes, XLA."""

import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.layers import cmt_layer
from deeplab_panoptic.modeling.layers.dual_path import DualPathTransformerLayer
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.cmt_deeplab import (
    CMTPixelDecoder, PassThroughPixelDecoder, RecursiveFeatureNetwork)
from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import MEMORY, AxialResNet
from deeplab_panoptic.modeling.transformer_decoders.cmt_deeplab import CMTHead
from deeplab_panoptic.training import model_summary
from tests.losses import builders
from tests.losses import test_mask_losses as loss_base

# Tiny layer: N centres of width C, pixels h x w of width CP, M reference points.
N, C, CP, H, W, M = 3, 6, 5, 3, 4, 2
BOTTLENECK, KEY, VALUE, HEADS, FFN = 8, 4, 8, 2, 10
EPS = 1e-3  # conv.batch_norm's default epsilon.


def _layer(clustering=True, location=True, kernel=3):
  return cmt_layer.ClusteringDualPathLayer(
      BOTTLENECK, KEY, VALUE, HEADS, FFN, activation="gelu", clustering=clustering,
      location=location, num_reference_points=M, reference_mlp_dim=7,
      pixel_coord_kernel=kernel, name="cmt")


def _randomise(layer, seed):
  """Random weights everywhere, BN statistics included (gamma-0 BNs too)."""
  rng = np.random.default_rng(seed)
  values = []
  for v in layer.weights:
    shape = v.shape.as_list()
    if "moving_variance" in v.name or "gamma" in v.name:
      values.append(rng.uniform(0.5, 1.5, shape))
    else:
      values.append(rng.normal(0.0, 0.5, shape))
  layer.set_weights(values)


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _bn(x, bn, axes=(-1,)):
  """Inference batch norm of ``x`` with the statistics of keras ``bn`` on ``axes``."""
  shape = [1] * x.ndim
  for a in axes:
    shape[a] = x.shape[a]
  g, b, mean, var = [np.reshape(w.numpy(), shape) for w in
                     (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)]
  return (x - mean) / np.sqrt(var + EPS) * g + b


def _dense_bn(x, layer, act=False):
  y = _bn(x @ layer._dense.kernel.numpy(), layer._bn)
  return _gelu(y) if act else y


def _conv_bn(x, layer, act):
  """'same' k x k conv (no bias) + BN over ``[B, h, w, c]``."""
  kernel = layer._conv.kernel.numpy()
  k = kernel.shape[0]
  pad = k // 2
  padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for i in range(k):
    for j in range(k):
      out += padded[:, i:i + x.shape[1], j:j + x.shape[2], :] @ kernel[i, j]
  y = _bn(out, layer._bn)
  return _gelu(y) if act else y


def _heads(x):  # [B, L, D] -> [B, heads, L, D / heads]
  return x.reshape(x.shape[0], x.shape[1], HEADS, -1).transpose(0, 2, 1, 3)


def _numpy_cmt_layer(layer, pixel, memory, prev_logits=None, prev_reference=None):
  """CMT-DeepLab eq. 5-12 written out with the layer's weights (inference)."""
  batch = pixel.shape[0]
  flat = pixel.reshape(batch, H * W, CP)
  mem = _dense_bn(memory, layer._memory_conv1, act=True)
  pix = _dense_bn(_gelu(flat), layer._pixel_conv1, act=True)
  # Eq. 9-10: e = e_prev + MLP(C), r^c = sigmoid(e).
  hidden = _gelu(memory @ layer._reference_hidden.kernel.numpy()
                 + layer._reference_hidden.bias.numpy())
  embedding = hidden @ layer._reference_out.kernel.numpy() + layer._reference_out.bias.numpy()
  if prev_reference is not None:
    embedding = embedding + prev_reference
  points = 1 / (1 + np.exp(-embedding))
  # Eq. 11-12: coord-convs; pixel-centre coordinates normalised to [0, 1].
  mem = _dense_bn(np.concatenate([mem, points], -1), layer._memory_coord, act=True)
  ys, xs = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")
  grid = np.broadcast_to(np.stack([ys, xs], -1), (batch, H, W, 2))
  pix = _conv_bn(np.concatenate([pix.reshape(batch, H, W, -1), grid], -1),
                 layer._pixel_coord, act=True).reshape(batch, H * W, -1)
  m_q, m_k, m_v = np.split(_dense_bn(mem, layer._memory_qkv), [KEY, 2 * KEY], -1)
  p_q, p_k, p_v = np.split(_dense_bn(pix, layer._pixel_qkv), [KEY, 2 * KEY], -1)
  # Eq. 6: S = S_prev + K~p Q~c^T, Z = softmax over the centres.
  logits = np.einsum("bpd,bnd->bpn", p_q, m_k) / np.sqrt(KEY)
  if prev_logits is not None:
    logits = logits + prev_logits.reshape(batch, H * W, N)
  z = _softmax(logits, -1)
  # Eq. 7: MaX's M2P + M2M retrieval (one softmax over pixel and memory keys) plus
  # the clustering term Z^T V^p.
  att = layer._memory_attention
  keys = np.concatenate([_heads(p_k), _heads(m_k)], 2)
  values = np.concatenate([_heads(p_v), _heads(m_v)], 2)
  sim = _bn(np.einsum("bhld,bhmd->bhlm", _heads(m_q), keys), att._bn_similarity, axes=(1,))
  retrieved = _bn(np.einsum("bhlm,bhmd->bhld", _softmax(sim, -1), values),
                  att._bn_value, axes=(1, 3))
  retrieved = retrieved.transpose(0, 2, 1, 3).reshape(batch, N, VALUE)
  update = retrieved + _bn(np.einsum("bpn,bpd->bnd", z, p_v), layer._cluster_value_bn)
  update = _dense_bn(_gelu(update), layer._memory_conv3)
  memory_out = _gelu(memory + update)
  ffn = _dense_bn(_dense_bn(memory_out, layer._ffn1, act=True), layer._ffn2)
  memory_out = _gelu(memory_out + ffn)
  # Eq. 8: F + Z V^c.
  update = _gelu(_bn(np.einsum("bpn,bnd->bpd", z, m_v), layer._pixel_value_bn))
  pixel_out = flat + _dense_bn(update, layer._pixel_conv3)
  return (pixel_out.reshape(batch, H, W, CP), memory_out, logits.reshape(batch, H, W, N),
          embedding, points)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(2, H, W, CP)).astype(np.float32),
          rng.normal(size=(2, N, C)).astype(np.float32))


def test_cmt_layer_matches_numpy_equations(inputs):
  pixel, memory = inputs
  layer = _layer()
  layer((tf.constant(pixel), tf.constant(memory)))
  _randomise(layer, seed=1)
  rng = np.random.default_rng(2)
  prev_logits = rng.normal(size=(2, H, W, N)).astype(np.float32)
  prev_reference = rng.normal(size=(2, N, 2 * M)).astype(np.float32)
  first_stage = {"some": tf.zeros([1])}
  state = {cmt_layer.STATE_MEMORY: tf.constant(memory),
           cmt_layer.STATE_LOGITS: tf.constant(prev_logits),
           cmt_layer.STATE_REFERENCE: tf.constant(prev_reference),
           cmt_layer.STATE_STAGES: [first_stage]}
  pixel_out, new_state = layer((tf.constant(pixel), state), training=False)
  expected = _numpy_cmt_layer(layer, pixel, memory, prev_logits, prev_reference)
  np.testing.assert_allclose(pixel_out.numpy(), expected[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(new_state[cmt_layer.STATE_MEMORY].numpy(), expected[1],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(new_state[cmt_layer.STATE_LOGITS].numpy(), expected[2],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(new_state[cmt_layer.STATE_REFERENCE].numpy(), expected[3],
                             rtol=1e-4, atol=1e-4)
  stages = new_state[cmt_layer.STATE_STAGES]
  assert len(stages) == 2 and list(stages[0]) == ["some"]
  # Reference points: first M entries are heights, last M widths (eq. 10).
  points = stages[1][cmt_layer.STAGE_REFERENCE_POINTS].numpy()
  np.testing.assert_allclose(points[..., 0], expected[4][..., :M], rtol=1e-5)
  np.testing.assert_allclose(points[..., 1], expected[4][..., M:], rtol=1e-5)
  np.testing.assert_allclose(stages[1][cmt_layer.STAGE_LOGITS].numpy(), expected[2],
                             rtol=1e-4, atol=1e-4)


def _bn_train(x, bn, axes=(-1,)):
  """Training batch norm: ``_bn`` with the statistics of ``x`` over every axis but
  ``axes`` (the channel axes) instead of the moving ones."""
  axes = [a % x.ndim for a in axes]
  reduce = tuple(a for a in range(x.ndim) if a not in axes)
  shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
  g, b = (np.reshape(w.numpy(), shape) for w in (bn.gamma, bn.beta))
  return (x - x.mean(reduce, keepdims=True)) / np.sqrt(
      x.var(reduce, keepdims=True) + EPS) * g + b


def test_cmt_layer_in_training_matches_numpy_equations(inputs, monkeypatch):
  """Training mode: the same equations (soft clustering Z = softmax_N(S), eq. 6-8;
  reference masks and coord-convs, eq. 9-12) with every BN on batch statistics."""
  pixel, memory = inputs
  layer = _layer()
  layer((tf.constant(pixel), tf.constant(memory)))
  _randomise(layer, seed=5)
  rng = np.random.default_rng(6)
  prev_logits = rng.normal(size=(2, H, W, N)).astype(np.float32)
  prev_reference = rng.normal(size=(2, N, 2 * M)).astype(np.float32)
  state = {cmt_layer.STATE_MEMORY: tf.constant(memory),
           cmt_layer.STATE_LOGITS: tf.constant(prev_logits),
           cmt_layer.STATE_REFERENCE: tf.constant(prev_reference)}
  pixel_out, new_state = layer((tf.constant(pixel), state), training=True)
  monkeypatch.setattr(sys.modules[__name__], "_bn", _bn_train)
  expected = _numpy_cmt_layer(layer, pixel.astype(np.float64), memory.astype(np.float64),
                              prev_logits, prev_reference)
  for got, want in ((pixel_out, expected[0]), (new_state[cmt_layer.STATE_MEMORY], expected[1]),
                    (new_state[cmt_layer.STATE_LOGITS], expected[2])):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_first_layer_starts_residuals_at_zero(inputs):
  """A bare memory tensor: S_0 = 0 and e_0 = 0 (eq. 6 and 9 without residual)."""
  pixel, memory = inputs
  layer = _layer()
  layer((tf.constant(pixel), tf.constant(memory)))
  _randomise(layer, seed=3)
  _, state = layer((tf.constant(pixel), tf.constant(memory)), training=False)
  expected = _numpy_cmt_layer(layer, pixel, memory)
  np.testing.assert_allclose(state[cmt_layer.STATE_LOGITS].numpy(), expected[2],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state[cmt_layer.STATE_REFERENCE].numpy(), expected[3],
                             rtol=1e-4, atol=1e-4)
  # Chained: the second layer adds its own terms to the first layer's (residual).
  second = _layer()
  second((tf.constant(pixel), state))
  _randomise(second, seed=4)
  pixel2, state2 = second((tf.constant(pixel), state), training=False)
  expected2 = _numpy_cmt_layer(second, pixel, state[cmt_layer.STATE_MEMORY].numpy(),
                               state[cmt_layer.STATE_LOGITS].numpy(),
                               state[cmt_layer.STATE_REFERENCE].numpy())
  np.testing.assert_allclose(state2[cmt_layer.STATE_REFERENCE].numpy(), expected2[3],
                             rtol=1e-4, atol=1e-4)
  assert len(state2[cmt_layer.STATE_STAGES]) == 2


def test_without_clustering_and_location_it_is_the_max_layer(inputs):
  pixel, memory = inputs
  cmt = _layer(clustering=False, location=False)
  plain = DualPathTransformerLayer(BOTTLENECK, KEY, VALUE, HEADS, FFN, "gelu", name="cmt")
  cmt((tf.constant(pixel), tf.constant(memory)))
  plain((tf.constant(pixel), tf.constant(memory)))
  _randomise(plain, seed=5)
  by_name = {v.name: v.numpy() for v in plain.weights}
  assert sorted(by_name) == sorted(v.name for v in cmt.weights)
  cmt.set_weights([by_name[v.name] for v in cmt.weights])
  for training in (False, True):
    expected = plain((tf.constant(pixel), tf.constant(memory)), training=training)
    got_pixel, state = cmt((tf.constant(pixel), tf.constant(memory)), training=training)
    np.testing.assert_allclose(got_pixel.numpy(), expected[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state[cmt_layer.STATE_MEMORY].numpy(), expected[1].numpy(),
                               rtol=1e-5, atol=1e-5)
  assert cmt_layer.STATE_STAGES not in state


def test_extra_parameters_match_hand_count(inputs):
  pixel, memory = inputs
  count = lambda l: model_summary.count_params(l.weights)
  sizes = {}
  for flags in ((False, False), (True, False), (False, True)):
    layer = _layer(*flags)
    layer((tf.constant(pixel), tf.constant(memory)))
    sizes[flags] = count(layer)
  bn = lambda c: 4 * c  # gamma, beta, moving mean, moving variance
  # Clustering: two BNs (pooled pixel values, retrieved centre values); the
  # projections are the P2M ones, and P2M's softmax over the memory keys (its
  # per-head logit BN and per-head-and-channel value BN) is replaced by Z.
  p2m_bns = bn(HEADS) + bn(VALUE)
  assert sizes[(True, False)] - sizes[(False, False)] == 2 * bn(VALUE) - p2m_bns
  # Location: MLP C -> 7 -> 2M (with biases), 1x1 coord-conv on [centres, r^c],
  # 3x3 coord-conv on [pixels, r^p].
  mlp = C * 7 + 7 + 7 * 2 * M + 2 * M
  centre_conv = (BOTTLENECK + 2 * M) * BOTTLENECK + bn(BOTTLENECK)
  pixel_conv = 3 * 3 * (BOTTLENECK + 2) * BOTTLENECK + bn(BOTTLENECK)
  assert sizes[(False, True)] - sizes[(False, False)] == mlp + centre_conv + pixel_conv


def _tiny_cmt(num_classes=3, rfn=False, axial=True):
  config = cmt_layer.CMTLayerConfig(num_memory=N, memory_dim=8, bottleneck_dim=8,
                                    key_dim=4, value_dim=8, num_heads=2, ffn_dim=8,
                                    num_reference_points=M, reference_mlp_dim=8)
  encoder = lambda **kw: AxialResNet(
      num_blocks=(1, 1, 1, 1), filters=(4, 4, 4, 8), stem_filters=(4, 4), expansion=2,
      num_heads=2, axial_beyond_stride=32 if axial else 0, transformer_beyond_stride=0,
      learn_memory=kw.pop("learn_memory", True),
      dual_path=config, activation="gelu", **kw)
  # One appended axial + CMT block at stride 16 (the small variant has one at
  # stage-5 and one at stage-4 width), one bottleneck block at stride 4: a short
  # XLA compile.
  decoder = lambda **kw: CMTPixelDecoder(
      strides=(16, 4), num_blocks=(1, 1), filters=(8, 4),
      block_kinds=("axial" if axial else "bottleneck", "bottleneck"),
      transformer=(True, False),
      fuse_skips=(True, True), expansion=2, num_heads=2, dual_path=config,
      activation="gelu", **kw)
  if rfn:
    pixel_encoder = RecursiveFeatureNetwork(encoder, decoder, connection_filters=8)
    pixel_decoder = PassThroughPixelDecoder()
  else:
    pixel_encoder, pixel_decoder = encoder(), decoder()
  predictor = heads.MaskTransformerPredictor(num_classes=num_classes, embedding_dim=8,
                                             pixel_head_dim=8, activation="gelu")
  return MaskTransformer(
      pixel_encoder=pixel_encoder, pixel_decoder=pixel_decoder,
      transformer_decoder=CMTHead(num_classes=num_classes, dim=8, aux_embedding_dim=8,
                                  predictor=predictor))


def test_rfn_stacks_two_networks_and_averages_stride4():
  images = tf.random.uniform([1, 33, 33, 3], -1, 1, seed=0)
  single, double = _tiny_cmt(), _tiny_cmt(rfn=True)
  out = double(images, training=True)
  single(images, training=True)
  assert out[common.PRED_MASK_LOGITS].shape == (1, 9, 9, N)
  # Both copies' clustering layers are supervised: one auxiliary output each
  # (training only: inference runs no auxiliary head).
  assert len(out[common.AUX_OUTPUTS]) == 2
  assert double(images, training=False)[common.AUX_OUTPUTS] == []
  count = lambda l: model_summary.count_params(l.weights)
  rfn = double.pixel_encoder
  per_network = count(single.pixel_encoder) + count(single.pixel_decoder)
  learned_memory = N * 8
  connection = 8 * 8 + 4 * 8  # 1x1 conv (decoder stride-4 width 8 -> 8) + BN
  assert count(rfn) == 2 * per_network - learned_memory + connection
  # The stride-4 output is the mean of the two decoders' stride-4 features.
  first = rfn.decoders[0](rfn.encoders[0](images, training=False), training=False)
  feedback = {"stride4": rfn._connections[0](first["stride4"], training=False)}
  second = rfn.decoders[1](rfn.encoders[1](images, training=False, feedback=feedback,
                                           initial_memory=first[MEMORY]), training=False)
  np.testing.assert_allclose(rfn(images, training=False)["stride4"].numpy(),
                             (first["stride4"] + second["stride4"]).numpy() / 2,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_step_with_cmt_losses_compiles_with_xla():
  tf.random.set_seed(0)
  batch, _ = loss_base._make_inputs(seed=3)
  batch = loss_base._to_tf(batch)
  # Axial blocks' XLA compile is tested with MaX-DeepLab; here only the CMT parts.
  model = _tiny_cmt(num_classes=loss_base.C, axial=False)
  images = tf.random.uniform([loss_base.B, 33, 33, 3], -1, 1, seed=1)
  model(images, training=True)
  loss_fn = builders.max_criterion(matcher_method="scipy", instance_discrimination_sample_k=16,
                                   mask_approximation_weight=1.0, semantic_weight=0.0)
  variables = model.trainable_variables
  # As the trainer does off-TPU: the host matcher outside, everything else in XLA
  # (the TPU matcher's own XLA compile is tested in tests/losses).
  matching = loss_fn.match(batch, model(images, training=True))

  @tf.function(jit_compile=True)
  def step(images, batch, matching):
    with tf.GradientTape() as tape:
      losses = loss_fn(batch, model(images, training=True), matching=matching)
    return losses, tape.gradient(losses[common.LOSS_TOTAL], variables)

  losses, grads = step(images, batch, matching)
  for key, value in losses.items():
    assert np.isfinite(value.numpy()), key
  assert "aux_0/" + common.LOSS_PQ_DICE in losses
  assert losses[common.LOSS_MASK_APPROXIMATION].numpy() > 0
  grad_of = {v.ref(): g for v, g in zip(variables, grads)}
  # The reference MLP and the coord-convs of every layer learn.
  for v in variables:
    if "reference_mlp" in v.name or "coord_conv" in v.name:
      assert grad_of[v.ref()] is not None and np.any(grad_of[v.ref()].numpy() != 0), v.name
