"""The shared undoing of the evaluation preprocessing (evaluator and SavedModel)."""

import numpy as np
import tensorflow as tf

from deeplab_panoptic.postprocess import resolution


def _nearest(valid: np.ndarray, out_hw) -> np.ndarray:
  """Nearest resize with pixel centres at +0.5 (src = floor((dst + 0.5) * in / out))."""
  h, w = valid.shape[:2]
  rows = np.minimum(np.floor((np.arange(out_hw[0]) + 0.5) * h / out_hw[0]).astype(int), h - 1)
  cols = np.minimum(np.floor((np.arange(out_hw[1]) + 0.5) * w / out_hw[1]).astype(int), w - 1)
  return valid[rows][:, cols]


def test_crop_resize_and_void_padding_match_numpy():
  rng = np.random.default_rng(0)
  maps = rng.integers(0, 1000, size=(3, 8, 8, 2)).astype(np.int32)
  # Image 0: no resize (crop only); 1: upscaled 2x; 2: a non-integer ratio, both ways.
  resized = np.array([[5, 7], [4, 3], [6, 8]], np.int32)
  original = np.array([[5, 7], [8, 6], [9, 5]], np.int32)
  void = (255 * 256, 255)
  out = resolution.restore_original_resolution(maps, resized, original, void).numpy()
  assert out.shape == (3, 9, 7, 2)
  for b in range(3):
    (rh, rw), (oh, ow) = resized[b], original[b]
    expected = _nearest(maps[b, :rh, :rw], (oh, ow))
    np.testing.assert_array_equal(out[b, :oh, :ow], expected, err_msg=f"image {b}")
    for c in range(2):
      assert np.all(out[b, oh:, :, c] == void[c]) and np.all(out[b, :, ow:, c] == void[c])
  # An exact 2x upscale is a plain repeat.
  np.testing.assert_array_equal(out[1, :8, :6], np.repeat(np.repeat(maps[1, :4, :3], 2, 0), 2, 1))


def test_infer_at_input_size_casts_to_float32_and_passes_the_input_size():
  seen = {}

  def model(images, training):
    assert training is False
    return {"logits": tf.cast(images[..., :1], tf.bfloat16), "count": tf.constant(3)}

  def postprocessor(outputs, size):
    seen.update(size=size, dtype=outputs["logits"].dtype, count=outputs["count"].dtype)
    return {"panoptic": tf.zeros([1, *size], tf.int32)}

  out = resolution.infer_at_input_size(model, postprocessor, tf.zeros([1, 6, 10, 3]))
  assert seen == {"size": (6, 10), "dtype": tf.float32, "count": tf.int32}
  assert out["panoptic"].shape == (1, 6, 10)
