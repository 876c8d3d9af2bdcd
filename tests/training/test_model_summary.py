"""Multiply-add counting against hand-computed counts."""

import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.ops import resize
from deeplab_panoptic.training import model_summary


class _Tiny(keras.Model):

  def __init__(self):
    super().__init__()
    self.conv = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    self.dw = keras.layers.DepthwiseConv2D(5, padding="same")
    self.dense = keras.layers.Dense(10)

  def call(self, x, training=None):
    y = self.dw(self.conv(x))                       # [b, 8, 8, 8]
    z = tf.einsum("bhwc,bkc->bhwk", y, tf.ones([tf.shape(y)[0], 4, 8]))
    return self.dense(tf.reduce_mean(y, axis=[1, 2])), z


def test_count_macs_by_hand():
  model = _Tiny()
  model(tf.zeros([1, 16, 16, 3]))
  conv = 8 * 8 * 8 * (3 * 3 * 3)      # outputs x (k*k*cin)
  dw = 8 * 8 * 8 * 25                 # outputs x (k*k)
  einsum = 8 * 8 * 4 * 8              # b h w k c
  dense = 10 * 8
  assert model_summary.count_macs(model, (16, 16)) == conv + dw + einsum + dense
  # Per image: the same at batch 2.
  assert model_summary.count_macs(model, (16, 16), batch_size=2) == conv + dw + einsum + dense


def test_count_params_unique():
  v = tf.Variable(tf.zeros([3, 4]))
  assert model_summary.count_params([v, v]) == 12


class _WithUnknownOps(keras.Model):
  """A counted conv, then ops the counter does not know or cannot size."""

  def __init__(self):
    super().__init__()
    self.conv = keras.layers.Conv2D(4, 1, use_bias=False)
    self.conv3d = keras.layers.Conv3D(2, 3, padding="same", use_bias=False)

  def call(self, x, training=None):
    y = self.conv(x)                                        # [b, 8, 8, 4]
    z = self.conv3d(y[..., tf.newaxis])                      # Conv3D: not a known type
    up = tf.nn.conv2d_transpose(y, tf.ones([2, 2, 3, 4]), [1, 16, 16, 3], 2)
    picked = tf.boolean_mask(tf.reshape(y, [-1, 4]), tf.reshape(y[..., 0] > 0, [-1]))
    w = tf.matmul(picked, tf.ones([4, 5]))                  # MatMul of unknown rows
    return z, up, w


def test_unknown_ops_are_listed_never_counted_as_zero():
  model = _WithUnknownOps()
  model(tf.zeros([1, 8, 8, 3]))
  report = model_summary.mac_report(model, (8, 8))
  assert report.macs == 8 * 8 * 4 * 3                       # the 1x1 conv only
  assert report.uncounted == {"Conv3D": 1, "Conv2DBackpropInput": 1, "MatMul": 1}
  assert report.uncounted_text() == "Conv2DBackpropInput x1, Conv3D x1, MatMul x1"
  with pytest.raises(model_summary.UncountedOpsError,
                     match=r"Conv2DBackpropInput x1, Conv3D x1, MatMul x1"):
    model_summary.count_macs(model, (8, 8))


def test_fully_counted_model_reports_no_uncounted_ops():
  model = _Tiny()
  model(tf.zeros([1, 16, 16, 3]))
  report = model_summary.mac_report(model, (16, 16))
  assert report.uncounted == {} and report.uncounted_text() == "none"
  assert report.macs == model_summary.count_macs(model, (16, 16))


def test_zero_initial_values_keep_the_shapes_and_counts():
  model = _Tiny()
  model(tf.zeros([1, 16, 16, 3]))
  with model_summary.zero_initial_values():
    zeroed = _Tiny()
    zeroed(tf.zeros([1, 16, 16, 3]))
    # A value given without a shape is kept as it is.
    given = tf.Variable(tf.ones([2]))
  assert [v.shape for v in zeroed.weights] == [v.shape for v in model.weights]
  assert [v.dtype for v in zeroed.weights] == [v.dtype for v in model.weights]
  # conv 3x3x3x8 + 8, depthwise 5x5x8x1 + 8, dense 8x10 + 10: by hand.
  by_hand = 3 * 3 * 3 * 8 + 8 + 5 * 5 * 8 + 8 + 8 * 10 + 10
  assert model_summary.count_params(zeroed.weights) == by_hand
  assert model_summary.count_params(model.weights) == by_hand
  assert all(not tf.reduce_any(v != 0) for v in zeroed.weights)
  assert any(tf.reduce_any(v != 0) for v in model.weights)  # the draws, outside
  assert given.numpy().tolist() == [1.0, 1.0]
  assert model_summary.count_macs(zeroed, (16, 16)) == model_summary.count_macs(model, (16, 16))


class _ConvThenResize(keras.Model):
  """A counted 1x1 conv, then static bilinear resizes (ops.resize's matmuls)."""

  def __init__(self):
    super().__init__()
    self.conv = keras.layers.Conv2D(4, 1, use_bias=False)

  def call(self, x, training=None):
    y = self.conv(x)                                        # [b, 8, 8, 4]
    return resize.resize_bilinear(y, (13, 11)), resize.resize_bilinear(y, (16, 16))


def test_resizes_are_not_multiply_adds():
  """ops.resize's interpolation matmuls are a resize (the papers' M-Adds leave
  resizing out): only the conv is counted."""
  model = _ConvThenResize()
  model(tf.zeros([1, 8, 8, 3]))
  report = model_summary.mac_report(model, (8, 8))
  assert report.macs == 8 * 8 * 4 * 3 and report.uncounted == {}
