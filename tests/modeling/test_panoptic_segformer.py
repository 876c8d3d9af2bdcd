"""Panoptic SegFormer assembled in MaskTransformer: outputs, loss, XLA train step."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling.layers.deformable_attention import (
    MultiScaleDeformableAttention)
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.deformable import DeformableEncoder
from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder
from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder
from deeplab_panoptic.modeling.transformer_decoders.panoptic_segformer import (
    AUX_LOCATIONS, PanopticSegFormerDecoder)
from deeplab_panoptic.training import model_summary
from tests.losses import builders

NUM_CLASSES = 3
QUERIES = 6


def _model(extra_levels=0, mask_layers=2, paper_decoder=False):
  strides = (8, 16, 32) + ((64,) if extra_levels else ())
  return MaskTransformer(
      pixel_encoder=PVTv2Encoder(variant="b0", embed_dims=(8, 16, 16, 16),
                                 depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2),
                                 drop_path_rate=0.0),
      pixel_decoder=DeformableEncoder(num_extra_levels=extra_levels, hidden_dim=16,
                                      num_layers=1, num_heads=2, num_points=2,
                                      ffn_dim=32, num_groups=4),
      transformer_decoder=PanopticSegFormerDecoder(
          num_classes=NUM_CLASSES, num_queries=QUERIES, location_strides=strides,
          hidden_dim=16, num_heads=2, num_points=2, num_location_layers=1,
          num_mask_layers=mask_layers, ffn_dim=32, mask_ffn_dim=32,
          mask_self_attention=paper_decoder, location_refine=paper_decoder),
      output_stride=8)


def _batch(height=64, width=64):
  mask_id = np.full((2, height, width), -1, np.int32)
  mask_id[:, :height // 2] = 0
  mask_id[:, height * 5 // 8:, width // 8:width * 5 // 8] = 1
  return {
      common.GT_MASK_ID: tf.constant(mask_id),
      common.GT_CLASSES: tf.constant([[2, 0, -1, -1]] * 2, tf.int32),
      common.GT_IS_THING: tf.constant([[False, True, False, False]] * 2),
      common.GT_SEMANTIC: tf.constant(np.where(mask_id == 0, 2, 0).astype(np.int32)),
  }


def test_outputs_and_training_only_head():
  model = _model(extra_levels=1)
  images = tf.random.uniform([2, 64, 64, 3], -1, 1)
  train_out = model(images, training=True)
  assert train_out[common.PRED_CLASS_LOGITS].shape == (2, QUERIES, NUM_CLASSES + 1)
  assert train_out[common.PRED_MASK_LOGITS].shape == (2, 8, 8, QUERIES)
  assert train_out[common.PRED_LOCATION_CENTER].shape == (2, QUERIES, 2)
  assert train_out[common.PRED_LOCATION_SCALE].shape == (2, QUERIES, 2)
  assert len(train_out[common.AUX_OUTPUTS]) == 1
  infer_out = model(images, training=False)
  assert common.PRED_LOCATION_CENTER not in infer_out
  counts = model_summary.parameter_counts(model)
  head = 16 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4
  assert counts["train_params"] - counts["params"] == head


def test_mask_fusion_equals_conv_on_upsampled_concat():
  """Eq. 2: Conv1x1(Concat(A3, Up2(A4), Up4(A5))) with the fusion done per level."""
  decoder = PanopticSegFormerDecoder(num_classes=NUM_CLASSES, num_queries=QUERIES,
                                     hidden_dim=16, num_heads=2)
  decoder._mask_fuse.build([None, 6])
  decoder._class.build([None, 16])
  shapes = [(4, 4), (2, 2), (1, 1)]
  logits = tf.random.normal([1, 2, QUERIES, 21])
  got = decoder._predict(tf.zeros([1, QUERIES, 16]), logits, shapes)[common.PRED_MASK_LOGITS]
  maps, start = [], 0
  for h, w in shapes:
    a = tf.reshape(tf.transpose(logits[..., start:start + h * w], [0, 2, 3, 1]),
                   [QUERIES, h, w, 2])
    maps.append(tf.image.resize(a, (4, 4), method="bilinear"))
    start += h * w
  want = decoder._mask_fuse(tf.concat(maps, axis=-1))[..., 0]      # [N, 4, 4]
  np.testing.assert_allclose(got[0].numpy(), tf.transpose(want, [1, 2, 0]).numpy(),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_train_step_compiles_with_xla():
  # One mask layer (no auxiliary stage): one TPU-matcher instance keeps the
  # XLA compile short on CPU; the aux path is covered by the eager test below.
  # The paper recipe's decoder: mask self-attention and box refinement.
  model = _model(mask_layers=1, paper_decoder=True)
  images = tf.random.uniform([2, 32, 32, 3], -1, 1)
  model(images, training=True)
  loss_fn = builders.psf_criterion(matcher_method="tpu")
  batch = _batch(32, 32)

  @tf.function(jit_compile=True)
  def step(images, batch):
    with tf.GradientTape() as tape:
      losses = loss_fn(batch, model(images, training=True))
    return losses, tape.gradient(losses[common.LOSS_TOTAL], model.trainable_variables)

  losses, grads = step(images, batch)
  assert np.isfinite(losses[common.LOSS_TOTAL].numpy())
  assert common.LOSS_LOCATION in losses
  names = [v.name for v, g in zip(model.trainable_variables, grads) if g is None]
  assert not names, names


def test_aux_losses_eager():
  model = _model()
  images = tf.random.uniform([2, 32, 32, 3], -1, 1)
  losses = builders.psf_criterion(matcher_method="scipy")(_batch(32, 32),
                                                         model(images, training=True))
  assert "aux_0/" + common.LOSS_DICE in losses
  assert np.isfinite(losses[common.LOSS_TOTAL].numpy())


def test_mask_self_attention_adds_a_detr_self_attention_per_layer():
  """Each mask layer gains q/k/v/out projections (dim x dim + bias) and one LN."""
  counts = []
  for self_attention in (False, True):
    decoder = PanopticSegFormerDecoder(
        num_classes=NUM_CLASSES, num_queries=QUERIES, location_strides=(8, 16, 32),
        hidden_dim=16, num_heads=2, num_points=2, num_location_layers=1,
        num_mask_layers=2, ffn_dim=32, mask_ffn_dim=32,
        mask_self_attention=self_attention)
    features = {f"stride{s}": tf.random.normal([1, 32 // s, 32 // s, 16]) for s in (8, 16, 32)}
    out = decoder(features, training=False)
    counts.append(model_summary.count_params(decoder.weights))
  assert out[common.PRED_MASK_LOGITS].shape == (1, 4, 4, QUERIES)
  assert counts[1] - counts[0] == 2 * (4 * (16 * 16 + 16) + 2 * 16)


def test_resnet_frozen_stem_stage1_and_batch_norm_do_not_train():
  """frozen_stages=1 + freeze_batch_norm: one optimizer step on the trainable
  variables (as the trainer does) leaves the stem, stage 1 and every batch norm
  (gamma, beta and moving statistics) as they were, and trains the rest."""
  encoder = ResNetEncoder(model_id=18, depth_multiplier=0.25, frozen_stages=1,
                          freeze_batch_norm=True, norm_momentum=0.5)
  images = tf.random.uniform([2, 32, 32, 3], -1, 1)
  encoder(images, training=True)
  trainable = {id(v) for v in encoder.trainable_variables}
  frozen = [v for v in encoder.weights if id(v) not in trainable]
  # Hand count: stem 7x7x3x16; stage 1 = two basic blocks of 16 filters (two 3x3
  # convs each) plus the first block's 1x1 projection; every BN's gamma, beta, mean, var.
  convs = 7 * 7 * 3 * 16 + 2 * 2 * (3 * 3 * 16 * 16) + 16 * 16
  bn = sum(int(np.prod(v.shape)) for v in encoder.weights if "batch_norm" in v.name)
  assert model_summary.count_params(frozen) == convs + bn
  before = {v.name: v.numpy().copy() for v in encoder.weights}
  with tf.GradientTape() as tape:
    features = encoder(images, training=True)
    loss = tf.add_n([tf.reduce_sum(tf.square(f)) for f in features.values()])
  grads = tape.gradient(loss, encoder.trainable_variables)
  for g, v in zip(grads, encoder.trainable_variables):
    v.assign_sub(0.1 * g)
  for v in frozen:
    np.testing.assert_array_equal(v.numpy(), before[v.name], err_msg=v.name)
  changed = [v.name for v in encoder.trainable_variables
             if not np.array_equal(v.numpy(), before[v.name])]
  assert len(changed) == len(encoder.trainable_variables)


def test_box_reference_matches_point_reference_at_unit_box():
  """A box (cx, cy, w, h) reference with w = 2P/W, h = 2P/H scales the offsets
  by exactly 1/(W, H): the same samples as the point (cx, cy) reference."""
  points, (h, w) = 2, (4, 6)
  attention = MultiScaleDeformableAttention(8, num_heads=2, num_levels=1, num_points=points)
  query = tf.random.normal([1, 3, 8])
  value = tf.random.normal([1, h * w, 8])
  centre = tf.random.uniform([1, 3, 1, 2], 0.2, 0.8)
  attention(query, centre, value, [(h, w)])
  attention._offsets.kernel.assign(tf.random.normal(attention._offsets.kernel.shape))
  box = tf.concat([centre, tf.broadcast_to([[[[2.0 * points / w, 2.0 * points / h]]]],
                                           [1, 3, 1, 2])], axis=-1)
  np.testing.assert_allclose(attention(query, box, value, [(h, w)]).numpy(),
                             attention(query, centre, value, [(h, w)]).numpy(),
                             rtol=1e-5, atol=1e-5)


def test_location_refinement_boxes_and_loss():
  decoder = PanopticSegFormerDecoder(
      num_classes=NUM_CLASSES, num_queries=QUERIES, location_strides=(8, 16, 32),
      hidden_dim=16, num_heads=2, num_points=2, num_location_layers=3,
      num_mask_layers=1, ffn_dim=32, mask_ffn_dim=32, location_refine=True)
  features = {f"stride{s}": tf.random.normal([2, 32 // s, 32 // s, 16]) for s in (8, 16, 32)}
  out = decoder(features, training=True)
  aux = out[AUX_LOCATIONS]
  assert len(aux) == 2 and aux[0][common.PRED_LOCATION_SCALE].shape == (2, QUERIES, 2)
  # Zero-initialised deltas: the first box is the reference point with size sigmoid(-2).
  reference = tf.sigmoid(decoder._reference(tf.split(decoder._queries, 2, -1)[0]))
  np.testing.assert_allclose(aux[0][common.PRED_LOCATION_CENTER][0].numpy(),
                             reference.numpy()[:, ::-1], rtol=1e-5)
  np.testing.assert_allclose(aux[0][common.PRED_LOCATION_SCALE].numpy(),
                             1.0 / (1.0 + np.exp(2.0)), rtol=1e-5)
  # Three heads (256-wide MLP 16-16-16-4), all inference layers.
  assert decoder.training_only_layers == []
  assert model_summary.count_params([w for l in decoder._location_heads for w in l.weights]) \
      == 3 * (16 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4)
  outputs = dict(out, **{common.PRED_MASK_LOGITS: tf.random.normal([2, 4, 4, QUERIES])})
  losses = builders.psf_criterion(matcher_method="scipy")(_batch(4, 4), outputs)
  assert {"location_0/" + common.LOSS_LOCATION,
          "location_1/" + common.LOSS_LOCATION} <= set(losses)
  # An earlier layer predicting the final boxes gets aux_weight x the final
  # L_loc: it is matched with the final stage's assignment.
  final = {k: out[k] for k in (common.PRED_LOCATION_CENTER, common.PRED_LOCATION_SCALE)}
  losses = builders.psf_criterion(matcher_method="scipy", aux_weight=0.5)(
      _batch(4, 4), dict(outputs, **{AUX_LOCATIONS: [final, final]}))
  np.testing.assert_allclose(losses["location_1/" + common.LOSS_LOCATION].numpy(),
                             0.5 * losses[common.LOSS_LOCATION].numpy(), rtol=1e-6)


def test_fpn_level_wiring():
  """fpn_strides=(4,): stride 4 = ReLU(GN(conv3x3(GN(lateral(C2)) + Up2(encoded s8))))
  from the stride-4 endpoint and the encoder's stride-8 output; the encoded
  levels are unchanged by the option."""
  endpoints = {f"stride{s}": tf.random.normal([1, 32 // s, 32 // s, 4])
               for s in (4, 8, 16, 32)}
  outs = []
  for fpn in ((), (4,)):
    keras.utils.set_random_seed(0)
    encoder = DeformableEncoder(hidden_dim=8, num_layers=1, num_heads=2, num_points=1,
                                ffn_dim=8, num_groups=2, fpn_strides=fpn)
    outs.append(encoder(endpoints))
  assert sorted(outs[1]) == ["stride16", "stride32", "stride4", "stride8"]
  np.testing.assert_allclose(outs[1]["stride8"].numpy(), outs[0]["stride8"].numpy())
  lateral, lateral_norm, conv, norm = encoder._fpn[0]
  up = tf.image.resize(outs[1]["stride8"], (8, 8), method="bilinear")
  want = tf.nn.relu(norm(conv(lateral_norm(lateral(endpoints["stride4"])) + up)))
  np.testing.assert_allclose(outs[1]["stride4"].numpy(), want.numpy(), atol=1e-5)


def test_mixed_bfloat16_forward_keeps_geometry_in_float32():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = _model(paper_decoder=True)
    images = tf.random.uniform([1, 64, 64, 3], seed=0)
    outputs = model(images, training=True)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert outputs[common.PRED_MASK_LOGITS].dtype == tf.bfloat16
  assert outputs[common.PRED_MASK_LOGITS].shape == (1, 8, 8, QUERIES)
  # Boxes address pixels: float32 even in a bfloat16 model.
  assert outputs[common.PRED_LOCATION_CENTER].dtype == tf.float32
  for key in (common.PRED_CLASS_LOGITS, common.PRED_MASK_LOGITS):
    assert np.isfinite(tf.cast(outputs[key], tf.float32).numpy()).all()
