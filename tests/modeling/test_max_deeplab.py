"""MaX-DeepLab assembled in the MaskTransformer: shapes, memory path, XLA, sizes."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic import registry  # pylint: disable=unused-import
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders import axial_resnet
from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import (
    MEMORY, AxialResNet, DualPathConfig, drop_path_rate_at)
from deeplab_panoptic.modeling.transformer_decoders.max_deeplab import MaXMemoryHead
from deeplab_panoptic.training import model_summary

NUM_CLASSES = 3
N = 6


def _tiny_model(num_blocks=(1, 1, 2, 1), semantic=True):
  dual_path = DualPathConfig(num_memory=N, memory_dim=16, bottleneck_dim=16, key_dim=8,
                             value_dim=16, num_heads=2, ffn_dim=32)
  return MaskTransformer(
      pixel_encoder=AxialResNet(num_blocks=num_blocks, filters=(4, 4, 8, 8),
                                stem_filters=(4, 4, 8), expansion=2, num_heads=2,
                                dual_path=dual_path, drop_path_keep_prob=0.8),
      pixel_decoder=MaXPixelDecoder(filters=(8, 4, 4), expansion=2, num_heads=2,
                                    dual_path=dual_path, drop_path_rates=(0.2, 0, 0)),
      transformer_decoder=MaXMemoryHead(dim=16),
      predictor=heads.MaskTransformerPredictor(num_classes=NUM_CLASSES, embedding_dim=8,
                                               pixel_head_dim=8, name="predictor"),
      semantic_head=heads.SemanticHead(num_classes=NUM_CLASSES, input_stride=16,
                                       aspp_dim=8, head_dim=8, low_level_dims=(4, 4),
                                       atrous_rates=(1, 2)) if semantic else None)


@pytest.fixture(scope="module")
def model():
  m = _tiny_model()
  m(tf.zeros([1, 33, 33, 3]), training=True)
  return m


def test_output_shapes_and_memory_path(model):
  images = tf.random.uniform([2, 33, 33, 3], -1, 1)
  out = model(images, training=True)
  assert out[common.PRED_CLASS_LOGITS].shape == (2, N, NUM_CLASSES + 1)
  assert out[common.PRED_MASK_LOGITS].shape == (2, 9, 9, N)
  assert out[common.PRED_PIXEL_EMBEDDING].shape == (2, 9, 9, 8)
  assert out[common.PRED_SEMANTIC_LOGITS].shape == (2, 9, 9, NUM_CLASSES)
  assert out[common.AUX_OUTPUTS] == []
  endpoints = model.pixel_encoder(images)
  # Output stride 16: the last stage stays at 3x3 (33 -> 17 -> 9 -> 5 -> 3).
  assert endpoints["stride16"].shape == (2, 3, 3, 16)
  assert endpoints[MEMORY].shape == (2, N, 16)
  assert "stride32" not in endpoints
  assert common.PRED_SEMANTIC_LOGITS not in model(images, training=False)


def test_layout_follows_placement_rules(model):
  kinds = [(b.kind, dpt is not None, s) for b, dpt, s in model.pixel_encoder._blocks]
  # stage2, stage3 conv; stage4: first conv (input stride 8) then axial; stage5
  # axial, each followed by a dual-path layer (original stride 32).
  assert kinds == [("bottleneck", False, 4), ("bottleneck", False, 8),
                   ("bottleneck", False, 16), ("axial", False, 16), ("axial", True, 16)]


def test_drop_path_schedule_matches_deeplab2():
  rate = lambda s: drop_path_rate_at(s, 0.8, "linear", 16)
  assert rate(8) == 0.0
  np.testing.assert_allclose([rate(16), rate(32)], [0.15, 0.2])
  assert drop_path_rate_at(32, 0.8, "constant", 16) == pytest.approx(0.2)
  with pytest.raises(ValueError, match="schedule"):
    drop_path_rate_at(32, 0.8, "cosine", 16)


# The XLA train step of the MaX model with its real loss is in
# tests/losses/test_train_step.py (test_max_deeplab_quickstart_train_step_compiles_with_xla).


def test_memory_head_needs_memory():
  with pytest.raises(ValueError, match="memory"):
    MaXMemoryHead(dim=8)({"stride4": tf.zeros([1, 2, 2, 4])})


def _build_from_gin(path, training):
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([path], ["NUM_CLASSES = 133"])
    # Only shapes are counted: zeros instead of the random draws (most of the
    # build time of the 451M-parameter MaX-DeepLab-L).
    with model_summary.zero_initial_values():
      model = MaskTransformer()
      # Parameters do not depend on the input size (global axial attention, fixed
      # relative-position tables), so a small input builds the same variables.
      model(tf.zeros([1, 33, 33, 3]), training=training)
  finally:
    gin.clear_config()
  return model


def _deeplab2_encoder_params(model):
  n = lambda layer: model_summary.count_params(layer.weights)
  return n(model.pixel_encoder) + n(model.pixel_decoder) + n(model.transformer_decoder)


def test_max_deeplab_s_parameter_count():
  """The COCO recipe's model: deeplab2's encoder (61,951,872) plus our predictor."""
  model = _build_from_gin("configs/models/max_deeplab_s.gin", training=True)
  counts = model_summary.parameter_counts(model)
  assert _deeplab2_encoder_params(model) == 61_951_872
  # + predictor: pixel head 106,880, mask head 33,280, class 34,438, BNs 516.
  assert counts["params"] == 61_951_872 + 175_114
  assert abs(counts["params"] / 61.9e6 - 1) < 0.02
  rates = [round(b._drop_path.drop_rate, 3) for b, _, _ in model.pixel_encoder._blocks]
  # deeplab2 (google-research/deeplab2, model/layers/axial_block_groups.py):
  # keep 1.0 in stages 2-3, stage4 [1, .85 x5], stage5 [.85, .8, .8].
  assert rates == [0.0] * 8 + [0.15] * 5 + [0.15, 0.2, 0.2]


@pytest.mark.slow
def test_max_deeplab_l_parameter_count():
  """Wide-ResNet-41 + L = 2 hourglass: deeplab2's 451,272,192 exactly."""
  model = _build_from_gin("configs/models/max_deeplab_l.gin", training=False)
  assert _deeplab2_encoder_params(model) == 451_272_192
  # README's 451.5M: + the predictor; MaX-DeepLab (arXiv 2012.00759) Tab. 2: 451M.
  params = model_summary.parameter_counts(model)["params"]
  assert params == 451_514_378
  assert abs(params / 451e6 - 1) < 0.002
  rates = [round(b._drop_path.drop_rate, 3) for b, _, _ in model.pixel_encoder._blocks]
  assert rates == ([0.0] * 4 + [0.05] * 3 + [0.1] * 5 + [0.1, 0.15, 0.15]
                   + [0.15, 0.2, 0.2])
  dual_paths = [d for _, d, _ in model.pixel_encoder._blocks if d is not None]
  assert len(dual_paths) == 6  # + 7 in the decoder: 13 in all.
  assert sum(d is not None for _, _, blocks in model.pixel_decoder._stages
             for _, d in blocks) == 7
  assert axial_resnet.MEMORY == "memory"


def test_decoder_stage_without_fusion_continues_and_takes_its_place():
  kwargs = dict(num_blocks=(1, 1, 1), filters=(4, 4, 4), block_kinds=("bottleneck",) * 3,
                transformer=(False,) * 3, expansion=2)
  decoder = MaXPixelDecoder(strides=(16, 8, 16), fuse=(False, True, True), **kwargs)
  endpoints = {"stride8": tf.ones([1, 5, 5, 8]), "stride16": tf.ones([1, 3, 3, 8])}
  out = decoder(endpoints, training=False)
  stages = decoder._stages  # pylint: disable=protected-access
  assert stages[0][1] is None
  # Stage 2 fuses the running feature and stage 0's output, which took the encoder
  # stride-16 feature's place: two inputs, not three.
  assert len(stages[2][1]._projections) == 2  # pylint: disable=protected-access
  assert out["stride16"].shape == (1, 3, 3, 8) and out["stride8"].shape == (1, 5, 5, 8)
  with pytest.raises(ValueError, match="continues the previous stage"):
    MaXPixelDecoder(strides=(16, 8, 8), fuse=(True, False, True), **kwargs)
  with pytest.raises(ValueError, match="not at its stride 8"):
    MaXPixelDecoder(strides=(8, 16, 16), fuse=(False, True, True), **kwargs)(endpoints)
