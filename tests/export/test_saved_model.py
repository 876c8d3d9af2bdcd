"""The export's preprocessing equals the reader's evaluation preprocessing."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.data import preprocessing
from deeplab_panoptic.export import saved_model


@pytest.mark.parametrize("mode", [preprocessing.FIT_SHRINK_ONLY,
                                  preprocessing.LONGER_SIDE_TO_CROP,
                                  preprocessing.SHORT_SIDE])
@pytest.mark.parametrize("shape", [(50, 70), (130, 90), (64, 64)])
def test_fit_and_pad_matches_reader(mode, shape):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
  crop = (96, 112)
  label = tf.zeros(shape + (1,), tf.int32)
  ref, _ = preprocessing.resize_for_eval(tf.cast(image, tf.float32), label, crop, mode,
                                         short_side=60, max_long_side=100)
  rh, rw = ref.shape[0], ref.shape[1]
  ref, _ = preprocessing.pad_to_size(ref, label[:rh, :rw], crop[0], crop[1], 0)
  ref = preprocessing.normalize_image(ref).numpy()

  out, (h, w) = saved_model.fit_and_pad(tf.constant(np.stack([image, image])), crop, mode,
                                        short_side=60, max_long_side=100)
  assert (int(h), int(w)) == (rh, rw)
  np.testing.assert_allclose(out.numpy()[0], ref, atol=1e-6)
  np.testing.assert_allclose(out.numpy()[1], ref, atol=1e-6)
