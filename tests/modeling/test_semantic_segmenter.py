"""SemanticSegmenter and the DeepLabV3+ parts wrapped from Model Garden.

Shapes and strides on tiny inputs, that the Model Garden layers are the ones that
run, parameter counts against closed-form counts of the architecture, and the
DeepLabV3+ R101 OS8 count against the published one.
"""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.backbones import resnet_deeplab as mg_resnet_deeplab
from official.vision.modeling.decoders import aspp as mg_aspp
from official.vision.modeling.heads import segmentation_heads as mg_heads

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.heads_per_pixel import DeepLabV3PlusHead, FCNHead
from deeplab_panoptic.modeling.pixel_decoders.aspp import ASPPPixelDecoder
from deeplab_panoptic.modeling.pixel_encoders.dilated_resnet import DilatedResNetEncoder
from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder
from deeplab_panoptic.modeling.semantic_segmenter import SemanticSegmenter
from deeplab_panoptic.training import model_summary
from tests.conftest import REPO_ROOT

NUM_CLASSES = 5


def _images(batch=2, height=64, width=64, seed=0):
  return tf.random.stateless_uniform([batch, height, width, 3], seed=[seed, 1], minval=-1.0)


def _trainable(layer) -> int:
  return sum(int(np.prod(v.shape)) for v in layer.trainable_weights)


def _bn(channels: int) -> int:
  return 2 * channels  # gamma and beta (the moving statistics are not trainable)


def _tiny_model(**kwargs) -> SemanticSegmenter:
  """ResNet-18 x0.25 (stride 32, 128 channels) -> ASPP -> DeepLabV3+ head."""
  return SemanticSegmenter(
      ResNetEncoder(model_id=18, depth_multiplier=0.25),
      ASPPPixelDecoder(input_stride=32, dilation_rates=(1, 2, 3), num_filters=16),
      DeepLabV3PlusHead(num_classes=NUM_CLASSES, input_stride=32, low_level_num_filters=8,
                        num_filters=16),
      **kwargs)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_resnet_endpoints_are_model_gardens_renamed(output_stride):
  images = _images(height=65, width=49)
  encoder = DilatedResNetEncoder(model_id=50, output_stride=output_stride,
                                 stage_endpoints=True)
  out = encoder(images, training=False)
  assert isinstance(encoder.model_garden_backbone, mg_resnet_deeplab.DilatedResNet)
  strides = [s for s in (4, 8, 16) if s <= output_stride]
  assert sorted(encoder.output_channels) == sorted(f"stride{s}" for s in strides)
  for s in strides:
    key = f"stride{s}"
    assert out[key].shape[1:3] == (-(-65 // s), -(-49 // s)), key
    assert out[key].shape[-1] == encoder.output_channels[key]
  # The final (2048-channel) stage sits at the output stride; stage 4 (1024)
  # at min(16, output stride), with dilation past the output stride.
  assert encoder.output_channels[f"stride{output_stride}"] == 2048
  assert encoder.output_channels["stride4"] == 256
  assert encoder.stage_channels == {"stage2": 256, "stage3": 512, "stage4": 1024,
                                    "stage5": 2048}
  assert out["stage4"].shape[1:3] == out[f"stride{min(16, output_stride)}"].shape[1:3]
  # Model Garden's own outputs, keyed by level, are the same tensors.
  direct = encoder.model_garden_backbone(images, training=False)
  for level, value in direct.items():
    np.testing.assert_array_equal(out[f"stride{2 ** int(level)}"].numpy(), value.numpy())
  np.testing.assert_array_equal(out["stage5"].numpy(), out[f"stride{output_stride}"].numpy())
  np.testing.assert_array_equal(out["stage2"].numpy(), out["stride4"].numpy())


def test_dilated_resnet_checkpoint_holds_model_gardens_backbone_only(tmp_path):
  encoder = DilatedResNetEncoder(model_id=50, output_stride=16, stage_endpoints=True)
  encoder(_images(batch=1, height=33, width=33), training=False)
  path = tf.train.Checkpoint(backbone=encoder.model_garden_backbone).write(
      str(tmp_path / "mg"))
  other = DilatedResNetEncoder(model_id=50, output_stride=16)
  other(_images(batch=1, height=33, width=33), training=False)
  tf.train.Checkpoint(backbone=other.model_garden_backbone).read(path).assert_consumed()
  assert len(other.weights) == len(encoder.weights)


def test_dilated_resnet_rejects_what_model_garden_cannot_build():
  with pytest.raises(ValueError, match="output_stride must be one of"):
    DilatedResNetEncoder(model_id=50, output_stride=4)
  with pytest.raises(ValueError, match="model_id must be one of"):
    DilatedResNetEncoder(model_id=18)


def _aspp_params(c_in: int, filters: int, rates: int) -> int:
  """1x1 branch, atrous 3x3 branches, image pooling 1x1, 1x1 projection (each + BN)."""
  branches = c_in * filters + rates * 9 * c_in * filters + c_in * filters
  projection = (rates + 2) * filters * filters
  return branches + projection + (rates + 3) * _bn(filters)


def _head_params(c_high: int, c_low: int, low_filters: int, filters: int, convs: int,
                 num_classes: int) -> int:
  """1x1 low-level reduction, 3x3 convolutions after the concat, 1x1 classifier."""
  total = c_low * low_filters + _bn(low_filters)
  c_in = c_high + low_filters
  for _ in range(convs):
    total += 9 * c_in * filters + _bn(filters)
    c_in = filters
  return total + filters * num_classes + num_classes


def test_aspp_decoder_and_deeplabv3plus_head_shapes_and_counts():
  endpoints = {"stride4": tf.random.normal([2, 16, 12, 24]),
               "stride8": tf.random.normal([2, 8, 6, 40])}
  decoder = ASPPPixelDecoder(input_stride=8, dilation_rates=(2, 4, 6), num_filters=32)
  features = decoder(endpoints, training=False)
  assert isinstance(decoder.model_garden_layer, mg_aspp.ASPP)
  assert sorted(features) == ["stride8"] and features["stride8"].shape == (2, 8, 6, 32)
  assert decoder.output_channels == {"stride8": 32}
  assert _trainable(decoder) == _aspp_params(40, 32, 3)

  head = DeepLabV3PlusHead(num_classes=7, input_stride=8, low_level_stride=4,
                           low_level_num_filters=12, num_convs=2, num_filters=20)
  logits = head({**endpoints, **features}, training=False)
  assert isinstance(head.model_garden_layer, mg_heads.SegmentationHead)
  assert logits.shape == (2, 16, 12, 7) and head.output_stride == 4
  assert _trainable(head) == _head_params(32, 24, 12, 20, 2, 7)

  aux = FCNHead(num_classes=7, input_key="stride8", num_convs=1, num_filters=16)
  assert aux({"stride8": endpoints["stride8"]}, training=False).shape == (2, 8, 6, 7)
  assert _trainable(aux) == 9 * 40 * 16 + _bn(16) + 16 * 7 + 7


def test_parts_name_the_missing_feature_and_setting():
  decoder = ASPPPixelDecoder(input_stride=16)
  with pytest.raises(ValueError, match=r"'stride16'.*ASPPPixelDecoder.input_stride"):
    decoder({"stride8": tf.zeros([1, 4, 4, 8])})
  head = DeepLabV3PlusHead(num_classes=3, input_stride=8, low_level_stride=4)
  with pytest.raises(ValueError, match=r"'stride4'.*low_level_stride"):
    head({"stride8": tf.zeros([1, 4, 4, 8])})
  with pytest.raises(ValueError, match="must be a power of 2"):
    ASPPPixelDecoder(input_stride=12)


def test_batch_norms_of_model_garden_layers_follow_the_training_flag():
  model = _tiny_model()
  images = _images()
  model(images, training=True)
  norms = [m for part in (model.pixel_decoder, model.head) for m in part.submodules
           if isinstance(m, keras.layers.BatchNormalization)]
  assert norms
  before = [n.moving_mean.numpy().copy() for n in norms]
  model(images, training=False)
  for n, b in zip(norms, before):
    np.testing.assert_array_equal(n.moving_mean.numpy(), b)
  model(images, training=True)
  assert all(not np.allclose(n.moving_mean.numpy(), b) for n, b in zip(norms, before))


def test_semantic_segmenter_outputs_and_training_only_auxiliary_head():
  aux = FCNHead(num_classes=NUM_CLASSES, input_key="stride16", num_filters=8)
  model = _tiny_model(auxiliary_head=aux)
  images = _images(height=64, width=96)
  train_out = model(images, training=True)
  assert sorted(train_out) == sorted([common.PRED_SEMANTIC_LOGITS,
                                      common.PRED_AUX_SEMANTIC_LOGITS])
  assert train_out[common.PRED_SEMANTIC_LOGITS].shape == (2, 16, 24, NUM_CLASSES)
  assert train_out[common.PRED_AUX_SEMANTIC_LOGITS].shape == (2, 4, 6, NUM_CLASSES)
  # The head fuses the ASPP output (16 channels), not the encoder's own stride-32
  # feature (128), with the encoder's stride-4 feature (16).
  assert model.pixel_encoder.output_channels["stride32"] == 128
  assert _trainable(model.head) == _head_params(16, 16, 8, 16, 2, NUM_CLASSES)
  infer_out = model(images, training=False)
  assert sorted(infer_out) == [common.PRED_SEMANTIC_LOGITS]
  assert model.training_only_layers == [aux]
  counts = model_summary.parameter_counts(model)
  aux_weights = sum(int(np.prod(v.shape)) for v in aux.weights)
  all_weights = sum(int(np.prod(v.shape)) for v in model.weights)
  assert counts["params"] == all_weights - aux_weights
  assert counts["train_params"] == _trainable(model)
  assert _tiny_model().training_only_layers == []


def test_semantic_segmenter_checks_its_parts():
  with pytest.raises(TypeError, match=r"SemanticSegmenter\.head must be a .*PixelHead"):
    SemanticSegmenter(ResNetEncoder(model_id=18, depth_multiplier=0.25),
                      ASPPPixelDecoder(input_stride=32), keras.layers.Dense(3))
  with pytest.raises(ValueError, match="recompute names"):
    _tiny_model(recompute=("transformer_decoder",))


def test_recompute_gives_the_same_loss_and_gradients(monkeypatch):
  """Each listed part's ``call`` runs again inside ``tape.gradient`` (twice in
  all, once without recomputation), and the loss and gradients are unchanged."""
  model = _tiny_model()
  images = _images()
  model(images, training=True)
  parts = {"pixel_encoder": model.pixel_encoder, "pixel_decoder": model.pixel_decoder,
           "head": model.head}

  def gradients():
    calls = {name: 0 for name in parts}
    by_id = {id(part): name for name, part in parts.items()}
    for cls in {type(part) for part in parts.values()}:
      def counting(self, *args, __original=cls.call, **kwargs):
        if id(self) in by_id:
          calls[by_id[id(self)]] += 1
        return __original(self, *args, **kwargs)
      monkeypatch.setattr(cls, "call", counting)
    with tf.GradientTape() as tape:
      logits = model(images, training=True)[common.PRED_SEMANTIC_LOGITS]
      loss = tf.reduce_mean(tf.square(logits))
    grads = tape.gradient(loss, model.trainable_variables)
    monkeypatch.undo()
    return loss, grads, calls

  loss, grads, calls = gradients()
  assert calls == {name: 1 for name in parts}
  model.recompute = tuple(parts)
  loss_r, grads_r, calls_r = gradients()
  assert calls_r == {name: 2 for name in parts}, "a part was not recomputed"
  np.testing.assert_allclose(loss_r.numpy(), loss.numpy(), rtol=1e-5)
  assert all(g is not None for g in grads_r)
  for g, g_r in zip(grads, grads_r):
    np.testing.assert_allclose(g_r.numpy(), g.numpy(), rtol=1e-4, atol=1e-6)


def test_l2_weight_decay_is_model_gardens_kernel_regularizer():
  head = DeepLabV3PlusHead(num_classes=3, input_stride=8, low_level_num_filters=4,
                           num_filters=8, l2_weight_decay=1e-3)
  head({"stride4": tf.ones([1, 8, 8, 6]), "stride8": tf.ones([1, 4, 4, 10])})
  kernels = [v for v in head.trainable_weights if "kernel" in v.name]
  assert len(kernels) == 4
  want = sum(0.5e-3 * float(tf.reduce_sum(tf.square(k))) for k in kernels)
  assert float(tf.add_n(head.losses)) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ R101 OS8 count

def _bottleneck_resnet_params(blocks, stem_channels) -> int:
  """A bottleneck ResNet without its classifier: stem convs + BN, 1x1-3x3-1x1 blocks
  (+ a projection shortcut in each stage's first block)."""
  total, c_in = 0, 3
  for c, k in stem_channels:
    total += k * k * c_in * c + _bn(c)
    c_in = c
  for filters, repeats in blocks:
    for i in range(repeats):
      total += c_in * filters + 9 * filters * filters + filters * 4 * filters
      total += _bn(filters) * 2 + _bn(4 * filters)
      if i == 0:
        total += c_in * 4 * filters + _bn(4 * filters)
      c_in = 4 * filters
  return total


RESNET101 = ((64, 3), (128, 4), (256, 23), (512, 3))
MODEL_GARDEN_V1_STEM = ((64, 3), (64, 3), (128, 3))
MMSEG_V1C_STEM = ((32, 3), (32, 3), (64, 3))

# SegFormer (Xie et al., NeurIPS 2021, arXiv 2105.15203) Tab. 2: DeepLabV3+
# ResNet-101 (mmsegmentation's deeplabv3plus_r101-d8 on ADE20K), 62.7M params.
PUBLISHED_R101_OS8_PARAMS = 62.7e6


def _mmseg_deeplabv3plus_r101_d8_params(num_classes: int) -> int:
  """mmsegmentation's DeepLabV3+ R-101-D8 (configs/_base_/models/deeplabv3plus_r50-d8.py
  with depth 101), its parameters as PyTorch counts them, auxiliary head included."""
  backbone = _bottleneck_resnet_params(RESNET101, MMSEG_V1C_STEM)
  c, f = 2048, 512
  separable = 9 * c + _bn(c) + c * f + _bn(f)
  aspp = 2 * (c * f + _bn(f)) + 3 * separable          # image pool, 1x1, rates 12/24/36
  bottleneck = 9 * 5 * f * f + _bn(f)                    # 3x3 on the concat
  low = 256 * 48 + _bn(48)
  sep_bottleneck = (9 * (f + 48) + _bn(f + 48) + (f + 48) * f + _bn(f)
                    + 9 * f + _bn(f) + f * f + _bn(f))
  decode = aspp + bottleneck + low + sep_bottleneck + f * num_classes + num_classes
  auxiliary = 9 * 1024 * 256 + _bn(256) + 256 * num_classes + num_classes
  return backbone + decode + auxiliary


def test_deeplabv3plus_r101_os8_parameter_count_is_the_published_one(monkeypatch):
  """Our R101 OS8 (the recipe's gin files) against the closed form of its layers and
  the published count of mmsegmentation's R-101-D8: same convention (auxiliary
  head included, ADE20K's 150 classes, trainable parameters), within 2%."""
  monkeypatch.chdir(REPO_ROOT)
  num_classes = 150
  # The published figure is mmsegmentation's count with its auxiliary head.
  assert round(_mmseg_deeplabv3plus_r101_d8_params(num_classes) / 1e5) / 10 == 62.7

  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [os.path.join("configs", "models", "deeplabv3plus_r101_os8.gin"),
         os.path.join("configs", "models", "deeplabv3plus_auxiliary_head.gin")],
        [f"NUM_CLASSES = {num_classes}"], skip_unknown=True)
    model = SemanticSegmenter()
  finally:
    gin.clear_config()
  model(tf.zeros([1, 33, 33, 3]), training=True)
  assert isinstance(model.pixel_encoder.model_garden_backbone,
                    mg_resnet_deeplab.DilatedResNet)
  assert isinstance(model.head.model_garden_layer, mg_heads.SegmentationHead)

  backbone = _bottleneck_resnet_params(RESNET101, MODEL_GARDEN_V1_STEM)
  assert _trainable(model.pixel_encoder) == backbone
  assert _trainable(model.pixel_decoder) == _aspp_params(2048, 256, 3)
  assert _trainable(model.head) == _head_params(256, 256, 48, 256, 2, num_classes)
  assert _trainable(model.auxiliary_head) == (9 * 1024 * 256 + _bn(256)
                                              + 256 * num_classes + num_classes)
  total = _trainable(model)
  assert abs(total / PUBLISHED_R101_OS8_PARAMS - 1) < 0.02, total
  # The inference model (what --mode=summary's `params` counts, BN statistics
  # included) leaves the auxiliary head out.
  counts = model_summary.parameter_counts(model)
  assert counts["train_params"] == total
  everything = sum(int(np.prod(v.shape)) for v in model.weights)
  auxiliary = sum(int(np.prod(v.shape)) for v in model.auxiliary_head.weights)
  assert counts["params"] == everything - auxiliary
