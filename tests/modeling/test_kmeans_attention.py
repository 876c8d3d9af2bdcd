"""k-means cross-attention against a direct numpy computation."""

import numpy as np
import tensorflow as tf

from deeplab_panoptic.modeling.layers import kmeans_attention
from deeplab_panoptic.modeling.layers.drop_path import DropPath


def test_assignment_and_update_match_numpy_kmeans_step():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  values = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  assign = kmeans_attention.kmeans_assignment(tf.constant(logits)).numpy()
  update = kmeans_attention.kmeans_center_update(tf.constant(assign), tf.constant(values)).numpy()

  expected = np.zeros((2, 5, 6), np.float32)
  for b in range(2):
    for i in range(3):
      for j in range(4):
        k = int(np.argmax(logits[b, i, j]))
        assert assign[b, i, j, k] == 1.0 and assign[b, i, j].sum() == 1.0
        expected[b, k] += values[b, i, j]
  np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-5)


def test_assignment_has_no_gradient():
  logits = tf.Variable(tf.random.normal([1, 2, 2, 3]))
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(kmeans_attention.kmeans_assignment(logits) * 3.0)
  assert tape.gradient(y, logits) is None


def test_drop_path_keeps_expectation_and_drops_whole_samples():
  layer = DropPath(0.5)
  x = tf.ones([4000, 3])
  y = layer(x, training=True).numpy()
  # Each sample is all-zero or all-(1/keep).
  assert set(np.unique(y).tolist()) <= {0.0, 2.0}
  assert np.all(y.min(axis=1) == y.max(axis=1))
  assert abs(y.mean() - 1.0) < 0.06
  np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
