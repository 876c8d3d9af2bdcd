"""The shared resizes against independent numpy computations."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.ops import resize


def _nearest_numpy(labels, size):
  """Half-pixel-centre nearest neighbour: source index floor((i + 0.5) * in / out)."""
  height, width = labels.shape[-2:]
  rows = np.minimum(np.floor((np.arange(size[0]) + 0.5) * height / size[0]), height - 1)
  cols = np.minimum(np.floor((np.arange(size[1]) + 0.5) * width / size[1]), width - 1)
  return labels[..., rows.astype(int)[:, None], cols.astype(int)[None, :]]


def test_resize_nearest_matches_numpy_and_keeps_dtype():
  labels = np.random.default_rng(0).integers(0, 1000, (2, 5, 7)).astype(np.int32)
  for size in ((10, 14), (3, 4), (5, 7), (7, 3)):
    out = resize.resize_nearest(tf.constant(labels), size)
    assert out.dtype == tf.int32
    np.testing.assert_array_equal(out.numpy(), _nearest_numpy(labels, size))
    single = resize.resize_nearest(tf.constant(labels[0]), tf.constant(size))
    np.testing.assert_array_equal(single.numpy(), _nearest_numpy(labels[0], size))


def test_resize_bilinear_half_pixel_and_align_corners():
  x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)[..., :1]
  x = np.broadcast_to(x, (1, 2, 3, 2)).copy()
  # Align corners, 2 -> 3 rows and 3 -> 5 columns: linear in the index, corners kept.
  out = resize.resize_bilinear(tf.constant(x), (3, 5), align_corners=True).numpy()
  rows = np.linspace(0, 1, 3)[:, None]
  cols = np.linspace(0, 2, 5)[None, :]
  want = x[0, 0, 0, 0] + rows * (x[0, 1, 0, 0] - x[0, 0, 0, 0]) + cols * (
      x[0, 0, 1, 0] - x[0, 0, 0, 0])
  np.testing.assert_allclose(out[0, ..., 0], want, rtol=1e-6)
  # Half-pixel centres, upscaling by 2 along a linear ramp: source position
  # (i + 0.5) / 2 - 0.5, clamped to the edges.
  ramp = np.arange(4, dtype=np.float32)[None, None, :, None] * np.ones((1, 1, 1, 1), np.float32)
  out = resize.resize_bilinear(tf.constant(ramp), (1, 8)).numpy()[0, 0, :, 0]
  np.testing.assert_allclose(out, np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3), rtol=1e-6)


def test_resize_bilinear_keeps_the_float_dtype_and_is_identity_at_size():
  x = tf.random.stateless_uniform([1, 4, 4, 3], seed=[1, 2], dtype=tf.float32)
  y = resize.resize_bilinear(tf.cast(x, tf.bfloat16), (8, 8))
  assert y.dtype == tf.bfloat16
  assert resize.resize_bilinear(x, (4, 4)) is x
  image, label = resize.resize_image_and_label(
      x[0], tf.zeros([4, 4, 1], tf.int32), tf.constant([2, 6]))
  assert image.shape == (2, 6, 3) and label.shape == (2, 6, 1) and label.dtype == tf.int32


def _bilinear_numpy(x, size, align_corners):
  """Per output pixel, the four source pixels' weighted sum (float64)."""
  def taps(n_in, n_out):
    i = np.arange(n_out, dtype=np.float64)
    pos = (i * (n_in - 1) / max(n_out - 1, 1) if align_corners
           else np.maximum((i + 0.5) * n_in / n_out - 0.5, 0.0))
    low = np.minimum(np.floor(pos).astype(int), n_in - 1)
    return low, np.minimum(low + 1, n_in - 1), pos - low
  (r0, r1, dr), (c0, c1, dc) = taps(x.shape[1], size[0]), taps(x.shape[2], size[1])
  x = x.astype(np.float64)
  top = x[:, r0][:, :, c0] * (1 - dc)[:, None] + x[:, r0][:, :, c1] * dc[:, None]
  bottom = x[:, r1][:, :, c0] * (1 - dc)[:, None] + x[:, r1][:, :, c1] * dc[:, None]
  return top * (1 - dr)[:, None, None] + bottom * dr[:, None, None]


@pytest.mark.parametrize("align_corners", [False, True])
def test_xla_bilinear_resize_equals_eager_and_numpy_at_non_integer_factors(align_corners):
  """TensorFlow's resize op compiled by XLA on CPU is wrong at non-integer factors
  (tensorflow/tensorflow#118344: 9x9 -> 33x33 off by up to 4.2); ours, two
  matmuls, is right compiled or not, up- and downsampling."""
  x = np.random.default_rng(0).normal(size=(2, 9, 7, 5)).astype(np.float32)
  reference = tf.image.resize if not align_corners else (
      lambda t, s: tf.compat.v1.image.resize_bilinear(t, s, align_corners=True))
  for size in ((33, 33), (4, 3), (9, 20)):
    fn = lambda t, s=size: resize.resize_bilinear(t, s, align_corners)  # pylint: disable=unnecessary-lambda-assignment
    eager, compiled = fn(tf.constant(x)).numpy(), tf.function(fn, jit_compile=True)(x).numpy()
    want = _bilinear_numpy(x, size, align_corners)
    np.testing.assert_allclose(eager, want, atol=1e-6, err_msg=str(size))
    np.testing.assert_allclose(compiled, want, atol=1e-6, err_msg=str(size))
    # TensorFlow's op computes the source positions in float32: 2e-5 from exact.
    np.testing.assert_allclose(reference(x, size).numpy(), want, atol=2e-5)


def test_bilinear_resize_float64_gradient_is_exact_under_xla():
  """The gradient is the interpolation matrices' transpose, in float64 under XLA
  too (the XLA lowering of TensorFlow's resize gradient returns garbage in
  float64 on CPU)."""
  x = tf.constant(np.random.default_rng(1).normal(size=(1, 4, 3, 2)))
  upstream = tf.constant(np.random.default_rng(2).normal(size=(1, 9, 5, 2)))

  def grad(t):
    with tf.GradientTape() as tape:
      tape.watch(t)
      loss = tf.reduce_sum(resize.resize_bilinear(t, (9, 5)) * upstream)
    return tape.gradient(loss, t)

  rows, cols = resize.interpolation_matrix(4, 9, False), resize.interpolation_matrix(3, 5, False)
  want = np.einsum("oh,pw,bopc->bhwc", rows, cols, upstream.numpy())
  np.testing.assert_allclose(grad(x).numpy(), want, rtol=1e-12)
  np.testing.assert_allclose(tf.function(grad, jit_compile=True)(x).numpy(), want, rtol=1e-12)
  assert resize.resize_bilinear(x, (9, 5)).dtype == tf.float64
