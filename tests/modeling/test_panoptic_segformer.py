"""Panoptic SegFormer assembled in MaskTransformer: outputs, loss, XLA train step."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses.panoptic_segformer import PanopticSegFormerLoss
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.deformable import DeformableEncoder
from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder
from deeplab_panoptic.modeling.transformer_decoders.panoptic_segformer import (
    PanopticSegFormerDecoder)
from deeplab_panoptic.training import model_summary

NUM_CLASSES = 3
QUERIES = 6


def _model(extra_levels=0, mask_layers=2):
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
          num_mask_layers=mask_layers, ffn_dim=32, mask_ffn_dim=32),
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
  model = _model(mask_layers=1)
  images = tf.random.uniform([2, 32, 32, 3], -1, 1)
  model(images, training=True)
  loss_fn = PanopticSegFormerLoss(matcher_method="tpu")
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
  losses = PanopticSegFormerLoss(matcher_method="scipy")(_batch(32, 32),
                                                         model(images, training=True))
  assert "aux_0/" + common.LOSS_DICE in losses
  assert np.isfinite(losses[common.LOSS_TOTAL].numpy())
