"""The Model Garden ResNet wrapper's optional stride-2 endpoint."""

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.pixel_encoders.resnet import ResNetEncoder


def _encoder(**kwargs):
  return ResNetEncoder(model_id=18, depth_multiplier=0.25, **kwargs)


def test_stride2_endpoint_is_the_stem_before_max_pool_with_the_same_weights(tmp_path):
  images = tf.random.stateless_uniform([2, 33, 47, 3], seed=[1, 2], minval=-1.0)
  plain = _encoder()
  plain_out = plain(images, training=False)
  keras.utils.set_random_seed(5)
  with_stem = _encoder(stride2_endpoint=True)
  with_stem(images, training=False)
  assert len(with_stem.weights) == len(plain.weights)

  # A checkpoint of the plain encoder restores every weight of the other one.
  path = tf.train.Checkpoint(encoder=plain).write(str(tmp_path / "ckpt"))
  tf.train.Checkpoint(encoder=with_stem).read(path).assert_consumed()
  out = with_stem(images, training=False)
  assert sorted(out) == ["stride16", "stride2", "stride32", "stride4", "stride8"]
  for key, value in plain_out.items():
    np.testing.assert_array_equal(out[key].numpy(), value.numpy())
  assert with_stem.output_channels["stride2"] == out["stride2"].shape[-1]

  # The stem by hand: 7x7 stride-2 conv (SAME), batch norm (moving statistics), ReLU.
  backbone = with_stem._backbone  # pylint: disable=protected-access
  conv = next(l for l in backbone.layers if isinstance(l, keras.layers.Conv2D))
  bn = next(l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization))
  x = tf.nn.conv2d(images, conv.kernel, 2, "SAME")
  x = (x - bn.moving_mean) / tf.sqrt(bn.moving_variance + bn.epsilon) * bn.gamma + bn.beta
  want = tf.nn.relu(x)
  assert out["stride2"].shape == (2, 17, 24, want.shape[-1])
  np.testing.assert_allclose(out["stride2"].numpy(), want.numpy(), atol=1e-5)


def test_stride2_endpoint_trains_the_stem():
  encoder = _encoder(stride2_endpoint=True)
  images = tf.random.stateless_uniform([1, 32, 32, 3], seed=[3, 4], minval=-1.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(encoder(images, training=True)["stride2"])
  grads = tape.gradient(loss, encoder.trainable_variables)
  # Only the stem reaches the stride-2 feature: its conv kernel gets a gradient, the
  # residual stages none.
  backbone = encoder._backbone  # pylint: disable=protected-access
  conv = next(l for l in backbone.layers if isinstance(l, keras.layers.Conv2D))
  blocks = [v for l in backbone.layers if "block" in l.name for v in l.trainable_weights]
  assert blocks
  for v, g in zip(encoder.trainable_variables, grads):
    if v is conv.kernel:
      assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0
    if any(v is b for b in blocks):
      assert g is None, v.name
