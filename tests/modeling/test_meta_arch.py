"""The MaskTransformer assembled from gin: shapes, XLA, training-only parts."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.training import model_summary

NUM_CLASSES = 4
N = 8


@pytest.fixture(scope="module")
def model():
  gin.clear_config()
  gin.bind_parameter("MaskTransformerPredictor.num_classes", NUM_CLASSES)
  gin.bind_parameter("MaskTransformerPredictor.embedding_dim", 16)
  gin.bind_parameter("MaskTransformerPredictor.pixel_head_dim", 16)
  m = MaskTransformer(
      pixel_encoder=ResNetEncoder(model_id=18, depth_multiplier=0.25),
      pixel_decoder=KMaXPixelDecoder(num_blocks=(1, 1, 1, 1), filters=(16, 8, 8, 8),
                                     expansion=2),
      transformer_decoder=KMaXTransformerDecoder(
          num_centers=N, num_blocks=(1, 1, 0), center_dim=32, bottleneck_dim=32,
          num_heads=2, key_dim=16, ffn_dim=64),
      semantic_head=heads.SemanticHead(num_classes=NUM_CLASSES, aspp_dim=16, head_dim=16,
                                       low_level_dims=(8, 8), atrous_rates=(1, 2)))
  m(tf.zeros([1, 64, 64, 3]), training=True)
  yield m
  gin.clear_config()


def test_output_shapes(model):
  out = model(tf.random.uniform([2, 64, 64, 3], -1, 1), training=True)
  assert out[common.PRED_CLASS_LOGITS].shape == (2, N, NUM_CLASSES + 1)
  assert out[common.PRED_MASK_LOGITS].shape == (2, 16, 16, N)
  emb = out[common.PRED_PIXEL_EMBEDDING]
  assert emb.shape == (2, 16, 16, 16)
  np.testing.assert_allclose(np.linalg.norm(emb.numpy(), axis=-1), 1.0, rtol=1e-4)
  assert out[common.PRED_SEMANTIC_LOGITS].shape == (2, 16, 16, NUM_CLASSES)
  # One auxiliary prediction per transformer layer (1 at stride 32, 1 at stride 16).
  aux = out[common.AUX_OUTPUTS]
  assert len(aux) == 2
  assert aux[0][common.PRED_MASK_LOGITS].shape == (2, 2, 2, N)
  assert aux[1][common.PRED_MASK_LOGITS].shape == (2, 4, 4, N)
  # The semantic head is training-only.
  assert common.PRED_SEMANTIC_LOGITS not in model(tf.zeros([1, 64, 64, 3]), training=False)


def test_void_prior_at_initialisation(model):
  out = model(tf.random.uniform([1, 64, 64, 3], -1, 1), training=False)
  probs = tf.nn.softmax(out[common.PRED_CLASS_LOGITS]).numpy()
  # Void starts near its prior probability 0.9 (class kernels start tiny).
  np.testing.assert_allclose(probs[..., -1], 0.9, atol=0.05)


def test_forward_compiles_with_xla(model):
  x = tf.random.uniform([2, 64, 64, 3], -1, 1)
  eager = model(x, training=False)
  jit = tf.function(lambda t: model(t, training=False), jit_compile=True)(x)
  np.testing.assert_allclose(jit[common.PRED_MASK_LOGITS].numpy(),
                             eager[common.PRED_MASK_LOGITS].numpy(), rtol=1e-3, atol=1e-3)


def test_params_leave_out_training_only_heads(model):
  counts = model_summary.parameter_counts(model)
  semantic = model_summary.count_params(model.semantic_head.weights)
  total = model_summary.count_params(model.weights)
  assert semantic > 0
  assert counts["params"] == total - semantic
  assert counts["train_params"] == model_summary.count_params(model.trainable_weights)
