"""TorchvisionResNetEncoder and InputNormalization against transformers and numpy.

tests/fixtures/hf_mask2former/resnet (tools/golden/hf_mask2former_golden.py) holds a
tiny random Mask2Former whose backbone is transformers' bottleneck ``ResNetBackbone``,
with its four ``feature_maps`` on a 64 x 96 and a 61 x 77 image (ImageNet-normalised
from the [-1, 1] images that are also stored).
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

from deeplab_panoptic.modeling.layers.input_normalization import InputNormalization
from deeplab_panoptic.modeling.pixel_encoders.torchvision_resnet import (
    TorchvisionResNetEncoder)
from deeplab_panoptic.tools.hf_mask2former import encoders
from tests.tools.hf_mask2former_fixture import (IMAGENET, PREFIX_ENCODER, fixture_config,
                                                fixture_file, golden)

STRIDES = (4, 8, 16, 32)


def _encoder(**kwargs):
  backbone = fixture_config("resnet")["backbone_config"]
  with gin.unlock_config():
    gin.bind_parameter("InputNormalization.mean", IMAGENET["mean"])
    gin.bind_parameter("InputNormalization.std", IMAGENET["std"])
  encoder = TorchvisionResNetEncoder(
      depths=backbone["depths"], stem_width=backbone["embedding_size"],
      widths=backbone["hidden_sizes"], input_normalization=True, **kwargs)
  encoder(tf.zeros([1, 32, 32, 3]))
  return encoder


@pytest.fixture(name="imported", scope="module")
def _imported():
  gin.clear_config()
  encoder = _encoder()
  weights = load_file(fixture_file("resnet", "model.safetensors"))
  used = encoders.assign_resnet(encoder, weights, PREFIX_ENCODER)
  yield encoder, weights, used
  gin.clear_config()


@pytest.mark.parametrize("image", ["image", "odd_image"])
def test_features_equal_transformers_resnet_backbone(imported, image):
  encoder = imported[0]
  data = golden("resnet")
  prefix = "encoder_" if image == "image" else "odd_encoder_"
  outputs = encoder(tf.constant(data[image]), training=False)
  for i, stride in enumerate(STRIDES):
    want = data[f"{prefix}stage{i + 1}"]
    got = outputs[f"stride{stride}"].numpy()
    assert got.shape == want.shape, stride
    print(f"{image} stride {stride}: max |diff| {np.abs(got - want).max():.2e}")  # pytest -s
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5, err_msg=f"stride {stride}")


def test_every_backbone_array_is_used_once(imported):
  encoder, weights, used = imported
  backbone = {k for k in weights if k.startswith(PREFIX_ENCODER)}
  assert len(used) == len(set(used)) == len(encoder.weights)
  assert backbone - set(used) == {k for k in backbone if k.endswith(".num_batches_tracked")}


def test_missing_and_misshapen_arrays_are_named(imported):
  encoder, weights, _ = imported
  key = PREFIX_ENCODER + "encoder.stages.1.layers.0.layer.1.convolution.weight"
  broken = dict(weights)
  del broken[key]
  with pytest.raises(ValueError, match="stages.1.layers.0.layer.1.convolution.weight is missing"):
    encoders.assign_resnet(encoder, broken, PREFIX_ENCODER)
  broken[key] = np.zeros([3, 3, 1, 1], np.float32)
  with pytest.raises(ValueError, match="layer.1.convolution.weight .* does not fit"):
    encoders.assign_resnet(encoder, broken, PREFIX_ENCODER)
  broken = dict(weights, **{PREFIX_ENCODER + "encoder.stages.9.extra": np.zeros([1])})
  with pytest.raises(ValueError, match="no place in the encoder.*stages.9.extra"):
    encoders.assign_resnet(encoder, broken, PREFIX_ENCODER)


def test_shapes_follow_pytorch_padding():
  gin.clear_config()
  encoder = _encoder()
  outputs = encoder(tf.zeros([2, 65, 33, 3]))
  # PyTorch: 65 -> 33 (7x7/2, pad 3) -> 17 (3x3/2 pool, pad 1) -> 9 -> 5 -> 3.
  assert [tuple(outputs[f"stride{s}"].shape[1:3]) for s in STRIDES] == [
      (17, 9), (9, 5), (5, 3), (3, 2)]
  gin.clear_config()


def test_frozen_batch_norm_uses_moving_statistics_in_training():
  gin.clear_config()
  encoder = _encoder(freeze_batch_norm=True, frozen_stages=1)
  images = tf.random.uniform([2, 32, 32, 3], -1, 1, seed=1)
  before = [v.numpy() for v in encoder.non_trainable_weights]
  train = encoder(images, training=True)
  infer = encoder(images, training=False)
  for s in STRIDES:
    np.testing.assert_allclose(train[f"stride{s}"], infer[f"stride{s}"], atol=1e-6)
  for old, new in zip(before, encoder.non_trainable_weights):
    np.testing.assert_array_equal(old, new.numpy())
  trainable = {v.name for v in encoder.trainable_weights}
  assert not any("gamma" in n or "beta" in n for n in trainable)
  assert not any("/stem/" in n or "/stage1_" in n for n in trainable)
  assert any("/stage2_block0/conv1/conv/kernel" in n for n in trainable)
  gin.clear_config()


def test_input_normalization_against_numpy():
  layer = InputNormalization(mean=IMAGENET["mean"], std=IMAGENET["std"])
  image = np.random.default_rng(0).uniform(-1, 1, [2, 4, 5, 3]).astype(np.float32)
  want = ((image + 1) / 2 - np.asarray(IMAGENET["mean"])) / np.asarray(IMAGENET["std"])
  np.testing.assert_allclose(layer(tf.constant(image)).numpy(), want, atol=1e-6)
  np.testing.assert_allclose(
      layer(tf.constant(golden("resnet")["image"])).numpy(), golden("resnet")["pixel_values"],
      atol=1e-5)


def test_input_normalization_needs_gin_values():
  gin.clear_config()
  with pytest.raises(ValueError, match="InputNormalization.mean and InputNormalization.std"):
    TorchvisionResNetEncoder(input_normalization=True)
  with pytest.raises(ValueError, match="std positive"):
    InputNormalization(mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2))


def test_parameter_count_equals_torchvision():
  # torchvision's resnet50 (25,557,032 parameters, its model docs) without the
  # 2048 x 1000 classifier (2,049,000); transformers' ResNetBackbone(ResNetConfig())
  # counts the same. (ResNet-101: 42,500,160 the same way, and here; not run, 10 s.)
  params = 23_508_032
  encoder = TorchvisionResNetEncoder(model_id=50)
  encoder(tf.zeros([1, 32, 32, 3]))
  counted = sum(int(np.prod(v.shape)) for v in encoder.weights
                if "moving_" not in v.name)   # running statistics are buffers in torch
  assert counted == params


def test_xla_forward_and_gradient_equal_eager(imported):
  encoder = imported[0]
  image = tf.constant(golden("resnet")["odd_image"])

  def loss(x):
    return sum(tf.reduce_sum(v * v) for v in encoder(x, training=False).values())

  def value_and_grad(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      value = loss(x)
    return value, tape.gradient(value, x)

  eager = value_and_grad(image)
  compiled = tf.function(value_and_grad, jit_compile=True)(image)
  np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)
  # float32 sums in another order: relative to the largest gradient (about 50 here).
  scale = float(np.abs(eager[1]).max())
  np.testing.assert_allclose(compiled[1], eager[1], rtol=0, atol=1e-5 * scale)
