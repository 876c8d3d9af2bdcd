"""MaX-DeepLab-L's semantic head on a decoder feature (MaskTransformer.semantic_head_input)."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import (
    SEMANTIC_FEATURE, MaXPixelDecoder)
from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import AxialResNet, DualPathConfig
from deeplab_panoptic.modeling.transformer_decoders.max_deeplab import MaXMemoryHead
from deeplab_panoptic.training import model_summary

NUM_CLASSES = 3
N = 4
# A small hourglass: 16 -> 8 -> 4 (stage 2, the semantic feature) -> 8 -> 4 (panoptic).
STRIDES = (16, 8, 4, 8, 4)


def _model(semantic: bool):
  dual_path = DualPathConfig(num_memory=N, memory_dim=8, bottleneck_dim=8, key_dim=4,
                             value_dim=8, num_heads=2, ffn_dim=16)
  return MaskTransformer(
      pixel_encoder=AxialResNet(num_blocks=(1, 1, 1, 1), filters=(4, 4, 8, 8),
                                stem_filters=(4, 4, 8), expansion=2, num_heads=2,
                                dual_path=dual_path),
      pixel_decoder=MaXPixelDecoder(
          strides=STRIDES, num_blocks=(1,) * 5, filters=(8, 4, 4, 4, 4),
          block_kinds=("axial",) + ("bottleneck",) * 4,
          transformer=(True, False, False, False, False), expansion=2, num_heads=2,
          dual_path=dual_path, semantic_stage=2 if semantic else None),
      transformer_decoder=MaXMemoryHead(dim=8),
      predictor=heads.MaskTransformerPredictor(num_classes=NUM_CLASSES, embedding_dim=8,
                                               pixel_head_dim=8, name="predictor"),
      semantic_head=heads.SemanticHead(
          num_classes=NUM_CLASSES, input_key=SEMANTIC_FEATURE, aspp=False,
          low_level_strides=(), low_level_dims=(), head_dim=8) if semantic else None,
      semantic_head_input="decoder", semantic_at_inference=True)


@pytest.fixture(scope="module")
def model():
  m = _model(semantic=True)
  m(tf.zeros([1, 33, 33, 3]), training=True)
  return m


def test_semantic_head_reads_the_first_stride4_decoder_output(model):
  images = tf.random.stateless_uniform([1, 33, 33, 3], (1, 2), -1, 1)
  out = model(images, training=False)
  # Independently: run the parts one by one.
  endpoints = model.pixel_encoder(images, training=False)
  features = model.pixel_decoder(endpoints, training=False)
  assert features[SEMANTIC_FEATURE].shape == features["stride4"].shape == (1, 9, 9, 8)
  # The semantic feature is stage 2's output, not the last (panoptic) stride-4 one.
  assert not np.allclose(features[SEMANTIC_FEATURE], features["stride4"])
  expected = model.semantic_head({SEMANTIC_FEATURE: features[SEMANTIC_FEATURE]},
                                 training=False)
  np.testing.assert_allclose(out[common.PRED_SEMANTIC_LOGITS], expected, rtol=1e-5,
                             atol=1e-6)
  assert out[common.PRED_SEMANTIC_LOGITS].shape == (1, 9, 9, NUM_CLASSES)

  # The semantic logits depend on decoder stages 0-2 only: no gradient path from
  # them to the later stages (None, not merely zero at this initialisation).
  with tf.GradientTape() as tape:
    logits = model(images, training=True)[common.PRED_SEMANTIC_LOGITS]
  stage_vars = {i: [v for v in model.pixel_decoder.trainable_variables
                    if f"/stage{i}_" in v.name] for i in range(len(STRIDES))}
  grads = tape.gradient(logits, stage_vars)
  for i in range(len(STRIDES)):
    assert stage_vars[i]
    connected = any(g is not None for g in grads[i])
    assert connected == (i <= 2), f"stage {i}"


def test_semantic_head_stays_out_of_the_params(model):
  without = _model(semantic=False)
  without(tf.zeros([1, 33, 33, 3]), training=True)
  counts = model_summary.parameter_counts(model)
  assert counts["params"] == model_summary.parameter_counts(without)["params"]
  head = model_summary.count_params(model.semantic_head.trainable_weights)
  # 5x5 depthwise 25 * 8 + BN 2 * 8, pointwise 8 * 8 + BN 2 * 8, logits 8 * 3 + 3.
  assert head == 200 + 16 + 64 + 16 + 27
  assert counts["train_params"] - model_summary.parameter_counts(without)["train_params"] == head


def test_bad_semantic_head_input():
  with pytest.raises(ValueError, match="semantic_head_input"):
    MaskTransformer(pixel_encoder=None, pixel_decoder=None,
                    transformer_decoder=MaXMemoryHead(dim=8), semantic_head_input="pixels")
