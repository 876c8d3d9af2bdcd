"""Multiply-add counting against hand-computed counts."""

import tensorflow as tf
import tf_keras as keras

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
